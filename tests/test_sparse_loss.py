"""The sparse (top-k, cached teacher) objective: dense equivalence at k = V, float64 references at k < V, numerics."""

import pytest
import torch

from hf_distill.losses import (
    DIVERGENCES,
    TAIL_MODES,
    KDObjective,
    Positions,
    TopK,
    objective_sums,
    per_token_divergence,
    sparse_log_probs,
    sparse_objective_sums,
    sparse_row_sums,
)

FLOAT32_MIN = torch.finfo(torch.float32).min


def _cache(teacher_logits, temperature, k, order="sorted"):
    """What a teacher cache stores: top-k ids, their float32 log-probs at T, and the float32 tail mass."""
    log_probs = torch.log_softmax(teacher_logits.double() / temperature, dim=-1)
    if order == "sorted":
        ids = log_probs.argsort(dim=-1, descending=True)[:, :k]
    else:  # every row its own random order: the projection must not depend on where an id sits
        ids = torch.stack([torch.randperm(teacher_logits.shape[-1])[:k] for _ in range(teacher_logits.shape[0])])
    chosen = log_probs.gather(1, ids)
    tail = (1 - chosen.exp().sum(-1)).clamp_min(0)
    return ids, chosen.float(), tail.float()


def _objective(loss, temperature, **kwargs):
    return KDObjective(kd_loss=loss, kd_temperature=temperature, jsd_beta=0.3, skew_alpha=0.2, **kwargs)


# ---- 1. k = V: exactly the dense objective ----


@pytest.mark.parametrize("loss", list(DIVERGENCES))
@pytest.mark.parametrize("tail", TAIL_MODES)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("order, tail_source", [("permuted", "zero"), ("sorted", "derived")])
def test_full_support_equals_dense_value_and_gradient(loss, tail, temperature, order, tail_source):
    n, vocab = 7, 29
    student, teacher = torch.randn(n, vocab) * 3, torch.randn(n, vocab) * 3
    ids, logprobs, _ = _cache(teacher, temperature, vocab, order)
    teacher_tail = torch.zeros(n) if tail_source == "zero" else None
    objective = _objective(loss, temperature)

    sparse_in = student.clone().requires_grad_()
    total, kd, ce, _ = sparse_row_sums(objective, sparse_in, ids, logprobs, teacher_tail, None, tail=tail)
    total.backward()
    dense_in = student.clone().requires_grad_()
    dense = per_token_divergence(dense_in, teacher, loss, temperature, beta=0.3, skew=0.2).sum() * objective.kd_scale
    dense.backward()

    assert ce is None and not kd.requires_grad
    torch.testing.assert_close(kd, dense.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sparse_in.grad, dense_in.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("loss", list(DIVERGENCES))
@pytest.mark.parametrize("tail", TAIL_MODES)
@pytest.mark.parametrize("causal", [True, False], ids=["causal_lm", "classification"])
def test_objective_sums_match_dense_with_padding(loss, tail, causal):
    batch, length, vocab, temperature = 3, 6, 17, 2.0
    shape = (batch, length, vocab) if causal else (batch, vocab)
    teacher = torch.randn(shape) * 2
    student = teacher + torch.randn(shape)
    # One counted position where the top-1s agree for sure, one where they cannot: agreement is neither 0 nor all.
    student[0] = 1.5 * teacher[0]  # not an exact copy: TVD's gradient is undefined where p_s = p_t
    student[2] = -teacher[2]
    labels = torch.randint(0, vocab, shape[:-1])
    if causal:
        labels[0, 4:] = -100  # a short sequence
        labels[2, :3] = -100  # a masked prompt
    else:
        labels[1] = -100
    ids, logprobs, teacher_tail = _cache(teacher.reshape(-1, vocab), temperature, vocab)
    ids, logprobs = ids.reshape(*shape[:-1], vocab), logprobs.reshape(*shape[:-1], vocab)
    teacher_tail = teacher_tail.reshape(shape[:-1])
    # Positions that never count hold padding that would fail the input checks if it were read.
    counts = labels[:, 1:] != -100 if causal else labels != -100
    ignored = torch.cat([~counts, torch.ones(batch, 1, dtype=torch.bool)], dim=1) if causal else ~counts
    ids[ignored], logprobs[ignored], teacher_tail[ignored] = -1, 1.0, float("nan")
    objective = _objective(loss, temperature, kd_weight=0.6, ce_weight=0.4)

    sparse_in = student.clone().requires_grad_()
    positions = Positions(labels, shift_labels=causal)
    got = sparse_objective_sums(objective, sparse_in, TopK(ids, logprobs, teacher_tail, tail), positions)
    got.total.backward()
    dense_in = student.clone().requires_grad_()
    want = objective_sums(objective, dense_in, teacher, positions)
    want.total.backward()

    torch.testing.assert_close(got.total.detach(), want.total.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.kd, want.kd, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.ce, want.ce, rtol=1e-5, atol=1e-6)
    assert got.num_targets == want.num_targets == counts.sum()
    assert 0 < got.agreement == want.agreement < counts.sum()
    torch.testing.assert_close(sparse_in.grad, dense_in.grad, rtol=1e-5, atol=1e-5)


# ---- 2. k < V: the divergence of the coarsened distributions, against float64 references ----


def reference(loss, student, teacher, ids, temperature, tail, teacher_probs=None, beta=0.3):
    """The projected distributions written out in float64: bucket = the k ids plus one outcome for the rest.

    `teacher_probs` `(n, k)`: the teacher's top-k probabilities to use instead of the exact ones (with the tail
    `1 − Σ` of them), to model a tail derived from what the cache stored.
    """
    p_s = torch.softmax(student.double() / temperature, dim=-1)
    p_t = torch.softmax(teacher.double() / temperature, dim=-1)
    rest = torch.ones_like(p_s, dtype=torch.bool).scatter(1, ids, False)
    q_s, q_t = p_s.gather(1, ids), p_t.gather(1, ids) if teacher_probs is None else teacher_probs
    if tail == "bucket":
        s_tail = (p_s * rest).sum(-1, keepdim=True)
        t_tail = (p_t * rest).sum(-1, keepdim=True) if teacher_probs is None else 1 - q_t.sum(-1, keepdim=True)
        q_s, q_t = torch.cat([q_s, s_tail], dim=1), torch.cat([q_t, t_tail], dim=1)
    else:
        q_s, q_t = q_s / q_s.sum(-1, keepdim=True), q_t / q_t.sum(-1, keepdim=True)

    def kl(p, q):
        return (p * (p.log() - q.log())).sum(-1)

    if loss == "forward_kl":
        return kl(q_t, q_s)
    if loss == "reverse_kl":
        return kl(q_s, q_t)
    mixture = beta * q_t + (1 - beta) * q_s
    return beta * kl(q_t, mixture) + (1 - beta) * kl(q_s, mixture)


@pytest.mark.parametrize("loss", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("tail, tail_source", [("bucket", "given"), ("bucket", "derived"), ("renormalize", "given")])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("k", [1, 5, 30])
def test_partial_support_matches_float64_reference(loss, tail, tail_source, temperature, k):
    n, vocab = 6, 41
    student, teacher = torch.randn(n, vocab) * 3, torch.randn(n, vocab) * 3
    ids, logprobs, teacher_tail = _cache(teacher, temperature, k)
    given_tail = teacher_tail if tail_source == "given" else None

    student_in = student.clone().requires_grad_()
    log_s, log_t = sparse_log_probs(student_in, ids, logprobs, given_tail, temperature, tail=tail)
    assert log_s.shape == log_t.shape == (n, k + 1 if tail == "bucket" else k)
    got = per_token_divergence(log_s, log_t, loss, temperature=1.0, beta=0.3)
    got.sum().backward()
    student64 = student.double().requires_grad_()
    # A derived tail can only be as exact as the stored float32 log-probs it is derived from (1 − Σ p cancels).
    stored = logprobs.double().exp() if tail_source == "derived" else None
    want = reference(loss, student64, teacher, ids, temperature, tail, teacher_probs=stored)
    want.sum().backward()

    torch.testing.assert_close(got.double(), want.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(student_in.grad.double(), student64.grad, rtol=1e-5, atol=1e-6)


def test_student_bucket_is_accurate_when_the_top_k_hold_nearly_all_mass():
    # log(1 − Σ p) would round to log(0) or to noise here; the masked logsumexp keeps every digit.
    vocab, k = 50, 4
    student = torch.randn(3, vocab)
    student[:, :k] += 25.0
    ids = torch.arange(k).expand(3, k)
    log_s, _ = sparse_log_probs(student, ids, torch.full((3, k), -1.4), None, 1.0)
    log_p = torch.log_softmax(student.double(), dim=-1)
    want = torch.logsumexp(log_p[:, k:], dim=-1)
    assert (want < -20).all()
    torch.testing.assert_close(log_s[:, -1].double(), want, rtol=1e-5, atol=0)


# ---- 3. the two tail modes are different objectives ----


@pytest.mark.parametrize("loss", list(DIVERGENCES))
def test_bucket_and_renormalize_differ_when_the_tail_matters(loss):
    # The student has the teacher's shape on the support but e³ times its odds for every other token: the
    # renormalised distributions are identical, the bucketed ones are not.
    n, vocab, k = 8, 40, 6
    teacher = torch.randn(n, vocab)
    ids, logprobs, teacher_tail = _cache(teacher, 1.0, k)
    student = (teacher + 3.0).scatter(1, ids, teacher.gather(1, ids))
    assert teacher_tail.min() > 0.2  # a flat teacher: its top-6 leave much of the mass outside
    objective = _objective(loss, 1.0)
    bucket = sparse_row_sums(objective, student, ids, logprobs, teacher_tail, None, tail="bucket")[1]
    renormalized = sparse_row_sums(objective, student, ids, logprobs, teacher_tail, None, tail="renormalize")[1]
    assert renormalized.abs() < 1e-5 and bucket > 0.1


# ---- 4. numerics ----


def _masked_case(case, n=4, vocab=20):
    """Student logits and a sparse teacher with zero probabilities in the places `case` names."""
    k = vocab if case == "full_support" else 8
    student = torch.randn(n, vocab)
    ids = torch.stack([torch.randperm(vocab)[:k] for _ in range(n)])
    logprobs = torch.log_softmax(torch.randn(n, k), dim=-1) - 0.5  # the top-k hold e^-0.5 of the teacher's mass
    if case in ("shared_masks", "full_support"):
        student.scatter_(1, ids[:, :2], float("-inf"))  # the student masks two of the teacher's ids ...
        logprobs[:, :2] = FLOAT32_MIN  # ... which the teacher gives zero probability too
        logprobs[0, 2] = float("-inf")  # the teacher alone zeroes one more
        outside = torch.ones(n, vocab, dtype=torch.bool).scatter(1, ids, False)
        if outside.any():  # and the student masks one token of its own tail
            student[0, outside[0].nonzero()[0]] = float("-inf")
    elif case == "student_masks_teacher_mass":
        student.scatter_(1, ids[:, :1], float("-inf"))
    elif case == "student_masks_support":  # nothing to renormalise: must stay finite, not NaN
        student[1:2].scatter_(1, ids[1:2], float("-inf"))
    elif case == "empty_student_tail":  # the student masks every token outside the support
        student = torch.full((n, vocab), float("-inf")).scatter(1, ids, torch.randn(n, k))
        logprobs = torch.log_softmax(logprobs, dim=-1)  # the teacher's tail is float32 rounding noise, ~1e-7
    if case == "full_support":
        logprobs = torch.log_softmax(logprobs, dim=-1)
    teacher_tail = (1 - logprobs.exp().sum(-1)).clamp_min(0)
    return student, ids, logprobs, teacher_tail


@pytest.mark.parametrize("loss", list(DIVERGENCES))
@pytest.mark.parametrize("tail", TAIL_MODES)
@pytest.mark.parametrize(
    "case, scaling",
    [
        # Without T² here: a reverse KL against the teacher-only zero is ~1e37 per row, whose T²-scaled gradient
        # overflows in the dense loss as well (tests/test_losses.py checks the same case the same way).
        ("shared_masks", False),
        ("full_support", False),
        ("student_masks_teacher_mass", True),
        ("empty_student_tail", True),
        ("student_masks_support", True),
    ],
)
def test_masked_entries_give_no_nan(loss, tail, case, scaling):
    student, ids, logprobs, teacher_tail = _masked_case(case)
    student = student.requires_grad_()
    objective = _objective(loss, 2.0, kd_temperature_scaling=scaling)
    total, kd, _, _ = sparse_row_sums(objective, student, ids, logprobs, teacher_tail, None, tail=tail)
    total.backward()
    # A student with no mass where the teacher has some is an infinite forward KL: inf is the right value, NaN never.
    assert not kd.isnan() and torch.isfinite(student.grad).all()
    if case in ("shared_masks", "full_support"):
        assert torch.isfinite(kd)


@pytest.mark.parametrize("tail", TAIL_MODES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_student_computes_in_float32(tail, dtype):
    student, teacher = torch.randn(5, 30).to(dtype), torch.randn(5, 30)
    ids, logprobs, teacher_tail = _cache(teacher, 2.0, 7)
    got = sparse_log_probs(student, ids, logprobs, teacher_tail, 2.0, tail=tail)
    want = sparse_log_probs(student.float(), ids, logprobs, teacher_tail, 2.0, tail=tail)
    assert got[0].dtype == got[1].dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=0)  # the same float32 math on the same rounded values
    student = student.requires_grad_()
    sparse_row_sums(_objective("jsd", 2.0), student, ids, logprobs.bfloat16(), None, None, tail=tail)[0].backward()
    assert student.grad.dtype == dtype and torch.isfinite(student.grad).all()


# ---- 5. bad input is refused, naming the argument ----


def _bad(case):
    n, vocab, k = 3, 10, 4
    args = {
        "student_logits": torch.randn(n, vocab),
        "topk_ids": torch.arange(k).expand(n, k).clone(),
        "teacher_topk_logprobs": torch.full((n, k), -2.0),
        "teacher_tail": torch.full((n,), 1 - 4 * torch.tensor(-2.0).exp().item()),
        "temperature": 1.0,
    }
    if case == "tail_mode":
        args["tail"] = "dense"
    elif case == "k_above_vocab":
        args["topk_ids"] = torch.arange(vocab + 1).expand(n, vocab + 1)
        args["teacher_topk_logprobs"] = torch.full((n, vocab + 1), -3.0)
    elif case == "id_too_large":
        args["topk_ids"][1, 2] = vocab
    elif case == "id_negative":
        args["topk_ids"][0, 0] = -1
    elif case == "float_ids":
        args["topk_ids"] = args["topk_ids"].float()
    elif case == "positive_logprob":
        args["teacher_topk_logprobs"][2, 0] = 0.5
    elif case == "nan_logprob":
        args["teacher_topk_logprobs"][2, 0] = float("nan")
    elif case == "negative_tail":
        args["teacher_tail"][1] = -0.5
    elif case == "logprob_shape":
        args["teacher_topk_logprobs"] = args["teacher_topk_logprobs"][:, :3]
    elif case == "temperature":
        args["temperature"] = 0.0
    return args


@pytest.mark.parametrize(
    "case, message",
    [
        ("tail_mode", r"tail='dense'.*bucket, renormalize"),
        ("k_above_vocab", r"topk_ids holds k=11 .* V=10"),
        ("id_too_large", r"topk_ids holds ids in \[0, 10\].*\[0, 10\)"),
        ("id_negative", r"topk_ids holds ids in \[-1, 3\]"),
        ("float_ids", r"topk_ids must hold integer"),
        ("positive_logprob", r"teacher_topk_logprobs has values up to 0.5"),
        ("nan_logprob", r"teacher_topk_logprobs contains NaN"),
        ("negative_tail", r"teacher_tail holds NaN or negative"),
        ("logprob_shape", r"teacher_topk_logprobs \(3, 3\) must have the shape of topk_ids \(3, 4\)"),
        ("temperature", r"temperature=0.0"),
    ],
)
def test_bad_input_is_named(case, message):
    with pytest.raises(ValueError, match=message):
        sparse_log_probs(**_bad(case))


def test_positions_that_differ_are_refused_naming_both_shapes():
    ids, logprobs = torch.zeros(2, 5, 3, dtype=torch.long), torch.full((2, 5, 3), -1.0)
    with pytest.raises(ValueError, match=r"\(2, 6, 10\).*\(2, 5, 3\)"):
        sparse_objective_sums(
            _objective("forward_kl", 1.0),
            torch.randn(2, 6, 10),
            TopK(ids, logprobs, None),
            Positions(shift_labels=True),
        )
