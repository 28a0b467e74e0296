"""The distillation objective from a cached sparse teacher: its top-k log-probabilities per position, not its logits.

A teacher cache stores, at every position, the teacher's `k` most probable token ids, their log-probabilities at the
KD temperature T (sorted by descending probability), and the probability mass left outside them (the *tail*). The
student still produces full logits. Both models' distributions are projected onto the teacher's support, and the
divergences of `divergences.py` are applied to the projections:

- `bucket`: `k + 1` outcomes, the `k` ids plus one bucket for every other token. Nothing is thrown away, so with
  `k = V` this is exactly the dense objective, and with `k < V` it is the divergence of the two coarsened distributions.
- `renormalize`: `k` outcomes, each model's top-k probabilities rescaled to sum to 1; the tail is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .objective import KDObjective, ObjectiveSums, check_labels, kd_sum, top1_agreement, with_ce_term
from .reduction import Positions, Targets, align_for_prediction, select_targets, take_rows

__all__ = [
    "TAIL_MODES",
    "TopK",
    "gather_sparse_rows",
    "sparse_log_probs",
    "sparse_objective_sums",
    "sparse_row_sums",
    "sparse_row_sums_and_grad",
]

TAIL_MODES = ("bucket", "renormalize")


@dataclass(frozen=True)
class TopK:
    """A cached teacher's top-k per position: the sparse counterpart of its logits.

    Attributes:
        ids (`torch.Tensor` of shape `(B, T, k)` or `(B, k)`): the teacher's top-k token ids at every position the
            student has (not shifted: they align like teacher logits). Positions that do not count may hold padding.
        logprobs (`torch.Tensor` of shape `(B, T, k)` or `(B, k)`): `log_softmax(teacher_logits / T)` at `ids`.
        tail_mass (`torch.Tensor` of shape `(B, T)` or `(B,)`, *optional*): the teacher's mass outside the ids;
            `None` derives it from `logprobs` (see `sparse_log_probs`).
        tail (`str`, *optional*, defaults to `"bucket"`): one of `TAIL_MODES`, see `sparse_log_probs`.
    """

    ids: torch.Tensor
    logprobs: torch.Tensor
    tail_mass: torch.Tensor | None
    tail: str = "bucket"


_FLOAT32_MIN = torch.finfo(torch.float32).min
# A cached log-probability is log_softmax(...) <= 0 exactly; allow only for rounding in the cache's own storage.
_LOGPROB_TOLERANCE = 1e-4


def _check_sparse_inputs(
    student_logits: torch.Tensor,
    topk_ids: torch.Tensor,
    teacher_topk_logprobs: torch.Tensor,
    teacher_tail: torch.Tensor | None,
    temperature: float,
    tail: str,
) -> None:
    if tail not in TAIL_MODES:
        raise ValueError(f"tail={tail!r} is not a known tail mode; use one of: {', '.join(TAIL_MODES)}.")
    if not temperature > 0:
        raise ValueError(f"temperature={temperature} must be > 0.")
    if student_logits.dim() != 2 or topk_ids.dim() != 2 or topk_ids.shape[0] != student_logits.shape[0]:
        raise ValueError(
            f"student_logits must have shape (n, V) and topk_ids shape (n, k); got {tuple(student_logits.shape)} "
            f"and {tuple(topk_ids.shape)}."
        )
    if teacher_topk_logprobs.shape != topk_ids.shape:
        raise ValueError(
            f"teacher_topk_logprobs {tuple(teacher_topk_logprobs.shape)} must have the shape of topk_ids "
            f"{tuple(topk_ids.shape)}."
        )
    if teacher_tail is not None and teacher_tail.shape != topk_ids.shape[:1]:
        raise ValueError(
            f"teacher_tail {tuple(teacher_tail.shape)} must hold one value per row of topk_ids {tuple(topk_ids.shape)}."
        )
    if topk_ids.is_floating_point() or topk_ids.is_complex() or topk_ids.dtype == torch.bool:
        raise ValueError(f"topk_ids must hold integer token ids; got dtype {topk_ids.dtype}.")
    num_ids, vocab = topk_ids.shape[1], student_logits.shape[1]
    if not 1 <= num_ids <= vocab:
        raise ValueError(
            f"topk_ids holds k={num_ids} ids per position, but the student has V={vocab} entries; need 1 <= k <= V."
        )
    if topk_ids.shape[0] == 0:
        return
    # The value checks read the data: gather them into one tensor so a GPU batch costs one synchronisation, not four.
    logprobs = teacher_topk_logprobs.float()
    problems = [
        (topk_ids.min() < 0) | (topk_ids.max() >= vocab),
        logprobs.isnan().any(),
        (logprobs > _LOGPROB_TOLERANCE).any(),
    ]
    if teacher_tail is not None:
        tail_values = teacher_tail.float()
        problems.append(tail_values.isnan().any() | (tail_values < -_LOGPROB_TOLERANCE).any())
        problems.append((tail_values > 1 + _LOGPROB_TOLERANCE).any())
    bad_ids, nan_logprobs, positive_logprobs, *bad_tail = torch.stack(problems).tolist()
    if bad_ids:
        raise ValueError(
            f"topk_ids holds ids in [{topk_ids.min().item()}, {topk_ids.max().item()}], outside the student's "
            f"vocabulary [0, {vocab}); the cache must come from a teacher with the student's tokenizer."
        )
    if nan_logprobs:
        raise ValueError("teacher_topk_logprobs contains NaN; the teacher cache is corrupt.")
    if positive_logprobs:
        raise ValueError(
            f"teacher_topk_logprobs has values up to {logprobs.max().item():g}, but log-probabilities are <= 0; "
            "the cache must store log_softmax(teacher_logits / T), not logits or probabilities."
        )
    if bad_tail and bad_tail[0]:
        raise ValueError(
            "teacher_tail holds NaN or negative masses; the tail is 1 - (sum of the top-k probabilities)."
        )
    if bad_tail and bad_tail[1]:
        raise ValueError("teacher_tail holds masses above 1; the tail is 1 - (sum of the top-k probabilities).")


def sparse_log_probs(
    student_logits: torch.Tensor,
    topk_ids: torch.Tensor,
    teacher_topk_logprobs: torch.Tensor,
    teacher_tail: torch.Tensor | None,
    temperature: float,
    tail: str = "bucket",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both models' distributions projected onto the teacher's top-k support, as float32 log-probabilities.

    Args:
        student_logits (`torch.Tensor` of shape `(n, V)`):
            Student logits, any float dtype. Gradients flow through them.
        topk_ids (`torch.Tensor` of shape `(n, k)`):
            The teacher's top-k token ids per row, integers in `[0, V)`, distinct within a row.
        teacher_topk_logprobs (`torch.Tensor` of shape `(n, k)`):
            `log_softmax(teacher_logits / temperature)` at `topk_ids`. Must be `<= 0`; `-inf` is allowed.
        teacher_tail (`torch.Tensor` of shape `(n,)`, *optional*):
            The teacher's probability outside `topk_ids`. `None` derives it as `1 − Σ exp(teacher_topk_logprobs)`
            (clamped at 0), which loses precision when the tail is tiny. Unused in `renormalize` mode. With `k = V`
            the tail is zero by definition, whatever is passed.
        temperature (`float`):
            Applied to the student's logits. Must be the temperature the cache was written at.
        tail (`str`, *optional*, defaults to `"bucket"`):
            `"bucket"`: `k + 1` outcomes, the last one holding all the mass outside `topk_ids`.
            `"renormalize"`: `k` outcomes, each model's top-k probabilities rescaled to sum to 1.

    Returns:
        `(student, teacher)`: float32 log-probabilities of shape `(n, k + 1)` (`bucket`) or `(n, k)`
        (`renormalize`), each row normalised, clamped at the most negative float32 like `divergences._log_probs`
        (so `0·log 0` is 0, not NaN). Only `student` carries gradients. To feed them to `per_token_divergence`,
        pass zero probabilities as `-inf` (`sparse_row_sums` does), or their gradients can overflow into NaN.
    """
    _check_sparse_inputs(student_logits, topk_ids, teacher_topk_logprobs, teacher_tail, temperature, tail)
    ids = topk_ids.long()
    teacher = teacher_topk_logprobs.detach().float().clamp_min(_FLOAT32_MIN)
    scaled = student_logits.float() / temperature
    if tail == "renormalize":
        # log_softmax of the gathered logits equals "gathered log-probs minus their logsumexp" without subtracting
        # two full-vocabulary normalisers, and stays defined when the student puts ~0 mass on the whole support.
        # Clamping the gathered logits first keeps a row whose support the student masks entirely finite (uniform,
        # no gradient) instead of NaN: renormalising zero mass has no right answer, but it must not poison a batch.
        gathered = scaled.gather(1, ids).clamp_min(_FLOAT32_MIN)
        student = torch.log_softmax(gathered, dim=-1).clamp_min(_FLOAT32_MIN)
        return student, torch.log_softmax(teacher, dim=-1).clamp_min(_FLOAT32_MIN)

    log_probs = torch.log_softmax(scaled, dim=-1).clamp_min(_FLOAT32_MIN)
    student_top = log_probs.gather(1, ids)
    if ids.shape[1] == log_probs.shape[1]:
        # k = V: the bucket is empty for both models. A constant keeps rounding noise in a derived teacher tail
        # (1 − Σ p ≈ 1e-7) from meeting log 0 on the student's side, which would add ~1e31 to a forward KL.
        empty = log_probs.new_full((ids.shape[0], 1), _FLOAT32_MIN)
        return torch.cat([student_top, empty], dim=1), torch.cat([teacher, empty], dim=1)
    # The student's mass outside the ids, as a logsumexp over the rest of its log-probs: log(1 − Σ p) would cancel
    # catastrophically when the top-k hold nearly all the mass. The ids are filled with the clamp value, not -inf,
    # so the reduction never sees an all -inf row (whose backward is NaN).
    outside = log_probs.scatter(1, ids, _FLOAT32_MIN)
    student_tail = torch.logsumexp(outside, dim=-1, keepdim=True).clamp_min(_FLOAT32_MIN)
    if teacher_tail is None:
        # 1 − Σ p cancels: sum in float64 (only (n, k) values), which leaves the rounding of the stored log-probs as
        # the only error. MPS has no float64.
        wide = torch.float32 if teacher.device.type == "mps" else torch.float64
        teacher_mass = (1 - teacher.to(wide).exp().sum(-1)).clamp_min(0).float()
    else:
        teacher_mass = teacher_tail.detach().float().clamp_min(0)
    teacher_tail_log = teacher_mass.log().clamp_min(_FLOAT32_MIN)[:, None]
    return torch.cat([student_top, student_tail], dim=1), torch.cat([teacher, teacher_tail_log], dim=1)


def _as_masked(log_probs: torch.Tensor) -> torch.Tensor:
    """Zero probabilities back as `-inf`, the form in which `per_token_divergence` treats them as masked entries.

    Passed in at the clamp value instead, a zero-probability student entry facing a teacher entry with mass gets the
    gradient (clamp value − log q)·T², which overflows to -inf; times its probability 0 that is NaN, and the softmax
    backward inside the divergence spreads it over the whole row. Entered as `-inf`, the divergence's own clamp cuts
    that gradient off, exactly as for a masked logit in the dense loss. The values it computes do not change.
    """
    return log_probs.masked_fill(log_probs <= _FLOAT32_MIN, float("-inf"))


def sparse_row_sums(
    objective: KDObjective,
    student_rows: torch.Tensor,
    topk_ids: torch.Tensor,
    teacher_topk_logprobs: torch.Tensor,
    teacher_tail: torch.Tensor | None,
    labels: torch.Tensor | None,
    tail: str = "bucket",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """The objective summed over rows that all count, against a sparse teacher: `objective.row_sums`'s counterpart.

    Args:
        objective (`KDObjective`): what to compute; `kd_temperature` must be the temperature of the cache.
        student_rows (`torch.Tensor` of shape `(n, V)`): student logits (gradients flow).
        topk_ids (`torch.Tensor` of shape `(n, k)`), teacher_topk_logprobs (`torch.Tensor` of shape `(n, k)`),
        teacher_tail (`torch.Tensor` of shape `(n,)`, *optional*), tail (`str`): see `sparse_log_probs`.
        labels (`torch.Tensor` of shape `(n,)`, *optional*): hard labels of the rows.

    Returns:
        `(total, kd, ce, agreement)`: 0-dim tensors; `total` carries gradients, the others are detached. `agreement`
        counts rows where the student's largest logit is at the teacher's top-1 id (`topk_ids[:, 0]`).
    """
    student_sparse, teacher_sparse = sparse_log_probs(
        student_rows, topk_ids, teacher_topk_logprobs, teacher_tail, objective.kd_temperature, tail
    )
    # temperature 1: the projection has already applied T to both models
    kd = kd_sum(objective, _as_masked(student_sparse), _as_masked(teacher_sparse), temperature=1.0)
    total, ce = with_ce_term(objective, kd, student_rows, labels)
    agreement = top1_agreement(student_rows.detach(), topk_ids[:, :1].long())  # the ids are sorted: [:, 0] is top-1
    return total, kd.detach(), ce, agreement


def gather_sparse_rows(
    student: torch.Tensor, teacher: TopK, positions: Positions
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, Targets]:
    """The student's per-position tensor (logits, or hidden states for the chunked path) and the cached teacher, at
    the positions that count: `(student_rows (n, D), ids (n, k), log-probs (n, k), tail (n,) or None, targets)`."""
    shift = positions.shift_labels
    aligned = align_for_prediction(student, shift)
    ids = align_for_prediction(teacher.ids, shift)
    logprobs = align_for_prediction(teacher.logprobs, shift)
    if aligned.shape[:-1] != ids.shape[:-1] or logprobs.shape != ids.shape:
        raise ValueError(
            f"student {tuple(student.shape)} and teacher top-k ids {tuple(teacher.ids.shape)} / "
            f"log-probs {tuple(teacher.logprobs.shape)} cover different positions; the cache must be written "
            "from the same inputs as this batch."
        )
    tail_rows = None
    if teacher.tail_mass is not None:
        tail_rows = align_for_prediction(teacher.tail_mass, shift)
        if tail_rows.shape != ids.shape[:-1]:
            raise ValueError(
                f"teacher_tail {tuple(teacher.tail_mass.shape)} must have one value per position of topk_ids "
                f"{tuple(teacher.ids.shape)}."
            )
    leading = aligned.shape[:-1]
    targets = select_targets(leading, positions.labels, positions.attention_mask, shift)
    # Selecting first also keeps the padding of positions that do not count out of the input checks.
    tensors = (aligned, ids, logprobs) if tail_rows is None else (aligned, ids, logprobs, tail_rows)
    student_rows, id_rows, logprob_rows, *tail = take_rows(targets, len(leading), *tensors)
    return student_rows, id_rows, logprob_rows, tail[0] if tail else None, targets


def sparse_row_sums_and_grad(
    objective: KDObjective,
    student_rows: torch.Tensor,
    topk_ids: torch.Tensor,
    teacher_topk_logprobs: torch.Tensor,
    teacher_tail: torch.Tensor | None,
    labels: torch.Tensor | None,
    tail: str = "bucket",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """`sparse_row_sums` and the gradient of `total` wrt the student's rows `(n, V)` float32, for the chunked path.

    The gradient comes from autograd on these rows alone: a block of a chunk is small, and the projection onto the
    top-k support has no closed form worth maintaining beside the dense one.

    Args:
        objective, student_rows `(n, V)`, topk_ids `(n, k)`, teacher_topk_logprobs `(n, k)`, teacher_tail `(n,)`,
        labels `(n,)`, tail: as in `sparse_row_sums`.

    Returns:
        `(total, kd, ce, agreement, grad)`: detached 0-dim tensors as in `sparse_row_sums`, and `grad` `(n, V)` float32.
    """
    with torch.enable_grad():
        rows = student_rows.detach().float().requires_grad_()
        total, kd, ce, agreement = sparse_row_sums(
            objective, rows, topk_ids, teacher_topk_logprobs, teacher_tail, labels, tail
        )
        (grad,) = torch.autograd.grad(total, rows)
    return total.detach(), kd, ce, agreement, grad


def sparse_objective_sums(
    objective: KDObjective, student_logits: torch.Tensor, teacher: TopK, positions: Positions
) -> ObjectiveSums:
    """Compute the objective's sums for one micro-batch from the student's logits and a cached sparse teacher.

    The counterpart of `objective.objective_sums`: the same positions count, and the sums mean the same.

    Args:
        objective (`KDObjective`): what to compute; `kd_temperature` must be the temperature of the cache.
        student_logits (`torch.Tensor` of shape `(B, T, V)` or `(B, V)`): student logits, with gradients.
        teacher (`TopK`): ids and log-probabilities `(B, T, k)` or `(B, k)`, tail mass `(B, T)` or `(B,)` (optional)
            and the tail mode.
        positions (`Positions`): labels, attention mask, label shift, `require_labels`; as in `objective_sums`.

    Returns:
        `ObjectiveSums`.
    """
    check_labels(objective, positions)
    student_rows, id_rows, logprob_rows, tail_rows, targets = gather_sparse_rows(student_logits, teacher, positions)
    total, kd, ce, agreement = sparse_row_sums(
        objective, student_rows, id_rows, logprob_rows, tail_rows, targets.labels, teacher.tail
    )
    return ObjectiveSums(total, kd, ce, targets.count, agreement)
