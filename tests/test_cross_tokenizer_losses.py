"""Cross-tokenizer losses: exact and chunk reduce to same-tokenizer distillation under a permutation of the teacher's
vocabulary, ULD is permutation invariant and equals its brute-force definition, the chunk term and the bits equal
hand computations, the rest bucket stays finite, and the student's logits never live whole."""

import math
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hf_distill.losses import (
    DIVERGENCES,
    AlignedTeacher,
    ChunkLayout,
    HeadInput,
    KDObjective,
    LinearHead,
    Positions,
    aligned_objective_sums,
    chunked_objective_sums,
    coarsen,
    distillation_sums,
    objective_sums,
    per_token_divergence,
    prediction_mask,
    select_chunks,
    teacher_targets,
)

# ---- helpers ----


def _identity_layout(input_ids):
    """Both models tokenize the text the same way: every token is its own chunk (token 0 starts no chunk)."""
    batch, length = input_ids.shape
    chunk = torch.arange(length).expand(batch, length).clone()
    chunk[:, -1] = -1
    next_ids = torch.cat([input_ids[:, 1:], input_ids.new_full((batch, 1), -1)], dim=1)
    return ChunkLayout(chunk, chunk.clone(), next_ids, torch.ones(batch, length - 1, dtype=torch.long)), next_ids


def _aligned(
    method,
    teacher,
    teacher_next,
    layout,
    positions,
    student_shape,
    student_to_shared,
    teacher_to_shared,
    num_buckets,
    temperature,
    student_vocab,
    chunk_size=3,
):
    selection = select_chunks(layout, prediction_mask(positions, student_shape))
    first_rows, tail, chunk_logprob = teacher_targets(
        method,
        teacher,
        teacher_next,
        selection,
        teacher_to_shared,
        num_buckets,
        temperature,
        student_vocab,
        chunk_size,
    )
    return AlignedTeacher(method, selection, student_to_shared, num_buckets, first_rows, tail, chunk_logprob)


def _batch(batch=2, length=7, vocab=11, seed=0):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab, (batch, length), generator=generator)
    labels = input_ids.clone()
    labels[0, :3] = -100  # a prompt
    labels[1, 4] = -100
    return input_ids, labels, generator


def _permutation(vocab, generator):
    """A teacher vocabulary that is the student's under a permutation: teacher id of student token v is `perm[v]`;
    the shared buckets are numbered by a second permutation."""
    perm = torch.randperm(vocab, generator=generator)
    buckets = torch.randperm(vocab, generator=generator)
    teacher_to_shared = torch.empty(vocab, dtype=torch.long)
    teacher_to_shared[perm] = buckets
    return perm, buckets, teacher_to_shared


def _assert_sums_equal(got, want, rtol=1e-5, atol=1e-5):
    torch.testing.assert_close(got.total.double(), want.total.double(), rtol=rtol, atol=atol)
    torch.testing.assert_close(got.kd.double(), want.kd.double(), rtol=rtol, atol=atol)
    if want.ce is None:
        assert got.ce is None
    else:
        torch.testing.assert_close(got.ce.double(), want.ce.double(), rtol=rtol, atol=atol)
    assert got.num_targets.item() == want.num_targets.item()
    assert got.agreement.item() == want.agreement.item()


# ---- 1. exact and chunk under a permutation of the vocabulary = same-tokenizer distillation ----


@pytest.mark.parametrize("method", ["exact", "chunk"])
@pytest.mark.parametrize("loss", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("ce_weight", [0.0, 0.5])
def test_permuted_vocabulary_equals_dense_objective_from_logits(method, loss, temperature, ce_weight):
    vocab = 11
    input_ids, labels, generator = _batch(vocab=vocab)
    objective = KDObjective(kd_loss=loss, kd_temperature=temperature, jsd_beta=0.3, ce_weight=ce_weight)
    positions = Positions(labels, shift_labels=True)
    student = (torch.randn(2, 7, vocab, generator=generator, dtype=torch.float64) * 2).requires_grad_()
    teacher = torch.randn(2, 7, vocab, generator=generator, dtype=torch.float64) * 2
    perm, buckets, teacher_to_shared = _permutation(vocab, generator)
    teacher_permuted = torch.empty_like(teacher)
    teacher_permuted[..., perm] = teacher

    layout, next_ids = _identity_layout(input_ids)
    teacher_next = torch.where(next_ids >= 0, perm[next_ids.clamp_min(0)], -1)
    aligned = _aligned(
        method,
        teacher_permuted,
        teacher_next,
        layout,
        positions,
        student.shape[:2],
        buckets,
        teacher_to_shared,
        vocab,
        temperature,
        vocab,
    )
    got = aligned_objective_sums(objective, student, aligned, positions, chunk_size=0)
    (got_grad,) = torch.autograd.grad(got.total, student)

    want = objective_sums(objective, student, teacher, positions)
    (want_grad,) = torch.autograd.grad(want.total, student)
    _assert_sums_equal(got, want)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-5, atol=1e-6)
    # the same through the one entry point the trainer calls
    _assert_sums_equal(distillation_sums(objective, student, aligned, positions), want)


@pytest.mark.parametrize("method", ["exact", "chunk"])
@pytest.mark.parametrize("loss", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("chunk_size", [1, 4, 64])
def test_permuted_vocabulary_equals_dense_objective_from_hidden_states(method, loss, chunk_size):
    vocab, hidden_s, hidden_t = 13, 8, 6
    input_ids, labels, generator = _batch(vocab=vocab, seed=1)
    objective = KDObjective(kd_loss=loss, kd_temperature=2.0, ce_weight=0.5, label_smoothing_factor=0.1)
    positions = Positions(labels, shift_labels=True)
    h_s = torch.randn(2, 7, hidden_s, generator=generator).requires_grad_()
    w_s = (torch.randn(vocab, hidden_s, generator=generator) / hidden_s**0.5).requires_grad_()
    b_s = (torch.randn(vocab, generator=generator) * 0.1).requires_grad_()
    h_t = torch.randn(2, 7, hidden_t, generator=generator)
    w_t = torch.randn(vocab, hidden_t, generator=generator) / hidden_t**0.5
    perm, buckets, teacher_to_shared = _permutation(vocab, generator)
    w_t_permuted = torch.empty_like(w_t)
    w_t_permuted[perm] = w_t  # the teacher's head rows permuted as its vocabulary

    student_head = LinearHead(w_s, b_s, softcap=4.0)
    layout, next_ids = _identity_layout(input_ids)
    teacher_next = torch.where(next_ids >= 0, perm[next_ids.clamp_min(0)], -1)
    aligned = _aligned(
        method,
        HeadInput(h_t, LinearHead(w_t_permuted)),
        teacher_next,
        layout,
        positions,
        h_s.shape[:2],
        buckets,
        teacher_to_shared,
        vocab,
        2.0,
        vocab,
        chunk_size=chunk_size,
    )
    params = (h_s, w_s, b_s)
    got = aligned_objective_sums(objective, HeadInput(h_s, student_head), aligned, positions, chunk_size)
    got_grads = torch.autograd.grad(got.total, params)

    want = chunked_objective_sums(
        objective, HeadInput(h_s, student_head), HeadInput(h_t, LinearHead(w_t)), positions, chunk_size
    )
    want_grads = torch.autograd.grad(want.total, params)
    _assert_sums_equal(got, want)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    dense = objective_sums(objective, student_head.transform(student_head.linear(h_s)), h_t @ w_t.T, positions)
    _assert_sums_equal(got, dense)


def test_without_labels_counts_the_attention_mask():
    vocab = 9
    input_ids, _, generator = _batch(vocab=vocab, seed=2)
    mask = torch.ones_like(input_ids)
    mask[1, 5:] = 0
    positions = Positions(attention_mask=mask, shift_labels=True)
    objective = KDObjective(kd_loss="forward_kl")
    student = torch.randn(2, 7, vocab, generator=generator, requires_grad=True)
    teacher = torch.randn(2, 7, vocab, generator=generator)
    layout, next_ids = _identity_layout(input_ids)
    identity = torch.arange(vocab)
    aligned = _aligned("exact", teacher, next_ids, layout, positions, (2, 7), identity, identity, vocab, 1.0, vocab)
    got = aligned_objective_sums(objective, student, aligned, positions, chunk_size=0)
    want = objective_sums(objective, student, teacher, positions)
    _assert_sums_equal(got, want)
    # the rule of the same-tokenizer path: position t counts when attention_mask[:, t] is 1 (t < T - 1)
    assert got.num_targets.item() == 6 + 5


def test_refuses_non_causal_batches_and_unknown_methods():
    layout, _ = _identity_layout(torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="shift_labels=True"):
        prediction_mask(Positions(torch.zeros(1, 3, dtype=torch.long)), (1, 3))
    selection = select_chunks(layout, torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="not a known method"):
        teacher_targets(
            "alm", torch.zeros(1, 3, 4), torch.zeros(1, 3, dtype=torch.long), selection, None, 0, 1.0, 4, 0
        )


# ---- 2. ULD ----


def _brute_force_uld(student, teacher, temperature):
    """Sort both probability vectors, pad the shorter with zeros, L1; per row, plain Python."""
    out = []
    for zs, zt in zip(student.tolist(), teacher.tolist()):
        ps = sorted((math.exp(z / temperature) for z in zs), reverse=True)
        pt = sorted((math.exp(z / temperature) for z in zt), reverse=True)
        ps, pt = [p / sum(ps) for p in ps], [p / sum(pt) for p in pt]
        width = max(len(ps), len(pt))
        ps, pt = ps + [0.0] * (width - len(ps)), pt + [0.0] * (width - len(pt))
        out.append(sum(abs(a - b) for a, b in zip(ps, pt)))
    return out


@pytest.mark.parametrize("teacher_vocab", [5, 7, 9])  # narrower, as wide as, wider than the student's
def test_uld_equals_brute_force_and_ignores_the_order_of_the_vocabulary(teacher_vocab):
    vocab, temperature = 7, 2.0
    generator = torch.Generator().manual_seed(3)
    input_ids = torch.randint(0, min(vocab, teacher_vocab), (1, 4), generator=generator)
    labels = input_ids.clone()  # every position counts
    positions = Positions(labels, shift_labels=True)
    objective = KDObjective(kd_loss="forward_kl", kd_temperature=temperature)
    student = torch.randn(1, 4, vocab, generator=generator, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(1, 4, teacher_vocab, generator=generator, dtype=torch.float64) * 2
    perm = torch.randperm(teacher_vocab, generator=generator)
    teacher_permuted = torch.empty_like(teacher)
    teacher_permuted[..., perm] = teacher
    layout, next_ids = _identity_layout(input_ids)

    results = []
    for teacher_logits, teacher_next in (
        (teacher, next_ids),
        (teacher_permuted, torch.where(next_ids >= 0, perm[next_ids.clamp_min(0)], -1)),
    ):
        aligned = _aligned(
            "uld", teacher_logits, teacher_next, layout, positions, (1, 4), None, None, 0, temperature, vocab
        )
        sums = aligned_objective_sums(objective, student, aligned, positions, chunk_size=0)
        results.append((sums, torch.autograd.grad(sums.total, student)[0]))
    (plain, plain_grad), (permuted, permuted_grad) = results
    torch.testing.assert_close(plain.total, permuted.total)
    torch.testing.assert_close(plain_grad, permuted_grad)
    expected = sum(_brute_force_uld(student[0, :3].detach(), teacher[0, :3], temperature)) * temperature**2
    assert plain.kd.item() == pytest.approx(expected, rel=1e-5)
    assert plain.agreement.item() == 0 and plain.num_targets.item() == 3


# ---- 3 and 6. the chunk term and the bits against a hand computation ----


def _hand_layout():
    """Text "ab|cde" (bytes 2 | 3) after a first token. Student tokens: [s0, "ab", "c", "de"] (ids 0, 1, 2, 3);
    teacher tokens: [t0, "ab", "cde"] (ids 0, 4, 5). Chunk 0 = "ab" (one token each), chunk 1 = "cde" (two student
    tokens, one teacher token)."""
    student_ids = torch.tensor([[0, 1, 2, 3]])
    teacher_ids = torch.tensor([[0, 4, 5]])
    layout = ChunkLayout(
        student_chunk=torch.tensor([[0, 1, 1, -1]]),
        teacher_chunk=torch.tensor([[0, 1, -1]]),
        student_next=torch.tensor([[1, 2, 3, -1]]),
        chunk_bytes=torch.tensor([[2, 3]]),
    )
    teacher_next = torch.tensor([[4, 5, -1]])
    # Student vocabulary of 5, teacher of 6; shared buckets 0..2, bucket 3 = the rest.
    student_to_shared = torch.tensor([0, 1, 2, 3, 3])
    teacher_to_shared = torch.tensor([3, 0, 3, 1, 2, 2])
    return student_ids, teacher_ids, layout, teacher_next, student_to_shared, teacher_to_shared


def _bucket_logprobs(log_probs, to_shared, buckets):
    return [math.log(sum(math.exp(lp) for lp, b in zip(log_probs, to_shared) if b == k)) for k in range(buckets)]


def test_chunk_term_and_bits_equal_a_hand_computation():
    student_ids, _, layout, teacher_next, student_to_shared, teacher_to_shared = _hand_layout()
    generator = torch.Generator().manual_seed(4)
    student = torch.randn(1, 4, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(1, 3, 6, generator=generator, dtype=torch.float64)
    labels = student_ids.clone()
    positions = Positions(labels, shift_labels=True)
    objective = KDObjective(kd_loss="forward_kl", kd_weight=0.7, ce_weight=0.3)
    aligned = _aligned(
        "chunk", teacher, teacher_next, layout, positions, (1, 4), student_to_shared, teacher_to_shared, 4, 1.0, 5
    )
    assert aligned.selection.multi.tolist() == [False, True]
    sums = aligned_objective_sums(objective, student, aligned, positions, chunk_size=0)
    (grad,) = torch.autograd.grad(sums.total, student)

    # By hand, float64, from explicit log-probabilities.
    ls = torch.log_softmax(student.detach()[0], -1).tolist()  # (4, 5)
    lt = torch.log_softmax(teacher[0], -1).tolist()  # (3, 6)

    def kl(p_log, q_log):
        return sum(math.exp(a) * (a - b) for a, b in zip(p_log, q_log))

    first = sum(
        kl(
            _bucket_logprobs(lt[t], teacher_to_shared.tolist(), 4),
            _bucket_logprobs(ls[s], student_to_shared.tolist(), 4),
        )
        for s, t in ((0, 0), (1, 1))  # each chunk's first prediction position on each side
    )
    student_chunk1 = ls[1][2] + ls[2][3]  # log p_s("c" | "ab") + log p_s("de" | "abc")
    teacher_chunk1 = lt[1][5]  # log p_t("cde" | "ab")
    p_s, p_t = math.exp(student_chunk1), math.exp(teacher_chunk1)
    binary = p_t * math.log(p_t / p_s) + (1 - p_t) * math.log((1 - p_t) / (1 - p_s))
    ce = -(ls[0][1] + ls[1][2] + ls[2][3])
    assert sums.kd.item() == pytest.approx(first + binary, rel=1e-5)
    assert sums.ce.item() == pytest.approx(ce, rel=1e-5)
    assert sums.total.item() == pytest.approx(0.7 * (first + binary) + 0.3 * ce, rel=1e-5)
    assert sums.num_targets.item() == 3

    # 6. bits: [student chunk NLL, teacher chunk NLL, bytes] in nats
    expected_bits = [-(ls[0][1] + student_chunk1), -(lt[0][4] + teacher_chunk1), 5.0]
    assert sums.bits.dtype == torch.float64
    torch.testing.assert_close(sums.bits, torch.tensor(expected_bits, dtype=torch.float64), rtol=1e-5, atol=1e-6)

    # The gradient of the same formula written with torch ops.
    z = student.detach().clone().requires_grad_()
    log_s = torch.log_softmax(z[0].float(), -1)
    log_t = torch.log_softmax(teacher[0].float(), -1)

    def buckets(row, to_shared):
        return torch.stack([row[to_shared == k].logsumexp(0) for k in range(4)])

    first_t = sum(
        (
            buckets(log_t[t], teacher_to_shared).exp()
            * (buckets(log_t[t], teacher_to_shared) - buckets(log_s[s], student_to_shared))
        ).sum()
        for s, t in ((0, 0), (1, 1))
    )
    chunk_s = (log_s[1, 2] + log_s[2, 3]).exp()
    pt = log_t[1, 5].exp()
    binary_t = pt * (pt / chunk_s).log() + (1 - pt) * ((1 - pt) / (1 - chunk_s)).log()
    ce_t = -(log_s[0, 1] + log_s[1, 2] + log_s[2, 3])
    reference = 0.7 * (first_t + binary_t) + 0.3 * ce_t
    (want,) = torch.autograd.grad(reference, z)
    torch.testing.assert_close(grad, want.to(grad.dtype), rtol=1e-4, atol=1e-6)


def test_a_chunk_with_a_masked_student_position_is_dropped():
    student_ids, _, layout, teacher_next, student_to_shared, teacher_to_shared = _hand_layout()
    labels = student_ids.clone()
    labels[0, 2] = -100  # "c": chunk 1 loses a student position, so the whole chunk goes
    selection = select_chunks(layout, prediction_mask(Positions(labels, shift_labels=True), (1, 4)))
    assert selection.num_chunks == 1
    assert selection.student_first.tolist() == [0] and selection.teacher_first.tolist() == [0]
    assert selection.bytes.tolist() == [2] and selection.student_next.tolist() == [1]


# ---- 4. the rest bucket ----


def test_rest_bucket_stays_finite_and_normalised():
    generator = torch.Generator().manual_seed(5)
    # Shared tokens 0..2 (student ids 0, 1, 2 = teacher ids 1, 2, 0), the rest unmatched on both sides.
    student_to_shared = torch.tensor([0, 1, 2, 3, 3, 3])
    teacher_to_shared = torch.tensor([2, 0, 1, 3, 3, 3, 3])
    rows = torch.randn(4, 6, generator=generator) * 5
    coarse = coarsen(torch.log_softmax(rows, -1), student_to_shared, 4)
    torch.testing.assert_close(coarse.exp().sum(-1), torch.ones(4))
    coarse_t = coarsen(torch.log_softmax(torch.randn(4, 7, generator=generator), -1), teacher_to_shared, 4)
    torch.testing.assert_close(coarse_t.exp().sum(-1), torch.ones(4))
    # A bucket no token falls into: finite, no NaN gradient.
    empty = torch.randn(2, 3, generator=generator, requires_grad=True)
    out = coarsen(torch.log_softmax(empty, -1), torch.tensor([0, 0, 1]), 3)
    assert torch.isfinite(out).all() and out[:, 2].max() < -80
    out.sum().backward()
    assert torch.isfinite(empty.grad).all()
    # One token's log-probability far below float32's exp range is kept exactly, not underflowed.
    far = torch.tensor([[0.0, -300.0, -1.0]])
    torch.testing.assert_close(coarsen(far, torch.tensor([0, 1, 0]), 2)[0, 1], torch.tensor(-300.0))

    # Through the loss: a layout with multi-token chunks, every method.
    _, _, layout, teacher_next, _, _ = _hand_layout()
    labels = torch.tensor([[0, 1, 2, 3]])
    positions = Positions(labels, shift_labels=True)
    for method in ("exact", "chunk", "uld"):
        student = (torch.randn(1, 4, 6, generator=generator) * 8).requires_grad_()
        teacher = torch.randn(1, 3, 7, generator=generator) * 8
        shared = method != "uld"
        aligned = _aligned(
            method,
            teacher,
            teacher_next,
            layout,
            positions,
            (1, 4),
            student_to_shared if shared else None,
            teacher_to_shared if shared else None,
            4 if shared else 0,
            1.5,
            6,
        )
        objective = KDObjective(kd_loss="jsd", kd_temperature=1.5, ce_weight=0.5)
        sums = aligned_objective_sums(objective, student, aligned, positions, chunk_size=0)
        (grad,) = torch.autograd.grad(sums.total, student)
        assert torch.isfinite(sums.total) and sums.total > 0 and torch.isfinite(grad).all(), method

        # all masked: zeros, no NaN
        masked = Positions(torch.full_like(labels, -100), shift_labels=True)
        aligned = _aligned(
            method,
            teacher,
            teacher_next,
            layout,
            masked,
            (1, 4),
            student_to_shared if shared else None,
            teacher_to_shared if shared else None,
            4 if shared else 0,
            1.5,
            6,
        )
        sums = aligned_objective_sums(objective, student, aligned, masked, chunk_size=0)
        (grad,) = torch.autograd.grad(sums.total, student, allow_unused=True)
        assert sums.total.item() == 0 and sums.kd.item() == 0 and sums.ce.item() == 0
        assert sums.num_targets.item() == 0 and sums.bits.tolist() == [0.0, 0.0, 0.0]
        assert grad is None or torch.equal(grad, torch.zeros_like(grad))


# ---- 5. memory flat in the sequence length ----


class _LiveVocabTiles(TorchDispatchMode):
    """Tracks the elements of live tensors whose last dimension is the vocabulary (rows × V tiles), and their peak.

    Every op's output of shape (..., V) is counted until its Python object is collected; tensors autograd keeps for
    the backward pass hold their Python objects, so they stay counted."""

    def __init__(self, vocab, parameters=()):
        super().__init__()
        self.vocab, self.live, self.peak = vocab, 0, 0
        # the head's weight and its transposed views are parameters, not activations
        self.seen = {p.untyped_storage().data_ptr() for p in parameters}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if (
                isinstance(tensor, torch.Tensor)
                and tensor.dim() >= 2
                and tensor.shape[-1] == self.vocab
                and tensor.untyped_storage().data_ptr() not in self.seen
            ):
                # the storage's own size: an expanded (stride 0) view of a (V,) vector is not a tile
                key, size = tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes() // tensor.itemsize
                self.seen.add(key)
                self.live += size
                self.peak = max(self.peak, self.live)
                weakref.finalize(tensor.untyped_storage(), self._free, key, size)
        return out

    def _free(self, key, size):
        self.seen.discard(key)
        self.live -= size


def _peak_and_saved(length, chunk_size, vocab=257, hidden=8):
    generator = torch.Generator().manual_seed(6)
    input_ids = torch.randint(0, vocab, (2, length), generator=generator)
    positions = Positions(input_ids.clone(), shift_labels=True)
    h_s = torch.randn(2, length, hidden, generator=generator, requires_grad=True)
    w_s = torch.randn(vocab, hidden, generator=generator, requires_grad=True)
    teacher = HeadInput(torch.randn(2, length, hidden, generator=generator), LinearHead(torch.randn(vocab, hidden)))
    layout, next_ids = _identity_layout(input_ids)
    identity = torch.arange(vocab)
    aligned = _aligned(
        "chunk",
        teacher,
        next_ids,
        layout,
        positions,
        (2, length),
        identity,
        identity,
        vocab,
        1.0,
        vocab,
        chunk_size=chunk_size,
    )
    objective = KDObjective(kd_loss="forward_kl", ce_weight=0.5)
    saved = []

    def pack(tensor):
        saved.append(tuple(tensor.shape))
        return tensor

    tracker = _LiveVocabTiles(vocab, parameters=(w_s,))
    with tracker, torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        sums = aligned_objective_sums(objective, HeadInput(h_s, LinearHead(w_s)), aligned, positions, chunk_size)
        sums.total.backward()
    # Tensors of the vocabulary's width kept for backward outside the checkpointed blocks (the head weight itself,
    # a (V, H) parameter, does not count as an activation).
    kept = [shape for shape in saved if shape[-1:] == (vocab,) and shape != tuple(w_s.shape)]
    return tracker.peak, kept


def test_student_logits_never_live_whole():
    chunk_size, vocab = 4, 257
    short_peak, short_kept = _peak_and_saved(16, chunk_size)
    long_peak, long_kept = _peak_and_saved(128, chunk_size)
    # Nothing of shape (rows, V) is saved for the backward pass outside the checkpointed blocks.
    assert short_kept == [] and long_kept == []
    # The (rows × V) tiles the loss creates (the teacher's targets are computed before, and held by the caller) stay
    # a few chunk_size × V tiles whatever the length: 8× the length, the same peak.
    assert long_peak == short_peak
    # Within a block: its logits, the first rows and the teacher's targets copied, the log-probabilities and the
    # closed-form gradient of the KD term, a few temporaries (measured: ~10 chunk_size × V tiles at the peak), far
    # below the whole (2 × 127) × V logits of the long batch. Without the checkpoint this grows with the length.
    assert long_peak <= 12 * chunk_size * vocab, long_peak / (chunk_size * vocab)
    assert long_peak < 2 * 127 * vocab / 2


# ---- the closed-form gradient of the coarsened KD term, and the hidden-state path on a real alignment ----


@pytest.mark.parametrize("loss", sorted(DIVERGENCES))
def test_coarsened_kd_gradient_equals_autograd(loss):
    """Buckets of several tokens, a rest bucket, and a bucket no student token falls into."""
    from hf_distill.losses.cross_tokenizer import _CoarsenedDivergence

    generator = torch.Generator().manual_seed(7)
    objective = KDObjective(kd_loss=loss, kd_temperature=1.7, jsd_beta=0.3, skew_alpha=0.2)
    to_shared = torch.tensor([0, 1, 1, 2, 4, 4, 4])  # bucket 3 has no student token
    rows = (torch.randn(5, 7, generator=generator, dtype=torch.float64) * 3).requires_grad_()
    targets = torch.log_softmax(torch.randn(5, 5, generator=generator), -1)
    value, coarse = _CoarsenedDivergence.apply(rows, targets.clone(), to_shared, 5, objective)
    (grad,) = torch.autograd.grad(value, rows)

    reference_coarse = coarsen(torch.log_softmax(rows / 1.7, -1), to_shared, 5)
    reference = per_token_divergence(reference_coarse, targets, loss=loss, beta=0.3, skew=0.2).sum()
    (want,) = torch.autograd.grad(reference, rows)
    torch.testing.assert_close(value, reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(coarse, reference_coarse.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["exact", "chunk", "uld"])
@pytest.mark.parametrize("chunk_size", [1, 2])
def test_hidden_states_equal_logits_on_a_multi_token_alignment(method, chunk_size):
    _, _, layout, teacher_next, student_to_shared, teacher_to_shared = _hand_layout()
    generator = torch.Generator().manual_seed(8)
    h_s = torch.randn(1, 4, 6, generator=generator, requires_grad=True)
    w_s = torch.randn(5, 6, generator=generator, requires_grad=True)
    teacher = HeadInput(torch.randn(1, 3, 4, generator=generator), LinearHead(torch.randn(6, 4, generator=generator)))
    positions = Positions(torch.tensor([[0, 1, 2, 3]]), shift_labels=True)
    objective = KDObjective(kd_loss="reverse_kl", kd_temperature=2.0, ce_weight=0.4)
    shared = method != "uld"
    aligned = _aligned(
        method,
        teacher,
        teacher_next,
        layout,
        positions,
        (1, 4),
        student_to_shared if shared else None,
        teacher_to_shared if shared else None,
        4 if shared else 0,
        2.0,
        5,
        chunk_size=chunk_size,
    )
    head = LinearHead(w_s)
    got = aligned_objective_sums(objective, HeadInput(h_s, head), aligned, positions, chunk_size)
    got_grads = torch.autograd.grad(got.total, (h_s, w_s))
    want = aligned_objective_sums(objective, head.linear(h_s.reshape(4, 6)).reshape(1, 4, 5), aligned, positions, 0)
    want_grads = torch.autograd.grad(want.total, (h_s, w_s))
    _assert_sums_equal(got, want)
    torch.testing.assert_close(got.bits, want.bits)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # evaluation: the same sums, no graph
        evaluated = aligned_objective_sums(objective, HeadInput(h_s, head), aligned, positions, chunk_size)
    assert not evaluated.total.requires_grad
    torch.testing.assert_close(evaluated.total, got.total.detach())
