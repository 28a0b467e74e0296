"""The loss of one batch of teacher-cache rows: the student's forward and the sparse objective against the cached
top-k, chunked from the student's hidden states when its head allows (no `(N, V)` logits), else from its logits."""

from __future__ import annotations

from typing import Any

from torch import nn

from .lm_head import capture_head_input, linear_head
from .losses import KDObjective, ObjectiveSums
from .losses.chunked import chunked_sparse_objective_sums
from .losses.sparse import sparse_objective_sums
from .teacher import model_logits
from .teacher_cache import CachedTeacher


def cached_objective(
    teacher: CachedTeacher,
    student: nn.Module,
    forward: Any,
    batch: dict[str, Any],
    objective: KDObjective,
    labels: Any,
    attention_mask: Any,
    shift_labels: bool,
    chunk_size: int,
    require_labels: bool,
    tail: str,
) -> tuple[ObjectiveSums, Any]:
    """`(sums, student outputs)` for a batch holding the cache columns.

    Args:
        teacher (`CachedTeacher`): decodes the batch's cache columns.
        student (`nn.Module`): the unwrapped student (its head is read for the chunked path).
        forward (`Callable[[], Any]`): runs the student's forward on the batch (through any DDP wrapper).
        chunk_size (`int`): positions per chunk; 0 uses the student's logits.
    """
    ids, logprobs, tail_mass = teacher.rows(batch)
    if chunk_size:
        with capture_head_input(student) as hidden:
            outputs = forward()
        sums = chunked_sparse_objective_sums(
            objective, hidden.features(), linear_head(student), ids, logprobs, tail_mass, labels, attention_mask,
            shift_labels, chunk_size, require_labels=require_labels, tail=tail,
        )  # fmt: skip
        return sums, outputs
    outputs = forward()
    sums = sparse_objective_sums(
        objective, model_logits(outputs, "student"), ids, logprobs, tail_mass, labels, attention_mask, shift_labels,
        require_labels=require_labels, tail=tail,
    )  # fmt: skip
    return sums, outputs
