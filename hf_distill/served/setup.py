"""A served teacher in the teacher's place: the spec read, the server asked what it serves, its tokenization checked
against the student's, and the request settings checked; nothing is loaded."""

from __future__ import annotations

from typing import Any

from torch import nn

from .._logging import get_logger
from ..config import distillation_setting
from ..modeling.heads import shifts_labels
from ..teacher.vocabulary import output_vocab_size
from .client import ServedClient
from .endpoint import ServedEndpoint, ServedSettings, is_served_spec
from .providers import provider_for
from .teacher import ServedTeacher

logger = get_logger(__name__)

# Scored once at setup: words, digits, punctuation, accents and an emoji, so that a different vocabulary or
# pre-tokenizer shows in the ids.
PROBE_TEXT = "Distillation check: The quick brown fox jumps over 13 lazy dogs; naïve café, 3.14159 — ok? 🚀"


def probe_text(tokenizer: Any) -> str:
    """`PROBE_TEXT` and the text of 64 tokens spread over the student's vocabulary: a tokenizer that maps the same
    text to other ids (another vocabulary, or the same words in another order) shows in the ids."""
    size = len(tokenizer)
    spread = list(range(0, size, max(size // 64, 1)))[:64]
    return PROBE_TEXT + " " + tokenizer.decode(spread, skip_special_tokens=True)


def served_spec(teacher: Any, args: Any) -> str | None:
    """The `openai-compatible:` spec of this run's teacher (given as `teacher_model=` or in
    `teacher_model_name_or_path`), or `None` when the teacher is not served."""
    if teacher is None:
        teacher = distillation_setting(args, "teacher_model_name_or_path")
    return teacher if is_served_spec(teacher) else None


def served_settings(args: Any) -> ServedSettings:
    """The request settings from `DistillationConfig`'s `teacher_*` fields (defaults for plain `TrainingArguments`)."""
    return ServedSettings(
        k=distillation_setting(args, "teacher_top_k"),
        concurrency=distillation_setting(args, "teacher_request_concurrency"),
        timeout=distillation_setting(args, "teacher_request_timeout"),
        retries=distillation_setting(args, "teacher_request_retries"),
        prefetch=distillation_setting(args, "teacher_prefetch"),
        api_key_env=distillation_setting(args, "teacher_api_key_env"),
        provider=distillation_setting(args, "teacher_provider"),
        license=distillation_setting(args, "teacher_license"),
    )


def connect(
    spec: str, settings: ServedSettings, vocab_size: int | None = None
) -> tuple[ServedEndpoint, ServedClient, dict]:
    """Parse the spec, make the client, and ask the server for the model (`GET /v1/models`).

    Returns:
        `(endpoint, client, model_entry)`.

    Raises:
        `ValueError`: a malformed spec; `ServedTeacherError`: no server answering, or a server that does not serve
            the model (the message lists what it serves).
    """
    endpoint = ServedEndpoint.parse(spec)
    client = ServedClient(
        endpoint.base_url,
        endpoint.model,
        api_key=settings.api_key(),
        timeout=settings.timeout,
        max_retries=settings.retries,
        vocab_size=vocab_size,
    )
    return endpoint, client, client.models()


def check_tokenization(client: ServedClient, endpoint: ServedEndpoint, tokenizer: Any) -> bool:
    """Score `probe_text` on the server and compare the token ids it echoes with the student tokenizer's.

    Returns:
        `True` when compared (and equal); `False` when there is no student tokenizer to compare with (then a warning:
        nothing guarantees the ids mean the same tokens on both sides).

    Raises:
        `ValueError`: the server tokenizes differently, naming the first differing position and both tokens, and
            the way on (`cross_tokenizer` with a teacher-tokenized cache filled from the server).
    """
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor holds one
    if tokenizer is None:
        logger.warning(
            f"No student tokenizer (processing_class) to compare {endpoint.model}'s tokenization with: the served "
            "teacher's token ids are taken to mean the student's. Pass processing_class= to check it."
        )
        return False
    probe = probe_text(tokenizer)
    served = client.probe(probe)
    ours = list(tokenizer(probe)["input_ids"])
    if served == ours:
        return True
    first = next((i for i, (a, b) in enumerate(zip(served, ours)) if a != b), min(len(served), len(ours)))

    def token(ids: list[int]) -> str:
        return repr(tokenizer.convert_ids_to_tokens(ids[first])) if first < len(ids) else "(end)"

    raise ValueError(
        f"The server's tokenizer for {endpoint.model} differs from the student's: scoring {probe[:80]!r}... it "
        "returned "
        f"{len(served)} token ids, the student's tokenizer makes {len(ours)}; they first differ at position {first} "
        f"(server id {served[first] if first < len(served) else '(end)'}, student {token(ours)}). Its scores would "
        "be trained on the wrong tokens. Serve the student's tokenizer's model family, or, for a teacher of another "
        "tokenizer, fill a teacher-tokenized cache from the server (`hf-distill cache-teacher` with "
        "`cache.teacher_tokenized: true` and the teacher's tokenizer) and train from it with cross_tokenizer='auto'."
    )


def connect_teacher(
    spec: str, settings: ServedSettings, tokenizer: Any, vocab_size: int, temperature: float = 1.0
) -> ServedTeacher:
    """The served teacher of `spec`, after asking the server for the model and checking its tokenization against
    `tokenizer` (for training, or for filling a cache: `hf_distill.offline.writer.cache_teacher`)."""
    endpoint, client, entry = connect(spec, settings, vocab_size)
    checked = check_tokenization(client, endpoint, tokenizer)
    provider = provider_for(endpoint.host, settings.provider)
    return ServedTeacher(
        endpoint,
        settings,
        client,
        temperature=temperature,
        model_entry=entry,
        provider=provider,
        tokenizer_checked=checked,
    )


def setup_served_teacher(
    spec: str, student: nn.Module, args: Any, tokenizer: Any, temperature: float, cross_tokenizer: str | None = None
) -> ServedTeacher:
    """The served teacher of `spec` for `student`, checked against the server.

    Raises:
        `ValueError`: a non-causal-LM student, a temperature other than 1 without the whole distribution, a
            different tokenization, `cross_tokenizer` set (served teachers are aligned through a cache);
            `ServedTeacherError`: the server is unreachable or does not serve the model.
    """
    settings = served_settings(args)
    if cross_tokenizer is not None:
        raise ValueError(
            f"cross_tokenizer={distillation_setting(args, 'cross_tokenizer')!r} with the served teacher {spec!r}: "
            "online, a served teacher must tokenize like the student. For a teacher of another tokenizer, fill a "
            "teacher-tokenized cache from the server (`hf-distill cache-teacher`, `cache.teacher_tokenized: true`, "
            "with the teacher's tokenizer) and train from it with cross_tokenizer set."
        )
    vocab_size = output_vocab_size(student)
    if not shifts_labels(student):
        raise ValueError(
            f"teacher={spec!r}: a served teacher scores the next token of a sequence, so the student must be a causal "
            f"language model; got {type(student).__name__}."
        )
    if temperature != 1.0 and settings.k < vocab_size:
        raise ValueError(
            f"kd_temperature={temperature} with a served teacher: servers return log-probabilities at temperature 1, "
            f"and rescaling the top-{settings.k} to another temperature needs the whole distribution. Use "
            f"kd_temperature=1.0, or teacher_top_k={vocab_size} (the vocabulary) if the server allows it."
        )
    eval_on_policy = distillation_setting(args, "eval_on_policy")
    if eval_on_policy is None:
        eval_on_policy = distillation_setting(args, "on_policy_fraction") > 0
    if temperature != 1.0 and eval_on_policy:
        raise ValueError(
            f"kd_temperature={temperature} with a served teacher and eval_on_policy: the served scores are rescaled "
            "to kd_temperature once, but the on-policy eval metric is a reverse KL at temperature 1. Set "
            "eval_on_policy=False, or kd_temperature=1.0."
        )
    if settings.k > vocab_size:
        raise ValueError(f"teacher_top_k={settings.k} is larger than the student's vocabulary ({vocab_size}).")
    teacher = connect_teacher(spec, settings, tokenizer, vocab_size, temperature)
    provider = teacher.provider
    logger.info(
        f"Distilling from {teacher.describe()}: {settings.concurrency} requests in flight, {settings.prefetch} "
        f"batches scored ahead" + (f"; the {provider} terms on its outputs apply" if provider else "")
    )
    return teacher
