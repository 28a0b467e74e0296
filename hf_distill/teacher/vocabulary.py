"""Do teacher and student read (and, for language models, predict over) one vocabulary? Loading the teacher's
tokenizer, comparing it with the student's for every task, and saying so when that cannot be done."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from torch import nn
from transformers import AutoTokenizer

from .. import _packaged as assets
from .._logging import get_logger
from ..modeling.heads import unwrap_peft

logger = get_logger(__name__)


_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spm.model",
)


def try_load_teacher_tokenizer(
    name_or_path: str, trust_remote_code: bool = False, revision: str | None = None
) -> tuple[Any | None, str | None]:
    """`(tokenizer, None)`, or `(None, why)` when the teacher's tokenizer cannot be loaded from where its weights
    are: no tokenizer files in the folder, custom code not trusted (`teacher_trust_remote_code`), or the loader's own
    error (first line). `why` goes into the warning or refusal that replaces the tokenizer check."""
    path = assets.resolve_packaged_model(name_or_path) if assets.is_packaged(name_or_path) else name_or_path
    if os.path.isdir(path) and not any(os.path.isfile(os.path.join(path, f)) for f in _TOKENIZER_FILES):
        return None, f"{name_or_path!r} has no tokenizer files ({', '.join(_TOKENIZER_FILES[:2])}, ...)"
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, revision=revision), None
    except Exception as error:  # noqa: BLE001 - whatever the loader raises, the check must say it was skipped
        first_line = (str(error).strip().splitlines() or [""])[0]
        hint = "" if trust_remote_code else " (if it needs its own code, set teacher_trust_remote_code=True)"
        return None, f"loading it from {name_or_path!r} failed with {type(error).__name__}: {first_line}{hint}"


def output_vocab_size(model: nn.Module) -> int | None:
    """Rows of the model's output projection (its logits' last dimension), or `None` for models without one."""
    model = unwrap_peft(model)
    get_output = getattr(model, "get_output_embeddings", None)
    head = get_output() if callable(get_output) else None
    if head is not None and getattr(head, "weight", None) is not None:
        return head.weight.shape[0]
    return None


def _first_difference(student_tokenizer: Any, teacher_tokenizer: Any) -> str | None:
    student_vocab = {i: t for t, i in student_tokenizer.get_vocab().items()}
    teacher_vocab = {i: t for t, i in teacher_tokenizer.get_vocab().items()}
    for token_id in sorted(set(student_vocab) | set(teacher_vocab)):
        s, t = student_vocab.get(token_id), teacher_vocab.get(token_id)
        if s != t:
            return f"token id {token_id} is {s!r} for the student but {t!r} for the teacher"
    return None


def input_vocab_size(model: nn.Module) -> int | None:
    """Rows of the model's input token embedding, or `None` for models that do not read token ids."""
    get_input = getattr(unwrap_peft(model), "get_input_embeddings", None)
    try:
        embedding = get_input() if callable(get_input) else None
    except (NotImplementedError, AttributeError):
        return None
    return embedding.weight.shape[0] if isinstance(embedding, nn.Embedding) else None


def _text_tokenizer(tokenizer: Any) -> Any | None:
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor holds one
    return tokenizer if callable(getattr(tokenizer, "get_vocab", None)) else None


@dataclass
class VocabularyCheck:
    """What `check_vocabulary` found.

    Attributes:
        shared_vocab (`int`, *optional*): leading logit entries to compare when the heads are padded differently.
        tokenizer_checked (`bool`, *optional*): whether both tokenizers were compared; `None` for models that read
            no token ids (images, audio, plain modules).
    """

    shared_vocab: int | None
    tokenizer_checked: bool | None


def check_vocabulary(
    student: nn.Module,
    teacher: nn.Module,
    student_tokenizer: Any | None = None,
    teacher_tokenizer: Any | None = None,
    teacher_tokenizer_error: str | None = None,
) -> VocabularyCheck:
    """Check that teacher and student read (and, for LMs, predict over) the same vocabulary, for every task.

    Both tokenizers given: they must map every id to the same token, whatever the heads (causal LM, seq2seq,
    sequence or token classification), else refused naming the first token that differs. Same-family LMs often pad
    their embedding matrices differently (Qwen2.5-0.5B: 151936 rows, 7B: 152064) while sharing one tokenizer: the
    divergence is then taken over the shared leading entries.

    Without both tokenizers the check cannot run: vocabularies of different sizes (output rows for LMs, input
    embedding rows otherwise) are refused; equal sizes go ahead with a warning when the teacher's tokenizer could not
    be loaded (`teacher_tokenizer_error` says why), an info line when none was given.

    Returns:
        `VocabularyCheck`: `shared_vocab` is `None` when the logits already match (or there is no output
        vocabulary, e.g. classifiers), else the number of leading logit entries to compare.
    """
    student_size, teacher_size = output_vocab_size(student), output_vocab_size(teacher)
    language_model = student_size is not None and teacher_size is not None
    shared = None if not language_model or student_size == teacher_size else min(student_size, teacher_size)
    student_tokenizer, teacher_tokenizer = _text_tokenizer(student_tokenizer), _text_tokenizer(teacher_tokenizer)
    if student_tokenizer is not None and teacher_tokenizer is not None:
        difference = _first_difference(student_tokenizer, teacher_tokenizer)
        if difference is not None:
            raise ValueError(
                f"The teacher's and the student's tokenizers differ: {difference}. Distillation feeds both models "
                "the same token ids, so they need one tokenizer: pick a teacher and student of the same tokenizer "
                "family, or (causal LMs) set cross_tokenizer='auto' in DistillationConfig to distil through an "
                "alignment of the two tokenizations of the same text."
            )
        used = len(student_tokenizer)
        if language_model and used > min(student_size, teacher_size):
            raise ValueError(
                f"The tokenizer has {used} tokens but the student's head has {student_size} rows and the teacher's "
                f"{teacher_size}; resize the smaller model's embeddings to at least {used}."
            )
        return VocabularyCheck(shared, True)
    if not language_model:
        student_size, teacher_size = input_vocab_size(student), input_vocab_size(teacher)
        if student_size is None or teacher_size is None:  # no token ids (images, audio, plain modules)
            return VocabularyCheck(None, None)
    missing = "the student's tokenizer (`processing_class`)" if student_tokenizer is None else None
    if teacher_tokenizer is None:
        teacher_missing = "the teacher's tokenizer (`teacher_processing_class`)"
        missing = teacher_missing if missing is None else f"{missing} and {teacher_missing}"
    why = (
        f" The teacher's tokenizer could not be loaded: {teacher_tokenizer_error}." if teacher_tokenizer_error else ""
    )
    verb = "predicts over" if language_model else "reads token ids over"
    if student_size != teacher_size:
        raise ValueError(
            f"The student {verb} {student_size} tokens and the teacher over {teacher_size}, and without "
            f"{missing} it cannot be checked that they share one tokenizer.{why} Pass the student's tokenizer as "
            "`processing_class` and the teacher's as `teacher_processing_class` (and, for causal LMs whose "
            "tokenizers differ, set cross_tokenizer='auto' in DistillationConfig)."
        )
    message = (
        f"The tokenizer check was skipped: without {missing} it cannot be verified that teacher and student "
        f"tokenize alike (their vocabularies both have {student_size} entries).{why} Pass "
        "`teacher_processing_class=` to check it; the lineage records tokenizer_checked: false."
    )
    if teacher_tokenizer_error:
        logger.warning(message)
    else:
        logger.info(message)
    return VocabularyCheck(shared, False)
