"""From what the user passed as `teacher_model` to a `Teacher` in its place: resolve it (object, name, adapter folder
or the student's own base), check its vocabulary and label order against the student's, cast it, and place it."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..config import distillation_setting
from ..modeling.adapters import SHARED_BASE_TEACHER, is_peft_model
from ..provenance import checked_model_source, is_commit_sha, model_source
from .labels import label_permutation
from .live import LiveTeacher
from .loading import load_teacher
from .model import cast_teacher, freeze, place_teacher
from .placement import Placement, resolve_placement, teacher_device
from .shared_base import SharedBaseModel, SharedBaseTeacher
from .vocabulary import VocabularyCheck, check_vocabulary, try_load_teacher_tokenizer


def teacher_compute_dtype(args: Any, student: nn.Module) -> torch.dtype:
    """`teacher_dtype` when set, else the student's compute dtype (bf16/fp16 under mixed precision)."""
    name = distillation_setting(args, "teacher_dtype")
    if name:
        return getattr(torch, name)
    if getattr(args, "bf16", False):
        return torch.bfloat16
    if getattr(args, "fp16", False):
        return torch.float16
    return next((p.dtype for p in student.parameters() if p.is_floating_point()), torch.float32)


def setup_teacher(
    teacher: nn.Module | str | None,
    student: nn.Module,
    args: Any,
    accelerator: Any,
    student_tokenizer: Any | None = None,
    teacher_tokenizer: Any | None = None,
) -> LiveTeacher:
    """Resolve, check, freeze, cast and place the teacher for `student` (see `DistillationTrainer`)."""
    teacher = _named_teacher(teacher, args)
    if teacher == SHARED_BASE_TEACHER:  # the student's weights: nothing to load, cast or place
        shared = SharedBaseModel(student)
        vocabulary = check_vocabulary(student, shared, student_tokenizer, teacher_tokenizer or student_tokenizer, None)
        placement, own_device = _placement(args, accelerator)
        return SharedBaseTeacher(
            freeze(shared),
            placement,
            device=own_device,
            shared_vocab=vocabulary.shared_vocab,
            tokenizer_checked=vocabulary.tokenizer_checked,
        )
    teacher, teacher_tokenizer, tokenizer_error = resolve_teacher(teacher, student, args, teacher_tokenizer)
    vocabulary = check_vocabulary(student, teacher, student_tokenizer, teacher_tokenizer, tokenizer_error)
    return place_live_teacher(teacher, student, args, accelerator, vocabulary)


def _named_teacher(teacher: nn.Module | str | None, args: Any) -> nn.Module | str:
    teacher = teacher if teacher is not None else distillation_setting(args, "teacher_model_name_or_path")
    if teacher is None:
        raise ValueError(
            "No teacher: pass `teacher_model=` (a model or a Hub id/local path) to DistillationTrainer, or set "
            "`teacher_model_name_or_path` in DistillationConfig."
        )
    return teacher


def resolve_teacher(
    teacher: nn.Module | str | None, student: nn.Module, args: Any, teacher_tokenizer: Any | None = None
) -> tuple[nn.Module, Any | None, str | None]:
    """`(model, tokenizer, why the tokenizer is missing)`: the teacher as a module (loaded when given by name, with its
    tokenizer from the same commit unless one was passed), checked to be a separate model whose source still holds."""
    teacher = _named_teacher(teacher, args)
    tokenizer_error = None
    if isinstance(teacher, str):
        trust_remote_code = distillation_setting(args, "teacher_trust_remote_code")
        revision = distillation_setting(args, "teacher_revision")
        name, teacher = teacher, load_teacher(teacher, student, trust_remote_code, revision)
        if teacher_tokenizer is None:  # from the same commit as the weights
            pinned = model_source(teacher).get("revision")
            teacher_tokenizer, tokenizer_error = try_load_teacher_tokenizer(
                name, trust_remote_code, pinned if is_commit_sha(pinned) else revision
            )
    if not isinstance(teacher, nn.Module):
        raise TypeError(f"teacher_model must be an nn.Module or a name/path, got {type(teacher).__name__}.")
    if teacher is student:
        raise ValueError("teacher_model is the student itself; pass a separate (frozen) teacher model.")
    if not is_peft_model(teacher):
        checked_model_source(teacher)  # as handed over, before the cast: still the checkpoint its config names?
    return teacher, teacher_tokenizer, tokenizer_error


def place_live_teacher(
    teacher: nn.Module, student: nn.Module, args: Any, accelerator: Any, vocabulary: VocabularyCheck
) -> LiveTeacher:
    """Freeze, cast and place a resolved teacher whose vocabulary was checked against the student's."""
    permutation = label_permutation(student, teacher)
    placement, own_device = _placement(args, accelerator)
    teacher = cast_teacher(freeze(teacher), teacher_compute_dtype(args, student))
    teacher = place_teacher(
        teacher, args.device, placement, accelerator, distillation_setting(args, "teacher_deepspeed_config")
    )
    return LiveTeacher(
        teacher,
        placement,
        device=own_device,
        shared_vocab=vocabulary.shared_vocab,
        tokenizer_checked=vocabulary.tokenizer_checked,
        label_permutation=permutation,
    )


def _placement(args: Any, accelerator: Any) -> tuple[Placement, torch.device | None]:
    """The resolved `teacher_placement`, and the teacher's own device when it is not the student's."""
    placement = resolve_placement(distillation_setting(args, "teacher_placement"), accelerator)
    own_device = teacher_device(placement, args.device)
    return placement, None if own_device == args.device else own_device
