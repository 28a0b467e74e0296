"""From `teacher_model` and `cross_tokenizer` to a `CrossTokenizerTeacher`: both tokenizers required, both models causal
LMs, the shared vocabulary mapped once."""

from __future__ import annotations

from typing import Any

from torch import nn

from .._logging import get_logger
from ..config import distillation_setting
from ..modeling.adapters import SHARED_BASE_TEACHER
from ..modeling.heads import shifts_labels
from ..teacher.setup import place_live_teacher, resolve_teacher
from ..teacher.vocabulary import VocabularyCheck, check_vocabulary, output_vocab_size
from .alignment import TokenAligner
from .teacher import CrossTokenizerTeacher
from .vocabulary import SharedVocabulary, token_bytes, tokenizer_hash

logger = get_logger(__name__)


def _text_tokenizer(tokenizer: Any) -> Any:
    return getattr(tokenizer, "tokenizer", tokenizer)  # a processor holds one


def setup_cross_tokenizer_teacher(
    teacher: nn.Module | str | None,
    student: nn.Module,
    args: Any,
    accelerator: Any,
    method: str,
    temperature: float,
    student_tokenizer: Any | None = None,
    teacher_tokenizer: Any | None = None,
) -> Any:
    """The teacher for `cross_tokenizer=method`; a teacher whose tokenizer turns out to be the student's own is placed
    as a plain `LiveTeacher` (the same-tokenizer path is exact and cheaper), with a warning.

    Raises:
        `ValueError`: without either tokenizer (naming the argument to pass), for `teacher_model="base"`, or for models
            that are not causal language models.
    """
    if teacher == SHARED_BASE_TEACHER:
        raise ValueError(
            "cross_tokenizer is set but teacher_model='base' is the student's own base model, which shares its "
            "tokenizer; leave cross_tokenizer unset."
        )
    if student_tokenizer is None:
        raise ValueError(
            f"cross_tokenizer={distillation_setting(args, 'cross_tokenizer')!r} needs the student's tokenizer to turn "
            "its token ids back into text: pass it as `processing_class=`."
        )
    module, teacher_tokenizer, why = resolve_teacher(teacher, student, args, teacher_tokenizer)
    if teacher_tokenizer is None:
        reason = f" ({why})" if why else ""
        raise ValueError(
            f"cross_tokenizer={distillation_setting(args, 'cross_tokenizer')!r} needs the teacher's tokenizer to "
            f"tokenize the text for it, and none was found{reason}: pass it as `teacher_processing_class=`."
        )
    student_tokenizer, teacher_tokenizer = _text_tokenizer(student_tokenizer), _text_tokenizer(teacher_tokenizer)
    if tokenizer_hash(student_tokenizer) == tokenizer_hash(teacher_tokenizer):
        logger.warning(
            "cross_tokenizer is set but teacher and student share one tokenizer: distilling without an alignment "
            "(the same-tokenizer path). Leave cross_tokenizer unset to silence this."
        )
        vocabulary = check_vocabulary(student, module, student_tokenizer, teacher_tokenizer)
        return place_live_teacher(module, student, args, accelerator, vocabulary)
    for role, model in (("student", student), ("teacher", module)):
        if not shifts_labels(model):
            raise ValueError(
                f"cross_tokenizer distils causal language models (next-token prediction over a vocabulary); the "
                f"{role} is a {type(model).__name__}. Leave cross_tokenizer unset for other tasks."
            )
    for role, model, tokenizer, argument in (
        ("student", student, student_tokenizer, "processing_class"),
        ("teacher", module, teacher_tokenizer, "teacher_processing_class"),
    ):
        rows = output_vocab_size(model)
        if rows is not None and len(tokenizer) > rows:
            raise ValueError(
                f"The {role}'s tokenizer has {len(tokenizer)} tokens but the {role}'s head has {rows} rows: is "
                f"`{argument}` the {role}'s own tokenizer? (Resize the model's embeddings if tokens were added.)"
            )
        try:
            token_bytes(tokenizer)
        except ValueError as error:  # say whose tokenizer cannot be read as bytes
            raise ValueError(f"The {role}'s tokenizer (`{argument}`): {error}") from error
    vocabulary = SharedVocabulary.build(
        student_tokenizer, teacher_tokenizer, output_vocab_size(student), output_vocab_size(module)
    )
    aligner = TokenAligner(student_tokenizer, teacher_tokenizer)
    logger.info(f"cross-tokenizer distillation ({method}): {vocabulary.describe()}")
    live = place_live_teacher(module, student, args, accelerator, VocabularyCheck(None, None))
    return CrossTokenizerTeacher(
        live.model,
        live.placement,
        method=method,
        aligner=aligner,
        vocabulary=vocabulary,
        temperature=temperature,
        device=live.device,
    )
