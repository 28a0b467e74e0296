"""A teacher cache as a kind of `Teacher`: no model runs; each batch of cache rows carries the teacher's top-k, which
meets the student's logits (or, on the memory-efficient path, its hidden states) in the sparse objective."""

from __future__ import annotations

from typing import Any

import torch

from ..losses import TopK
from ..teacher.base import Teacher
from ..teacher.placement import Placement
from .cache import CACHE_COLUMNS, IDS, LOGPROBS, TAIL, CacheCollator, TeacherCache, cache_rows, decode_logprobs


class CachedTeacher(Teacher):
    """Stands in for the teacher when training from a cache: owns no weights, and its targets are the cached top-k
    distributions of the batch (what `DistillationTrainer.teacher_model` shows in cache mode).

    Args:
        cache (`TeacherCache`): the verified cache (see `hf_distill.offline.setup.setup_cached_teacher`).
        tail (`str`, *optional*, defaults to `"bucket"`): how the mass outside the top-k enters the loss
            (`teacher_cache_tail`, one of `hf_distill.losses.TAIL_MODES`).
        tokenizer_checked (`bool`, *optional*): whether the cache's tokenizer fingerprint was compared with the
            student's tokenizer.
    """

    own_columns = CACHE_COLUMNS

    def __init__(self, cache: TeacherCache, tail: str = "bucket", tokenizer_checked: bool | None = None) -> None:
        super().__init__(Placement("cache"), tokenizer_checked=tokenizer_checked)
        self.cache = cache
        self.source = cache.info.fingerprint.teacher
        self.tail = tail

    def targets(self, features: dict[str, Any], labels: torch.Tensor | None, *, chunked: bool = False) -> TopK:
        """The batch's top-k `(B, T, k)` ids and log-probabilities and `(B, T)` tail mass, whichever path the student
        takes; a batch without the cache columns is refused."""
        missing = [c for c in CACHE_COLUMNS if c not in features]
        if missing:
            raise ValueError(
                f"This batch has no {', '.join(missing)}: training from a teacher cache, every dataset (eval_dataset "
                "too) must be rows of a cache. Cache the evaluation set as well and pass that dataset."
            )
        dtype = self.cache.info.fingerprint.logprob_dtype
        logprobs = decode_logprobs(features[LOGPROBS], dtype)
        return TopK(features[IDS].long(), logprobs, features[TAIL].float(), tail=self.tail)

    def input_columns(self) -> tuple[str, ...]:
        return CACHE_COLUMNS

    def head_model(self) -> None:
        return None  # the top-k meets the student's own head: no teacher head to project

    def prepare_training_data(self, train_dataset: Any, data_collator: Any) -> tuple[Any, Any]:
        """The cache's own rows (after checking that `train_dataset`, when given, is the dataset the teacher ran on),
        and the collator wrapped to pad the cache's per-position columns like the tokens."""
        return cache_rows(self.cache, train_dataset), CacheCollator(data_collator)

    def describe(self) -> str:
        fingerprint = self.cache.info.fingerprint
        return f"the teacher cache {self.cache.name['name']} (top-{fingerprint.k} of {self.source.get('name')})"

    def lineage_record(self) -> dict[str, Any]:
        """The teacher that made the cache, and the cache itself."""
        return {"adapter": None, **self.source, "kind": "cache", "cache": self.cache.lineage_record()}
