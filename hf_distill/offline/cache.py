"""An offline teacher: its top-k distributions cached once as a `datasets` dataset (parquet shards), and read back
for training with no teacher in memory.

Layout of a cache folder: `shard-00000.parquet`, ... and `teacher_cache.json` (format version, fingerprint, and per
shard its rows and SHA-256). Each row is one training example: its own columns (`input_ids`, `attention_mask`,
`labels`, ...) plus, per position, `teacher_topk_ids` (k ints), `teacher_topk_logprobs` (k log-probabilities at the
cache's temperature, in descending order) and `teacher_tail` (the probability mass outside the top k).

A *teacher-tokenized* cache (`cache_teacher(..., teacher_tokenized=True)`, format version 2) serves students of other
tokenizers: each row holds the teacher's own tokens of the text (`teacher_input_ids`, and `teacher_labels` when the
data had labels) instead of the student's, the end byte offset of each token in the text's UTF-8
(`teacher_offsets`), the top-k columns over the teacher's own vocabulary, and `teacher_next_logprob` (the log-probability
at T = 1 of the token each position predicts, for chunk likelihoods). The teacher's tokenizer is saved in the folder
(`teacher_tokenizer/`), so that a student's rows can be rebuilt from the text; the fingerprint records its hash
(`teacher_tokenizer_hash`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from .._logging import get_logger
from ..utils.atomic import write_json

logger = get_logger(__name__)

CACHE_INFO_FILE = "teacher_cache.json"
FORMAT_VERSION = 1
# A cache in the teacher's own tokenization (for students of other tokenizers): older readers refuse it by its version.
TEACHER_TOKENIZED_FORMAT = 2
READABLE_FORMATS = (FORMAT_VERSION, TEACHER_TOKENIZED_FORMAT)
IDS, LOGPROBS, TAIL = "teacher_topk_ids", "teacher_topk_logprobs", "teacher_tail"
CACHE_COLUMNS = (IDS, LOGPROBS, TAIL)
# The columns of a teacher-tokenized cache row (besides the top-k ones), and the folder holding the teacher's tokenizer.
TEACHER_INPUT_IDS, TEACHER_LABELS = "teacher_input_ids", "teacher_labels"
OFFSETS, NEXT_LOGPROB = "teacher_offsets", "teacher_next_logprob"
TEACHER_TOKENIZED_COLUMNS = (TEACHER_INPUT_IDS, OFFSETS, IDS, LOGPROBS, TAIL, NEXT_LOGPROB)
TEACHER_TOKENIZER_DIR = "teacher_tokenizer"
LOGPROB_DTYPES = ("float32", "float16", "uint8")
# uint8 log-probs: -log p in steps of 1/20 nat, so 0 … 12.75 nats (p down to ~3e-6); lower values are clipped.
UINT8_STEP = 0.05


def tokenizer_sha256(tokenizer: Any) -> str | None:
    """SHA-256 of a tokenizer's vocabulary (token -> id, added tokens included) and special tokens; `None` without."""
    if tokenizer is None or not hasattr(tokenizer, "get_vocab"):
        return None
    content = {"vocab": tokenizer.get_vocab(), "special": getattr(tokenizer, "all_special_tokens", [])}
    return hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class CacheFingerprint:
    """What a cache was made from. Training refuses a cache whose fingerprint does not match its own setup.

    Attributes:
        teacher (`dict`): the teacher's pinned identity (name, source, revision or weights_sha256).
        tokenizer_sha256 (`str`, *optional*): hash of the teacher tokenizer's vocabulary.
        temperature (`float`): the log-probabilities are `log_softmax(logits / temperature)`.
        k (`int`): entries kept per position.
        vocab_size (`int`): size of the teacher's output distribution.
        dataset_fingerprint (`str`): the `datasets` fingerprint of the tokenized dataset the teacher ran on.
        logprob_dtype (`str`): float32, float16 or uint8 (quantised).
        hf_distill_version (`str`, *optional*).
        generation (`dict`, *optional*): for a cache of the teacher's own responses (`hf-distill generate`), the
            prompts' fingerprint and the sampling parameters.
        teacher_tokenizer_hash (`str`, *optional*): set for a teacher-tokenized cache (rows of the teacher's own
            tokens, for students of any tokenizer): `hf_distill.cross_tokenizer.vocabulary.tokenizer_hash` of the
            teacher's tokenizer saved in the cache folder.
    """

    teacher: dict[str, Any]
    tokenizer_sha256: str | None
    temperature: float
    k: int
    vocab_size: int
    dataset_fingerprint: str
    logprob_dtype: str
    hf_distill_version: str | None = None
    generation: dict[str, Any] | None = None
    teacher_tokenizer_hash: str | None = None

    @property
    def teacher_tokenized(self) -> bool:
        """Whether the rows hold the teacher's own tokens (a cache for students of other tokenizers)."""
        return self.teacher_tokenizer_hash is not None

    def digest(self) -> str:
        """One SHA-256 naming this fingerprint (recorded in the student's lineage)."""
        content = dataclasses.asdict(self)
        if content["teacher_tokenizer_hash"] is None:  # a same-tokenizer cache keeps the digest it always had
            del content["teacher_tokenizer_hash"]
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


@dataclass
class CacheInfo:
    """`teacher_cache.json`: the fingerprint, and each finished shard's file, rows and SHA-256."""

    fingerprint: CacheFingerprint
    shards: list[dict[str, Any]] = field(default_factory=list)
    total_rows: int = 0
    shard_size: int = 0
    tokens: int = 0
    format_version: int = FORMAT_VERSION

    @property
    def complete(self) -> bool:
        return sum(s["rows"] for s in self.shards) == self.total_rows

    def bytes_on_disk(self, folder: str) -> int:
        return sum(os.path.getsize(os.path.join(folder, s["file"])) for s in self.shards)

    def save(self, folder: str) -> None:
        path = os.path.join(folder, CACHE_INFO_FILE)
        write_json(path, dataclasses.asdict(self), indent=2)  # a crash mid-write never leaves a half-written manifest

    @classmethod
    def load(cls, folder: str) -> CacheInfo:
        path = os.path.join(folder, CACHE_INFO_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{folder} is not a teacher cache: it has no {CACHE_INFO_FILE}.")
        with open(path) as f:
            data = json.load(f)
        if data.get("format_version") not in READABLE_FORMATS:
            raise ValueError(
                f"{path}: format_version={data.get('format_version')!r}; this hf_distill reads "
                f"{' and '.join(map(str, READABLE_FORMATS))}."
            )
        info = cls(**{**data, "fingerprint": CacheFingerprint(**data["fingerprint"])})
        for shard in info.shards:
            check_shard_name(shard.get("file"), path)
        return info


# fnmatch metacharacters: `snapshot_download(allow_patterns=...)` treats each shard name as a pattern.
GLOB_CHARACTERS = "*?[]"


def check_shard_name(name: Any, manifest: str) -> str:
    """Refuse a shard file named in a manifest that is not a plain relative path inside the cache folder
    (`../x.parquet`, `/etc/x.parquet`): a manifest downloaded from elsewhere must not make us read other files. A
    name with a pattern character (`*`, `?`, `[`, `]`) or a trailing `/` is refused too: a Hub cache downloads its
    shards by name through `allow_patterns`, where such a name would match (and fetch) other files of the repo."""
    if isinstance(name, str) and (any(c in name for c in GLOB_CHARACTERS) or name.endswith("/")):
        raise ValueError(
            f"{manifest}: shard file {name!r} contains a pattern character ({' '.join(GLOB_CHARACTERS)}) or ends in "
            "'/'; a teacher cache manifest names each shard by its exact file name (e.g. 'shard-00000.parquet'). "
            "Re-create the cache."
        )
    normalized = os.path.normpath(name) if isinstance(name, str) and name else ""
    if (
        not normalized
        or os.path.isabs(name)
        or normalized == os.curdir
        or normalized.split(os.sep)[0] == os.pardir
        or "\\" in name
        or os.path.splitdrive(name)[0]
    ):
        raise ValueError(
            f"{manifest}: shard file {name!r} is not a path inside the cache folder; a teacher cache manifest may only "
            "name files inside its own folder (e.g. 'shard-00000.parquet'). Re-create the cache."
        )
    return normalized


def encode_logprobs(logprobs: torch.Tensor, dtype: str) -> torch.Tensor:
    """Log-probabilities `(…, k)` as stored: float32, float16, or uint8 steps of `UINT8_STEP` nats below 0."""
    if dtype == "uint8":
        return (-logprobs / UINT8_STEP).round().clamp(0, 255).to(torch.uint8)
    return logprobs.to(getattr(torch, dtype))


def decode_logprobs(stored: torch.Tensor, dtype: str) -> torch.Tensor:
    """float32 log-probabilities from what `encode_logprobs` stored."""
    if dtype == "uint8":
        return stored.float() * -UINT8_STEP
    return stored.float()


def verify_shards(folder: str, info: CacheInfo) -> list[str]:
    """The shard paths, after checking each is present, unchanged (SHA-256) and holds its rows; raises otherwise."""
    import pyarrow.parquet as pq

    if not info.complete:
        done = sum(s["rows"] for s in info.shards)
        raise ValueError(
            f"The teacher cache in {folder} is incomplete ({done} of {info.total_rows} rows): finish it by running "
            "cache-teacher again with the same settings (finished shards are kept)."
        )
    paths = []
    for shard in info.shards:
        # Checked by name, not by resolved path: a Hub snapshot's files are symlinks into the cache's blob store.
        path = os.path.join(folder, check_shard_name(shard["file"], os.path.join(folder, CACHE_INFO_FILE)))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Teacher cache shard {shard['file']} is missing from {folder}.")
        if file_sha256(path) != shard["sha256"]:
            raise ValueError(
                f"Teacher cache shard {shard['file']} is corrupted or was changed: its SHA-256 differs from the one "
                f"recorded in {CACHE_INFO_FILE}. Re-create the cache (or delete the shard and resume)."
            )
        rows = pq.ParquetFile(path).metadata.num_rows
        if rows != shard["rows"]:
            raise ValueError(f"Teacher cache shard {shard['file']} holds {rows} rows; {shard['rows']} were written.")
        paths.append(path)
    return paths


@dataclass
class TeacherCache:
    """A verified teacher cache: its rows as a `datasets.Dataset`, its manifest, and where it came from."""

    dataset: Any
    info: CacheInfo
    name: dict[str, Any]
    folder: str | None = None  # where its files are (the teacher's tokenizer of a teacher-tokenized cache)

    def lineage_record(self) -> dict[str, Any]:
        record = {**self.name, "fingerprint": self.info.fingerprint.digest(), "k": self.info.fingerprint.k}
        if self.info.fingerprint.generation is not None:
            record["generation"] = self.info.fingerprint.generation
        return record


def load_teacher_cache(path_or_repo: str, revision: str | None = None, token: str | None = None) -> TeacherCache:
    """Open a cache folder, or a Hub dataset repository holding one, and verify every shard.

    Args:
        path_or_repo (`str`): a folder written by `cache_teacher`, or a Hub dataset id.
        revision (`str`, *optional*): branch, tag or commit of a Hub dataset.
    """
    from datasets import Dataset

    from ..provenance import is_local, resolve_revision

    if is_local(path_or_repo):
        folder = path_or_repo
        name = {"name": os.path.basename(os.path.normpath(folder)), "source": "local"}
    else:
        from huggingface_hub import hf_hub_download, snapshot_download

        sha = resolve_revision(path_or_repo, revision, repo_type="dataset")
        pinned = sha if len(sha) == 40 else revision
        # The manifest first, checked; then only the files it names (the repo may hold anything else).
        manifest = hf_hub_download(path_or_repo, CACHE_INFO_FILE, repo_type="dataset", revision=pinned, token=token)
        # Names checked by CacheInfo.load (plain relative paths, no pattern characters), normalized as on the Hub.
        shards = [os.path.normpath(shard["file"]) for shard in CacheInfo.load(os.path.dirname(manifest)).shards]
        folder = snapshot_download(
            path_or_repo,
            repo_type="dataset",
            revision=pinned,
            token=token,
            allow_patterns=[CACHE_INFO_FILE, *shards, f"{TEACHER_TOKENIZER_DIR}/*"],
        )
        name = {"name": path_or_repo, "source": "hub", "revision": sha}
    info = CacheInfo.load(folder)
    dataset = Dataset.from_parquet(verify_shards(folder, info))
    return TeacherCache(dataset, info, name, folder)


def check_cache(
    cache: TeacherCache,
    *,
    tokenizer: Any = None,
    train_dataset: Any = None,
    temperature: float | None = None,
    vocab_size: int | None = None,
    teacher_source: dict[str, Any] | None = None,
) -> None:
    """Refuse a cache made for something else, naming the field that differs.

    Args:
        tokenizer: the student's tokenizer (its vocabulary must be the one the teacher's ids index).
        train_dataset (`datasets.Dataset`, *optional*): the dataset the student trains on; must be the one the teacher
            ran on (same `datasets` fingerprint).
        temperature (`float`, *optional*): the KD temperature of this run (`kd_temperature`).
        vocab_size (`int`, *optional*): the student's output size.
        teacher_source (`dict`, *optional*): the teacher this run expects (e.g. from `teacher_revision`).
    """
    fingerprint = cache.info.fingerprint
    where = f"teacher cache {cache.name['name']}"
    # A teacher-tokenized cache indexes the teacher's own vocabulary: the student's tokenizer and size do not matter.
    expected = None if fingerprint.teacher_tokenized else tokenizer_sha256(tokenizer)
    if expected is not None and fingerprint.tokenizer_sha256 not in (None, expected):
        raise ValueError(
            f"{where}: tokenizer_sha256 differs: the cache was made with another tokenizer than the student's "
            "(processing_class). Its token ids would index the wrong tokens; cache the teacher on this tokenizer, or, "
            "for a student of another tokenizer, write a teacher-tokenized cache (cache_teacher(..., "
            "teacher_tokenized=True)) and train with cross_tokenizer set."
        )
    if train_dataset is not None and getattr(train_dataset, "_fingerprint", None) != fingerprint.dataset_fingerprint:
        raise ValueError(
            f"{where}: dataset_fingerprint {fingerprint.dataset_fingerprint!r} differs from train_dataset's "
            f"{getattr(train_dataset, '_fingerprint', None)!r}: the cache holds the teacher's outputs on another "
            "dataset. Train on the cache's own rows (leave train_dataset unset) or cache this dataset."
        )
    if temperature is not None and abs(temperature - fingerprint.temperature) > 1e-9:
        raise ValueError(
            f"{where}: temperature {fingerprint.temperature} differs from kd_temperature={temperature}; the cached "
            "log-probabilities are at the cache's temperature. Set kd_temperature to it or re-cache."
        )
    if vocab_size is not None and not fingerprint.teacher_tokenized and vocab_size < fingerprint.vocab_size:
        raise ValueError(
            f"{where}: vocab_size {fingerprint.vocab_size} of the teacher exceeds the student's {vocab_size} outputs."
        )
    if teacher_source is not None:
        for key in ("name", "revision", "weights_sha256"):
            if teacher_source.get(key) is not None and teacher_source.get(key) != fingerprint.teacher.get(key):
                raise ValueError(
                    f"{where}: teacher.{key} {fingerprint.teacher.get(key)!r} differs from the expected "
                    f"{teacher_source.get(key)!r}: the cache was made by another teacher or revision."
                )


def cache_rows(cache: TeacherCache, train_dataset: Any = None) -> Any:
    """The rows to train on: the cache's own, after checking that `train_dataset` (when given and not already cache
    rows) is the dataset the teacher ran on."""
    if train_dataset is not None and all(c in getattr(train_dataset, "column_names", ()) for c in CACHE_COLUMNS):
        return train_dataset
    if train_dataset is not None:
        check_cache(cache, train_dataset=train_dataset)
    return cache.dataset


class CacheCollator:
    """Wrap a collator so that the cache's per-position columns are padded like the tokens (right padding)."""

    def __init__(self, collator: Any) -> None:
        self.collator = collator

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        cached = [{c: f.pop(c) for c in CACHE_COLUMNS if c in f} for f in features]
        batch = self.collator(features)
        if not cached[0]:
            return batch
        mask = batch.get("attention_mask")
        if mask is not None and mask.dim() == 2 and bool((mask[:, 0] == 0).any()):
            raise ValueError(
                "The batch is padded on the left, but cached teacher positions are aligned from the first token: "
                "set tokenizer.padding_side = 'right' for training from a teacher cache."
            )
        length = max(len(c[TAIL]) if isinstance(c[TAIL], list) else 1 for c in cached)
        if "input_ids" in batch and batch["input_ids"].dim() == 2:
            length = batch["input_ids"].shape[1]
        for column in CACHE_COLUMNS:
            rows = [torch.as_tensor(c[column]) for c in cached]
            if rows[0].dim() == 0 or (column != TAIL and rows[0].dim() == 1):  # one row per example (classification)
                batch[column] = torch.stack(rows)
                continue
            padded = rows[0].new_zeros((len(rows), length, *rows[0].shape[1:]))
            for i, row in enumerate(rows):
                padded[i, : row.shape[0]] = row
            batch[column] = padded
        return batch
