"""The student's own base model with its adapters disabled, as the teacher: no second copy of the weights.

For a LoRA student over the teacher's weights (self-distillation, context distillation, compressing an adapter into a
smaller rank): `teacher_model="base"`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..modeling.adapters import SHARED_BASE_TEACHER, base_head, is_peft_model
from ..modeling.forward import accepted_arguments, decoder_input_ids_from_labels, select_arguments
from ..modeling.heads import unwrap_peft
from ..modeling.record import model_record
from ..provenance import model_source
from .live import LiveTeacher
from .model import short_name


class SharedBaseModel(nn.Module):
    """A module whose forward is the student's with its adapters disabled (what `trainer.teacher_model` shows).

    The student is held without being registered as a submodule, so this module owns no parameters: freezing or
    moving it touches nothing of the student, and `parameters()` is empty.

    Args:
        student (`PeftModel`): the student, whose adapters are disabled for the duration of each teacher forward.
    """

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        if not is_peft_model(student):
            raise ValueError(
                f"teacher_model={SHARED_BASE_TEACHER!r} uses the student's base model as the teacher, but the student "
                f"({type(student).__name__}) is not a PEFT adapter model and so has no base to share. Pass "
                "`peft_config=` (or a PeftModel student), or give a separate teacher."
            )
        self._student = [student]  # a list, so that nn.Module does not register it

    @property
    def student(self) -> nn.Module:
        return self._student[0]

    @property
    def config(self) -> Any:
        return unwrap_peft(self.student).config

    def get_output_embeddings(self) -> nn.Module | None:
        head = unwrap_peft(self.student).get_output_embeddings()
        return None if head is None else base_head(head)

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return decoder_input_ids_from_labels(self.student, labels)

    def forward(self, **inputs: Any) -> Any:
        student = self.student
        was_training = student.training
        student.eval()  # the teacher's targets carry no dropout noise
        try:
            with torch.no_grad(), student.disable_adapter():
                return student(**select_arguments(inputs, accepted_arguments(student)))
        finally:
            student.train(was_training)

    def describe(self) -> str:
        name = short_name(self.config)  # empty for a model built from a config
        return "the student's base model with its adapters disabled" + (f" ({name})" if name else "")


class SharedBaseTeacher(LiveTeacher):
    """A live teacher whose model is `SharedBaseModel`: run like any other, but owning no weights, so it is never
    cast nor placed, and its lineage is the student's base."""

    def describe(self) -> str:
        return self.model.describe()

    def lineage_record(self) -> dict[str, Any]:
        student = self.model.student
        return {**model_source(unwrap_peft(student)), "kind": "shared_base", **model_record(student), "adapter": None}

    def local_folder(self) -> str | None:
        return None  # the weights are the student's: no teacher folder of its own

    def local_paths(self) -> list[str]:
        return []  # the student's own paths, which the student's side already lists
