"""A teacher-tokenized cache (`cache_teacher(..., teacher_tokenized=True)`) serving a student of another tokenizer.

The cache holds the teacher's own tokens of each text and its top-k over its own vocabulary. The student's rows are
built from the cache's text: the teacher's tokens are turned back into bytes with the teacher's tokenizer (saved in the
cache folder), tokenized by the student's tokenizer, and the two rows are aligned by byte offsets
(`TokenAligner.student_row` and `TokenAligner.align_pair`), once, in the data pipeline. The loss then compares the
student with the cached top-k through the alignment (`hf_distill.losses.cross_tokenizer.topk_teacher_targets`).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..cross_tokenizer.alignment import TokenAligner, alignment_record
from ..cross_tokenizer.teacher import student_valid
from ..cross_tokenizer.vocabulary import SharedVocabulary, token_bytes, tokenizer_hash
from ..losses.cross_tokenizer import AlignedTeacher, ChunkLayout, select_chunks, topk_teacher_targets
from .cache import (
    IDS,
    LOGPROBS,
    NEXT_LOGPROB,
    OFFSETS,
    TAIL,
    TEACHER_INPUT_IDS,
    TEACHER_LABELS,
    TEACHER_TOKENIZER_DIR,
    TeacherCache,
    cache_rows,
    decode_logprobs,
)
from .teacher import CachedTeacher

# Per-row alignment columns added to the cache's rows (padded per batch by `TeacherTokenizedCollator`).
ROW_ALIGNMENT_COLUMNS = ("student_chunk", "teacher_chunk", "student_next", "chunk_bytes")
# Every column of a training row that is the teacher's alone (never given to the student's forward).
OWN_COLUMNS = (
    TEACHER_INPUT_IDS,
    TEACHER_LABELS,
    OFFSETS,
    IDS,
    LOGPROBS,
    TAIL,
    NEXT_LOGPROB,
    *ROW_ALIGNMENT_COLUMNS,
    "teacher_attention_mask",
)
# Per batch: column -> padding value (teacher-side columns are padded to the longest teacher row).
_TEACHER_SIDE = {TEACHER_INPUT_IDS: 0, IDS: 0, LOGPROBS: 0, TAIL: 0.0, NEXT_LOGPROB: 0.0, "teacher_chunk": -1}
_STUDENT_SIDE = {"student_chunk": -1, "student_next": -1}


def load_teacher_tokenizer(cache: TeacherCache) -> Any:
    """The teacher's tokenizer saved in a teacher-tokenized cache, checked against the hash its fingerprint records."""
    from transformers import AutoTokenizer

    where = f"teacher cache {cache.name['name']}"
    folder = None if cache.folder is None else os.path.join(cache.folder, TEACHER_TOKENIZER_DIR)
    if folder is None or not os.path.isdir(folder):
        raise FileNotFoundError(
            f"{where} stores the teacher's own tokens but its {TEACHER_TOKENIZER_DIR}/ folder (the teacher's tokenizer) "
            "is missing; re-create the cache."
        )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    expected = cache.info.fingerprint.teacher_tokenizer_hash
    if tokenizer_hash(tokenizer) != expected:
        raise ValueError(
            f"{where}: the tokenizer in {TEACHER_TOKENIZER_DIR}/ hashes to {tokenizer_hash(tokenizer)}, not the "
            f"teacher_tokenizer_hash {expected} the cache was written with; re-create the cache."
        )
    return tokenizer


def student_rows(cache: TeacherCache, dataset: Any, aligner: TokenAligner) -> Any:
    """The rows a student of another tokenizer trains on: each cache row plus the student's `input_ids`,
    `attention_mask`, `labels` (when the cache has `teacher_labels`) and the alignment columns.

    Args:
        cache (`TeacherCache`): the teacher-tokenized cache (for the fingerprint of the result).
        dataset (`datasets.Dataset`): its rows (or rows of another teacher-tokenized cache of the same teacher).
        aligner (`TokenAligner`): the student's and the teacher's tokenizers.

    Returns:
        `datasets.Dataset`.

    Raises:
        `ValueError`: when a row's stored byte offsets disagree with the teacher tokenizer's bytes.
    """
    from datasets import Sequence, Value

    table = token_bytes(aligner.teacher_tokenizer)
    has_labels = TEACHER_LABELS in dataset.column_names

    def add(row: dict[str, Any]) -> dict[str, Any]:
        teacher_ids = row[TEACHER_INPUT_IDS]
        offset, ends = 0, []
        for token in teacher_ids:
            offset += len(table[token] or b"") if 0 <= token < len(table) else 0
            ends.append(offset)
        if ends != list(row[OFFSETS]):
            raise ValueError(
                f"teacher cache {cache.name['name']}: a row's teacher_offsets differ from the byte lengths of its "
                "tokens in the cache's teacher tokenizer: the rows and the tokenizer do not belong together."
            )
        ids, labels = aligner.student_row(teacher_ids, row[TEACHER_LABELS] if has_labels else None)
        example = aligner.align_pair(ids, teacher_ids)
        out = {
            "input_ids": ids,
            "attention_mask": [1] * len(ids),
            "student_chunk": example.student_chunk,
            "teacher_chunk": example.teacher_chunk,
            "student_next": example.student_next,
            "chunk_bytes": example.chunk_bytes,
        }
        if has_labels:
            out["labels"] = labels
        return out

    features = dataset.features.copy()
    int_list = Sequence(Value("int64"))
    for name in ("input_ids", "attention_mask", *ROW_ALIGNMENT_COLUMNS, *(("labels",) if has_labels else ())):
        features[name] = int_list
    fingerprint = (
        f"{cache.info.fingerprint.digest()[:16]}-{tokenizer_hash(aligner.student_tokenizer)[7:23]}-"
        f"{getattr(dataset, '_fingerprint', '')}"
    )
    # Recomputed every run (no stale file from an older alignment is ever read back): a pass over the text, cheap.
    return dataset.map(
        add, features=features, new_fingerprint=fingerprint[:64], load_from_cache_file=False,
        desc="aligning the student's rows",
    )  # fmt: skip


class TeacherTokenizedCollator:
    """Wrap a collator: the student's columns go through it, the cache's teacher-side columns are padded to the
    longest teacher row of the batch (`teacher_attention_mask` added), the alignment columns like `TokenAligner.collate`
    gives them. The student's rows must be right-padded."""

    def __init__(self, collator: Any) -> None:
        self.collator = collator

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        own = [{c: f.pop(c) for c in OWN_COLUMNS if c in f} for f in features]
        batch = self.collator(features)
        if TEACHER_INPUT_IDS not in own[0]:
            return batch
        mask = batch.get("attention_mask")
        if mask is not None and mask.dim() == 2 and bool((mask[:, 0] == 0).any()):
            raise ValueError(
                "The batch is padded on the left, but the alignment with the cached teacher rows indexes positions "
                "from the first token: set tokenizer.padding_side = 'right' for training from a teacher cache."
            )
        size, student_length = len(own), batch["input_ids"].shape[1]
        teacher_length = max(len(o[TEACHER_INPUT_IDS]) for o in own)
        chunks = max(len(o["chunk_bytes"]) for o in own)
        for column, fill in (*_TEACHER_SIDE.items(), *_STUDENT_SIDE.items(), ("chunk_bytes", 0)):
            rows = [torch.as_tensor(o[column]) for o in own]
            length = (
                teacher_length if column in _TEACHER_SIDE else student_length if column != "chunk_bytes" else chunks
            )
            dtype = torch.long if column in (TEACHER_INPUT_IDS, IDS, *ROW_ALIGNMENT_COLUMNS) else rows[0].dtype
            padded = torch.full((size, length, *rows[0].shape[1:]), fill, dtype=dtype)
            for i, row in enumerate(rows):
                if row.numel():
                    padded[i, : row.shape[0]] = row
            batch[column] = padded
        lengths = torch.tensor([len(o[TEACHER_INPUT_IDS]) for o in own])
        batch["teacher_attention_mask"] = (torch.arange(teacher_length)[None, :] < lengths[:, None]).long()
        return batch


class CrossTokenizerCachedTeacher(CachedTeacher):
    """A teacher-tokenized cache in the place of a teacher whose tokenizer differs from the student's.

    Args:
        cache (`TeacherCache`): the verified teacher-tokenized cache.
        method (`str`): `"exact"`, `"chunk"` or `"uld"` (`hf_distill.losses.CROSS_TOKENIZER_METHODS`).
        aligner (`TokenAligner`): the student's and the teacher's tokenizers.
        vocabulary (`SharedVocabulary`): the tokens both vocabularies hold, mapped to shared buckets.
        tail (`str`, *optional*, defaults to `"bucket"`): `teacher_cache_tail`. `"bucket"`: the mass outside the
            cached top-k goes into the shared vocabulary's rest bucket; when there is none (the vocabularies share
            every token) it cannot, and the top-k distribution is renormalised over the buckets instead (said once
            at setup). `"renormalize"`: always renormalised. ULD adds the tail to its distance either way.
    """

    own_columns = OWN_COLUMNS

    def __init__(
        self,
        cache: TeacherCache,
        *,
        method: str,
        aligner: TokenAligner,
        vocabulary: SharedVocabulary,
        tail: str = "bucket",
    ) -> None:
        super().__init__(cache, tail, tokenizer_checked=True)
        self.method = method
        self.aligner = aligner
        self.vocabulary = vocabulary
        self.rest_bucket = vocabulary.num_shared if vocabulary.has_rest and tail == "bucket" else None

    def student_rows(self, dataset: Any) -> Any:
        """Rows of a teacher-tokenized cache (e.g. an evaluation cache of the same teacher) as this student's rows."""
        return student_rows(self.cache, dataset, self.aligner)

    def prepare_eval_data(self, eval_dataset: Any) -> Any:
        """Evaluation rows of a teacher-tokenized cache (its columns) become the student's rows; others are left as
        they are (and refused at the first batch, naming what to pass)."""
        if isinstance(eval_dataset, dict):
            return {name: self.prepare_eval_data(rows) for name, rows in eval_dataset.items()}
        if "teacher_input_ids" in (getattr(eval_dataset, "column_names", None) or ()):
            return self.student_rows(eval_dataset)
        return eval_dataset

    def prepare_training_data(self, train_dataset: Any, data_collator: Any) -> tuple[Any, Any]:
        """The cache's rows in the student's tokenization, aligned, and the collator wrapped to pad the teacher's
        columns."""
        rows = cache_rows(self.cache, train_dataset)
        return self.student_rows(rows), TeacherTokenizedCollator(data_collator)

    def input_columns(self) -> tuple[str, ...]:
        return OWN_COLUMNS

    def targets(
        self, features: dict[str, Any], labels: torch.Tensor | None, *, chunked: bool = False
    ) -> AlignedTeacher:
        """The cached top-k at the first teacher position of each counted chunk, and the chunks' log-likelihoods."""
        missing = [c for c in (*ROW_ALIGNMENT_COLUMNS, IDS, LOGPROBS, TAIL, NEXT_LOGPROB) if c not in features]
        if missing:
            raise ValueError(
                f"This batch has no {', '.join(missing)}: training from a teacher-tokenized cache, every dataset "
                "(eval_dataset too) must be rows of such a cache (e.g. `load_teacher_cache(folder).dataset`), which "
                "the trainer makes into the student's rows."
            )
        input_ids = features["input_ids"]
        device = input_ids.device
        column = {name: features[name].to(device) for name in (*ROW_ALIGNMENT_COLUMNS, IDS, TAIL, NEXT_LOGPROB)}
        layout = ChunkLayout(
            column["student_chunk"], column["teacher_chunk"], column["student_next"], column["chunk_bytes"]
        )
        selection = select_chunks(layout, student_valid(input_ids, labels, features.get("attention_mask")))
        logprobs = decode_logprobs(features[LOGPROBS].to(device), self.cache.info.fingerprint.logprob_dtype)
        to_shared = self.vocabulary.student_to_shared.to(device)
        first_rows, tail, chunk_logprob = topk_teacher_targets(
            self.method,
            column[IDS],
            logprobs,
            column[TAIL],
            column[NEXT_LOGPROB],
            selection,
            self.vocabulary.teacher_to_shared.to(device),
            self.vocabulary.num_buckets,
            len(self.vocabulary.student_to_shared),
            self.rest_bucket,
        )
        return AlignedTeacher(
            method=self.method,
            selection=selection,
            student_to_shared=to_shared,
            num_buckets=self.vocabulary.num_buckets,
            first_rows=first_rows,
            tail=tail,
            chunk_logprob=chunk_logprob,
            top_bucket=self._top_bucket(column[IDS], logprobs, selection),
        )

    def _top_bucket(self, ids: torch.Tensor, logprobs: torch.Tensor, selection: Any) -> torch.Tensor:
        """`(n,)`: the shared bucket of the teacher's top cached token at each chunk's first position."""
        k = ids.shape[-1]
        first_ids = ids.reshape(-1, k).index_select(0, selection.teacher_first)
        first_logprobs = logprobs.reshape(-1, k).index_select(0, selection.teacher_first)
        top = first_ids.gather(1, first_logprobs.argmax(-1, keepdim=True)).squeeze(1).long()
        return self.vocabulary.teacher_to_shared.to(top.device)[top]

    def describe(self) -> str:
        return f"{super().describe()} through a {self.method} cross-tokenizer alignment"

    def lineage_record(self) -> dict[str, Any]:
        return {**super().lineage_record(), "tokenizer_sha256": self.cache.info.fingerprint.teacher_tokenizer_hash}

    def alignment_record(self) -> dict[str, Any]:
        """The lineage's record of the alignment: the method and both tokenizers (by content hash)."""
        return alignment_record(self.method, self.aligner, self.vocabulary.num_shared)
