"""Writing a teacher cache: run the teacher once over a tokenized dataset and stream its top-k distributions to
parquet shards, resumably (finished shards are verified and kept; only missing ones are computed)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from importlib import metadata
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .._logging import get_logger
from ..modeling.heads import unwrap_peft
from ..provenance import model_source
from ..served.endpoint import ServedSettings, is_served_spec
from ..served.setup import connect_teacher
from ..served.teacher import ServedTeacher
from ..teacher.model import freeze, run_teacher
from ..utils.atomic import atomic_path
from .cache import (
    CACHE_COLUMNS,
    IDS,
    LOGPROB_DTYPES,
    LOGPROBS,
    NEXT_LOGPROB,
    OFFSETS,
    TAIL,
    TEACHER_INPUT_IDS,
    TEACHER_LABELS,
    TEACHER_TOKENIZED_FORMAT,
    TEACHER_TOKENIZER_DIR,
    CacheFingerprint,
    CacheInfo,
    encode_logprobs,
    file_sha256,
    tokenizer_sha256,
)

logger = get_logger(__name__)


def hf_distill_version() -> str | None:
    try:
        return metadata.version("hf-distill")
    except metadata.PackageNotFoundError:
        return None


def _check_arguments(
    dataset: Any, k: int, vocab_size: int, temperature: float, logprob_dtype: str, shard_size: int
) -> None:
    if not 1 <= k <= vocab_size:
        raise ValueError(f"k={k} must be between 1 and the teacher's vocabulary size ({vocab_size}).")
    if not temperature > 0:
        raise ValueError(f"temperature={temperature} must be > 0.")
    if logprob_dtype not in LOGPROB_DTYPES:
        raise ValueError(f"logprob_dtype={logprob_dtype!r}; use one of {', '.join(LOGPROB_DTYPES)}.")
    if shard_size < 1:
        raise ValueError(f"shard_size={shard_size} must be >= 1.")
    if "input_ids" not in dataset.column_names:
        raise ValueError(
            f"The dataset to cache has no `input_ids` column (columns: {', '.join(dataset.column_names)}); tokenize it first."
        )
    own = (*CACHE_COLUMNS, TEACHER_INPUT_IDS, TEACHER_LABELS, OFFSETS, NEXT_LOGPROB)
    taken = [c for c in own if c in dataset.column_names]
    if taken:
        raise ValueError(f"The dataset already has the cache columns {taken}; pass the tokenized dataset itself.")


def _vocab_size(teacher: nn.Module) -> int:
    head = teacher.get_output_embeddings() if hasattr(teacher, "get_output_embeddings") else None
    if head is not None and getattr(head, "weight", None) is not None:
        return head.weight.shape[0]
    config = getattr(teacher, "config", None)
    return getattr(config, "vocab_size", None) or config.num_labels


def _shard_columns(rows: Any, table: list[bytes | None] | None) -> dict[str, list]:
    """The shard's own columns, and empty cache columns to fill (with a byte `table`, a teacher-tokenized cache's
    offsets and next-token log-probabilities too)."""
    columns: dict[str, list] = {name: list(rows[name]) for name in rows.column_names}
    columns.update({IDS: [], LOGPROBS: [], TAIL: []})
    if table is not None:
        columns.update({OFFSETS: [], NEXT_LOGPROB: []})
    return columns


@torch.no_grad()
def _shard_rows(
    teacher: nn.Module,
    rows: Any,
    k: int,
    temperature: float,
    logprob_dtype: str,
    batch_size: int,
    collator: Callable,
    table: list[bytes | None] | None = None,
) -> tuple[dict[str, list], int]:
    """The shard's original columns plus the three cache columns, each example trimmed to its own length; with the
    teacher tokenizer's byte `table` (a teacher-tokenized cache) also each token's end byte offset and the
    log-probability of the next token, and `input_ids` / `labels` renamed to the teacher's (`attention_mask` dropped)."""
    columns = _shard_columns(rows, table)
    tokens = 0
    device = next((p.device for p in teacher.parameters()), torch.device("cpu"))
    for start in range(0, len(rows), batch_size):
        examples = [rows[i] for i in range(start, min(start + batch_size, len(rows)))]
        batch = collator(examples)
        labels = batch.pop("labels", None)
        features = {key: v.to(device) if torch.is_tensor(v) else v for key, v in batch.items()}
        logits = run_teacher(teacher, features, None if labels is None else labels.to(device)).logits
        if table is not None:  # log p(token t+1) at position t, at T = 1: the chunk likelihoods' terms
            input_ids = features["input_ids"]
            following = torch.nn.functional.pad(input_ids[:, 1:], (0, 1)).clamp_min(0)
            next_logprob = logits.float().gather(-1, following[..., None]).squeeze(-1) - logits.float().logsumexp(-1)
            next_logprob[:, -1] = 0.0
        log_probs = torch.log_softmax(logits.float() / temperature, dim=-1)
        top, ids = log_probs.topk(k, dim=-1)  # sorted, most probable first
        # The tail from the full-precision probabilities, before any rounding of the stored log-probs.
        tail = (1 - top.exp().sum(-1)).clamp_min(0)
        stored = encode_logprobs(top, logprob_dtype)
        for i, example in enumerate(examples):
            length = len(example["input_ids"]) if logits.dim() == 3 else None
            rows_of = slice(None) if length is None else slice(0, length)
            columns[IDS].append(ids[i, rows_of].to(torch.int32).tolist())
            columns[LOGPROBS].append(stored[i, rows_of].tolist())
            columns[TAIL].append(tail[i, rows_of].tolist())
            if table is not None:
                columns[OFFSETS].append(_byte_ends(example["input_ids"], table))
                values = next_logprob[i, rows_of].tolist()
                values[-1] = 0.0  # the last token of the example predicts nothing
                columns[NEXT_LOGPROB].append(values)
            tokens += length or 1
    if table is not None:
        _rename_teacher_tokenized(columns)
    return columns, tokens


def _byte_ends(ids: list[int], table: list[bytes | None]) -> list[int]:
    """The end byte offset of each token in the text's UTF-8 (a teacher-tokenized cache's `teacher_offsets`)."""
    ends, offset = [], 0
    for token in ids:
        offset += len(table[token] or b"") if 0 <= token < len(table) else 0
        ends.append(offset)
    return ends


def _rename_teacher_tokenized(columns: dict[str, list]) -> None:
    """A teacher-tokenized cache's rows hold the teacher's tokens under their own names; no attention mask."""
    columns[TEACHER_INPUT_IDS] = columns.pop("input_ids")
    columns.pop("attention_mask", None)
    if "labels" in columns:
        columns[TEACHER_LABELS] = columns.pop("labels")


def _served_shard_rows(
    teacher: ServedTeacher,
    rows: Any,
    temperature: float,
    logprob_dtype: str,
    batch_size: int,
    collator: Callable,
    table: list[bytes | None] | None = None,
) -> tuple[dict[str, list], int]:
    """`_shard_rows` for a served teacher: the shard's batches are sent a window ahead of the one being read, so the
    server is kept busy; each example's scores are the server's top-k of its tokens (and, with the teacher
    tokenizer's byte `table`, the byte offsets and next-token log-probabilities of a teacher-tokenized cache)."""
    columns = _shard_columns(rows, table)
    window = 2 * teacher.settings.concurrency  # batches in flight: bounded, and within the queue's capacity
    starts = list(range(0, len(rows), batch_size))
    batches = [collator([rows[i] for i in range(s, min(s + batch_size, len(rows)))]) for s in starts]
    tokens = 0
    for ahead in batches[:window]:
        teacher.queue.submit(ahead["input_ids"], ahead.get("attention_mask"))
    for index, batch in enumerate(batches):
        if index + window < len(batches):
            ahead = batches[index + window]
            teacher.queue.submit(ahead["input_ids"], ahead.get("attention_mask"))
        scores = teacher.queue.scores(batch["input_ids"], batch.get("attention_mask"))
        first = starts[index]
        batch_ids = [rows[i]["input_ids"] for i in range(first, min(first + batch_size, len(rows)))]
        for row in scores:
            k = teacher.settings.k
            if row is None:  # an example without tokens
                ids, logprobs = torch.zeros(0, k, dtype=torch.long), torch.zeros(0, k)
            else:  # another temperature is exact: only allowed when the server returns the whole distribution
                row = row.at_temperature(temperature)
                ids, logprobs = row.ids, row.logprobs
            tail = (1 - logprobs.double().exp().sum(-1)).clamp_min(0).float()
            columns[IDS].append(ids.to(torch.int32).tolist())
            columns[LOGPROBS].append(encode_logprobs(logprobs, logprob_dtype).tolist())
            columns[TAIL].append(tail.tolist())
            tokens += ids.shape[0]
        if table is not None:
            for row, example_ids in zip(scores, batch_ids):
                columns[OFFSETS].append(_byte_ends(example_ids, table))
                columns[NEXT_LOGPROB].append([] if row is None else row.next_logprob.tolist())
    if table is not None:
        _rename_teacher_tokenized(columns)
    return columns, tokens


def write_shard(output_dir: str, name: str, columns: dict[str, list], features: Any) -> dict[str, Any]:
    """Write one parquet shard atomically (a temporary file, then a rename); returns its manifest entry."""
    import pyarrow.parquet as pq
    from datasets import Dataset

    path = os.path.join(output_dir, name)
    # The Arrow table keeps the `datasets` features in its schema metadata, so the shard reads back typed.
    with atomic_path(path) as tmp:
        table = Dataset.from_dict(columns, features=features).data.table
        pq.write_table(table, tmp)  # into atomic_path's temporary: the shard appears whole or not at all
    return {"file": name, "rows": len(next(iter(columns.values()))), "sha256": file_sha256(path)}


def cache_features(base: Any, logprob_dtype: str, per_position: bool, teacher_tokenized: bool = False) -> Any:
    """`datasets.Features` of cache rows: the example's own columns plus the three cache columns (a teacher-tokenized
    cache: `input_ids` / `labels` renamed to the teacher's, `attention_mask` dropped, offsets and next-token
    log-probabilities added)."""
    from datasets import Features, Sequence, Value

    value = Value(logprob_dtype)
    ids, logprobs, tail = Sequence(Value("int32")), Sequence(value), Value("float32")
    if per_position:
        ids, logprobs, tail = Sequence(ids), Sequence(logprobs), Sequence(tail)
    if not teacher_tokenized:
        return Features({**base, IDS: ids, LOGPROBS: logprobs, TAIL: tail})
    renamed = {"input_ids": TEACHER_INPUT_IDS, "labels": TEACHER_LABELS}
    own = {renamed.get(name, name): feature for name, feature in base.items() if name != "attention_mask"}
    extra = {OFFSETS: Sequence(Value("int32")), NEXT_LOGPROB: Sequence(Value("float32"))}
    return Features({**own, IDS: ids, LOGPROBS: logprobs, TAIL: tail, **extra})


def cache_teacher(
    teacher: nn.Module,
    dataset: Any,
    output_dir: str,
    *,
    k: int = 64,
    temperature: float = 1.0,
    logprob_dtype: str = "float16",
    batch_size: int = 8,
    shard_size: int = 1024,
    collator: Callable | None = None,
    tokenizer: Any = None,
    teacher_source: dict[str, Any] | None = None,
    progress: bool = True,
    teacher_tokenized: bool = False,
    served_settings: ServedSettings | None = None,
) -> CacheInfo:
    """Run `teacher` over `dataset` once and write its top-k distributions as a teacher cache in `output_dir`.

    Shards of `shard_size` examples are written one at a time (to a temporary file, then renamed) and recorded in
    `teacher_cache.json` with their SHA-256, so an interrupted run resumes where it stopped: finished shards are
    verified and kept, the rest are computed. A folder holding a cache with another fingerprint is refused.

    Args:
        teacher (`nn.Module` or `str`): the teacher, on the device it should run on; or a served teacher's
            `"openai-compatible:<base_url>#<model>"` (README, "Served teachers"), whose top-k the server returns
            (then `tokenizer` is required and must tokenize like the server: checked on a probe text).
        dataset (`datasets.Dataset`): tokenized examples (`input_ids`, and optionally `attention_mask`, `labels`).
        output_dir (`str`): the cache folder.
        k (`int`, *optional*, defaults to 64): entries kept per position (1 ≤ k ≤ vocabulary size).
        temperature (`float`, *optional*, defaults to 1.0): log-probabilities of `logits / temperature`; training
            from the cache must use the same `kd_temperature`.
        logprob_dtype (`str`, *optional*, defaults to `"float16"`): `float32`, `float16`, or `uint8` (quantised
            in steps of 0.05 nats).
        batch_size (`int`), shard_size (`int`): examples per teacher forward / per shard file.
        collator (`Callable`, *optional*): pads a list of examples into a batch; defaults to transformers'
            `DataCollatorWithPadding(tokenizer)` with a tokenizer, else `default_data_collator`. Must pad on the right.
        tokenizer (*optional*): the teacher's tokenizer, hashed into the fingerprint.
        teacher_source (`dict`, *optional*): the teacher's identity; defaults to what its loader recorded.
        teacher_tokenized (`bool`, *optional*, defaults to `False`): write a cache that serves students of *any*
            tokenizer (train with `cross_tokenizer` set): `dataset` is tokenized by the teacher's own `tokenizer`
            (required, fast), and each row keeps the teacher's tokens (`teacher_input_ids`, `teacher_labels`), their
            end byte offsets (`teacher_offsets`) and the log-probability of each next token (`teacher_next_logprob`);
            the tokenizer is saved in `output_dir/teacher_tokenizer`. Causal LMs only.
        served_settings (`ServedSettings`, *optional*): a served teacher's request settings (concurrency, timeout,
            retries, API key variable, provider, license); its `k` is replaced by `k`.

    Returns:
        `CacheInfo`: the manifest (rows, tokens, shards); `info.bytes_on_disk(output_dir) / info.tokens` is the storage
        per token.
    """
    from transformers import DataCollatorWithPadding, default_data_collator

    served = served_teacher_for_cache(teacher, tokenizer, k, temperature, served_settings)
    vocab_size = len(getattr(tokenizer, "tokenizer", tokenizer)) if served is not None else _vocab_size(teacher)
    _check_arguments(dataset, k, vocab_size, temperature, logprob_dtype, shard_size)
    table, teacher_tokenizer_hash = None, None
    if teacher_tokenized:
        from ..cross_tokenizer.vocabulary import token_bytes, tokenizer_hash

        if tokenizer is None:
            raise ValueError(
                "teacher_tokenized=True needs the teacher's tokenizer (tokenizer=): the cache stores the teacher's "
                "own tokens, and the tokenizer to turn them back into text."
            )
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor holds one
        table = token_bytes(tokenizer)  # refuses tokenizers whose text cannot be rebuilt byte-exactly
        teacher_tokenizer_hash = tokenizer_hash(tokenizer)
    if collator is None:
        collator = DataCollatorWithPadding(tokenizer) if tokenizer is not None else default_data_collator
    fingerprint = CacheFingerprint(
        teacher=teacher_source or (served_cache_record(served) if served is not None else teacher_record(teacher)),
        tokenizer_sha256=tokenizer_sha256(tokenizer),
        temperature=float(temperature),
        k=k,
        vocab_size=vocab_size,
        dataset_fingerprint=dataset._fingerprint,
        logprob_dtype=logprob_dtype,
        hf_distill_version=hf_distill_version(),
        teacher_tokenizer_hash=teacher_tokenizer_hash,
    )
    os.makedirs(output_dir, exist_ok=True)
    info = _resume(output_dir, fingerprint, len(dataset), shard_size)
    if teacher_tokenized:
        info.format_version = TEACHER_TOKENIZED_FORMAT
        tokenizer.save_pretrained(os.path.join(output_dir, TEACHER_TOKENIZER_DIR))
    if served is None:
        freeze(teacher)
    done = {s["file"] for s in info.shards}
    per_position = None
    with tqdm(total=len(dataset), initial=sum(s["rows"] for s in info.shards), disable=not progress, unit="ex") as bar:
        for index, start in enumerate(range(0, len(dataset), shard_size)):
            name = f"shard-{index:05d}.parquet"
            if name in done:
                continue
            rows = dataset.select(range(start, min(start + shard_size, len(dataset))))
            if served is not None:
                columns, tokens = _served_shard_rows(
                    served, rows, temperature, logprob_dtype, batch_size, collator, table
                )
            else:
                columns, tokens = _shard_rows(
                    teacher, rows, k, temperature, logprob_dtype, batch_size, collator, table
                )
            per_position = isinstance(columns[TAIL][0], list)
            if teacher_tokenized and not per_position:
                raise ValueError("teacher_tokenized=True caches a causal LM's per-token distributions only.")
            features = cache_features(dataset.features, logprob_dtype, per_position, teacher_tokenized)
            info.shards.append({**write_shard(output_dir, name, columns, features), "tokens": tokens})
            info.shards.sort(key=lambda s: s["file"])
            info.tokens = sum(s["tokens"] for s in info.shards)
            info.save(output_dir)
            bar.update(len(rows))
    per_token = info.bytes_on_disk(output_dir) / max(info.tokens, 1)
    logger.info(
        f"teacher cache {output_dir}: {info.total_rows} examples, {info.tokens} positions, top-{k} {logprob_dtype} "
        f"log-probs, {per_token:.1f} bytes per position."
    )
    return info


def served_teacher_for_cache(
    teacher: Any, tokenizer: Any, k: int, temperature: float, settings: ServedSettings | None
) -> ServedTeacher | None:
    """The served teacher to fill a cache from (checked against the server), or `None` for a model."""
    if not is_served_spec(teacher):
        return None
    if tokenizer is None:
        raise ValueError(
            f"Caching the served teacher {teacher!r} needs the tokenizer the dataset was tokenized with (tokenizer=): "
            "it is checked against the server's tokenization and hashed into the cache's fingerprint."
        )
    settings = dataclasses.replace(settings or ServedSettings(), k=k)
    base = getattr(tokenizer, "tokenizer", tokenizer)
    if temperature != 1.0 and k < len(base):
        raise ValueError(
            f"temperature={temperature} with a served teacher: servers return log-probabilities at temperature 1, "
            f"and rescaling a top-{k} needs the whole distribution; use temperature=1.0 or k={len(base)}."
        )
    return connect_teacher(teacher, settings, base, len(base), temperature)


def served_cache_record(teacher: ServedTeacher) -> dict[str, Any]:
    """A served teacher's identity in a cache's fingerprint: its lineage record (model name, reported revision, how
    it was served, k, provider); never its URL, so the same model behind another address makes the same cache."""
    return teacher.lineage_record()


def teacher_record(teacher: nn.Module) -> dict[str, Any]:
    base = unwrap_peft(teacher)
    return {
        **model_source(teacher),
        "architecture": type(base).__name__,
        "parameters": sum(p.numel() for p in base.parameters()),
    }


def _resume(output_dir: str, fingerprint: CacheFingerprint, total_rows: int, shard_size: int) -> CacheInfo:
    """The manifest to continue from: an existing one with the same fingerprint (its shards verified), else new."""
    from .cache import CACHE_INFO_FILE

    if not os.path.isfile(os.path.join(output_dir, CACHE_INFO_FILE)):
        return CacheInfo(fingerprint, [], total_rows, shard_size)
    info = CacheInfo.load(output_dir)
    if info.fingerprint != fingerprint or info.shard_size != shard_size:
        differing = [
            f.name for f in fingerprint.__dataclass_fields__.values()
            if getattr(info.fingerprint, f.name) != getattr(fingerprint, f.name)
        ] or ["shard_size"]  # fmt: skip
        raise ValueError(
            f"{output_dir} already holds a teacher cache made with other settings ({', '.join(differing)} differ); "
            "write this one to a new folder."
        )
    kept = []
    for shard in info.shards:
        path = os.path.join(output_dir, shard["file"])
        if os.path.isfile(path) and file_sha256(path) == shard["sha256"]:
            kept.append(shard)
        else:
            logger.warning(f"Teacher cache shard {shard['file']} is missing or damaged; it will be computed again.")
    info.shards = kept
    return info
