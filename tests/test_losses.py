"""Every divergence against a naive float64 reference, its identities, and its numerics."""

import math

import pytest
import torch

from hf_distill.losses import DIVERGENCES, per_token_divergence

SHAPES = [(3, 47), (31, 123), (1, 2)]


def _softmax64(logits, temperature):
    rows = []
    for row in logits.double().tolist():
        z = [x / temperature for x in row]
        top = max(z)
        e = [math.exp(x - top) for x in z]
        total = sum(e)
        rows.append([x / total for x in e])
    return rows


def _kl64(p, q):
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q) if pi > 0)


def _mix(a, b, w):
    return [w * x + (1 - w) * y for x, y in zip(a, b)]


def naive(loss, s_logits, t_logits, temperature=1.0, beta=0.5, skew=0.1):
    """Plain-Python float64 reference, written from the formulas, one row at a time."""
    out = []
    for ps, pt in zip(_softmax64(s_logits, temperature), _softmax64(t_logits, temperature)):
        if loss == "forward_kl":
            out.append(_kl64(pt, ps))
        elif loss == "reverse_kl":
            out.append(_kl64(ps, pt))
        elif loss == "jsd":
            if beta == 0:
                out.append(_kl64(pt, ps))
            elif beta == 1:
                out.append(_kl64(ps, pt))
            else:
                m = _mix(pt, ps, beta)  # (1-β)·p_s + β·p_t
                out.append(beta * _kl64(pt, m) + (1 - beta) * _kl64(ps, m))
        elif loss == "tvd":
            out.append(0.5 * sum(abs(a - b) for a, b in zip(pt, ps)))
        elif loss == "skew_forward_kl":
            out.append(_kl64(pt, _mix(pt, ps, skew)))
        elif loss == "skew_reverse_kl":
            out.append(_kl64(ps, _mix(ps, pt, skew)))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("loss", list(DIVERGENCES))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_matches_naive_float64_reference(loss, shape, temperature):
    s, t = torch.randn(shape) * 3, torch.randn(shape) * 3
    kwargs = {"beta": 0.3, "skew": 0.2}
    got = per_token_divergence(s, t, loss=loss, temperature=temperature, **kwargs)
    assert got.dtype == torch.float32 and got.shape == (shape[0],)
    torch.testing.assert_close(got.double(), naive(loss, s, t, temperature, **kwargs), rtol=1e-5, atol=1e-6)


def naive_autograd(loss, s, t, temperature, beta, skew):
    """The same formulas in float64 torch ops, for gradients (finite logits only)."""
    ps, pt = torch.softmax(s / temperature, -1), torch.softmax(t / temperature, -1)

    def kl(p, q):
        return (p * (p.log() - q.log())).sum(-1)

    return {
        "forward_kl": lambda: kl(pt, ps),
        "reverse_kl": lambda: kl(ps, pt),
        "jsd": lambda: beta * kl(pt, beta * pt + (1 - beta) * ps) + (1 - beta) * kl(ps, beta * pt + (1 - beta) * ps),
        "tvd": lambda: 0.5 * (pt - ps).abs().sum(-1),
        "skew_forward_kl": lambda: kl(pt, skew * pt + (1 - skew) * ps),
        "skew_reverse_kl": lambda: kl(ps, skew * ps + (1 - skew) * pt),
    }[loss]()


@pytest.mark.parametrize("loss", list(DIVERGENCES))
def test_gradient_matches_float64_autograd(loss):
    s, t = torch.randn(7, 29) * 2, torch.randn(7, 29) * 2
    s32 = s.clone().requires_grad_()
    per_token_divergence(s32, t, loss=loss, temperature=1.7, beta=0.4, skew=0.15).sum().backward()
    s64 = s.double().requires_grad_()
    naive_autograd(loss, s64, t.double(), 1.7, 0.4, 0.15).sum().backward()
    torch.testing.assert_close(s32.grad.double(), s64.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("loss", list(DIVERGENCES))
def test_identical_distributions_give_zero(loss):
    logits = torch.randn(5, 33)
    assert per_token_divergence(logits, logits.clone(), loss=loss).abs().max() < 1e-6


def test_jsd_symmetric_at_half_and_endpoints_are_the_kls():
    s, t = torch.randn(9, 41), torch.randn(9, 41)
    torch.testing.assert_close(
        per_token_divergence(s, t, "jsd", beta=0.5), per_token_divergence(t, s, "jsd", beta=0.5)
    )
    torch.testing.assert_close(per_token_divergence(s, t, "jsd", beta=0.0), per_token_divergence(s, t, "forward_kl"))
    torch.testing.assert_close(per_token_divergence(s, t, "jsd", beta=1.0), per_token_divergence(s, t, "reverse_kl"))
    torch.testing.assert_close(
        per_token_divergence(s, t, "skew_forward_kl", skew=0.0), per_token_divergence(s, t, "forward_kl")
    )
    torch.testing.assert_close(
        per_token_divergence(s, t, "skew_reverse_kl", skew=0.0), per_token_divergence(s, t, "reverse_kl")
    )
    assert per_token_divergence(s, t, "tvd").le(1.0).all()


@pytest.mark.parametrize("beta", [0.0, 0.25, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_jsd_matches_trl(beta, temperature):
    """Same β direction and values as TRL's DistillationTrainer (its CPU path of ChunkedDivergenceFunction)."""
    from trl.kernels.chunked_divergence import ChunkedDivergenceFunction

    n, hidden, vocab = 13, 16, 37
    h_s, h_t = torch.randn(n, hidden), torch.randn(n, hidden)
    w_s, w_t = torch.randn(vocab, hidden) / 2, torch.randn(vocab, hidden) / 2
    trl_divergence, _ = ChunkedDivergenceFunction.apply(h_s, w_s, None, h_t, w_t, None, beta, temperature)
    ours = per_token_divergence(h_s @ w_s.T, h_t @ w_t.T, loss="jsd", temperature=temperature, beta=beta)
    torch.testing.assert_close(ours, trl_divergence.float(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("loss", list(DIVERGENCES))
def test_half_precision_inputs_compute_in_float32(dtype, loss):
    s, t = torch.randn(6, 50).to(dtype), torch.randn(6, 50).to(dtype)
    got = per_token_divergence(s, t, loss=loss, temperature=2.0)
    assert got.dtype == torch.float32
    # Exactly the float32 computation on the same (rounded) values: no math happens in half precision.
    torch.testing.assert_close(got, per_token_divergence(s.float(), t.float(), loss=loss, temperature=2.0))


@pytest.mark.parametrize("loss", list(DIVERGENCES))
def test_negative_infinity_logits_give_no_nan(loss):
    s, t = torch.randn(4, 20), torch.randn(4, 20)
    s[:, :5] = float("-inf")  # both models mask the same entries
    t[:, :5] = float("-inf")
    t[0, 10] = float("-inf")  # the teacher alone masks one more
    s = s.requires_grad_()
    value = per_token_divergence(s, t, loss=loss, temperature=2.0, beta=0.5)
    value.sum().backward()
    assert torch.isfinite(value).all() and torch.isfinite(s.grad).all()
    reference = per_token_divergence(s.detach()[:, 5:], t[:, 5:], loss=loss, temperature=2.0, beta=0.5)
    torch.testing.assert_close(value, reference)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"loss": "kl"}, "forward_kl, reverse_kl, jsd, tvd, skew_forward_kl, skew_reverse_kl"),
        ({"temperature": 0.0}, "temperature=0.0"),
        ({"beta": 1.5}, "beta=1.5"),
        ({"skew": 1.0}, "skew=1.0"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        per_token_divergence(torch.randn(2, 3), torch.randn(2, 3), **kwargs)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(2, 4\)"):
        per_token_divergence(torch.randn(2, 3), torch.randn(2, 4))


@pytest.mark.parametrize("loss", list(DIVERGENCES))
@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("beta, skew", [(0.3, 0.2), (0.0, 0.0), (1.0, 0.5)])
def test_closed_form_gradient_equals_autograd(loss, temperature, beta, skew):
    from hf_distill.losses.divergences import divergence_and_grad

    s, t = torch.randn(13, 37) * 2, torch.randn(13, 37) * 2
    value, grad, log_ps = divergence_and_grad(s, t, loss, temperature, beta, skew)
    leaf = s.clone().requires_grad_()
    reference = per_token_divergence(leaf, t, loss, temperature, beta, skew)
    reference.sum().backward()
    torch.testing.assert_close(value, reference.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, leaf.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(log_ps, torch.log_softmax(s / temperature, -1))


@pytest.mark.parametrize("loss", list(DIVERGENCES))
def test_closed_form_gradient_with_masked_entries_is_finite(loss):
    from hf_distill.losses.divergences import divergence_and_grad

    s, t = torch.randn(4, 20), torch.randn(4, 20)
    s[:, :5] = t[:, :5] = float("-inf")
    value, grad, _ = divergence_and_grad(s, t, loss, 2.0, 0.5, 0.1)
    assert torch.isfinite(value).all() and torch.isfinite(grad).all()
    torch.testing.assert_close(value, per_token_divergence(s, t, loss, 2.0, 0.5, 0.1))
