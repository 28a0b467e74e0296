"""The distillation objective: a weighted sum of a KD divergence and the student's hard-label cross-entropy."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .divergences import DIVERGENCES, divergence_and_grad, per_token_divergence
from .reduction import Positions, Targets, align_for_prediction, select_targets, take_rows


@dataclass(frozen=True)
class KDObjective:
    """`kd_weight · T²·D(p_t, p_s) + ce_weight · CE(student, labels)`, each term averaged over valid positions.

    Field names match `DistillationConfig`, so every error message names the setting the user typed.

    Attributes:
        kd_loss (`str`): divergence name, one of `hf_distill.losses.DIVERGENCES`.
        kd_temperature (`float`): softmax temperature T applied to both models' logits in the KD term only.
        kd_temperature_scaling (`bool`): multiply the KD term by T² (Hinton et al. 2015), which keeps its gradients
            on the same scale as the CE term's when T changes.
        jsd_beta (`float`): teacher weight of the `jsd` mixture; 0 = forward KL, 1 = reverse KL.
        skew_alpha (`float`): skew of `skew_forward_kl` / `skew_reverse_kl`.
        kd_weight (`float`): weight of the KD term.
        ce_weight (`float`): weight of the hard-label cross-entropy term (needs labels).
        label_smoothing_factor (`float`): ε of the CE term, as `transformers.trainer_pt_utils.LabelSmoother`: per
            position `(1-ε)·(-log p_y) + ε·mean_v(-log p_v)`; 0 is the plain CE. The KD term is not smoothed.
    """

    kd_loss: str = "forward_kl"
    kd_temperature: float = 1.0
    kd_temperature_scaling: bool = True
    jsd_beta: float = 0.5
    skew_alpha: float = 0.1
    kd_weight: float = 1.0
    ce_weight: float = 0.0
    label_smoothing_factor: float = 0.0

    def __post_init__(self) -> None:
        if self.kd_loss not in DIVERGENCES:
            raise ValueError(
                f"kd_loss={self.kd_loss!r} is not a known divergence; use one of: {', '.join(DIVERGENCES)}."
            )
        if not self.kd_temperature > 0:
            raise ValueError(f"kd_temperature={self.kd_temperature} must be > 0 (1.0 leaves the logits unchanged).")
        if not 0.0 <= self.jsd_beta <= 1.0:
            raise ValueError(f"jsd_beta={self.jsd_beta} must lie in [0, 1] (0 = forward KL, 1 = reverse KL).")
        if not 0.0 <= self.skew_alpha < 1.0:
            raise ValueError(f"skew_alpha={self.skew_alpha} must lie in [0, 1).")
        for name in ("kd_weight", "ce_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0.")
        if not 0.0 <= self.label_smoothing_factor < 1.0:
            raise ValueError(
                f"label_smoothing_factor={self.label_smoothing_factor} must lie in [0, 1) (0 = plain cross-entropy)."
            )
        if self.kd_weight == 0 and self.ce_weight == 0:
            raise ValueError("kd_weight and ce_weight are both 0, so nothing would be trained; set kd_weight > 0.")

    @property
    def kd_scale(self) -> float:
        """The factor of the KD term: T² with `kd_temperature_scaling`, else 1."""
        return self.kd_temperature**2 if self.kd_temperature_scaling else 1.0

    def describe(self) -> str:
        """One readable line, e.g. `loss = 0.5·[4.0 (T²) · forward_kl at T=2.0] + 0.5·CE`."""
        detail = {"jsd": f", beta={self.jsd_beta}", "skew_forward_kl": f", skew={self.skew_alpha}"}
        detail["skew_reverse_kl"] = detail["skew_forward_kl"]
        scale = f"{self.kd_scale:g} (T²) · " if self.kd_temperature_scaling and self.kd_temperature != 1 else ""
        kd = f"{self.kd_weight:g}·[{scale}{self.kd_loss} at T={self.kd_temperature:g}{detail.get(self.kd_loss, '')}]"
        terms = [kd] if self.kd_weight else []
        if self.ce_weight:
            smoothing = f", label smoothing {self.label_smoothing_factor:g}" if self.label_smoothing_factor else ""
            terms.append(f"{self.ce_weight:g}·CE(labels{smoothing})")
        return "loss = " + " + ".join(terms) + ", averaged over valid tokens of each optimizer step"


@dataclass
class ObjectiveSums:
    """Per-micro-batch sums over valid positions; the caller normalises (see `reduction.normalize_token_sum`).

    Attributes:
        total (`torch.Tensor`, 0-dim): `kd_weight · kd + ce_weight · ce`, with gradients.
        kd (`torch.Tensor`, 0-dim): KD term summed over positions (T² applied), detached.
        ce (`torch.Tensor`, 0-dim or `None`): CE summed over positions, detached; `None` without labels.
        num_targets (`torch.Tensor`, 0-dim): number of valid positions.
        agreement (`torch.Tensor`, 0-dim): positions where the student's and the teacher's top-1 agree.
        bits (`torch.Tensor` of shape `(3,)`, float64, *optional*): cross-tokenizer objectives only: `[student NLL,
            teacher NLL, bytes]` summed over the aligned chunks that count, in nats at T = 1, detached; bits per byte
            of a model = its NLL / (ln 2 · bytes). `None` for same-tokenizer objectives.
    """

    total: torch.Tensor
    kd: torch.Tensor
    ce: torch.Tensor | None
    num_targets: torch.Tensor
    agreement: torch.Tensor
    bits: torch.Tensor | None = None


# ---- the steps every path (logits or hidden states, dense or sparse teacher) shares ----


def check_labels(objective: KDObjective, positions: Positions) -> None:
    """The batch-level label checks, once per micro-batch before any row is gathered.

    Args:
        objective (`KDObjective`): a CE term (`ce_weight > 0`) needs labels.
        positions (`Positions`): its `labels` `(B, T)` or `(B,)` must be integer class ids when present.

    Raises:
        `ValueError`: labels missing while `ce_weight > 0` and `require_labels`; or floating-point labels.
    """
    if objective.ce_weight > 0 and positions.labels is None and positions.require_labels:
        raise ValueError(
            f"ce_weight={objective.ce_weight} needs labels, but this batch has no `labels`; add labels to the "
            "dataset or set ce_weight=0 to train on the KD term alone."
        )
    check_class_labels(positions.labels)


def check_class_labels(labels: torch.Tensor | None) -> None:
    """Refuse floating-point labels (regression targets, multi-hot rows): a dtype check, no device sync.

    Args:
        labels (`torch.Tensor` of shape `(B, T)`, `(B,)` or `(B, C)`, *optional*): the batch's labels.
    """
    if labels is not None and labels.is_floating_point():
        raise ValueError(
            f"labels are floating point ({tuple(labels.shape)}: regression targets or multi-hot rows); the objective "
            "needs integer class labels (class ids, -100 for ignored positions). Regression and multi-label tasks "
            "are not distilled."
        )


def check_vocab(student_size: int, teacher_size: int, vocab_size: int | None) -> int:
    """The number of leading entries the two dense distributions are compared over.

    Args:
        student_size (`int`), teacher_size (`int`): the width `V` of each model's logits (or head).
        vocab_size (`int`, *optional*): the shared vocabulary, when the models pad their embeddings differently.

    Returns:
        `int`: `vocab_size`, or `student_size` when the two are equal and no `vocab_size` is given.
    """
    shared = vocab_size or student_size
    if min(student_size, teacher_size) < shared or (vocab_size is None and student_size != teacher_size):
        raise ValueError(
            f"student logits have {student_size} classes and teacher logits {teacher_size}; "
            "teacher and student must predict the same labels (or vocabulary) in the same order."
        )
    return shared


def kd_sum(
    objective: KDObjective, student_rows: torch.Tensor, teacher_rows: torch.Tensor, temperature: float
) -> torch.Tensor:
    """The KD term summed over rows that all count, T² applied (0-dim float32, gradients flow to the student).

    Args:
        objective (`KDObjective`): divergence, `jsd_beta`, `skew_alpha` and the T² scale.
        student_rows (`torch.Tensor` of shape `(n, V)`), teacher_rows (`torch.Tensor` of shape `(n, V)`): logits, or
            log-probabilities already at the temperature (the sparse path, which passes `temperature=1`).
        temperature (`float`): applied to both rows inside the divergence.
    """
    value = per_token_divergence(
        student_rows,
        teacher_rows,
        loss=objective.kd_loss,
        temperature=temperature,
        beta=objective.jsd_beta,
        skew=objective.skew_alpha,
    )  # (n,)
    return value.sum() * objective.kd_scale


def with_ce_term(
    objective: KDObjective, kd: torch.Tensor, student_rows: torch.Tensor, labels: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Combine the KD and CE terms: the one place that does it, for dense and sparse teachers alike.

    Args:
        objective (`KDObjective`): the weights and the label smoothing.
        kd (`torch.Tensor`, 0-dim): the KD term summed over the rows (`kd_sum`).
        student_rows (`torch.Tensor` of shape `(n, V)`): student logits (gradients flow).
        labels (`torch.Tensor` of shape `(n,)`, *optional*): hard labels of the rows, all valid.

    Returns:
        `(total, ce)`: `kd_weight · kd + ce_weight · CE` with gradients, and the CE detached (`None` without labels).
    """
    total = objective.kd_weight * kd
    if labels is None:
        return total, None
    # With ce_weight = 0 the CE is only logged: keep it out of the autograd graph.
    with torch.set_grad_enabled(torch.is_grad_enabled() and objective.ce_weight > 0):
        ce = smoothed_cross_entropy_sum(student_rows.float(), labels, objective.label_smoothing_factor)
    if objective.ce_weight:
        total = total + objective.ce_weight * ce
    return total, ce.detach()


def smoothed_cross_entropy_sum(rows: torch.Tensor, labels: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Cross-entropy with label smoothing, summed over rows (0-dim), exactly as `transformers`' `LabelSmoother`.

    Per row: `(1-ε)·(-log p_y) + ε·mean_v(-log p_v)`, the mean over all `V` entries of the row; `ε = 0` is plain CE.
    Summed, so that the caller divides once by the number of valid positions, as `LabelSmoother` does with
    `num_items_in_batch`. Reference: `LabelSmoother.__call__`, transformers v5.x `trainer_pt_utils.py`.

    Args:
        rows (`torch.Tensor` of shape `(n, V)`): logits, float32 (gradients flow).
        labels (`torch.Tensor` of shape `(n,)`): class indices, every one valid (no `-100`).
        epsilon (`float`): the smoothing factor, in [0, 1).
    """
    if not epsilon:
        return F.cross_entropy(rows, labels, reduction="sum")
    neg_log_probs = -torch.log_softmax(rows, dim=-1)  # (n, V)
    nll = neg_log_probs.gather(1, labels[:, None]).sum()
    return (1 - epsilon) * nll + epsilon * neg_log_probs.sum() / rows.shape[-1]


def top1_agreement(student_rows: torch.Tensor, teacher_top: torch.Tensor) -> torch.Tensor:
    """Rows where the student's largest logit is at the teacher's top entry, counted (0-dim); ties count.

    One max pass, not an argmax per model: on CPU argmax reads ~5x slower than amax, and this runs on every chunk.

    Args:
        student_rows (`torch.Tensor` of shape `(n, V)`): student logits (not differentiated).
        teacher_top (`torch.Tensor` of shape `(n, 1)`): the teacher's top-1 id per row, int64.
    """
    return (student_rows.gather(1, teacher_top) >= student_rows.amax(-1, keepdim=True)).sum()


# ---- a dense teacher: its logits over (a prefix of) the student's vocabulary ----


def row_sums(
    objective: KDObjective,
    student_rows: torch.Tensor,
    teacher_rows: torch.Tensor,
    labels: torch.Tensor | None,
    shared_vocab: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """The objective summed over rows that all count, against a dense teacher (autograd computes the gradient).

    Args:
        objective (`KDObjective`): what to compute.
        student_rows (`torch.Tensor` of shape `(n, V_s)`): student logits (gradients flow).
        teacher_rows (`torch.Tensor` of shape `(n, V_t)`): teacher logits.
        labels (`torch.Tensor` of shape `(n,)`, *optional*): hard labels of the rows.
        shared_vocab (`int`): compare the distributions over the first `shared_vocab` entries.

    Returns:
        `(total, kd, ce, agreement)`: 0-dim tensors; `total` carries gradients, the others are detached.
    """
    student_kd, teacher_kd = student_rows[:, :shared_vocab], teacher_rows[:, :shared_vocab]
    kd = kd_sum(objective, student_kd, teacher_kd, objective.kd_temperature)
    total, ce = with_ce_term(objective, kd, student_rows, labels)
    agreement = top1_agreement(student_kd.detach(), teacher_kd.argmax(-1, keepdim=True))
    return total, kd.detach(), ce, agreement


def row_sums_and_grad(
    objective: KDObjective,
    student_rows: torch.Tensor,
    teacher_rows: torch.Tensor,
    labels: torch.Tensor | None,
    shared_vocab: int,
    overwrite: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """`row_sums` and d(total)/d(student_rows) in closed form, without autograd (the chunked path's core).

    Args:
        objective, student_rows `(n, V_s)`, teacher_rows `(n, V_t)`, labels `(n,)`, shared_vocab: as in `row_sums`;
            the rows are float32 logits of linear heads (finite).
        overwrite (`bool`, *optional*, defaults to `False`): reuse both logits tensors as scratch space (see
            `divergence_and_grad`); their contents are undefined afterwards.

    Returns:
        `(total, kd, ce, agreement, grad)` with `grad` `(n, V_s)` float32.
    """
    agreement = top1_agreement(student_rows[:, :shared_vocab], teacher_rows[:, :shared_vocab].argmax(-1, keepdim=True))
    reuse = objective.kd_temperature == 1.0 and shared_vocab == student_rows.shape[-1]
    if labels is not None and not reuse:  # the CE needs the raw student logits before they are overwritten
        log_probs_t1 = torch.log_softmax(student_rows.float(), dim=-1)
    value, grad_kd, log_ps = divergence_and_grad(
        student_rows[:, :shared_vocab],
        teacher_rows[:, :shared_vocab],
        loss=objective.kd_loss,
        temperature=objective.kd_temperature,
        beta=objective.jsd_beta,
        skew=objective.skew_alpha,
        overwrite=overwrite,
    )
    kd = value.sum() * objective.kd_scale
    total = objective.kd_weight * kd
    grad_kd.mul_(objective.kd_weight * objective.kd_scale)
    if shared_vocab == student_rows.shape[-1]:
        grad = grad_kd
    else:  # padding rows of the student's head get no KD gradient
        grad = grad_kd.new_zeros(student_rows.shape)
        grad[:, :shared_vocab] = grad_kd
    ce = None
    if labels is not None:
        log_probs = log_ps if reuse else log_probs_t1  # (n, V_s) at T = 1
        eps = objective.label_smoothing_factor
        ce = -log_probs.gather(1, labels[:, None]).sum()
        if eps:  # (1-ε)·nll + ε·mean_v(-log p_v), as in `smoothed_cross_entropy_sum`
            ce = (1 - eps) * ce - eps * log_probs.sum() / log_probs.shape[-1]
        if objective.ce_weight:
            total = total + objective.ce_weight * ce
            # CE = −(1−ε)·log p_y − (ε/V)·Σ_v log p_v with log p_v = z_v − logsumexp(z), so
            # d CE / d z_v = −(1−ε)·(1[v=y] − p_v) − (ε/V)·(1 − V·p_v) = p_v − (1−ε)·1[v=y] − ε/V.
            grad.add_(log_probs.exp(), alpha=objective.ce_weight)
            if eps:
                grad.sub_(objective.ce_weight * eps / log_probs.shape[-1])
            grad.scatter_add_(
                1, labels[:, None], grad.new_full((labels.shape[0], 1), -objective.ce_weight * (1 - eps))
            )
    return total, kd, ce, agreement, grad


def gather_rows(
    student: torch.Tensor, teacher: torch.Tensor, positions: Positions
) -> tuple[torch.Tensor, torch.Tensor, Targets]:
    """The rows of both models' per-position tensors (logits or hidden states) at the positions that count.

    Args:
        student (`torch.Tensor` of shape `(B, T, D_s)` or `(B, D_s)`).
        teacher (`torch.Tensor` of shape `(B, T, D_t)` or `(B, D_t)`).
        positions (`Positions`): which positions count, and the label shift.

    Returns:
        `(student_rows (n, D_s), teacher_rows (n, D_t), targets)`.
    """
    student_aligned = align_for_prediction(student, positions.shift_labels)
    teacher_aligned = align_for_prediction(teacher, positions.shift_labels)
    if student_aligned.shape[:-1] != teacher_aligned.shape[:-1]:
        raise ValueError(
            f"student outputs {tuple(student.shape)} and teacher outputs {tuple(teacher.shape)} cover different "
            "positions; both models must see the same inputs."
        )
    leading = student_aligned.shape[:-1]
    targets = select_targets(leading, positions.labels, positions.attention_mask, positions.shift_labels)
    student_rows, teacher_rows = take_rows(targets, len(leading), student_aligned, teacher_aligned)
    return student_rows, teacher_rows, targets


def objective_sums(
    objective: KDObjective,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    positions: Positions,
    vocab_size: int | None = None,
) -> ObjectiveSums:
    """Compute the objective's sums for one micro-batch from both models' logits.

    Args:
        objective (`KDObjective`): what to compute.
        student_logits (`torch.Tensor` of shape `(B, T, V_s)` or `(B, V_s)`): student logits, with gradients.
        teacher_logits (`torch.Tensor` of shape `(B, T, V_t)` or `(B, V_t)`): teacher logits, no gradients.
        positions (`Positions`): labels `(B, T)` or `(B,)`, attention mask `(B, T)`, label shift, and whether a
            label-less batch is refused when `ce_weight > 0`.
        vocab_size (`int`, *optional*): compare the distributions over the first `vocab_size` entries only, when the
            two models pad their embeddings differently. CE always uses the student's full logits.

    Returns:
        `ObjectiveSums`.
    """
    check_labels(objective, positions)
    student_rows, teacher_rows, targets = gather_rows(student_logits, teacher_logits, positions)
    shared = check_vocab(student_rows.shape[-1], teacher_rows.shape[-1], vocab_size)
    total, kd, ce, agreement = row_sums(objective, student_rows, teacher_rows, targets.labels, shared)
    return ObjectiveSums(total, kd, ce, targets.count, agreement)
