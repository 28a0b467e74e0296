"""The distillation objective from final hidden states, one token chunk at a time, so that neither model's full
`(N, V)` logits ever exist.

For each chunk of `C` positions the student's and the teacher's logits `(C, V)` are projected through their heads,
the objective of that chunk and its gradient wrt the student's logits are computed in closed form
(`row_sums_and_grad`: every registered divergence, the temperature, T², the CE term and the shared-vocabulary rule,
tested equal to autograd of the logits path), and pushed through the head by hand to the student's hidden states
and head weight at once. Only the gradients are kept: `(N, H)` for the
hidden states and `(V, H)` for the head weight, which the backward pass hands on. Peak memory is a few `(C, V)` tiles
whatever N is. (Liger-Kernel's fused linear losses use the same "gradient in forward" idea.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .objective import KDObjective, ObjectiveSums, check_labels, check_vocab, gather_rows, row_sums_and_grad
from .reduction import Positions
from .sparse import TopK, gather_sparse_rows, sparse_row_sums_and_grad


@dataclass
class LinearHead:
    """A linear LM head and the logit transforms its model applies after it.

    `logits = softcap · tanh(logit_scale · (h @ weight.T + bias + a @ adapter_weight.T) / softcap)` (the tanh part
    only when `softcap` is set). Covers tied embeddings (pass the embedding matrix), a head bias (also a bias added
    after the head, as BART/Marian/Pegasus's `final_logits_bias`: see `hf_distill.modeling.lm_head.linear_head`), logit scaling
    (Cohere's `logit_scale`, Granite's `1 / logits_scaling`), final logit soft-capping (Gemma 2/3) and LoRA adapters
    on the head (`a` their inputs, appended to `h`).

    Attributes:
        weight (`torch.Tensor` of shape `(V, H)`), bias (`torch.Tensor` of shape `(V,)`, *optional*),
        logit_scale (`float`), softcap (`float`, *optional*), adapter_weight (`torch.Tensor` of shape `(V, r)`,
        *optional*).
    """

    weight: torch.Tensor
    bias: torch.Tensor | None = None
    logit_scale: float = 1.0
    softcap: float | None = None
    adapter_weight: torch.Tensor | None = None

    @property
    def hidden_size(self) -> int:
        """`H`, the width of the head's input without the adapters' `r` features."""
        return self.weight.shape[1]

    def linear(self, features: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """`(C, H [+ r])` -> `(C, V)` before the transforms, in the head's dtype; written into `out` when given.

        With an `adapter_weight` `(V, r)` (LoRA's `lora_B` on the head), the last `r` features are the adapter's
        inputs (`scaling · lora_A(x)`) and their product with it is added: `x @ W.T + b + a @ B.T`.
        """
        features = features.to(self.weight.dtype)
        hidden = features[:, : self.hidden_size] if self.adapter_weight is not None else features
        if out is None:
            projected = hidden @ self.weight.t()
            projected = projected if self.bias is None else projected + self.bias
        elif self.bias is None:
            projected = torch.matmul(hidden, self.weight.t(), out=out)
        else:
            projected = torch.addmm(self.bias, hidden, self.weight.t(), out=out)
        if self.adapter_weight is not None:
            projected.addmm_(features[:, self.hidden_size :], self.adapter_weight.to(self.weight.dtype).t())
        return projected

    def tile(self, rows: int) -> torch.Tensor | None:
        """A reusable `(rows, V)` float32 buffer for `linear(..., out=)`, when its output is float32 already
        (reusing one buffer per model spares the allocator a fresh multi-MiB mapping and its page faults per chunk)."""
        if self.weight.dtype != torch.float32:
            return None
        return torch.empty(rows, self.weight.shape[0], device=self.weight.device)

    def transform(self, linear_out: torch.Tensor) -> torch.Tensor:
        """The model's post-head logit transforms, in float32."""
        logits = linear_out.float()
        if self.logit_scale != 1.0:
            logits = logits * self.logit_scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def transform_grad(self, logits: torch.Tensor, grad_logits: torch.Tensor) -> torch.Tensor:
        """Chain rule through `transform`, in place on `grad_logits`: d logits / d linear_out, given the logits."""
        if self.softcap is not None:  # d/dx c·tanh(x/c) = 1 − tanh² = 1 − (logits/c)²
            grad_logits.mul_(1 - (logits / self.softcap).square())
        if self.logit_scale != 1.0:
            grad_logits.mul_(self.logit_scale)
        return grad_logits


@dataclass(frozen=True)
class HeadInput:
    """A model's final hidden states and the LM head that projects them (the logits are never materialised whole).

    Attributes:
        hidden (`torch.Tensor` of shape `(B, T, H [+ r])`): the head's input, followed by the inputs of its LoRA
            adapters when `head` has an `adapter_weight`. Gradients flow for the student.
        head (`LinearHead`): the head; for the student, gradients reach `weight`, `bias` and `adapter_weight` when
            they require them.
    """

    hidden: torch.Tensor
    head: LinearHead


def _rows_in_cache(vocab_size: int) -> int:
    """Rows per element-wise block: ~1 MiB of float32 per tile, so a block's few live tiles stay in cache."""
    return max(1, 2**18 // vocab_size)


class _DenseTeacher:
    """The teacher as hidden states and an LM head: each chunk's logits are projected, then dropped."""

    def __init__(self, head: LinearHead, shared: int) -> None:
        self.head, self.shared, self.tile = head, shared, None

    def start(self, rows: int) -> None:
        self.tile = self.head.tile(rows)

    def chunk(self, teacher_hidden: torch.Tensor, start: int, size: int, rows_here: int) -> torch.Tensor:
        tile = None if self.tile is None else self.tile[:rows_here]
        return self.head.transform(self.head.linear(teacher_hidden[start : start + size], tile))  # (C, V_t)

    def sums_and_grad(self, objective, student_block, teacher_chunk, block, labels, overwrite):
        return row_sums_and_grad(
            objective, student_block, teacher_chunk[block], labels, self.shared, overwrite=overwrite
        )


class _SparseTeacher:
    """The teacher as its cached top-k: `(ids (n, k), log-probs (n, k), tail (n,) or None)` rows, sliced per chunk."""

    def __init__(self, tail_mode: str) -> None:
        self.tail_mode = tail_mode

    def start(self, rows: int) -> None:
        return None

    def chunk(self, rows: tuple, start: int, size: int, rows_here: int) -> tuple:
        return tuple(None if r is None else r[start : start + size] for r in rows)

    def sums_and_grad(self, objective, student_block, teacher_chunk, block, labels, overwrite):
        ids, logprobs, tail = (None if r is None else r[block] for r in teacher_chunk)
        return sparse_row_sums_and_grad(objective, student_block, ids, logprobs, tail, labels, self.tail_mode)


class _ChunkedObjective(torch.autograd.Function):
    """Forward computes the sums and, chunk by chunk, the gradients; backward only scales the stored gradients."""

    @staticmethod
    def forward(ctx, student_hidden, weight, bias, adapter_weight, teacher_rows, labels, config):
        # student_hidden (n, H_s [+ r]), weight (V_s, H_s), bias (V_s,) or None, adapter_weight (V_s, r) or None,
        # teacher_rows: what `teacher` reads (the teacher's head inputs, or its cached top-k), labels (n,) or None
        objective, student_head, teacher, chunk_size, want = config
        head = LinearHead(weight, bias, student_head.logit_scale, student_head.softcap, adapter_weight)
        device, n, hidden_size = student_hidden.device, student_hidden.shape[0], weight.shape[1]
        sums = torch.zeros(4, dtype=torch.float64, device=device)  # total, kd, ce, agreement
        grad_hidden = torch.zeros_like(student_hidden) if want["hidden"] else None
        grad_weight = None  # (V_s, H_s) float32, written by the first chunk's matmul rather than zero-filled first
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if want["bias"] else None
        grad_adapter = torch.zeros_like(adapter_weight, dtype=torch.float32) if want["adapter"] else None
        student_tile = head.tile(min(chunk_size, n))
        teacher.start(min(chunk_size, n))
        for start in range(0, n, chunk_size):
            hidden = student_hidden[start : start + chunk_size]  # (C, H_s)
            rows_here = hidden.shape[0]
            teacher_chunk = teacher.chunk(teacher_rows, start, chunk_size, rows_here)
            # (C, V_s) float32, this loop's own
            student_logits = head.transform(
                head.linear(hidden, None if student_tile is None else student_tile[:rows_here])
            )
            chunk_labels = None if labels is None else labels[start : start + chunk_size]
            # The element-wise work walks the two tiles a few rows at a time so that its dozen passes run in cache
            # rather than in memory; the (C, V) tiles stay only as large as the matmuls need to be efficient. Each
            # block's gradient is written over its student logits, which then hold d total / d (h @ W.T + b).
            rows = _rows_in_cache(student_logits.shape[-1])
            for row in range(0, student_logits.shape[0], rows):
                block = slice(row, row + rows)
                total, kd, ce, agreement, grad_block = teacher.sums_and_grad(
                    objective,
                    student_logits[block],
                    teacher_chunk,
                    block,
                    None if chunk_labels is None else chunk_labels[block],
                    # Both tiles are this loop's own; the student's stays intact when soft-capping needs it.
                    overwrite=head.softcap is None,
                )
                ce = torch.zeros_like(kd) if ce is None else ce
                sums += torch.stack([total, kd, ce, agreement.to(kd)]).double()
                if any(want.values()):
                    student_logits[block] = head.transform_grad(student_logits[block], grad_block)
                del grad_block
            del teacher_chunk
            if not any(want.values()):
                continue
            # G = d total / d (h @ W.T + b), (C, V_s). Through the linear map: d/dh = G @ W, d/dW = G.T @ h,
            # d/db = Σ_rows G (and for the adapter's inputs a, and B: G @ B and G.T @ a).
            grad_out = student_logits
            del student_logits
            if grad_hidden is not None:
                grad_rows = grad_hidden[start : start + chunk_size]
                grad_rows[:, :hidden_size] = grad_out.to(weight.dtype) @ weight  # (C, H_s)
                if adapter_weight is not None:  # (C, r): into the LoRA inputs, and on through lora_A by autograd
                    grad_rows[:, hidden_size:] = grad_out.to(adapter_weight.dtype) @ adapter_weight
            if grad_adapter is not None:  # (V_s, r)
                grad_adapter.addmm_(grad_out.t(), hidden[:, hidden_size:].to(torch.float32))
            if want["weight"]:
                body = hidden[:, :hidden_size]
                if weight.dtype != torch.float32:
                    chunk_grad = (grad_out.t().to(weight.dtype) @ body.to(weight.dtype)).float()
                    grad_weight = chunk_grad if grad_weight is None else grad_weight.add_(chunk_grad)
                elif grad_weight is None:
                    grad_weight = grad_out.t() @ body.to(torch.float32)  # (V_s, H_s)
                else:
                    grad_weight.addmm_(grad_out.t(), body.to(torch.float32))  # in place
            if grad_bias is not None:
                grad_bias += grad_out.sum(0)
            del grad_out  # before the next chunk allocates its tiles
        if want["weight"] and grad_weight is None:  # no position to learn from in this batch
            grad_weight = torch.zeros_like(weight, dtype=torch.float32)
        # Kept on ctx rather than saved for backward (they are neither inputs nor outputs), so that backward can let
        # go of them: autograd then adopts each as the parameter's `.grad` instead of copying it.
        ctx.grads = [grad_hidden, grad_weight, grad_bias, grad_adapter]
        ctx.dtypes = (
            student_hidden.dtype,
            weight.dtype,
            None if bias is None else bias.dtype,
            None if adapter_weight is None else adapter_weight.dtype,
        )
        return sums.float()

    @staticmethod
    def backward(ctx, grad_sums):
        if ctx.grads is None:
            raise RuntimeError("The chunked distillation loss can be backpropagated once (its gradients are reused).")
        stored, ctx.grads = ctx.grads, None
        grad_total = grad_sums[0]
        # Scaled in place and handed on: a second (V, H) copy of the head's gradient would cost as much memory as
        # the head itself.
        grads = [None if g is None else g.mul_(grad_total).to(dtype) for g, dtype in zip(stored, ctx.dtypes)]
        del stored
        return grads[0], grads[1], grads[2], grads[3], None, None, None


def chunked_objective_sums(
    objective: KDObjective,
    student: HeadInput,
    teacher: HeadInput,
    positions: Positions,
    chunk_size: int,
    vocab_size: int | None = None,
) -> ObjectiveSums:
    """`objective_sums` from final hidden states and LM heads, without materialising either model's logits.

    Args:
        objective (`KDObjective`): what to compute.
        student (`HeadInput`): the student's hidden states `(B, T, H_s [+ r])` (with gradients) and head.
        teacher (`HeadInput`): the teacher's hidden states `(B, T, H_t [+ r_t])` and head.
        positions (`Positions`), vocab_size (`int`, *optional*): as in `objective_sums`.
        chunk_size (`int`): positions per chunk; peak memory is a few `(chunk_size, V)` float32 tiles.

    Returns:
        `ObjectiveSums`, equal to `objective_sums` on the projected logits up to float rounding.
    """
    check_labels(objective, positions)
    student_rows, teacher_rows, targets = gather_rows(student.hidden, teacher.hidden, positions)
    shared = check_vocab(student.head.weight.shape[0], teacher.head.weight.shape[0], vocab_size)
    return _apply(
        objective,
        student_rows,
        student.head,
        _DenseTeacher(teacher.head, shared),
        teacher_rows.detach(),
        targets,
        chunk_size,
    )


def _wanted(student_rows: torch.Tensor, student_head: LinearHead) -> dict[str, bool]:
    grad_enabled = torch.is_grad_enabled()
    return {
        "hidden": grad_enabled and student_rows.requires_grad,
        "weight": grad_enabled and student_head.weight.requires_grad,
        "bias": grad_enabled and student_head.bias is not None and student_head.bias.requires_grad,
        "adapter": grad_enabled
        and student_head.adapter_weight is not None
        and student_head.adapter_weight.requires_grad,
    }


def _apply(objective, student_rows, student_head, teacher, teacher_rows, targets, chunk_size) -> ObjectiveSums:
    if chunk_size < 1:
        raise ValueError(f"kd_chunk_size={chunk_size} must be >= 1 here (0 selects the logits path upstream).")
    config = (objective, student_head, teacher, chunk_size, _wanted(student_rows, student_head))
    sums = _ChunkedObjective.apply(
        student_rows,
        student_head.weight,
        student_head.bias,
        student_head.adapter_weight,
        teacher_rows,
        targets.labels,
        config,
    )
    total, kd, ce, agreement = sums[0], sums[1].detach(), sums[2].detach(), sums[3].detach().long()
    return ObjectiveSums(
        total=total,
        kd=kd,
        ce=None if targets.labels is None else ce,
        num_targets=targets.count,
        agreement=agreement,
    )


def chunked_sparse_objective_sums(
    objective: KDObjective, student: HeadInput, teacher: TopK, positions: Positions, chunk_size: int
) -> ObjectiveSums:
    """`sparse.sparse_objective_sums` from the student's final hidden states: a cached teacher, and the student's
    logits only one `(chunk_size, V)` tile at a time.

    Args:
        objective (`KDObjective`): what to compute; `kd_temperature` must be the temperature of the cache.
        student (`HeadInput`): the student's hidden states `(B, T, H [+ r])` and head, as in `chunked_objective_sums`.
        teacher (`TopK`): ids and log-probabilities `(B, T, k)`, tail mass `(B, T)` (optional), tail mode.
        positions (`Positions`): as in `objective_sums`.
        chunk_size (`int`): positions per chunk.

    Returns:
        `ObjectiveSums`, equal to `sparse_objective_sums` on the projected logits up to float rounding.
    """
    check_labels(objective, positions)
    student_rows, ids, logprobs, tail_rows, targets = gather_sparse_rows(student.hidden, teacher, positions)
    vocab = student.head.weight.shape[0]
    if ids.numel() and int(ids.max()) >= vocab:
        raise ValueError(f"topk_ids go up to {int(ids.max())}, beyond the student's vocabulary of {vocab}.")
    teacher_rows = (ids.long(), logprobs.float(), None if tail_rows is None else tail_rows.float())
    return _apply(
        objective, student_rows, student.head, _SparseTeacher(teacher.tail), teacher_rows, targets, chunk_size
    )
