"""What is done to a teacher model: freezing, casting, placing it beside the student, running it on the student's
batch, and describing it. Its output leaves this module as plain data (`TeacherOutput`); the kinds of teacher the
trainer calls are in `hf_distill.teacher.live` and `hf_distill.teacher.shared_base`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..modeling.adapters import is_peft_model
from ..modeling.forward import accepted_arguments, decoder_inputs, model_logits, select_arguments
from ..modeling.heads import unwrap_peft
from .loading import model_dtype
from .placement import Placement, apply_placement


@dataclass
class TeacherOutput:
    """What the loss needs from the teacher, whether it ran live or (later) came from a cache.

    Attributes:
        logits (`torch.Tensor` of shape `(B, T, V)` or `(B, C)`): teacher logits, no gradient.
    """

    logits: torch.Tensor


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
    """Put the frozen teacher where `placement` says (see `hf_distill.teacher.placement`), or refuse a teacher that the user
    already dispatched elsewhere on purpose or that has no weights."""
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
    if model_dtype(teacher) == dtype:
        return teacher
    return teacher.to(dtype)


@torch.no_grad()
def teacher_forward(
    teacher: nn.Module, inputs: dict[str, Any], labels: torch.Tensor | None = None, device: torch.device | None = None
) -> Any:
    """One frozen teacher forward on the student's batch; its outputs as the model returns them (on its own device).

    Args:
        teacher (`nn.Module`): the frozen teacher.
        inputs (`dict`): the batch without labels, on the student's device.
        labels (`torch.Tensor`, *optional*): only used to build decoder inputs for encoder-decoder teachers.
        device (`torch.device`, *optional*): the teacher's own device when it is not the student's; its inputs go there.
    """
    if teacher.training:  # something called .train() on it; dropout in the teacher would make the targets noisy
        teacher.eval()
    teacher_inputs = select_arguments(decoder_inputs(teacher, inputs, labels), accepted_arguments(teacher))
    if device is not None:
        teacher_inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in teacher_inputs.items()}
    return teacher(**teacher_inputs)


@torch.no_grad()
def run_teacher(
    teacher: nn.Module,
    inputs: dict[str, Any],
    labels: torch.Tensor | None = None,
    device: torch.device | None = None,
) -> TeacherOutput:
    """`teacher_forward`, reduced to its logits `(B, T, V)` / `(B, C)`, detached and back on the inputs' device."""
    home = next((v.device for v in inputs.values() if torch.is_tensor(v)), None)
    logits = model_logits(teacher_forward(teacher, inputs, labels, device), "teacher").detach()
    return TeacherOutput(logits=logits if home is None else logits.to(home))


def short_name(config: Any) -> str:
    """The model's name from its config, a local path reduced to its folder name (kept out of shared logs)."""
    name = getattr(config, "_name_or_path", "") or ""
    if os.path.isabs(name):
        name = os.path.basename(name.rstrip("/"))  # keep local paths out of logs that may be shared
    return name


def describe_teacher(teacher: nn.Module) -> str:
    """Short description for logs: name and parameter count."""
    name = short_name(getattr(unwrap_peft(teacher), "config", None)) or type(teacher).__name__
    if is_peft_model(teacher):
        name += " with a PEFT adapter"
    return f"{name} ({sum(p.numel() for p in teacher.parameters()) / 1e6:.2f}M parameters)"
