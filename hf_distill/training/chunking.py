"""When the memory-efficient (chunked) loss runs: the chunk size this run's heads and placement allow, and the
one-time check, on one example, that projecting each model's captured hidden states gives its own logits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .._logging import get_logger
from ..config import distillation_setting
from ..modeling.heads import is_encoder_decoder, shifts_labels
from ..modeling.lm_head import check_head, chunk_size_for, slice_batch
from ..teacher.base import Teacher
from ..teacher.placement import student_strategy

logger = get_logger(__name__)


def resolve_chunk_size(student: nn.Module, teacher: Teacher, args: Any, accelerator: Any) -> int:
    """Tokens per chunk of the memory-efficient loss in this run; 0 selects the logits path.

    It runs for per-token LM heads only, when both heads are plain linear layers `linear_head` understands (a cache
    needs the student's only), and both are whole tensors on this device between forwards: a replicated teacher (or a
    cache) beside a single-process or DDP student.
    """
    if not (shifts_labels(student) or is_encoder_decoder(student)):  # per-token LM heads only
        return 0
    teacher_head = teacher.head_model()
    teacher_head = student if teacher_head is None else teacher_head  # a cache: only the student's head is projected
    chunk = chunk_size_for(student, teacher_head, distillation_setting(args, "kd_chunk_size"))
    where = student_strategy(accelerator)
    if chunk and (teacher.placement.kind not in ("replicate", "cache", "served") or where not in ("single", "ddp")):
        # Sharded, offloaded or elsewhere-placed heads are not whole tensors on this device between forwards.
        logger.info(
            f"The memory-efficient loss needs both LM heads whole on this device; with the student under "
            f"'{where}' and the teacher placed '{teacher.placement.describe()}' the logits path is used."
        )
        return 0
    return chunk


def heads_reproduce_logits(
    student: nn.Module,
    student_forward: Callable[..., Any],
    student_inputs: dict[str, Any],
    teacher: Teacher,
    features: dict[str, Any],
    labels: torch.Tensor | None,
) -> bool:
    """Whether the chunked path can be trusted: projecting the captured hidden states gives each model's own logits,
    which catches a post-head transform `linear_head` does not know. Checked once, on the batch's first example;
    every process runs the same check.

    Args:
        student (`nn.Module`): the unwrapped student; `student_forward` is the (wrapped) model the Trainer calls.
        student_inputs (`dict`): the student's forward arguments for the batch.
        teacher (`Teacher`): checks its own head (a cache has none to check).
        features, labels: the batch without labels, and its labels (an encoder-decoder's decoder inputs).
    """
    small_student, small_features = slice_batch(student_inputs, 1), slice_batch(features, 1)
    small_labels = None if labels is None else labels[:1]
    ok = check_head(student, lambda: student_forward(**small_student))
    if ok:
        ok = teacher.check_head(small_features, small_labels)
    if ok is False:  # None: the check itself failed, said so on one info line
        logger.warning(
            "The LM heads' outputs do not reproduce the models' logits (an unknown logit transform?); using the "
            "logits path. Set kd_chunk_size=0 to silence this."
        )
    return bool(ok)
