"""The distillation objective between two models with different tokenizers, through an alignment of their tokens.

Both models read the same text, each tokenized its own way. The alignment (built outside this module, see
`hf_distill.cross_tokenizer.alignment`) cuts the text into *chunks*: the spans between consecutive byte offsets where
both tokenizations end a token. It arrives here as a `ChunkLayout`: for every prediction position of each model, the
chunk its next token belongs to. Three ways to compare the two models through it (`CROSS_TOKENIZER_METHODS`):

- `exact`: at the *first* prediction position of each chunk both models predict the chunk's first token from the
  same text prefix, so their next-token distributions are over continuations of the same bytes. Both are coarsened
  onto a shared vocabulary (tokens with identical bytes share a bucket, everything else falls into one "rest" bucket)
  and compared with the objective's divergence. With two vocabularies that are permutations of each other every
  bucket is one token on each side and this is exactly the same-tokenizer objective.
- `chunk`: `exact`, plus for chunks of more than one token on either side a binary divergence between the two
  models' likelihoods of the whole chunk (in the spirit of Approximate Likelihood Matching, Minixhofer et al. 2025).
- `uld`: Universal Logit Distillation (Boizard et al. 2024): the L1 (Wasserstein-1) distance between the two sorted
  probability vectors at each chunk's first position; vocabulary-free, and blind to which token is which.

The student is processed `chunk_size` valid positions at a time, each block under activation checkpointing, so no
`(T, V_s)` logits of the student are ever alive; the teacher's targets (`teacher_targets`) are computed under
`no_grad`, also block by block.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint
from torch.utils.weak import WeakIdKeyDictionary

from .chunked import HeadInput
from .divergences import divergence_and_grad, per_token_divergence
from .objective import KDObjective, ObjectiveSums, check_labels, top1_agreement, with_ce_term
from .reduction import Positions, position_mask

__all__ = [
    "CROSS_TOKENIZER_METHODS",
    "AlignedTeacher",
    "ChunkLayout",
    "ChunkSelection",
    "aligned_objective_sums",
    "coarsen",
    "prediction_mask",
    "select_chunks",
    "teacher_targets",
    "topk_teacher_targets",
]

CROSS_TOKENIZER_METHODS = ("uld", "exact", "chunk")

# The smallest positive normal float32: the mass of a bucket no token of a row falls into. Its log (-87.3) keeps
# every divergence and gradient finite, where log(0) = -inf would give inf or NaN.
_TINY = torch.finfo(torch.float32).tiny
_LOG_TINY = torch.tensor(_TINY, dtype=torch.float32).log().item()
# A chunk's log-likelihood is < 0; its complement log(1 - p) needs it strictly below 0.
_MAX_CHUNK_LOGPROB = -1e-6


def _check_method(method: str) -> None:
    if method not in CROSS_TOKENIZER_METHODS:
        raise ValueError(
            f"cross_tokenizer={method!r} is not a known method; use one of: {', '.join(CROSS_TOKENIZER_METHODS)}."
        )


@dataclass(frozen=True)
class ChunkLayout:
    """Where each prediction position of the two models falls in the aligned chunks of their shared text.

    Position t of a causal LM predicts token t+1; its chunk id is that of token t+1. Chunk ids are `0..C_b-1` per
    row, in text order, and the same chunk has the same id on both sides.

    Attributes:
        student_chunk (`torch.Tensor` of shape `(B, T_s)`): chunk id per student prediction position, -1 for none.
        teacher_chunk (`torch.Tensor` of shape `(B, T_t)`): chunk id per teacher prediction position, -1 for none.
        student_next (`torch.Tensor` of shape `(B, T_s)`): the student token each position predicts, -1 for none.
        chunk_bytes (`torch.Tensor` of shape `(B, C)`): UTF-8 byte length of each chunk, 0 past a row's chunks.
    """

    student_chunk: torch.Tensor
    teacher_chunk: torch.Tensor
    student_next: torch.Tensor
    chunk_bytes: torch.Tensor


@dataclass(frozen=True)
class ChunkSelection:
    """The chunks that count in a micro-batch, as flat indices; chunk `i` is the `i`-th counted chunk in row-major
    `(row, chunk id)` order.

    Attributes:
        student_first (`torch.Tensor` of shape `(n,)`): each chunk's first student prediction position, into `B·T_s`.
        teacher_first (`torch.Tensor` of shape `(n,)`): each chunk's first teacher prediction position, into `B·T_t`.
        student_member (`torch.Tensor` of shape `(m_s,)`): every student prediction position of the chunks, into
            `B·T_s`, ascending; `student_slot` `(m_s,)`: the chunk (`0..n-1`) each belongs to.
        teacher_member (`torch.Tensor` of shape `(m_t,)`), teacher_slot (`torch.Tensor` of shape `(m_t,)`): the same
            for the teacher, into `B·T_t`.
        multi (`torch.Tensor` of shape `(n,)`, bool): the chunk has more than one token on either side.
        bytes (`torch.Tensor` of shape `(n,)`): each chunk's UTF-8 byte length.
        student_next (`torch.Tensor` of shape `(m_s,)`): the student token each `student_member` position predicts
            (`layout.student_next` there), for the student's chunk likelihoods.
    """

    student_first: torch.Tensor
    teacher_first: torch.Tensor
    student_member: torch.Tensor
    student_slot: torch.Tensor
    teacher_member: torch.Tensor
    teacher_slot: torch.Tensor
    multi: torch.Tensor
    bytes: torch.Tensor
    student_next: torch.Tensor

    @property
    def num_chunks(self) -> int:
        """`n`, the number of counted chunks."""
        return self.student_first.shape[0]


def prediction_mask(positions: Positions, shape: torch.Size | tuple[int, int]) -> torch.Tensor:
    """Which student prediction positions count, padded to the student's full length (causal LMs only).

    The rule of `reduction.position_mask` with `shift_labels=True`: position t counts when `labels[:, t+1] != -100`,
    or, without labels, when the attention mask marks position t as real; the last position never counts.

    Args:
        positions (`Positions`): the student batch's labels and attention mask; `shift_labels` must be `True`.
        shape (`torch.Size`): `(B, T_s)`, the student's leading shape.

    Returns:
        `torch.Tensor` of shape `(B, T_s)`, bool.
    """
    if not positions.shift_labels:
        raise ValueError(
            "cross-tokenizer distillation aligns the texts of causal language models (shift_labels=True); this batch "
            "does not shift its labels."
        )
    batch, length = shape
    mask, _ = position_mask(torch.Size([batch, length - 1]), positions.labels, positions.attention_mask, True)
    return torch.cat([mask, mask.new_zeros(batch, 1)], dim=1)


def _chunk_keys(chunk: torch.Tensor, num_chunks: int) -> torch.Tensor:
    """`(B, T)` chunk ids -> flat `(B·T,)` keys `b·C + c` into the batch's `B·C` chunks, -1 where there is none."""
    rows = torch.arange(chunk.shape[0], device=chunk.device)[:, None]
    return torch.where(chunk >= 0, rows * num_chunks + chunk, -1).reshape(-1)


def select_chunks(layout: ChunkLayout, student_valid: torch.Tensor) -> ChunkSelection:
    """The chunks that count: those with a prediction position on each side whose student positions all count.

    A chunk with one of its student positions masked (a prompt token under `-100`, padding) is dropped as a whole,
    so that its likelihood is never compared on a part of it.

    Args:
        layout (`ChunkLayout`): the alignment of the micro-batch.
        student_valid (`torch.Tensor` of shape `(B, T_s)`, bool): the student prediction positions that count
            (`prediction_mask`).

    Returns:
        `ChunkSelection`, in row-major `(row, chunk id)` order.
    """
    if student_valid.shape != layout.student_chunk.shape:
        raise ValueError(
            f"student_valid {tuple(student_valid.shape)} must have the shape of student_chunk "
            f"{tuple(layout.student_chunk.shape)}."
        )
    batch, max_chunks = layout.chunk_bytes.shape
    total = batch * max_chunks
    student_key = _chunk_keys(layout.student_chunk, max_chunks)  # (B·T_s,)
    teacher_key = _chunk_keys(layout.teacher_chunk, max_chunks)  # (B·T_t,)
    student_in, teacher_in = student_key >= 0, teacher_key >= 0
    student_count = torch.bincount(student_key[student_in], minlength=total)  # (B·C,)
    teacher_count = torch.bincount(teacher_key[teacher_in], minlength=total)
    invalid = torch.bincount(student_key[student_in & ~student_valid.reshape(-1)], minlength=total)
    counted = (student_count > 0) & (teacher_count > 0) & (invalid == 0)  # (B·C,)
    slot_of_key = counted.cumsum(0) - 1  # the counted chunks' slots, row-major

    def members(key: torch.Tensor, inside: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        member = (inside & counted[key.clamp_min(0)]).nonzero().squeeze(-1)  # ascending flat positions
        slot = slot_of_key[key[member]]
        first = torch.full((int(counted.sum()),), key.numel(), dtype=torch.long, device=key.device)
        first = first.scatter_reduce(0, slot, member, reduce="amin")
        return member, slot, first

    student_member, student_slot, student_first = members(student_key, student_in)
    teacher_member, teacher_slot, teacher_first = members(teacher_key, teacher_in)
    multi = (student_count[counted] > 1) | (teacher_count[counted] > 1)
    student_next = layout.student_next.reshape(-1)[student_member]
    if student_next.numel() and int(student_next.min()) < 0:
        raise ValueError("student_next is -1 at a position of a counted chunk; it must hold the next student token.")
    return ChunkSelection(
        student_first=student_first,
        teacher_first=teacher_first,
        student_member=student_member,
        student_slot=student_slot,
        teacher_member=teacher_member,
        teacher_slot=teacher_slot,
        multi=multi,
        bytes=layout.chunk_bytes.reshape(-1)[counted],
        student_next=student_next,
    )


# A bucket of at least this many tokens (the rest bucket) is reduced by a dense log-sum-exp over its gathered columns;
# the smaller buckets of several tokens share one scatter over theirs.
_DENSE_BUCKET = 256
# Without gradients the dense buckets' columns are gathered a few rows at a time into one buffer of at most this many
# float32 entries (16 MiB): small enough for the allocator to reuse from call to call, where a fresh `(n, V)` tile
# per call costs more in page faults than the arithmetic on it.
_TILE_ELEMENTS = 2**22


@dataclass(frozen=True)
class _BucketPlan:
    """How `coarsen` reduces the columns of one vocabulary mapping, computed once per mapping tensor.

    Attributes:
        source (`torch.Tensor` of shape `(K,)`): the token of each one-token bucket (its column is the bucket's), 0 for
            the others.
        others (`torch.Tensor` of shape `(K - S,)`): the other buckets, in the order `[dense | groups | empty]`.
        dense (`tuple[torch.Tensor, ...]`): the tokens of each bucket of at least `_DENSE_BUCKET` tokens.
        grouped (`torch.Tensor` of shape `(G,)`): the tokens of the smaller buckets of several tokens.
        group (`torch.Tensor` of shape `(G,)`): the bucket of each `grouped` token, renumbered `0..L-1`.
        num_groups (`int`): `L`.
        num_empty (`int`): `E`, the buckets no token falls into.
    """

    source: torch.Tensor
    others: torch.Tensor
    dense: tuple[torch.Tensor, ...]
    grouped: torch.Tensor
    group: torch.Tensor
    num_groups: int
    num_empty: int


# Plans by mapping tensor (held weakly, by identity): `(device, num_buckets, tensor version, plan)`.
_PLANS = WeakIdKeyDictionary()


def _bucket_plan(to_shared: torch.Tensor, num_buckets: int, device: torch.device) -> _BucketPlan:
    """The `_BucketPlan` of `to_shared` `(V,)` on `device`, cached until the tensor is freed or changed in place."""
    cached = _PLANS.get(to_shared)
    if cached is not None and cached[:3] == (device, num_buckets, to_shared._version):
        return cached[3]
    mapping = to_shared.to(device=device, dtype=torch.long)
    if mapping.numel() and (int(mapping.min()) < 0 or int(mapping.max()) >= num_buckets):
        raise ValueError(f"the vocabulary mapping holds buckets outside [0, {num_buckets}).")
    counts = torch.bincount(mapping, minlength=num_buckets)  # (K,) tokens per bucket
    per_token = counts[mapping]  # (V,) tokens in each token's bucket
    single = (per_token == 1).nonzero().squeeze(-1)
    source = torch.zeros(num_buckets, dtype=torch.long, device=device)
    source[mapping[single]] = single
    dense_buckets = (counts >= _DENSE_BUCKET).nonzero().squeeze(-1)
    by_bucket = mapping.argsort(stable=True)  # (V,) tokens grouped by bucket, ascending within each
    starts = (counts.cumsum(0) - counts)[dense_buckets].tolist()
    dense = tuple(by_bucket[start : start + size] for start, size in zip(starts, counts[dense_buckets].tolist()))
    group_buckets = ((counts > 1) & (counts < _DENSE_BUCKET)).nonzero().squeeze(-1)
    grouped = ((per_token > 1) & (per_token < _DENSE_BUCKET)).nonzero().squeeze(-1)
    renumber = torch.full((num_buckets,), -1, dtype=torch.long, device=device)
    renumber[group_buckets] = torch.arange(group_buckets.numel(), device=device)
    empty = (counts == 0).nonzero().squeeze(-1)
    plan = _BucketPlan(
        source=source,
        others=torch.cat([dense_buckets, group_buckets, empty]),
        dense=dense,
        grouped=grouped,
        group=renumber[mapping[grouped]],
        num_groups=group_buckets.numel(),
        num_empty=empty.numel(),
    )
    _PLANS[to_shared] = (device, num_buckets, to_shared._version, plan)
    return plan


def _log_sum_exp(values: torch.Tensor, index: torch.Tensor | None, size: int, in_place: bool) -> torch.Tensor:
    """`log Σ exp` of the columns of `values` `(n, m)` per bucket `index` `(m,)` in `[0, size)` (all columns in one
    bucket when `None`), each bucket shifted by its own largest entry: `(n, size)`. `in_place` overwrites `values`."""
    rows = values.shape[0]
    with torch.no_grad():  # the shift cancels exactly, so it needs no gradient
        if index is None:
            shift = values.amax(-1, keepdim=True)  # (n, 1)
        else:
            shift = values.new_full((rows, size), -math.inf)
            shift.scatter_reduce_(1, index.expand(rows, -1), values, reduce="amax")  # (n, size)
        shift.masked_fill_(shift == -math.inf, 0.0)  # empty (or all -inf) buckets: no shift
        spread = shift if index is None else shift.index_select(1, index)  # (n, 1) or (n, m)
    shifted = values.sub_(spread).exp_() if in_place else (values - spread).exp()  # each <= 1, the largest = 1
    if index is None:
        mass = shifted.sum(-1, keepdim=True)
    else:
        mass = shifted.new_zeros(rows, size).index_add_(1, index, shifted)
    return mass.clamp_min_(_TINY).log_().add_(shift) if in_place else mass.clamp_min(_TINY).log() + shift


def _dense_log_sum_exp(log_probs: torch.Tensor, tokens: torch.Tensor, in_place: bool) -> torch.Tensor:
    """`log Σ_{v in tokens} exp(log_probs[:, v])` `(n, 1)`, without gradients a few rows at a time."""
    if not in_place:
        return _log_sum_exp(log_probs.index_select(1, tokens), None, 1, False)
    rows, width = log_probs.shape[0], tokens.numel()
    step = max(1, min(rows, _TILE_ELEMENTS // max(width, 1)))
    buffer = log_probs.new_empty(step * width)
    result = log_probs.new_empty(rows, 1)
    for start in range(0, rows, step):
        end = min(start + step, rows)
        tile = buffer[: (end - start) * width].view(end - start, width)
        torch.index_select(log_probs[start:end], 1, tokens, out=tile)
        result[start:end] = _log_sum_exp(tile, None, 1, True)
    return result


def coarsen(log_probs: torch.Tensor, to_shared: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """Log-probabilities of the buckets of a shared vocabulary: `log Σ_{v in bucket} p_v`, differentiable.

    A log-sum-exp per bucket, each shifted by its own largest entry, so a bucket of one token gets exactly that
    token's log-probability (coarsening by a permutation is exact), and no bucket underflows however unlikely. A
    bucket no token of the row falls into gets log(tiny) = -87.3 (finite, zero gradient) rather than -inf.

    The buckets are reduced by kind (`_BucketPlan`, cached per mapping tensor): the columns of one-token buckets are
    gathered as they are, each large bucket (the rest bucket) is one dense log-sum-exp over its columns, and only the
    few small buckets of several tokens are scattered.

    Args:
        log_probs (`torch.Tensor` of shape `(n, V)`): log-probabilities over a vocabulary (gradients flow).
        to_shared (`torch.Tensor` of shape `(V,)`): bucket of each token, int64 in `[0, num_buckets)`.
        num_buckets (`int`): `K`.

    Returns:
        `torch.Tensor` of shape `(n, K)`, float32.
    """
    log_probs = log_probs.float()
    rows, vocab = log_probs.shape
    if to_shared.shape != (vocab,):
        raise ValueError(
            f"the vocabulary mapping has {tuple(to_shared.shape)} entries for distributions over {vocab} tokens; it "
            "needs one bucket per row of the model's head."
        )
    plan = _bucket_plan(to_shared, num_buckets, log_probs.device)
    in_place = not (torch.is_grad_enabled() and log_probs.requires_grad)  # in place: gathered copies only
    coarse = log_probs.index_select(1, plan.source)  # (n, K): right for one-token buckets, overwritten for the others
    # a one-token bucket's log(max(exp(x), tiny)) is x, except log(tiny) for x = -inf (NaN and +inf stay as they are)
    fill = {"nan": math.nan, "posinf": math.inf, "neginf": _LOG_TINY}
    coarse = coarse.nan_to_num_(**fill) if in_place else coarse.nan_to_num(**fill)
    if not plan.others.numel():
        return coarse
    parts = [_dense_log_sum_exp(log_probs, tokens, in_place) for tokens in plan.dense]  # (n, 1) each
    if plan.num_groups:
        parts.append(_log_sum_exp(log_probs.index_select(1, plan.grouped), plan.group, plan.num_groups, in_place))
    if plan.num_empty:
        parts.append(log_probs.new_full((rows, plan.num_empty), _LOG_TINY))
    values = torch.cat(parts, dim=1)  # (n, K - S), in the order of `plan.others`
    return coarse.index_copy_(1, plan.others, values) if in_place else coarse.index_copy(1, plan.others, values)


@dataclass(frozen=True)
class AlignedTeacher:
    """What a teacher with another tokenizer gives the loss: its targets on the counted chunks of a micro-batch.

    Attributes:
        method (`str`): one of `CROSS_TOKENIZER_METHODS`.
        selection (`ChunkSelection`): the counted chunks (built on the student's `prediction_mask`).
        student_to_shared (`torch.Tensor` of shape `(V_s,)`, *optional*): bucket of each student token (exact,
            chunk); `None` for uld.
        num_buckets (`int`): `K`, the shared buckets plus the rest bucket if any (0 for uld).
        first_rows (`torch.Tensor` of shape `(n, K)` or `(n, K_uld)`): exact/chunk: the teacher's log-probabilities
            at the KD temperature at each chunk's first position, coarsened; uld: its probabilities at the KD
            temperature sorted descending, truncated to `K_uld = min(V_t, V_s)` entries.
        tail (`torch.Tensor` of shape `(n,)`): uld: the teacher's probability mass cut by the truncation; zeros
            otherwise.
        chunk_logprob (`torch.Tensor` of shape `(n,)`): the teacher's log-likelihood of each chunk at T = 1.
        rows_for (`Callable`, *optional*): `slots -> (first_rows, tail, top_bucket)` for those chunks, when
            `first_rows` and `tail` are `None` (see `lazy_first_rows`).
        top_bucket (`torch.Tensor` of shape `(n,)`, *optional*): uld: the shared bucket of the teacher's top token at
            each chunk's first position (the top-1 agreement); exact/chunk read it from `first_rows`.
    """

    method: str
    selection: ChunkSelection
    student_to_shared: torch.Tensor | None
    num_buckets: int
    first_rows: torch.Tensor | None
    tail: torch.Tensor | None
    chunk_logprob: torch.Tensor
    rows_for: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None
    top_bucket: torch.Tensor | None = None

    def first_rows_at(self, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """`(first_rows, tail, top_bucket)` of the chunks `slots` `(f,)`: read from `first_rows`, or (when it is
        `None`, for long batches: see `lazy_first_rows`) projected now by `rows_for`, so the teacher's side never holds
        an `(n, K)` tensor and memory stays flat in the sequence length. `top_bucket` (uld: the shared bucket of the
        teacher's top token, for the top-1 agreement its sorted rows no longer tell) may be `None`."""
        if self.first_rows is not None:
            top = None if self.top_bucket is None else self.top_bucket.index_select(0, slots)
            return self.first_rows.index_select(0, slots), self.tail.index_select(0, slots), top
        return self.rows_for(slots)


def _projector(model: torch.Tensor | HeadInput) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor], int]:
    """Flat `(B·T, D)` rows of a model's per-position outputs, the function that turns rows into float32 logits, and
    the vocabulary size."""
    if isinstance(model, HeadInput):
        head = model.head
        return (
            model.hidden.reshape(-1, model.hidden.shape[-1]),
            lambda rows: head.transform(head.linear(rows)),
            (head.weight.shape[0]),
        )
    if torch.is_tensor(model) and model.dim() == 3:
        return model.reshape(-1, model.shape[-1]), lambda rows: rows.float(), model.shape[-1]
    raise TypeError(
        f"expected logits of shape (B, T, V) or a HeadInput, got {type(model).__name__}"
        f"{' of shape ' + str(tuple(model.shape)) if torch.is_tensor(model) else ''}."
    )


def _blocks(count: int, chunk_size: int) -> list[tuple[int, int]]:
    """`[start, end)` blocks of `chunk_size` rows (all rows when < 1); one empty block when there are no rows, so that
    a micro-batch where nothing counts still connects its (zero) loss to the student's graph."""
    step = chunk_size if chunk_size >= 1 else max(count, 1)
    return [(start, min(start + step, count)) for start in range(0, count, step)] or [(0, 0)]


@torch.no_grad()
def teacher_targets(
    method: str,
    teacher: torch.Tensor | HeadInput,
    teacher_next: torch.Tensor,
    selection: ChunkSelection,
    teacher_to_shared: torch.Tensor | None,
    num_buckets: int,
    temperature: float,
    student_vocab: int,
    chunk_size: int,
    first_rows: bool = True,
    top_bucket: bool = False,
) -> tuple:
    """The teacher's side of the aligned objective, `chunk_size` of its prediction positions at a time, no gradients.

    Args:
        method (`str`): one of `CROSS_TOKENIZER_METHODS`.
        teacher (`torch.Tensor` of shape `(B, T_t, V_t)`, or `HeadInput`): the teacher's logits, or its hidden states
            `(B, T_t, H_t [+ r])` and head.
        teacher_next (`torch.Tensor` of shape `(B, T_t)`): the teacher token each position predicts (its input ids
            shifted left), -1 where none.
        selection (`ChunkSelection`): the counted chunks.
        teacher_to_shared (`torch.Tensor` of shape `(V_t,)`, *optional*): bucket of each teacher token (exact, chunk).
        num_buckets (`int`): `K` (exact, chunk).
        temperature (`float`): the KD temperature of the first-position targets.
        student_vocab (`int`): `V_s`; uld keeps at most that many sorted teacher probabilities.
        chunk_size (`int`): teacher positions per block (< 1: all at once).
        first_rows (`bool`, *optional*, defaults to `True`): also compute the first-position targets; `False` returns
            `None` for them (the loss then gets them from `lazy_first_rows`).
        top_bucket (`bool`, *optional*, defaults to `False`): also return the bucket of the teacher's top token at
            each chunk's first position (`AlignedTeacher.top_bucket`, with `first_rows`), `-1` without a mapping.

    Returns:
        `(first_rows, tail, chunk_logprob)` as in `AlignedTeacher`, float32 (and `top_bucket` `(n,)` when asked).
    """
    _check_method(method)
    keep_first = first_rows
    rows_source, project, vocab = _projector(teacher)
    members, slots = selection.teacher_member, selection.teacher_slot
    device, n = rows_source.device, selection.num_chunks
    uld = method == "uld"
    if not uld and (teacher_to_shared is None or teacher_to_shared.shape != (vocab,)):
        raise ValueError(
            f"method={method!r} needs teacher_to_shared with one bucket per teacher token ({vocab}), got "
            f"{None if teacher_to_shared is None else tuple(teacher_to_shared.shape)}."
        )
    width = min(vocab, student_vocab) if uld else num_buckets
    first_rows = torch.zeros(n if keep_first else 0, width, dtype=torch.float32, device=device)
    tail = torch.zeros(n if keep_first else 0, dtype=torch.float32, device=device)
    top = torch.full((n if keep_first else 0,), -1, dtype=torch.long, device=device)
    chunk_logprob = torch.zeros(n, dtype=torch.float32, device=device)
    next_ids = teacher_next.reshape(-1).to(device)[members]
    if next_ids.numel() and int(next_ids.min()) < 0:
        raise ValueError("teacher_next is -1 at a position of a counted chunk; it must hold the next teacher token.")
    is_first = members == selection.teacher_first[slots]
    for start, end in _blocks(members.numel(), chunk_size):
        logits = project(rows_source.index_select(0, members[start:end]))  # (C, V_t) float32
        block_slots = slots[start:end]
        picked = logits.gather(1, next_ids[start:end, None]).squeeze(1) - logits.logsumexp(-1)  # (C,) at T = 1
        chunk_logprob.index_add_(0, block_slots, picked)
        first = is_first[start:end].nonzero().squeeze(-1)
        if not keep_first or not first.numel():
            continue
        first_slots = block_slots[first]
        first_rows[first_slots], tail[first_slots], top[first_slots] = _first_targets(
            logits.index_select(0, first), method, temperature, width, teacher_to_shared, num_buckets
        )
    result = (first_rows, tail, chunk_logprob) if keep_first else (None, None, chunk_logprob)
    return (*result, top if keep_first else None) if top_bucket else result


def _first_targets(
    logits: torch.Tensor, method: str, temperature: float, width: int, to_shared: torch.Tensor | None, buckets: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher logits `(f, V_t)` at chunks' first positions -> `(first_rows, tail, top_bucket)` as in
    `AlignedTeacher`."""
    rows = logits / temperature
    top = torch.full((rows.shape[0],), -1, dtype=torch.long, device=rows.device)
    if to_shared is not None:
        top = to_shared.to(rows.device)[rows.argmax(-1)]
    if method == "uld":
        ordered = torch.softmax(rows, dim=-1).sort(dim=-1, descending=True).values  # (f, V_t)
        return ordered[:, :width], ordered[:, width:].sum(-1), top
    return coarsen(torch.log_softmax(rows, dim=-1), to_shared, buckets), rows.new_zeros(rows.shape[0]), top


def lazy_first_rows(
    method: str,
    teacher: torch.Tensor | HeadInput,
    selection: ChunkSelection,
    teacher_to_shared: torch.Tensor | None,
    num_buckets: int,
    temperature: float,
    student_vocab: int,
    tile_elements: int = 2**24,
) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """`slots -> (first_rows, tail, top_bucket)`: the teacher's first-position targets of those chunks, projected when asked (no
    gradients). The loss asks block by block, so no `(n, K)` tensor is ever held: the price of flat memory on long
    batches is projecting those teacher rows again (and once more when a checkpointed block is recomputed)."""
    _check_method(method)
    rows_source, project, vocab = _projector(teacher)
    width = min(vocab, student_vocab) if method == "uld" else num_buckets
    step = max(1, tile_elements // vocab)  # teacher rows projected at once: one bounded (rows, V_t) tile

    @torch.no_grad()
    def rows_for(slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        index = selection.teacher_first.index_select(0, slots)
        parts = [
            _first_targets(
                project(rows_source.index_select(0, index[start:end])),
                method,
                temperature,
                width,
                teacher_to_shared,
                num_buckets,
            )
            for start, end in _blocks(index.numel(), step)
        ]
        return tuple(torch.cat([part[i] for part in parts]) for i in range(3))

    return rows_for


@torch.no_grad()
def topk_teacher_targets(
    method: str,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    topk_tail: torch.Tensor,
    next_logprob: torch.Tensor,
    selection: ChunkSelection,
    teacher_to_shared: torch.Tensor | None,
    num_buckets: int,
    student_vocab: int,
    rest_bucket: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`teacher_targets` for a teacher known by its top-k alone (a teacher cache in the teacher's own tokenization).

    - exact / chunk: the top-k probabilities summed per shared bucket; the tail (mass outside the top-k) goes into the
      rest bucket `rest_bucket`. Without one (`rest_bucket=None`: the vocabularies share every token, or the tail is to
      be renormalised away) the coarsened distribution is renormalised over the buckets, i.e. the tail is spread over
      them in proportion: no mass is ever dropped without the distribution being a distribution again. A bucket none of
      the top-k falls into gets log(tiny), as in `coarsen`. With k = V_t and no tail this is `teacher_targets`.
    - uld: the sorted top-k probabilities, truncated to `min(k, V_s)`; `tail` = the cached tail plus what the
      truncation cut (the teacher's sorted vector is zero past its top-k).
    - chunk log-likelihoods: sums of `next_logprob` (at T = 1, stored whole, not from the top-k) over each counted
      chunk's teacher positions.

    Args:
        method (`str`): one of `CROSS_TOKENIZER_METHODS`.
        topk_ids (`torch.Tensor` of shape `(B, T_t, k)`): the teacher's top-k ids (its own vocabulary).
        topk_logprobs (`torch.Tensor` of shape `(B, T_t, k)`): their log-probabilities at the KD temperature.
        topk_tail (`torch.Tensor` of shape `(B, T_t)`): the probability mass outside the top-k.
        next_logprob (`torch.Tensor` of shape `(B, T_t)`): log-probability (T = 1) of the teacher token each position
            predicts.
        selection (`ChunkSelection`): the counted chunks.
        teacher_to_shared (`torch.Tensor` of shape `(V_t,)`, *optional*): bucket of each teacher token (exact, chunk).
        num_buckets (`int`): `K` (exact, chunk).
        student_vocab (`int`): `V_s`.
        rest_bucket (`int`, *optional*): the bucket the tail goes into; `None` renormalises instead.

    Returns:
        `(first_rows, tail, chunk_logprob)` as in `AlignedTeacher`, float32.
    """
    _check_method(method)
    k = topk_ids.shape[-1]
    device = topk_logprobs.device
    n = selection.num_chunks
    chunk_logprob = torch.zeros(n, dtype=torch.float32, device=device)
    chunk_logprob.index_add_(0, selection.teacher_slot, next_logprob.reshape(-1).float()[selection.teacher_member])
    first = selection.teacher_first
    logprobs = topk_logprobs.reshape(-1, k).float().index_select(0, first)  # (n, k)
    tail = topk_tail.reshape(-1).float().index_select(0, first).clamp_min(0)  # (n,)
    if method == "uld":
        width = min(k, student_vocab)
        ordered = logprobs.exp().sort(dim=-1, descending=True).values
        return ordered[:, :width].contiguous(), tail + ordered[:, width:].sum(-1), chunk_logprob
    if teacher_to_shared is None:
        raise ValueError(f"method={method!r} needs teacher_to_shared, the bucket of each teacher token.")
    ids = topk_ids.reshape(-1, k).long().index_select(0, first)
    index = teacher_to_shared.to(device=device, dtype=torch.long)[ids]  # (n, k) buckets
    bucket_max = logprobs.new_full((n, num_buckets), -math.inf)
    bucket_max.scatter_reduce_(1, index, logprobs, reduce="amax")
    bucket_max.masked_fill_(bucket_max == -math.inf, 0.0)
    mass = logprobs.new_zeros(n, num_buckets).scatter_add_(1, index, (logprobs - bucket_max.gather(1, index)).exp())
    rows = mass.clamp_min(_TINY).log() + bucket_max  # (n, K)
    if rest_bucket is not None:
        rows[:, rest_bucket] = torch.logaddexp(rows[:, rest_bucket], tail.log())
    else:
        rows = rows - rows.logsumexp(-1, keepdim=True)
    return rows, torch.zeros(n, dtype=torch.float32, device=device), chunk_logprob


def _log_complement(log_p: torch.Tensor) -> torch.Tensor:
    """log(1 − exp(l)) for l < 0, accurate on both sides of −log 2 (Mächler 2012)."""
    return torch.where(log_p > -math.log(2), torch.log(-torch.expm1(log_p)), torch.log1p(-torch.exp(log_p)))


def _binary_rows(log_p: torch.Tensor) -> torch.Tensor:
    """`(n,)` log-likelihoods -> `(n, 2)` log-probabilities of "the chunk" and "anything else"."""
    log_p = log_p.float().clamp_max(_MAX_CHUNK_LOGPROB)
    return torch.stack([log_p, _log_complement(log_p)], dim=-1)


def _first_position_kd(
    objective: KDObjective, rows: torch.Tensor, teacher: AlignedTeacher, slots: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """KD summed over chunks' first positions (T² applied) and the top-1 agreement, from student logits `(f, V_s)`."""
    targets, tail, top = teacher.first_rows_at(slots)
    temperature = objective.kd_temperature
    if teacher.method == "uld":
        ordered = torch.softmax(rows / temperature, dim=-1).sort(dim=-1, descending=True).values  # (f, V_s)
        width = targets.shape[-1]
        kept = ordered[:, :width]
        if kept.shape[-1] < width:  # a teacher wider than the student: the student's sorted vector padded with 0
            kept = torch.nn.functional.pad(kept, (0, width - kept.shape[-1]))
        # W1 between the two sorted vectors, both padded with zeros to the wider vocabulary: the mass either side
        # cut off (the student's here, the teacher's `tail`) adds to the distance.
        distance = (kept - targets).abs().sum(-1) + ordered[:, width:].sum(-1) + tail
        agreement = distance.new_zeros((), dtype=torch.long)
        if top is not None and teacher.student_to_shared is not None:  # the buckets of both models' top tokens
            student_top = teacher.student_to_shared.to(rows.device)[rows.detach().argmax(-1)]
            agreement = ((student_top == top) & (top >= 0)).sum()
        return distance.sum() * objective.kd_scale, agreement
    teacher_top = targets.argmax(-1, keepdim=True)  # before the divergence overwrites `targets`
    value, student = _CoarsenedDivergence.apply(
        rows, targets, teacher.student_to_shared, teacher.num_buckets, objective
    )
    agreement = top1_agreement(student, teacher_top)
    return value * objective.kd_scale, agreement


class _CoarsenedDivergence(torch.autograd.Function):
    """`Σ_rows D(coarsen(log_softmax(z / T)), targets)` with its gradient in closed form, computed in the forward.

    Autograd through `coarsen` and the divergence keeps a dozen `(f, V)` tiles for the backward pass; this keeps one,
    the gradient. With `x = coarsen(log p)` (`x_b = log q_b`, `q_b = Σ_{v in b} p_v`), `G = dD/dx` from
    `divergence_and_grad`, and `h_v = G_b(v) / q_b(v)` the gradient wrt `p_v`, the chain rule through the softmax gives
    `dD/dz_u = p_u·(h_u − Σ_v p_v·h_v) / T`, where `p_u·h_u = exp(log p_u − x_b(u))·G_b(u)` never overflows. (A bucket
    no student token falls into is a constant: it gets no gradient, as in `coarsen`.)
    """

    @staticmethod
    def forward(ctx, rows, targets, to_shared, num_buckets, objective):
        # rows (f, V_s) student logits, targets (f, K) teacher log-probabilities at T, to_shared (V_s,)
        temperature = objective.kd_temperature
        log_p = rows.float().div(temperature)  # (f, V_s), this function's own tile
        log_p = log_p.sub_(log_p.logsumexp(-1, keepdim=True))
        coarse = coarsen(log_p, to_shared, num_buckets)  # (f, K), this function's own
        # `targets` is an `index_select` copy and `coarse` is normalised already (its log-softmax is itself), so the
        # divergence may work in place on both; both hold finite log-probabilities (coarsen clamps empty buckets).
        value, grad_coarse, coarse = divergence_and_grad(
            coarse,
            targets,
            loss=objective.kd_loss,
            temperature=1.0,
            beta=objective.jsd_beta,
            skew=objective.skew_alpha,
            overwrite=True,
        )
        ctx.dtype = rows.dtype
        ctx.mark_non_differentiable(coarse)
        if not ctx.needs_input_grad[0]:  # evaluation, or a student without gradients
            ctx.save_for_backward(None)
            return value.sum(), coarse
        index = to_shared.to(device=rows.device, dtype=torch.long).expand_as(log_p)
        weighted = coarse.gather(1, index).neg_().add_(log_p).exp_()  # p_u / q_b(u) = exp(log p_u − x_b(u))
        weighted.mul_(grad_coarse.gather(1, index))  # p_u·h_u
        del grad_coarse
        total = weighted.sum(-1, keepdim=True)  # Σ_v p_v·h_v
        grad = weighted.sub_(log_p.exp_().mul_(total))
        del log_p
        if temperature != 1.0:
            grad = grad.div_(temperature)
        ctx.save_for_backward(grad)
        return value.sum(), coarse

    @staticmethod
    def backward(ctx, grad_value, _grad_coarse):
        (grad,) = ctx.saved_tensors
        return (grad * grad_value).to(ctx.dtype), None, None, None, None


def aligned_objective_sums(
    objective: KDObjective,
    student: torch.Tensor | HeadInput,
    teacher: AlignedTeacher,
    positions: Positions,
    chunk_size: int,
) -> ObjectiveSums:
    """The objective's sums for a micro-batch whose teacher has another tokenizer, through the chunk alignment.

    - KD (`exact`, `chunk`): at each counted chunk's first student position, `objective.kd_loss` between the student's
      coarsened `log_softmax(z_s / T)` and the teacher's `first_rows`, times the T² scale. `uld`: the W1 distance of
      the sorted probability vectors at T, plus the teacher's cut tail, times the T² scale.
    - `chunk` adds, for chunks of more than one token on either side, `objective.kd_loss` on the two-outcome
      distributions `[p, 1 − p]` of the teacher's and the student's chunk likelihoods (T = 1, no T² factor).
    - CE and label smoothing over every valid student position, exactly as the same-tokenizer objective, and
      `num_targets` = valid student positions, so the trainer's accumulation and DDP normalisation are unchanged.
    - `bits`: `[student chunk NLL, teacher chunk NLL, bytes]` over the counted chunks (nats, T = 1).

    Args:
        objective (`KDObjective`): what to compute.
        student (`torch.Tensor` of shape `(B, T_s, V_s)`, or `HeadInput`): the student's logits, or its hidden states
            `(B, T_s, H_s [+ r])` and head; gradients flow. Hidden states are projected `chunk_size` valid positions
            at a time under activation checkpointing: no `(T_s, V_s)` tensor is kept for the backward pass.
        teacher (`AlignedTeacher`): the teacher's targets, on a selection built with `prediction_mask(positions)`.
        positions (`Positions`): the student batch's labels / attention mask; causal LMs only (`shift_labels`).
        chunk_size (`int`): student positions per block; must be >= 1 for a `HeadInput`, unused with logits.

    Returns:
        `ObjectiveSums` with `bits`.
    """
    _check_method(teacher.method)
    check_labels(objective, positions)
    rows_source, project, vocab = _projector(student)
    batch, length = (student.hidden if isinstance(student, HeadInput) else student).shape[:2]
    head_input = isinstance(student, HeadInput)
    if head_input and chunk_size < 1:
        raise ValueError(f"kd_chunk_size={chunk_size} must be >= 1 for a student given as hidden states.")
    if teacher.method != "uld" and teacher.student_to_shared.shape != (vocab,):
        raise ValueError(
            f"student_to_shared has {tuple(teacher.student_to_shared.shape)} entries for a student head of {vocab}."
        )
    device = rows_source.device
    valid = prediction_mask(positions, (batch, length)).to(device)
    valid_index = valid.reshape(-1).nonzero().squeeze(-1)  # (n_valid,) into B·T_s
    labels = None
    if positions.labels is not None:
        aligned = torch.cat([positions.labels[:, 1:], positions.labels.new_full((batch, 1), -100)], dim=1)
        labels = aligned.reshape(-1).to(device)[valid_index]
    row_of = torch.full((batch * length,), -1, dtype=torch.long, device=device)
    row_of[valid_index] = torch.arange(valid_index.numel(), device=device)
    selection = teacher.selection
    first_row, member_row = row_of[selection.student_first], row_of[selection.student_member]
    if bool((first_row < 0).any()) or bool((member_row < 0).any()):
        raise ValueError(
            "the teacher's chunk selection counts a student position that does not count here; build it with "
            "select_chunks(layout, prediction_mask(positions, shape)) on this batch's positions."
        )
    member_next = selection.student_next.to(device)  # (m_s,)

    first_order = first_row.argsort(stable=True)
    first_sorted = first_row[first_order]
    member_order = member_row.argsort(stable=True)
    member_sorted = member_row[member_order]
    bounds = torch.tensor(
        [start for start, _ in _blocks(valid_index.numel(), chunk_size if head_input else 0)] + [valid_index.numel()],
        device=device,
    )
    first_cuts = torch.searchsorted(first_sorted, bounds).tolist()
    member_cuts = torch.searchsorted(member_sorted, bounds).tolist()
    bounds = bounds.tolist()

    chunk_grad = teacher.method == "chunk" and torch.is_grad_enabled()
    sums = torch.zeros(4, dtype=torch.float32, device=device)  # total (with gradients), kd, ce, agreement
    member_logprobs, member_slots = [], []
    for block in range(len(bounds) - 1):
        start, end = bounds[block], bounds[block + 1]
        first_chunks = first_order[first_cuts[block] : first_cuts[block + 1]]
        first_local = first_row[first_chunks] - start
        members = member_order[member_cuts[block] : member_cuts[block + 1]]
        member_local = member_row[members] - start
        block_labels = None if labels is None else labels[start:end]

        def block_sums(
            rows: torch.Tensor,
            first_chunks=first_chunks,
            first_local=first_local,
            members=members,
            member_local=member_local,
            block_labels=block_labels,
        ):
            logits = project(rows)  # (C, V_s) float32: lives only inside this block
            kd, agreement = _first_position_kd(objective, logits.index_select(0, first_local), teacher, first_chunks)
            total, ce = with_ce_term(objective, kd, logits, block_labels)
            with torch.set_grad_enabled(chunk_grad):
                picked = logits[member_local, member_next[members]] - logits.logsumexp(-1)[member_local]
            ce = torch.zeros_like(kd) if ce is None else ce
            return torch.stack([total, kd.detach(), ce.detach(), agreement.to(kd)]), picked

        rows = rows_source.index_select(0, valid_index[start:end])
        if head_input and torch.is_grad_enabled():
            block_result, picked = checkpoint(block_sums, rows, use_reentrant=False)
        else:
            block_result, picked = block_sums(rows)
        sums = sums + block_result
        member_logprobs.append(picked)
        member_slots.append(selection.student_slot[members])

    n = selection.num_chunks
    student_logprob = torch.zeros(n, dtype=torch.float32, device=device)
    if member_logprobs:
        student_logprob = student_logprob.index_add(0, torch.cat(member_slots), torch.cat(member_logprobs))
    total, kd, ce, agreement = sums[0], sums[1], sums[2], sums[3]
    if teacher.method == "chunk":
        multi = selection.multi.nonzero().squeeze(-1)
        binary = per_token_divergence(
            _binary_rows(student_logprob[multi]),
            _binary_rows(teacher.chunk_logprob[multi]),
            loss=objective.kd_loss,
            temperature=1.0,
            beta=objective.jsd_beta,
            skew=objective.skew_alpha,
        ).sum()
        total = total + objective.kd_weight * binary
        kd = kd + binary.detach()
    bits = torch.stack(
        [
            -student_logprob.detach().double().sum(),
            -teacher.chunk_logprob.double().sum(),
            selection.bytes.double().sum(),
        ]
    )
    return ObjectiveSums(
        total=total,
        kd=kd.detach(),
        ce=None if labels is None else ce.detach(),
        num_targets=valid.sum(),
        agreement=agreement.detach().long(),
        bits=bits,
    )
