"""The teacher: loading, freezing, placing it beside the student, and running it (its vocabulary is checked in
`hf_distill.vocabulary`). Its output leaves this module as plain data (`TeacherOutput`)."""

from __future__ import annotations

import inspect
import os
import sys
from dataclasses import dataclass
from typing import Any

import torch
from peft import PeftConfig, PeftModel
from torch import nn
from transformers import (
    AutoModelForAudioClassification,
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    PreTrainedModel,
)

from . import assets
from .adapters import SHARED_BASE_TEACHER, base_head, is_peft_model
from .label_mapping import apply_permutation
from .placement import Placement, apply_placement
from .provenance import is_commit_sha, record_source, source_of
from .tasks import is_encoder_decoder, unwrap_peft

# Set on the placed teacher by `teacher_setup`: whether its tokenizer was compared with the student's (`True`),
# could not be (`False`), or the models read no token ids (`None`). The lineage records it.
TOKENIZER_CHECKED_ATTRIBUTE = "_hf_distill_tokenizer_checked"

# Which Auto class loads a teacher for a student of a given head, by the student class's name suffix.
_AUTO_CLASS_BY_HEAD = {
    "ForCausalLM": AutoModelForCausalLM,
    "ForConditionalGeneration": AutoModelForSeq2SeqLM,
    "ForSeq2SeqLM": AutoModelForSeq2SeqLM,
    "ForSequenceClassification": AutoModelForSequenceClassification,
    "ForTokenClassification": AutoModelForTokenClassification,
    "ForImageClassification": AutoModelForImageClassification,
    "ForAudioClassification": AutoModelForAudioClassification,
}


@dataclass
class TeacherOutput:
    """What the loss needs from the teacher, whether it ran live or (later) came from a cache.

    Attributes:
        logits (`torch.Tensor` of shape `(B, T, V)` or `(B, C)`): teacher logits, no gradient.
    """

    logits: torch.Tensor


def _model_dtype(model: nn.Module) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def load_teacher(
    name_or_path: str, student: nn.Module, trust_remote_code: bool = False, revision: str | None = None
) -> PreTrainedModel:
    """Load a teacher for `student` by Hub id, local folder or `packaged:` name, in the student's dtype.

    The Auto class is chosen from the student's head (a `...ForCausalLM` student gets `AutoModelForCausalLM`).

    Args:
        name_or_path (`str`): a Hub id, a local folder, or `packaged:<name>` (see `hf_distill.assets`).
        student (`nn.Module`): the student, a transformers model (PEFT-wrapped or not).
        trust_remote_code (`bool`, *optional*, defaults to `False`): let the repository run its own code.
        revision (`str`, *optional*): branch, tag or commit of a Hub teacher. It is resolved to a commit sha first
            and the weights are loaded at that sha, so the lineage names exactly what was loaded.
    """
    head_model = unwrap_peft(student)
    auto_class = next(
        (cls for suffix, cls in _AUTO_CLASS_BY_HEAD.items() if type(head_model).__name__.endswith(suffix)), None
    )
    if auto_class is None:
        raise ValueError(
            f"teacher_model={name_or_path!r} is a name, but the student ({type(head_model).__name__}) has no head "
            f"that maps to an Auto class ({', '.join(_AUTO_CLASS_BY_HEAD)}); load the teacher yourself and pass the "
            "model object as `teacher_model`."
        )
    source = source_of(name_or_path, revision)
    pinned = source["revision"] if is_commit_sha(source.get("revision")) else revision
    path = assets.resolve_packaged_model(name_or_path) if assets.is_packaged(name_or_path) else name_or_path
    adapter = _adapter_config(path, pinned)
    if adapter is None:
        teacher = auto_class.from_pretrained(
            path, dtype=_model_dtype(student), trust_remote_code=trust_remote_code, revision=pinned
        )
        return record_source(teacher, source, path if os.path.isdir(path) else None)
    # An adapter folder or repo: its base, loaded the same way, with the adapter on top.
    if not adapter.base_model_name_or_path:
        raise ValueError(
            f"teacher_model={name_or_path!r} is a PEFT adapter whose adapter_config.json names no base model "
            "(base_model_name_or_path); load base and adapter yourself and pass the PeftModel as teacher_model."
        )
    base = load_teacher(adapter.base_model_name_or_path, student, trust_remote_code, adapter.revision)
    adapted = PeftModel.from_pretrained(base, path, revision=pinned)
    return record_source(adapted, source, path if os.path.isdir(path) else None)


def _adapter_config(path: str, revision: str | None = None) -> PeftConfig | None:
    """The adapter config when `path` (folder or Hub id) holds a PEFT adapter rather than a full model."""
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "adapter_config.json")):
            return None
    elif os.path.exists(path):
        return None
    try:
        return PeftConfig.from_pretrained(path, revision=revision)
    except (OSError, ValueError):
        return None


class SharedBaseTeacher(nn.Module):
    """The student's own base model with its adapters disabled, as the teacher: no second copy of the weights.

    For a LoRA student over the teacher's weights (self-distillation, context distillation, compressing an adapter
    into a smaller rank). The student is held without being registered as a submodule, so this teacher owns no
    parameters: freezing or moving it touches nothing of the student, and `parameters()` is empty.

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
        return f"the student's base model with its adapters disabled ({_short_name(self.config)})"


def freeze(teacher: nn.Module) -> nn.Module:
    """Evaluation mode and no gradients: the teacher can neither be trained nor change between steps (dropout)."""
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def place_teacher(
    teacher: nn.Module,
    device: torch.device,
    placement: Placement,
    accelerator: Any,
    teacher_deepspeed_config: str | dict | None = None,
) -> nn.Module:
    """Put the frozen teacher where `placement` says (see `hf_distill.placement`), or refuse a teacher that the user
    already dispatched elsewhere on purpose or that has no weights."""
    if isinstance(teacher, SharedBaseTeacher):  # it owns no weights: they are the student's
        return teacher
    device_map = getattr(teacher, "hf_device_map", None)
    if device_map:
        devices = {str(d) for d in device_map.values()}
        if devices != {str(device)} and not (devices <= {"cpu"} and device.type == "cpu"):
            raise ValueError(
                f"teacher_model is dispatched over {sorted(devices)} by a device_map, but the student trains on "
                f"{device}. Load the teacher without `device_map` and say where it goes with "
                "`teacher_placement` (e.g. 'cuda:1,cuda:2' for devices of its own)."
            )
    if any(p.is_meta for p in teacher.parameters()):
        raise ValueError(
            "teacher_model has parameters on the 'meta' device (no weights loaded); load the teacher with its "
            "weights, e.g. `from_pretrained(...)` without `device_map='meta'`/`init_empty_weights`."
        )
    return apply_placement(teacher, placement, device, accelerator, teacher_deepspeed_config)


def cast_teacher(teacher: nn.Module, dtype: torch.dtype) -> nn.Module:
    """The teacher's floating-point weights in `dtype` (its forward then runs under the student's autocast)."""
    if isinstance(teacher, SharedBaseTeacher) or _model_dtype(teacher) == dtype:
        return teacher
    return teacher.to(dtype)


def model_logits(outputs: Any, who: str) -> torch.Tensor:
    """`outputs.logits` of a transformers `ModelOutput` or a plain dict, or a clear error."""
    if isinstance(outputs, dict) and outputs.get("logits") is not None:  # ModelOutput is a dict too
        return outputs["logits"]
    found = list(outputs.keys()) if isinstance(outputs, dict) else type(outputs).__name__
    raise ValueError(
        f"The {who}'s forward returned no `logits` (got {found}). Distillation needs a model whose output is a "
        "dict or ModelOutput with a `logits` entry; return `{'logits': ...}` from a custom module."
    )


def accepted_arguments(model: nn.Module) -> frozenset[str] | None:
    """Names `model.forward` declares, or `None` when it declares only `**kwargs` (it takes anything).

    Pass the unwrapped model: a DDP wrapper's `forward(*inputs, **kwargs)` says nothing about the model.
    """
    params = inspect.signature(unwrap_peft(model).forward).parameters
    named = frozenset(k for k, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))
    return named or None


def select_arguments(inputs: dict[str, Any], accepted: frozenset[str] | None) -> dict[str, Any]:
    """The entries of `inputs` a forward accepts, so teacher and student may need different columns."""
    return dict(inputs) if accepted is None else {k: v for k, v in inputs.items() if k in accepted}


def decoder_inputs(model: nn.Module, inputs: dict[str, Any], labels: torch.Tensor | None) -> dict[str, Any]:
    """Encoder-decoder models build `decoder_input_ids` from labels internally; do it here so labels can stay out of
    the forward (the trainer computes its own losses) and both models decode the same targets."""
    if not is_encoder_decoder(model) or labels is None or inputs.get("decoder_input_ids") is not None:
        return inputs
    return {**inputs, "decoder_input_ids": decoder_input_ids_from_labels(model, labels)}


def decoder_input_ids_from_labels(model: nn.Module, labels: torch.Tensor) -> torch.Tensor:
    """The `decoder_input_ids` the model's own forward would build from `labels`.

    Most seq2seq models expose `prepare_decoder_input_ids_from_labels`; some (Blenderbot, BlenderbotSmall, M2M100,
    NLLB-MoE) only shift inside `forward`. For those, the model module's own `shift_tokens_right(labels, pad_token_id,
    decoder_start_token_id)` is used when it has that signature, else the same rule: labels shifted right, the first
    position `config.decoder_start_token_id`, -100 replaced by `config.pad_token_id`.
    """
    inner = unwrap_peft(model)
    prepare = getattr(inner, "prepare_decoder_input_ids_from_labels", None)
    if callable(prepare):
        return prepare(labels=labels)
    config = inner.config
    pad, start = getattr(config, "pad_token_id", None), getattr(config, "decoder_start_token_id", None)
    if start is None or pad is None:
        raise ValueError(
            f"{type(inner).__name__} has no `prepare_decoder_input_ids_from_labels`, and its config lacks "
            f"decoder_start_token_id ({start}) or pad_token_id ({pad}) to build decoder inputs from labels; set "
            "them in the config, or pass `decoder_input_ids` in the batch."
        )
    shift = getattr(sys.modules.get(type(inner).__module__), "shift_tokens_right", None)
    if callable(shift):
        try:
            if len(inspect.signature(shift).parameters) == 3:
                return shift(labels, pad, start)
        except (TypeError, ValueError):
            pass
    shifted = labels.new_zeros(labels.shape)
    shifted[..., 1:] = labels[..., :-1].clone()
    shifted[..., 0] = start
    return shifted.masked_fill(shifted == -100, pad)


@torch.no_grad()
def run_teacher(
    teacher: nn.Module,
    inputs: dict[str, Any],
    labels: torch.Tensor | None = None,
    device: torch.device | None = None,
    own_outputs: Any = None,
) -> TeacherOutput:
    """One frozen teacher forward on the student's batch.

    Args:
        teacher (`nn.Module`): the frozen teacher.
        inputs (`dict`): the batch without labels, on the student's device.
        labels (`torch.Tensor`, *optional*): only used to build decoder inputs for encoder-decoder teachers.
        device (`torch.device`, *optional*): the teacher's own device when it is not the student's; its inputs go
            there and its logits come back to the student's device.
        own_outputs (*optional*): the teacher's outputs on this very batch, when the model being evaluated is the
            teacher itself (`compare_with_teacher`): used as they are, not computed a second time.
    """
    if own_outputs is not None:
        return TeacherOutput(logits=model_logits(own_outputs, "teacher").detach())
    if teacher.training:  # something called .train() on it; dropout in the teacher would make the targets noisy
        teacher.eval()
    teacher_inputs = select_arguments(decoder_inputs(teacher, inputs, labels), accepted_arguments(teacher))
    home = next((v.device for v in teacher_inputs.values() if torch.is_tensor(v)), None)
    if device is not None:
        teacher_inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in teacher_inputs.items()}
    logits = apply_permutation(teacher, model_logits(teacher(**teacher_inputs), "teacher").detach())
    return TeacherOutput(logits=logits if home is None else logits.to(home))


def _short_name(config: Any) -> str:
    name = getattr(config, "_name_or_path", "") or ""
    if os.path.isabs(name):
        name = os.path.basename(name.rstrip("/"))  # keep local paths out of logs that may be shared
    return name


def describe_teacher(teacher: nn.Module) -> str:
    """Short description for logs: name and parameter count."""
    if callable(getattr(teacher, "describe", None)):  # the shared base, a teacher cache
        return teacher.describe()
    name = _short_name(getattr(unwrap_peft(teacher), "config", None)) or type(teacher).__name__
    if is_peft_model(teacher):
        name += " with a PEFT adapter"
    return f"{name} ({sum(p.numel() for p in teacher.parameters()) / 1e6:.2f}M parameters)"
