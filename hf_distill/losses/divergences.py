"""Per-token divergences between a student's and a teacher's output distributions.

Every function here takes logits of shape `(N, V)` (N positions, V classes or vocabulary entries) and returns a
`(N,)` float32 tensor: one divergence per position, before any masking, weighting or averaging. The math runs in
float32 whatever the input dtype, and `-inf` logits (masked vocabulary entries) never produce NaN: an entry with
zero probability contributes exactly zero to the sums in which it is the weight.

Notation: `p_t = softmax(teacher_logits / T)`, `p_s = softmax(student_logits / T)`, `KL(p ‖ q) = Σ p·(log p − log q)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = ["DIVERGENCES", "divergence_and_grad", "per_token_divergence"]


_FLOAT32_MIN = torch.finfo(torch.float32).min


def _log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    # float32 softmax even for bf16/fp16 logits: bf16 log-probs lose ~3 significant digits.
    log_probs = torch.log_softmax(logits.float() / temperature, dim=-1)
    # A -inf logit becomes the most negative finite float: its probability is still exactly 0, but 0·(-inf) = NaN
    # and the NaN gradients of logaddexp(-inf, -inf) can no longer appear, forwards or backwards.
    return log_probs.clamp_min(_FLOAT32_MIN)


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) per row from finite log-probabilities `(N, V)` -> `(N,)`; entries with p = 0 add exactly 0."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def _log_mixture(log_p: torch.Tensor, log_q: torch.Tensor, weight_p: float) -> torch.Tensor:
    """log(w·p + (1−w)·q) computed stably in log space, for 0 < w < 1."""
    w = torch.tensor(weight_p, dtype=log_p.dtype, device=log_p.device)
    return torch.logaddexp(log_p + w.log(), log_q + (1 - w).log())


def forward_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0, **_
) -> torch.Tensor:
    """KL(p_t ‖ p_s): mass-covering; the student is pushed to put probability wherever the teacher does (Hinton et al.).

    Args:
        student_logits (`torch.Tensor` of shape `(N, V)`), teacher_logits (`torch.Tensor` of shape `(N, V)`),
        temperature (`float`): as in `per_token_divergence`.

    Returns:
        `torch.Tensor` of shape `(N,)`, float32.
    """
    return _kl(_log_probs(teacher_logits, temperature), _log_probs(student_logits, temperature))


def reverse_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0, **_
) -> torch.Tensor:
    """KL(p_s ‖ p_t): mode-seeking; the student concentrates on the teacher's main modes (MiniLLM).

    Args:
        student_logits (`torch.Tensor` of shape `(N, V)`), teacher_logits (`torch.Tensor` of shape `(N, V)`),
        temperature (`float`): as in `per_token_divergence`.

    Returns:
        `torch.Tensor` of shape `(N,)`, float32.
    """
    return _kl(_log_probs(student_logits, temperature), _log_probs(teacher_logits, temperature))


def jsd(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0, beta: float = 0.5, **_
) -> torch.Tensor:
    """Generalized Jensen–Shannon divergence with the semantics of TRL's `DistillationTrainer` (GKD, Agarwal et al.).

    With mixture `m = (1−β)·p_s + β·p_t`, the loss is `β·KL(p_t ‖ m) + (1−β)·KL(p_s ‖ m)`. `beta=0.5` is the
    symmetric JSD. The two end points are defined as the KLs they interpolate towards: `beta=0` is exactly the forward
    KL(p_t ‖ p_s) and `beta=1` exactly the reverse KL(p_s ‖ p_t) (the mixture formula itself would vanish there).

    Args:
        student_logits (`torch.Tensor` of shape `(N, V)`), teacher_logits (`torch.Tensor` of shape `(N, V)`),
        temperature (`float`), beta (`float`): as in `per_token_divergence`.

    Returns:
        `torch.Tensor` of shape `(N,)`, float32.
    """
    if beta == 0.0:
        return forward_kl(student_logits, teacher_logits, temperature)
    if beta == 1.0:
        return reverse_kl(student_logits, teacher_logits, temperature)
    log_ps = _log_probs(student_logits, temperature)
    log_pt = _log_probs(teacher_logits, temperature)
    log_m = _log_mixture(log_pt, log_ps, beta)
    return beta * _kl(log_pt, log_m) + (1 - beta) * _kl(log_ps, log_m)


def tvd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0, **_) -> torch.Tensor:
    """Total variation distance ½·Σ|p_t − p_s|, bounded in [0, 1] and symmetric (DistiLLM, DistillKit).

    Args:
        student_logits (`torch.Tensor` of shape `(N, V)`), teacher_logits (`torch.Tensor` of shape `(N, V)`),
        temperature (`float`): as in `per_token_divergence`.

    Returns:
        `torch.Tensor` of shape `(N,)`, float32.
    """
    p_s = _log_probs(student_logits, temperature).exp()
    p_t = _log_probs(teacher_logits, temperature).exp()
    return 0.5 * (p_t - p_s).abs().sum(-1)


def skew_forward_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0, skew: float = 0.1, **_
) -> torch.Tensor:
    """Skew KL (DistiLLM, Ko et al. 2024): `KL(p_t ‖ α·p_t + (1−α)·p_s)` with `α = skew`.

    `skew=0` is the forward KL; a small positive skew keeps the loss finite where the student puts no mass.

    Args:
        student_logits (`torch.Tensor` of shape `(N, V)`), teacher_logits (`torch.Tensor` of shape `(N, V)`),
        temperature (`float`), skew (`float`): as in `per_token_divergence`.

    Returns:
        `torch.Tensor` of shape `(N,)`, float32.
    """
    log_pt = _log_probs(teacher_logits, temperature)
    log_ps = _log_probs(student_logits, temperature)
    if skew == 0.0:
        return _kl(log_pt, log_ps)
    return _kl(log_pt, _log_mixture(log_pt, log_ps, skew))


def skew_reverse_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0, skew: float = 0.1, **_
) -> torch.Tensor:
    """Skew reverse KL (DistiLLM): `KL(p_s ‖ (1−α)·p_t + α·p_s)` with `α = skew`; `skew=0` is the reverse KL.

    Args:
        student_logits (`torch.Tensor` of shape `(N, V)`), teacher_logits (`torch.Tensor` of shape `(N, V)`),
        temperature (`float`), skew (`float`): as in `per_token_divergence`.

    Returns:
        `torch.Tensor` of shape `(N,)`, float32.
    """
    log_pt = _log_probs(teacher_logits, temperature)
    log_ps = _log_probs(student_logits, temperature)
    if skew == 0.0:
        return _kl(log_ps, log_pt)
    return _kl(log_ps, _log_mixture(log_ps, log_pt, skew))


Divergence = Callable[..., torch.Tensor]

# The closed set of names a config may use; no dotted-path imports from YAML.
DIVERGENCES: dict[str, Divergence] = {
    "forward_kl": forward_kl,
    "reverse_kl": reverse_kl,
    "jsd": jsd,
    "tvd": tvd,
    "skew_forward_kl": skew_forward_kl,
    "skew_reverse_kl": skew_reverse_kl,
}


def per_token_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    loss: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    skew: float = 0.1,
) -> torch.Tensor:
    """Divergence between the student's and the teacher's distributions at every position.

    Args:
        student_logits (`torch.Tensor` of shape `(N, V)`):
            Student logits, any float dtype. Gradients flow through them.
        teacher_logits (`torch.Tensor` of shape `(N, V)`):
            Teacher logits over the same V entries, any float dtype.
        loss (`str`, *optional*, defaults to `"forward_kl"`):
            One of `forward_kl` (KL(p_t ‖ p_s)), `reverse_kl` (KL(p_s ‖ p_t)), `jsd` (generalized JSD, see `beta`),
            `tvd` (total variation), `skew_forward_kl` and `skew_reverse_kl` (DistiLLM, see `skew`).
        temperature (`float`, *optional*, defaults to 1.0):
            Softens both distributions: `softmax(logits / temperature)`. The T² factor of Hinton et al. is *not*
            applied here; the objective applies it.
        beta (`float`, *optional*, defaults to 0.5):
            `jsd` only. Weight of the teacher in the mixture `m = (1−β)·p_s + β·p_t`; `0` gives exactly the forward
            KL, `1` exactly the reverse KL, `0.5` the symmetric JSD. Same direction as TRL's `beta`.
        skew (`float`, *optional*, defaults to 0.1):
            Skew KLs only: the share α of the first distribution mixed into the second.

    Returns:
        `torch.Tensor` of shape `(N,)`, float32: the divergence at each position.

    Example:
        ```python
        >>> import torch
        >>> from hf_distill.losses import per_token_divergence
        >>> logits = torch.randn(3, 10)
        >>> per_token_divergence(logits, logits, loss="jsd").abs().max() < 1e-6
        tensor(True)
        ```
    """
    if loss not in DIVERGENCES:
        raise ValueError(f"loss={loss!r} is not a known divergence; use one of: {', '.join(DIVERGENCES)}.")
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise ValueError(
            "student_logits and teacher_logits must both have shape (N, V); got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}."
        )
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be > 0.")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta={beta} must lie in [0, 1] (0 = forward KL, 1 = reverse KL).")
    if not 0.0 <= skew < 1.0:
        raise ValueError(f"skew={skew} must lie in [0, 1).")
    return DIVERGENCES[loss](student_logits, teacher_logits, temperature=temperature, beta=beta, skew=skew)


# ---- closed-form gradients, for the chunked path ----
# The chunked loss computes each chunk's gradient during the forward pass. Autograd through the formulas above
# walks ~25 full (C, V) passes per chunk; these closed forms need about 10, which is what keeps the chunked loss
# near the matmul floor. Each is tested against autograd of the function above it (tests/test_losses.py).
#
# Common step: with p_s = softmax(z / T), d p_s,j / d z_i = p_s,j·(δ_ij − p_s,i) / T, so a gradient g wrt the
# probabilities becomes p_s ⊙ (g − Σ_j p_s,j·g_j) / T wrt the logits (`_through_softmax`, then the division by T).
# Any constant added to every g_j cancels there, which is why the "+1" of d(p·log p)/dp never appears below.


def _log_probs_and_probs(
    logits: torch.Tensor, temperature: float, overwrite: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities and probabilities at `temperature`, with one `exp` pass: the probabilities are the
    normaliser's own exponentials, rescaled. With `overwrite`, the float32 `logits` tensor itself becomes the
    log-probabilities, so a chunk keeps one (C, V) tile per model fewer alive."""
    if overwrite and logits.dtype == torch.float32:
        # Logits of a linear head over finite weights are finite, so the -inf guard below is not needed here.
        z = logits.div_(temperature) if temperature != 1.0 else logits
        z.sub_(z.amax(-1, keepdim=True))
        probs = z.exp()
        total = probs.sum(-1, keepdim=True)
        return z.sub_(total.log()), probs.div_(total)
    z = logits.float()
    log_probs = torch.log_softmax(z / temperature if temperature != 1.0 else z, dim=-1).clamp_min_(_FLOAT32_MIN)
    return log_probs, log_probs.exp()


def _through_softmax(p: torch.Tensor, grad_p: torch.Tensor) -> torch.Tensor:
    """Gradient wrt the logits of `softmax` given the gradient wrt its probabilities: p ⊙ (g − Σ p·g)."""
    inner = (p * grad_p).sum(-1, keepdim=True)
    return grad_p.sub_(inner).mul_(p)


def divergence_and_grad(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    loss: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    skew: float = 0.1,
    overwrite: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`per_token_divergence` and its gradient wrt the student logits, in closed form.

    Args:
        student_logits (`torch.Tensor` of shape `(N, V)`), teacher_logits (`torch.Tensor` of shape `(N, V)`):
            logits; no autograd graph is built.
        loss, temperature, beta, skew: as in `per_token_divergence`.
        overwrite (`bool`, *optional*, defaults to `False`): the caller owns both float32 logits tensors and lets
            them be overwritten with log-probabilities (saves memory; their contents are undefined afterwards).
            Only for finite logits (those of a linear head): the `-inf` guard is skipped.

    Returns:
        `(value, grad, student_log_probs)`: `value` `(N,)` float32 equals `per_token_divergence`; `grad` `(N, V)`
        float32 is d(value.sum())/d(student_logits); `student_log_probs` `(N, V)` are the student's log-probabilities
        at `temperature` (reused for the CE term when the temperature is 1).
    """
    if loss not in DIVERGENCES:
        raise ValueError(f"loss={loss!r} is not a known divergence; use one of: {', '.join(DIVERGENCES)}.")
    if loss == "jsd" and beta in (0.0, 1.0):
        loss = "forward_kl" if beta == 0.0 else "reverse_kl"
    if loss.startswith("skew_") and skew == 0.0:
        loss = loss[len("skew_") :]
    log_ps, p_s = _log_probs_and_probs(student_logits, temperature, overwrite)
    log_pt, p_t = _log_probs_and_probs(teacher_logits, temperature, overwrite)
    if loss == "forward_kl":  # the default
        # KL(p_t ‖ p_s) = Σ p_t·log p_t − Σ p_t·log p_s, and d log p_s,j / d z_i = (δ_ij − p_s,i) / T, so
        # d/dz_i = −Σ_j p_t,j·(δ_ij − p_s,i) / T = (p_s,i − p_t,i) / T (Σ p_t = 1).
        value = log_pt.sub_(log_ps).mul_(p_t).sum(-1)  # log_pt, p_s: tiles of this call's own (or given to it)
        grad = p_s.sub_(p_t)
        if temperature != 1.0:
            grad = grad.div_(temperature)
        return value, grad, log_ps
    if loss == "reverse_kl":
        # KL(p_s ‖ p_t) = Σ p_s·(log p_s − log p_t): d/dp_s,j = gap_j + 1 with gap = log p_s − log p_t; through the
        # softmax, d/dz_i = p_s,i·(gap_i − Σ_j p_s,j·gap_j) / T = p_s,i·(gap_i − KL) / T.
        gap = log_ps - log_pt
        value = (p_s * gap).sum(-1)
        grad = gap.sub_(value[:, None]).mul_(p_s)
    elif loss == "jsd":
        # m = (1−β)·p_s + β·p_t. d/dp_s,j of β·KL(p_t ‖ m) is −β(1−β)·p_t,j/m_j; of (1−β)·KL(p_s ‖ m) it is
        # (1−β)·(log(p_s,j/m_j) + 1 − (1−β)·p_s,j/m_j). The two 1/m_j terms sum to −(1−β)·m_j/m_j and cancel the
        # +1, leaving (1−β)·gap_j with gap = log(p_s/m): d/dz_i = (1−β)·p_s,i·(gap_i − KL(p_s ‖ m)) / T.
        log_m = torch.logaddexp(log_ps + math.log(1 - beta), log_pt + math.log(beta))
        kl_teacher = (p_t * (log_pt - log_m)).sum(-1)
        gap = log_ps - log_m
        kl_student = (p_s * gap).sum(-1)
        value = beta * kl_teacher + (1 - beta) * kl_student
        grad = gap.sub_(kl_student[:, None]).mul_(p_s).mul_(1 - beta)
    elif loss == "tvd":
        # ½·Σ|p_t − p_s|: d/dp_s,j = −½·sign(p_t,j − p_s,j) (a subgradient, 0 where p_t = p_s, as autograd's).
        difference = p_t - p_s
        value = 0.5 * difference.abs().sum(-1)
        grad = _through_softmax(p_s, difference.sign_().mul_(-0.5))
    elif loss == "skew_forward_kl":
        log_m = torch.logaddexp(log_pt + math.log(skew), log_ps + math.log(1 - skew))
        gap = log_pt - log_m
        value = (p_t * gap).sum(-1)
        # KL(p_t ‖ m) with m = α·p_t + (1−α)·p_s: d/dp_s,j = −p_t,j·(1−α)/m_j; gap.exp() = p_t/m.
        grad = _through_softmax(p_s, gap.exp_().mul_(-(1 - skew)))
    else:  # skew_reverse_kl
        log_m = torch.logaddexp(log_pt + math.log(1 - skew), log_ps + math.log(skew))
        gap = log_ps - log_m
        value = (p_s * gap).sum(-1)
        # KL(p_s ‖ m) with m = (1−α)·p_t + α·p_s: d/dp_s,j = log p_s,j − log m_j + 1 − α·p_s,j/m_j; the constant
        # 1 vanishes through the softmax.
        grad = _through_softmax(p_s, gap - (log_ps - log_m).exp_().mul_(skew))
    if temperature != 1.0:
        grad = grad.div_(temperature)
    return value, grad, log_ps
