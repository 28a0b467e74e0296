"""`{prefix}_on_policy_reverse_kl`: how far the student's own greedy completions of the evaluation prompts are from
what the teacher would say, KL(p_student ‖ p_teacher) at T=1 averaged over the generated tokens (EOS included) of all
processes: the quantity on-policy distillation minimises, measured where the student actually goes."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from ..losses import KDObjective, ObjectiveSums
from .schedule import ON_POLICY
from .steps import OnPolicySteps

# The metric's objective: reverse KL at T=1, no CE (there are no labels for generated tokens).
REVERSE_KL = KDObjective(kd_loss="reverse_kl", kd_temperature=1.0, kd_weight=1.0, ce_weight=0.0)


def on_policy_reverse_kl(
    batches: Iterable[dict[str, Any]],
    steps: OnPolicySteps,
    model: nn.Module,
    accelerator: Any,
    score: Callable[[dict[str, Any]], ObjectiveSums],
    reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None,
) -> float | None:
    """The student's greedy completions of each batch's prompts, scored by `score` with `REVERSE_KL`.

    Args:
        batches (iterable of `dict`): the evaluation batches (on the device).
        steps (`OnPolicySteps`): generates and builds the scored batches.
        model (`nn.Module`): the wrapped student (`trainer.model_wrapped`).
        accelerator (`accelerate.Accelerator`): the trainer's.
        score (callable): `ObjectiveSums` of one scored batch under `REVERSE_KL`, without gradients.
        reduce_sum (callable, *optional*): sums a tensor over processes (a collective: every process calls it).

    Returns:
        `float`, or `None` when no token was generated anywhere.
    """
    totals = torch.zeros(2, dtype=torch.float64, device=accelerator.device)  # (kd sum, generated tokens)
    for batch in batches:
        scored = steps.generate(batch, model, accelerator, seed=0, kind=ON_POLICY, greedy=True)
        sums = score(scored.inputs())
        totals += torch.stack([sums.kd.to(totals), sums.num_targets.to(totals)])
    if reduce_sum is not None:
        totals = reduce_sum(totals)
    kd, count = totals.tolist()
    return kd / count if count else None
