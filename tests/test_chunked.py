"""The chunked objective from hidden states equals the logits path: loss and gradients, every divergence."""

import pytest
import torch

from hf_distill.losses import DIVERGENCES, KDObjective, Positions, objective_sums
from hf_distill.losses.chunked import HeadInput, LinearHead, chunked_objective_sums


def _setup(batch, length, hidden_s, hidden_t, vocab_s, vocab_t, dtype=torch.float32, bias=True, ignore_rows=()):
    h_s = torch.randn(batch, length, hidden_s, dtype=dtype, requires_grad=True)
    h_t = torch.randn(batch, length, hidden_t, dtype=dtype)
    w_s = (torch.randn(vocab_s, hidden_s) / hidden_s**0.5).to(dtype).requires_grad_()
    w_t = (torch.randn(vocab_t, hidden_t) / hidden_t**0.5).to(dtype)
    b_s = (torch.randn(vocab_s) * 0.1).to(dtype).requires_grad_() if bias else None
    labels = torch.randint(0, min(vocab_s, vocab_t), (batch, length))
    for row in ignore_rows:
        labels[row] = -100
    labels[0, -2:] = -100
    return h_s, h_t, w_s, w_t, b_s, labels


def _both(objective, tensors, student_kw=None, teacher_kw=None, chunk=5, shift=True, vocab_size=None):
    h_s, h_t, w_s, w_t, b_s, labels = tensors
    student, teacher = LinearHead(w_s, b_s, **(student_kw or {})), LinearHead(w_t, None, **(teacher_kw or {}))
    params = [p for p in (h_s, w_s, b_s) if p is not None]

    positions = Positions(labels, shift_labels=shift)
    chunked = chunked_objective_sums(
        objective, HeadInput(h_s, student), HeadInput(h_t, teacher), positions, chunk, vocab_size
    )
    chunked_grads = torch.autograd.grad(chunked.total, params)

    logits_s = student.transform(student.linear(h_s))
    logits_t = teacher.transform(teacher.linear(h_t))
    reference = objective_sums(objective, logits_s, logits_t, positions, vocab_size)
    reference_grads = torch.autograd.grad(reference.total, params)
    return chunked, chunked_grads, reference, reference_grads


def _assert_equal(chunked, chunked_grads, reference, reference_grads, rtol=1e-5, atol=1e-6):
    torch.testing.assert_close(chunked.total, reference.total, rtol=rtol, atol=atol)
    torch.testing.assert_close(chunked.kd, reference.kd, rtol=rtol, atol=atol)
    torch.testing.assert_close(chunked.ce, reference.ce, rtol=rtol, atol=atol)
    assert chunked.agreement.item() == reference.agreement.item()
    assert chunked.num_targets.item() == reference.num_targets.item()
    for got, want in zip(chunked_grads, reference_grads):
        torch.testing.assert_close(got.float(), want.float(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("loss", list(DIVERGENCES))
@pytest.mark.parametrize("chunk", [1, 5, 7, 64])  # 7 does not divide the 2·(11-1) = 20 rows; 64 is one chunk
def test_equals_logits_path_for_every_divergence(loss, chunk):
    objective = KDObjective(
        kd_loss=loss, kd_temperature=1.7, jsd_beta=0.3, skew_alpha=0.2, kd_weight=0.8, ce_weight=0.4
    )
    tensors = _setup(2, 11, 16, 24, 47, 47)
    _assert_equal(*_both(objective, tensors, chunk=chunk))


@pytest.mark.parametrize(
    "student_kw, teacher_kw",
    [({"softcap": 3.0}, {"softcap": 5.0}), ({"logit_scale": 0.25}, {"logit_scale": 2.0}), ({}, {"softcap": 2.0})],
    ids=["softcap", "logit_scale", "teacher_softcap_only"],
)
def test_logit_transforms(student_kw, teacher_kw):
    objective = KDObjective(kd_loss="jsd", ce_weight=0.5)
    _assert_equal(*_both(objective, _setup(3, 9, 16, 16, 31, 31), student_kw, teacher_kw, chunk=4))


def test_padded_vocabularies_and_no_bias():
    objective = KDObjective(kd_loss="reverse_kl", ce_weight=1.0)
    tensors = _setup(2, 8, 16, 16, 40, 48, bias=False)
    _assert_equal(*_both(objective, tensors, chunk=3, vocab_size=40))


def test_all_ignored_chunks_and_batches():
    objective = KDObjective(kd_loss="forward_kl", ce_weight=0.5)
    # Row 1 entirely ignored: with chunk 3 whole chunks of it vanish; the rest still matches.
    _assert_equal(*_both(objective, _setup(3, 7, 8, 8, 19, 19, ignore_rows=(1,)), chunk=3))
    h_s, h_t, w_s, w_t, b_s, labels = _setup(2, 5, 8, 8, 19, 19)
    labels.fill_(-100)
    student, teacher = HeadInput(h_s, LinearHead(w_s, b_s)), HeadInput(h_t, LinearHead(w_t))
    sums = chunked_objective_sums(objective, student, teacher, Positions(labels, shift_labels=True), 2)
    sums.total.backward()
    assert sums.total.item() == 0.0 and sums.num_targets.item() == 0
    assert torch.equal(h_s.grad, torch.zeros_like(h_s)) and torch.equal(w_s.grad, torch.zeros_like(w_s))


def test_without_labels_uses_the_attention_mask():
    objective = KDObjective(kd_loss="tvd")
    h_s, h_t, w_s, w_t, b_s, _ = _setup(2, 6, 8, 8, 13, 13)
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 4:] = 0
    s, t = LinearHead(w_s, b_s), LinearHead(w_t)
    positions = Positions(attention_mask=mask, shift_labels=True)
    chunked = chunked_objective_sums(objective, HeadInput(h_s, s), HeadInput(h_t, t), positions, 4)
    reference = objective_sums(objective, s.transform(s.linear(h_s)), t.transform(t.linear(h_t)), positions)
    torch.testing.assert_close(chunked.total, reference.total)
    assert chunked.ce is None and chunked.num_targets.item() == 5 + 4  # shifted: 6-1 real, then 4 of 5


def test_no_gradients_in_evaluation():
    objective = KDObjective()
    h_s, h_t, w_s, w_t, b_s, labels = _setup(2, 6, 8, 8, 13, 13)
    with torch.no_grad():
        sums = chunked_objective_sums(
            objective,
            HeadInput(h_s, LinearHead(w_s, b_s)),
            HeadInput(h_t, LinearHead(w_t)),
            Positions(labels, shift_labels=True),
            4,
        )
    assert not sums.total.requires_grad


def test_bfloat16_inputs_within_documented_tolerance():
    """bf16 hidden states and heads: the logits are rounded to bf16 by the projection in both paths, the loss math is
    float32. Loss within 1e-3 relative of the logits path, gradients within 2e-2 (bf16 has 8 bits of mantissa)."""
    objective = KDObjective(kd_loss="forward_kl", ce_weight=0.5)
    tensors = _setup(2, 10, 32, 32, 50, 50, dtype=torch.bfloat16)
    chunked, chunked_grads, reference, reference_grads = _both(objective, tensors, chunk=4)
    assert chunked_grads[0].dtype == torch.bfloat16
    torch.testing.assert_close(chunked.total, reference.total.float(), rtol=1e-3, atol=1e-3)
    for got, want in zip(chunked_grads, reference_grads):
        torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)


def test_distillation_sums_dispatches_on_the_kinds_of_outputs():
    from hf_distill.losses import TopK, distillation_sums, sparse_objective_sums
    from hf_distill.losses.chunked import chunked_sparse_objective_sums

    objective = KDObjective(kd_loss="jsd", ce_weight=0.5)
    h_s, h_t, w_s, w_t, b_s, labels = _setup(2, 6, 8, 8, 13, 13)
    s, t = LinearHead(w_s, b_s), LinearHead(w_t)
    logits_s, logits_t = s.transform(s.linear(h_s)), t.transform(t.linear(h_t))
    positions = Positions(labels, shift_labels=True)
    logprobs, ids = torch.log_softmax(logits_t.detach(), -1).topk(4, -1)
    top_k = TopK(ids, logprobs, None)
    cases = [
        (logits_s, logits_t, objective_sums(objective, logits_s, logits_t, positions)),
        (
            HeadInput(h_s, s),
            HeadInput(h_t, t),
            chunked_objective_sums(objective, HeadInput(h_s, s), HeadInput(h_t, t), positions, 4),
        ),
        (logits_s, top_k, sparse_objective_sums(objective, logits_s, top_k, positions)),
        (HeadInput(h_s, s), top_k, chunked_sparse_objective_sums(objective, HeadInput(h_s, s), top_k, positions, 4)),
    ]
    for student, teacher, want in cases:
        got = distillation_sums(objective, student, teacher, positions, chunk_size=4)
        torch.testing.assert_close(got.total, want.total)
        assert got.num_targets.item() == want.num_targets.item()
    with pytest.raises(TypeError, match="student of kind logits and a teacher of kind HeadInput"):
        distillation_sums(objective, logits_s, HeadInput(h_t, t), positions, chunk_size=4)
