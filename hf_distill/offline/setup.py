"""A teacher cache in the teacher's place: opened, verified and checked against this run (tokenizer, temperature,
vocabulary, the teacher it claims to be); nothing is loaded."""

from __future__ import annotations

from typing import Any

from torch import nn

from .._logging import get_logger
from ..config import cross_tokenizer_method, distillation_setting
from ..provenance import source_of
from ..teacher.vocabulary import output_vocab_size
from .cache import TeacherCache, check_cache, load_teacher_cache, tokenizer_sha256
from .teacher import CachedTeacher

logger = get_logger(__name__)


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
    if cache.info.fingerprint.teacher_tokenized:
        return setup_teacher_tokenized_cache(cache, student, args, tokenizer)
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


def setup_teacher_tokenized_cache(cache: TeacherCache, student: nn.Module, args: Any, tokenizer: Any) -> CachedTeacher:
    """A cache of the teacher's own tokens for a student of any tokenizer (`cross_tokenizer` must be set).

    Raises:
        `ValueError`: with `cross_tokenizer` unset (naming it), without the student's tokenizer, for a student that is
            not a causal LM, or a cache made by another teacher / at another temperature (as `check_cache`).
    """
    from ..cross_tokenizer.alignment import TokenAligner
    from ..cross_tokenizer.vocabulary import SharedVocabulary
    from ..modeling.heads import shifts_labels
    from .cross_tokenizer import CrossTokenizerCachedTeacher, load_teacher_tokenizer

    fingerprint = cache.info.fingerprint
    where = f"teacher cache {cache.name['name']}"
    method = cross_tokenizer_method(args)
    if method is None:
        raise ValueError(
            f"{where} stores the teacher's own tokens (teacher_tokenizer_hash {fingerprint.teacher_tokenizer_hash}): "
            "set cross_tokenizer ('auto', 'exact', 'chunk' or 'uld') to distil a student through it."
        )
    if tokenizer is None:
        raise ValueError(
            f"cross_tokenizer={distillation_setting(args, 'cross_tokenizer')!r} with {where} needs the student's "
            "tokenizer to tokenize the cache's text: pass it as `processing_class=`."
        )
    if not shifts_labels(student):
        raise ValueError(
            f"{where} holds a causal LM teacher's next-token distributions; the student is a "
            f"{type(student).__name__}. Distil a causal language model from it."
        )
    expected = distillation_setting(args, "teacher_model_name_or_path")
    check_cache(
        cache,
        temperature=distillation_setting(args, "kd_temperature"),
        teacher_source=None
        if expected is None
        else source_of(expected, distillation_setting(args, "teacher_revision")),
    )
    teacher_tokenizer = load_teacher_tokenizer(cache)
    vocabulary = SharedVocabulary.build(
        tokenizer, teacher_tokenizer, output_vocab_size(student), fingerprint.vocab_size
    )
    tail = distillation_setting(args, "teacher_cache_tail")
    if tail == "bucket" and not vocabulary.has_rest and fingerprint.k < fingerprint.vocab_size:
        logger.warning(
            f"{where}: the two vocabularies share every token, so there is no rest bucket for the mass outside the "
            f"cached top-{fingerprint.k}: the teacher's top-k is renormalised over the shared buckets instead."
        )
    logger.info(f"cross-tokenizer distillation ({method}) from {where}: {vocabulary.describe()}")
    return CrossTokenizerCachedTeacher(
        cache, method=method, aligner=TokenAligner(tokenizer, teacher_tokenizer), vocabulary=vocabulary, tail=tail
    )
