"""From what the user passed as `teacher_model` to a frozen teacher in its place: resolve it (object, name, adapter
folder or the student's own base), check its vocabulary against the student's, cast it, and place it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .adapters import SHARED_BASE_TEACHER, is_peft_model
from .config import distillation_setting
from .label_mapping import PERMUTATION_ATTRIBUTE, label_permutation
from .placement import Placement, resolve_placement, teacher_device
from .provenance import checked_model_source, is_commit_sha, model_source, source_of
from .teacher import (
    TOKENIZER_CHECKED_ATTRIBUTE,
    SharedBaseTeacher,
    cast_teacher,
    freeze,
    load_teacher,
    place_teacher,
)
from .teacher_cache import CachedTeacher, check_cache, load_teacher_cache, tokenizer_sha256
from .vocabulary import check_vocabulary, output_vocab_size, try_load_teacher_tokenizer


@dataclass
class TeacherSetup:
    """The placed teacher and what the trainer needs to know about it.

    Attributes:
        model (`nn.Module`): the frozen teacher, placed.
        shared_vocab (`int`, *optional*): leading logit entries to compare when the heads are padded differently.
        placement (`Placement`): where it lives.
        device (`torch.device`, *optional*): its own device when it is not the student's (inputs go there).
    """

    model: nn.Module
    shared_vocab: int | None
    placement: Placement
    device: torch.device | None


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


def _cached_setup(
    teacher: CachedTeacher | None, cache: str | None, student: nn.Module, args: Any, tokenizer: Any
) -> TeacherSetup:
    """A cache stands in for the teacher: opened, verified and checked against this run; nothing is loaded."""
    teacher = teacher or CachedTeacher(load_teacher_cache(cache))
    expected = distillation_setting(args, "teacher_model_name_or_path")
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    check_cache(
        teacher.cache,
        tokenizer=tokenizer,
        temperature=distillation_setting(args, "kd_temperature"),
        vocab_size=output_vocab_size(student),
        teacher_source=None
        if expected is None
        else source_of(expected, distillation_setting(args, "teacher_revision")),
    )
    # check_cache compared the cache's tokenizer fingerprint with the student's tokenizer when both exist
    checked = tokenizer_sha256(tokenizer) is not None and teacher.cache.info.fingerprint.tokenizer_sha256 is not None
    object.__setattr__(teacher, TOKENIZER_CHECKED_ATTRIBUTE, checked)
    return TeacherSetup(teacher, None, Placement("cache"), None)


def setup_teacher(
    teacher: nn.Module | str | None,
    student: nn.Module,
    args: Any,
    accelerator: Any,
    student_tokenizer: Any | None = None,
    teacher_tokenizer: Any | None = None,
) -> TeacherSetup:
    """Resolve, check, freeze, cast and place the teacher for `student` (see `DistillationTrainer`)."""
    cache = distillation_setting(args, "teacher_cache")
    if isinstance(teacher, CachedTeacher) or (teacher is None and cache is not None):
        return _cached_setup(teacher, cache, student, args, student_tokenizer)
    teacher = teacher if teacher is not None else distillation_setting(args, "teacher_model_name_or_path")
    if teacher is None:
        raise ValueError(
            "No teacher: pass `teacher_model=` (a model or a Hub id/local path) to DistillationTrainer, or set "
            "`teacher_model_name_or_path` in DistillationConfig."
        )
    if teacher == SHARED_BASE_TEACHER:
        teacher = SharedBaseTeacher(student)
        teacher_tokenizer = teacher_tokenizer or student_tokenizer
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
    if not isinstance(teacher, SharedBaseTeacher) and not is_peft_model(teacher):
        checked_model_source(teacher)  # as handed over, before the cast: still the checkpoint its config names?
    vocabulary = check_vocabulary(student, teacher, student_tokenizer, teacher_tokenizer, tokenizer_error)
    permutation = label_permutation(student, teacher)
    placement = resolve_placement(distillation_setting(args, "teacher_placement"), accelerator)
    teacher = cast_teacher(freeze(teacher), teacher_compute_dtype(args, student))
    teacher = place_teacher(
        teacher, args.device, placement, accelerator, distillation_setting(args, "teacher_deepspeed_config")
    )
    object.__setattr__(teacher, TOKENIZER_CHECKED_ATTRIBUTE, vocabulary.tokenizer_checked)
    object.__setattr__(teacher, PERMUTATION_ATTRIBUTE, permutation)  # `run_teacher` applies it
    own_device = teacher_device(placement, args.device)
    return TeacherSetup(
        teacher,
        vocabulary.shared_vocab,
        placement,
        None if own_device == args.device else own_device,
    )
