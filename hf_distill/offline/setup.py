"""A teacher cache in the teacher's place: opened, verified and checked against this run (tokenizer, temperature,
vocabulary, the teacher it claims to be); nothing is loaded."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..config import distillation_setting
from ..provenance import source_of
from ..teacher.vocabulary import output_vocab_size
from .cache import TeacherCache, check_cache, load_teacher_cache, tokenizer_sha256
from .teacher import CachedTeacher


def uses_cache(teacher: Any, teacher_cache: Any, args: Any) -> bool:
    """Whether this run trains from a teacher cache: one given (`teacher_cache=`, or a `CachedTeacher` as the
    teacher), or `teacher_cache` set in the arguments and no teacher given."""
    return (
        teacher_cache is not None
        or isinstance(teacher, CachedTeacher)
        or (teacher is None and distillation_setting(args, "teacher_cache") is not None)
    )


def setup_cached_teacher(
    teacher: CachedTeacher | None,
    teacher_cache: str | TeacherCache | None,
    student: nn.Module,
    args: Any,
    tokenizer: Any,
) -> CachedTeacher:
    """A cache stands in for the teacher: opened, verified and checked against this run; nothing is loaded.

    Args:
        teacher (`CachedTeacher`, *optional*): a cache teacher given as `teacher_model`.
        teacher_cache (`str` or `TeacherCache`, *optional*): a cache folder, Hub dataset id or opened cache; defaults
            to `args.teacher_cache`.
    """
    if teacher_cache is not None and teacher is not None:
        raise ValueError("Pass teacher_model or teacher_cache, not both: a cache stands in for the teacher.")
    if teacher is not None:
        cache = teacher.cache
    else:
        given = teacher_cache if teacher_cache is not None else distillation_setting(args, "teacher_cache")
        cache = given if isinstance(given, TeacherCache) else load_teacher_cache(given)
    expected = distillation_setting(args, "teacher_model_name_or_path")
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    check_cache(
        cache,
        tokenizer=tokenizer,
        temperature=distillation_setting(args, "kd_temperature"),
        vocab_size=output_vocab_size(student),
        teacher_source=None
        if expected is None
        else source_of(expected, distillation_setting(args, "teacher_revision")),
    )
    # check_cache compared the cache's tokenizer fingerprint with the student's tokenizer when both exist
    checked = tokenizer_sha256(tokenizer) is not None and cache.info.fingerprint.tokenizer_sha256 is not None
    return CachedTeacher(cache, distillation_setting(args, "teacher_cache_tail"), tokenizer_checked=checked)
