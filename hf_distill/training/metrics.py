"""Running sums of the distillation terms between two log lines, kept as detached device tensors, and the label loss
`prediction_step` reports.

Nothing here calls `.item()` per micro-step: the sums are reduced across processes and turned into floats only when
the Trainer logs (`logging_steps`) or finishes an evaluation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from ..losses import ObjectiveSums


@dataclass
class DistillationMetrics:
    """Sums over valid positions: the objective, KD term, CE term (over positions that had labels), top-1 agreement."""

    total: torch.Tensor
    kd: torch.Tensor
    ce: torch.Tensor
    agreement: torch.Tensor
    num_targets: torch.Tensor
    num_ce_targets: torch.Tensor
    # Cross-tokenizer runs: both models' negative log-likelihood (nats) of the chunks they share, and those bytes.
    student_nats: torch.Tensor
    teacher_nats: torch.Tensor
    chunk_bytes: torch.Tensor

    @classmethod
    def zeros(cls, device: torch.device | str = "cpu") -> DistillationMetrics:
        return cls(*(torch.zeros((), dtype=torch.float64, device=device) for _ in fields(cls)))

    def add(self, sums: ObjectiveSums) -> None:
        self.total += sums.total.detach().to(self.kd)
        self.kd += sums.kd.to(self.kd)
        self.agreement += sums.agreement.to(self.kd)
        self.num_targets += sums.num_targets.to(self.kd)
        if sums.ce is not None:
            self.ce += sums.ce.to(self.kd)
            self.num_ce_targets += sums.num_targets.to(self.kd)
        if sums.bits is not None:  # (3,): student nats, teacher nats, bytes
            bits = sums.bits.to(self.kd)
            self.student_nats += bits[0]
            self.teacher_nats += bits[1]
            self.chunk_bytes += bits[2]

    def summarize(self, reduce_sum=None, prefix: str = "", objective: bool = False) -> dict[str, float]:
        """Per-position means, summed over processes first with `reduce_sum` (e.g. `accelerator.reduce`).

        With `objective`, also `{prefix}distillation_loss`: the objective's mean over every valid position (training
        logs leave it out: there the headline `loss` is the objective already).
        """
        stacked = torch.stack([getattr(self, f.name) for f in fields(self)])
        if reduce_sum is not None:
            stacked = reduce_sum(stacked)
        total, kd, ce, agreement, n, n_ce, student_nats, teacher_nats, chunk_bytes = stacked.tolist()
        if n == 0:
            return {}
        metrics = {f"{prefix}distillation_loss": total / n} if objective else {}
        metrics.update({f"{prefix}kd_loss": kd / n, f"{prefix}agreement": agreement / n})
        if n_ce:
            metrics[f"{prefix}ce_loss"] = ce / n_ce
        if chunk_bytes:  # tokenizer-independent: both models on the same bytes
            metrics[f"{prefix}student_bits_per_byte"] = student_nats / (math.log(2) * chunk_bytes)
            metrics[f"{prefix}teacher_bits_per_byte"] = teacher_nats / (math.log(2) * chunk_bytes)
        return metrics


def label_loss(sums: ObjectiveSums) -> torch.Tensor | None:
    """The student's own label loss of one batch, as `Trainer.prediction_step` reports it: the (label-smoothed, when
    `label_smoothing_factor` is set) cross-entropy averaged over the batch's valid positions, 0-dim and detached;
    `None` without labels. A batch whose labels are all `-100` gives NaN (0/0), as the model's own loss does, which
    `Trainer` then leaves out of `eval_loss` (`logging_nan_inf_filter`)."""
    if sums.ce is None:
        return None
    return (sums.ce.float() / sums.num_targets).detach()
