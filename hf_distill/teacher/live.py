"""A teacher model run live on every batch beside the student: the common kind of `Teacher`."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from ..losses import HeadInput
from ..modeling.adapters import is_peft_model
from ..modeling.forward import accepted_arguments, decoder_inputs, model_logits, select_arguments
from ..modeling.lm_head import capture_head_input, check_head, linear_head
from ..modeling.record import model_record
from ..provenance import local_folder, model_source
from .base import Teacher, TeacherTargets
from .model import describe_teacher, run_teacher, teacher_forward
from .placement import Placement


class LiveTeacher(Teacher):
    """A frozen, placed teacher model (see `hf_distill.teacher.setup.setup_teacher`).

    Args:
        model (`nn.Module`): the frozen teacher, placed (what `DistillationTrainer.teacher_model` shows).
        placement, device, shared_vocab, tokenizer_checked: see `Teacher`.
        label_permutation (`list[int]`, *optional*): the teacher logit column of each student label, for a classifier
            that orders the same labels differently (see `hf_distill.teacher.labels.label_permutation`).
    """

    def __init__(
        self,
        model: nn.Module,
        placement: Placement,
        *,
        device: torch.device | None = None,
        shared_vocab: int | None = None,
        tokenizer_checked: bool | None = None,
        label_permutation: list[int] | None = None,
    ) -> None:
        super().__init__(placement, device=device, shared_vocab=shared_vocab, tokenizer_checked=tokenizer_checked)
        self.model = model
        self.label_permutation = label_permutation

    @property
    def module(self) -> nn.Module:
        return self.model

    def _in_student_order(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits `(B, C)` or `(B, T, C)` with their last dimension in the student's label order."""
        if self.label_permutation is None:
            return logits
        return logits[..., torch.as_tensor(self.label_permutation, device=logits.device)]

    def targets(
        self, features: dict[str, Any], labels: torch.Tensor | None, *, chunked: bool = False
    ) -> TeacherTargets:
        if not chunked:
            return self._in_student_order(run_teacher(self.model, features, labels, self.device).logits)
        # The chunked path runs only with the teacher's head whole on the student's device (training/chunking.py).
        with capture_head_input(self.model) as hidden:
            teacher_forward(self.model, features, labels)
        return HeadInput(hidden.features(), linear_head(self.model))

    def outputs(self, features: dict[str, Any], labels: torch.Tensor | None) -> Any:
        outputs = teacher_forward(self.model, features, labels, self.device)
        home = next((v.device for v in features.values() if torch.is_tensor(v)), None)
        logits = self._in_student_order(model_logits(outputs, "teacher").detach())
        outputs["logits"] = logits if home is None else logits.to(home)
        return outputs

    def describe(self) -> str:
        return describe_teacher(self.model)

    def lineage_record(self) -> dict[str, Any]:
        kind = "peft" if is_peft_model(self.model) else "model"
        source = model_source(self.model)  # a PeftModel's own record (its adapter), else its base's
        return {**source, "kind": kind, **model_record(self.model)}

    def check_head(self, features: dict[str, Any], labels: torch.Tensor | None) -> bool | None:
        model = self.model
        inputs = lambda: select_arguments(  # noqa: E731 - built lazily, inside the guarded check
            decoder_inputs(model, features, labels), accepted_arguments(model)
        )
        return check_head(model, lambda: model(**inputs()))

    def local_folder(self) -> str | None:
        return local_folder(self.model)

    def local_paths(self) -> list[str]:
        found = [local_folder(self.model), getattr(getattr(self.model, "config", None), "_name_or_path", None)]
        return [p for p in found if p and os.path.isabs(p)]
