"""Checks a (correctness against a float64 reference) and b (the loss kernels against naive, TRL and Liger)."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from gpu_harness import (
    Context,
    Section,
    batch_of_tokens,
    fmt,
    importable,
    llama,
    make_trainer,
    md_table,
    median_seconds,
    peak_memory,
    randn,
    rel_err,
    release,
)

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "tvd", "skew_forward_kl", "skew_reverse_kl")
# The README's tolerances (Performance): float32 1e-5 relative; bf16 hidden states and heads 1e-3 loss, 2e-2 grads.
TOLERANCES = {"float32": {"loss": 1e-5, "grad": 1e-5}, "bfloat16": {"loss": 1e-3, "grad": 2e-2}}


# ---------------------------------------------------------------------------------------------------------------------
# a. Correctness


def reference_divergence(
    student: torch.Tensor, teacher: torch.Tensor, loss: str, temperature: float, beta: float, skew: float
) -> torch.Tensor:
    """Float64 reference of every divergence, written from the definitions (probabilities, not log-space tricks).

    Args:
        student (`torch.Tensor` of shape `(N, V)`), teacher (`torch.Tensor` of shape `(N, V)`): float64 logits.

    Returns:
        `torch.Tensor` of shape `(N,)`, float64.
    """
    log_s, log_t = torch.log_softmax(student / temperature, -1), torch.log_softmax(teacher / temperature, -1)
    p_s, p_t = log_s.exp(), log_t.exp()

    def kl(p: torch.Tensor, log_p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return (p * (log_p - q.log())).sum(-1)

    if loss == "forward_kl":
        return kl(p_t, log_t, p_s)
    if loss == "reverse_kl":
        return kl(p_s, log_s, p_t)
    if loss == "jsd":
        mixture = (1 - beta) * p_s + beta * p_t
        return beta * kl(p_t, log_t, mixture) + (1 - beta) * kl(p_s, log_s, mixture)
    if loss == "tvd":
        return 0.5 * (p_t - p_s).abs().sum(-1)
    if loss == "skew_forward_kl":
        return kl(p_t, log_t, skew * p_t + (1 - skew) * p_s)
    if loss == "skew_reverse_kl":
        return kl(p_s, log_s, (1 - skew) * p_t + skew * p_s)
    raise ValueError(f"loss={loss!r} has no reference here; add it to reference_divergence")


def check_correctness(ctx: Context, section: Section) -> None:
    from hf_distill.losses import DIVERGENCES as REGISTERED
    from hf_distill.losses import KDObjective, per_token_divergence
    from hf_distill.losses.chunked import HeadInput, LinearHead, chunked_objective_sums
    from hf_distill.losses.reduction import Positions

    missing = sorted(set(REGISTERED) - set(DIVERGENCES))
    if missing:  # a new divergence must get a reference here rather than pass unchecked
        section.notes.append(f"Divergences without a float64 reference in this script (not checked): {missing}")
    if ctx.cuda:
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32 here, not TF32
        torch.backends.cudnn.allow_tf32 = False
    n, hidden, vocab, chunk = (64, 16, 300, 7) if ctx.dry_run else (2048, 1024, 32768, 256)
    temperature, beta, skew = 2.0, 0.5, 0.1
    section.notes.append(
        f"N={n} positions, H={hidden}, V={vocab}, chunk={chunk}, T={temperature}, jsd β={beta}, skew α={skew}. "
        "Inputs are drawn in the dtype, then upcast to float64 for the reference, so only the arithmetic differs. "
        "Errors are ‖out − ref‖ / ‖ref‖."
    )
    rows, table = [], []
    generator = torch.Generator(ctx.device).manual_seed(0)
    for dtype_name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        tol = TOLERANCES[dtype_name]
        for loss in DIVERGENCES:
            if ctx.spent(f"{loss} {dtype_name}"):
                break
            # per_token_divergence on logits
            s, t = (
                randn(ctx, generator, n, vocab, dtype, 3.0, grad=True),
                randn(ctx, generator, n, vocab, dtype, 3.0),
            )
            out = per_token_divergence(s, t, loss=loss, temperature=temperature, beta=beta, skew=skew)
            out.sum().backward()
            # the float64 reference runs on the same device: on CPU it would take minutes at the GPU sizes
            s64 = s.detach().double().requires_grad_()
            ref = reference_divergence(s64, t.double(), loss, temperature, beta, skew)
            ref.sum().backward()
            rows.append(
                {
                    "what": "per_token_divergence",
                    "loss": loss,
                    "dtype": dtype_name,
                    "rel_err_loss": rel_err(out, ref),
                    "rel_err_grad": rel_err(s.grad, s64.grad),
                }
            )
            # the chunked loss from hidden states and heads
            h_s, h_t = randn(ctx, generator, n, hidden, dtype, grad=True), randn(ctx, generator, n, hidden, dtype)
            w_s = randn(ctx, generator, vocab, hidden, dtype, 2 / hidden**0.5, grad=True)
            w_t = randn(ctx, generator, vocab, hidden, dtype, 2 / hidden**0.5)
            objective = KDObjective(
                kd_loss=loss, kd_temperature=temperature, kd_temperature_scaling=False, jsd_beta=beta, skew_alpha=skew
            )
            student, teacher = HeadInput(h_s[None], LinearHead(w_s)), HeadInput(h_t[None], LinearHead(w_t))
            sums = chunked_objective_sums(objective, student, teacher, Positions(), chunk)
            sums.total.backward()
            # The logits path on the same inputs: in bf16 its head output is rounded too, which is the fair yardstick
            # for a divergence whose gradient is not smooth (tvd's sign flips where p_t ≈ p_s).
            h_l, w_l = h_s.detach().clone().requires_grad_(), w_s.detach().clone().requires_grad_()
            logits_total = per_token_divergence(
                h_l @ w_l.T, h_t @ w_t.T, loss=loss, temperature=temperature, beta=beta, skew=skew
            ).sum()
            logits_total.backward()
            h64 = h_s.detach().double().requires_grad_()
            w64 = w_s.detach().double().requires_grad_()
            ref_total = reference_divergence(h64 @ w64.T, h_t.double() @ w_t.double().T, loss, temperature, beta, skew)
            ref_total = ref_total.sum()
            ref_total.backward()
            rows.append(
                {
                    "what": "chunked loss",
                    "loss": loss,
                    "dtype": dtype_name,
                    "rel_err_loss": rel_err(sums.total, ref_total),
                    "rel_err_grad": max(rel_err(h_s.grad, h64.grad), rel_err(w_s.grad, w64.grad)),
                    "logits_path_rel_err_loss": rel_err(logits_total, ref_total),
                    "logits_path_rel_err_grad": max(rel_err(h_l.grad, h64.grad), rel_err(w_l.grad, w64.grad)),
                }
            )
            for row in rows[-2:]:
                row.update(tol_loss=tol["loss"], tol_grad=tol["grad"])
                # within the README's tolerance, or no worse than twice the logits path's own error in this dtype
                row["pass"] = all(
                    row[f"rel_err_{x}"] <= max(tol[x], 2 * row.get(f"logits_path_rel_err_{x}", 0.0))
                    for x in ("loss", "grad")
                )
                table.append(
                    [
                        row["what"],
                        loss,
                        dtype_name,
                        row["rel_err_loss"],
                        row["rel_err_grad"],
                        row.get("logits_path_rel_err_loss"),
                        row.get("logits_path_rel_err_grad"),
                        row["pass"],
                    ]
                )
    section.figures["divergences"] = rows
    section.notes.append(
        "A row is within tolerance when its errors are under the README's (float32 1e-5; bf16 1e-3 loss, 2e-2 "
        "gradients) or at most twice the logits path's own errors on the same inputs (the last two columns)."
    )
    header = ["function", "divergence", "dtype", "loss error", "grad error", "logits path: loss error", "grad error"]
    section.tables.append(md_table([*header, "within"], table))

    if ctx.spent("training step, chunked vs logits path"):
        return
    section.figures["training_step"] = [_training_step_agreement(ctx, section)]
    row = section.figures["training_step"][0]
    section.tables.append(
        md_table(
            [
                "model",
                "compute",
                "chunk",
                "loss (chunked)",
                "loss (logits path)",
                "loss error",
                "worst grad error",
                "within",
            ],
            [
                [
                    row["model"],
                    row["compute"],
                    row["chunk_size"],
                    row["loss_chunked"],
                    row["loss_logits"],
                    row["rel_err_loss"],
                    row["rel_err_grad"],
                    row["pass"],
                ]
            ],
        )
    )


def _training_step_agreement(ctx: Context, section: Section) -> dict[str, Any]:
    """One `training_step` of the same small Llama pair, bf16, with the chunked loss and with the logits path."""
    vocab, student_shape, teacher_shape, batch, seq = (
        (512, (32, 1), (64, 2), 2, 16) if ctx.dry_run else (32768, (512, 4), (1024, 6), 4, 512)
    )
    results = {}
    for name, chunk in (("chunked", None), ("logits", 0)):
        torch.manual_seed(0)
        student, teacher = llama(*student_shape, vocab), llama(*teacher_shape, vocab)
        trainer = make_trainer(ctx, student, teacher, bf16=True, kd_chunk_size=chunk)
        loss = trainer.training_step(trainer.model, batch_of_tokens(vocab, batch, seq), num_items_in_batch=None)
        grads = {
            k: p.grad.detach().float().cpu().clone() for k, p in trainer.model.named_parameters() if p.grad is not None
        }
        results[name] = (loss.detach().float().cpu(), grads, trainer.kd_chunk_size)
        del trainer, student, teacher
        release(ctx.device)
    (loss_c, grads_c, chunk_c), (loss_l, grads_l, chunk_l) = results["chunked"], results["logits"]
    if chunk_c <= 0 or chunk_l != 0:
        raise RuntimeError(f"expected the chunked path on and off, got kd_chunk_size {chunk_c} and {chunk_l}")
    if set(grads_c) != set(grads_l) or not grads_c:
        raise RuntimeError(f"different parameters got gradients: {sorted(set(grads_c) ^ set(grads_l))}")
    worst = max(grads_c, key=lambda k: rel_err(grads_c[k], grads_l[k]))
    tol = TOLERANCES["bfloat16"]
    row = {
        "model": f"Llama student {student_shape[0]}x{student_shape[1]}, teacher {teacher_shape[0]}x{teacher_shape[1]}, "
        f"V={vocab}, {batch}x{seq} tokens",
        "compute": "bf16 autocast",
        "chunk_size": chunk_c,
        "loss_chunked": loss_c.item(),
        "loss_logits": loss_l.item(),
        "rel_err_loss": rel_err(loss_c, loss_l),
        "rel_err_grad": rel_err(grads_c[worst], grads_l[worst]),
        "worst_grad": worst,
        "tol_loss": tol["loss"],
        "tol_grad": tol["grad"],
    }
    row["pass"] = row["rel_err_loss"] <= tol["loss"] and row["rel_err_grad"] <= tol["grad"]
    section.notes.append(f"Training step: worst gradient is `{worst}`; tolerances are the README's bf16 ones.")
    return row


# ---------------------------------------------------------------------------------------------------------------------
# b. Loss kernels


def _liger_step(h_s, h_t, w_s, w_t, temperature: float, beta: float):
    from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

    h_s.grad = w_s.grad = None
    fn = LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=beta, temperature=temperature)
    labels = torch.zeros(h_s.shape[0], dtype=torch.long, device=h_s.device)
    loss = fn(h_s, w_s, h_t, w_t, labels) * h_s.shape[0]
    loss.backward()
    return loss.detach(), h_s.grad, w_s.grad


def _gemm_floor(h_s, h_t, w_s, w_t, chunk: int):
    """The four matmuls no implementation avoids, chunked like hf_distill, with reused output tiles."""
    grad_w, grad_h = None, torch.empty_like(h_s)
    s_tile = torch.empty(chunk, w_s.shape[0], dtype=h_s.dtype, device=h_s.device)
    t_tile = torch.empty(chunk, w_t.shape[0], dtype=h_s.dtype, device=h_s.device)
    with torch.no_grad():
        for start in range(0, h_s.shape[0], chunk):
            hs, ht = h_s[start : start + chunk], h_t[start : start + chunk]
            s = torch.matmul(hs, w_s.T, out=s_tile[: hs.shape[0]])
            torch.matmul(ht, w_t.T, out=t_tile[: ht.shape[0]])
            grad_h[start : start + chunk] = s @ w_s
            grad_w = s.T @ hs if grad_w is None else grad_w.addmm_(s.T, hs)
    return None, grad_h, grad_w


def _trl_path(device: torch.device) -> str:
    try:
        from trl.kernels.chunked_logprob import _use_triton

        return "Triton" if _use_triton(device) else "torch (no Triton on this device)"
    except Exception:  # private helper: its absence only loses this label
        return "unknown"


def check_loss_kernels(ctx: Context, section: Section) -> None:
    from bench_kd_loss import _step as kd_step  # naive, hf_distill and TRL exactly as the CPU benchmark runs them

    temperature, beta = 1.0, 0.0  # forward KL, as the README's CPU table
    if ctx.dry_run:
        hidden, shapes, repeats, big_chunk = 16, [(96, 500)], 1, 32
    else:
        hidden, repeats, big_chunk = 2048, 3, 2048
        shapes = [(8192, 32768), (8192, 131072), (8192, 262144), (32768, 131072), (32768, 262144)]
    trl_missing, liger_missing = (
        importable("trl.kernels.chunked_divergence"),
        importable("liger_kernel.chunked_loss"),
    )
    if trl_missing:
        ctx.skip("trl", trl_missing)
    else:
        section.notes.append(f"TRL's `ChunkedDivergenceFunction` runs its {_trl_path(ctx.device)} path here.")
    if liger_missing:
        ctx.skip("liger", liger_missing + "; prepare_carry.py puts its wheel in build/gpu_carry: carry that folder")
    free = torch.cuda.mem_get_info(ctx.device)[0] if ctx.cuda else None
    section.notes.append(
        f"bf16 hidden states and heads, H={hidden}, forward KL; median of {repeats} after one warm-up "
        f"({'CUDA events' if ctx.cuda else 'wall clock'}); peak = high-water mark above the inputs "
        f"({'torch.cuda.max_memory_allocated' if ctx.cuda else 'not measured on CPU'}); error = largest relative "
        "difference of loss and gradients to naive (bf16 gradients: ~1e-2 is rounding)."
    )
    rows, table = [], []
    generator = torch.Generator(ctx.device).manual_seed(0)
    for n, vocab in shapes:
        auto_chunk = 1 << max(5, (2**24 // vocab).bit_length() - 1)  # the trainer's rule (hf_distill.modeling.lm_head)
        with contextlib.suppress(Exception):  # ask the trainer's own function, when this tree still has it
            from hf_distill.modeling.lm_head import chunk_size_for

            probe = torch.nn.Linear(1, vocab, bias=False, device="meta")
            auto_chunk = chunk_size_for(_Head(probe), _Head(probe), None)
        variants = {
            # in order of value: when the budget runs out, what is skipped is Liger (torch.compile per shape) first
            "naive": lambda *x: kd_step("naive", *x, temperature, beta, 0),
            f"hf_distill (chunk {auto_chunk}, auto)": lambda *x, c=auto_chunk: kd_step(
                "hf_distill", *x, temperature, beta, c
            ),
            "trl": lambda *x: kd_step("trl", *x, temperature, beta, 0),
            "gemm_floor": lambda *x, c=auto_chunk: _gemm_floor(*x, c),
            f"hf_distill (chunk {big_chunk})": lambda *x: kd_step("hf_distill", *x, temperature, beta, big_chunk),
            "liger": lambda *x: _liger_step(*x, temperature, beta),
        }
        bf16 = torch.bfloat16
        h_s, h_t = randn(ctx, generator, n, hidden, bf16, grad=True), randn(ctx, generator, n, hidden, bf16)
        w_s = randn(ctx, generator, vocab, hidden, bf16, 1 / hidden**0.5, grad=True)
        w_t = randn(ctx, generator, vocab, hidden, bf16, 1 / hidden**0.5)
        tensors = (h_s, h_t, w_s, w_t)
        shape_rows, reference = {}, None
        for name, step in variants.items():
            item = f"N={n}, V={vocab}: {name}"
            if (name == "trl" and trl_missing) or (name == "liger" and liger_missing):
                continue
            # naive holds both bf16 logits, their float32 log-probabilities and the gradient: ~24 bytes per entry
            if name == "naive" and free is not None and n * vocab * 24 > 0.7 * free:
                ctx.skip(item, f"would need ~{n * vocab * 24 / 1024**3:.0f} GiB of the {free / 1024**3:.0f} GiB free")
                continue
            if ctx.spent(item):
                continue
            seconds = None
            with ctx.item(item):
                with peak_memory(ctx.device) as memory:
                    outputs = step(*tensors)
                seconds = median_seconds(lambda step=step, x=tensors: step(*x), ctx.device, repeats)
            if seconds is None:
                outputs = None  # the failed variant's tensors, before the next one
                continue
            row = {"N": n, "H": hidden, "V": vocab, "variant": name, "seconds": seconds, "peak_mb": memory["peak_mb"]}
            if name == "naive":
                reference = [x.detach().float().clone() for x in outputs]
            elif reference is not None and name != "gemm_floor":
                row["max_rel_err"] = max(
                    ((a.detach().float() - b).abs().max() / b.abs().max()).item() for a, b in zip(outputs, reference)
                )
            del outputs
            shape_rows[name] = row
            rows.append(row)
            release(ctx.device)
        base = shape_rows.get("naive")
        floor = shape_rows.get("gemm_floor")
        for name, row in shape_rows.items():
            row["time_vs_naive"] = row["seconds"] / base["seconds"] if base else None
            row["peak_vs_naive"] = (
                row["peak_mb"] / base["peak_mb"] if base and row["peak_mb"] and base["peak_mb"] else None
            )
            row["share_of_gemm_floor"] = floor["seconds"] / row["seconds"] if floor else None
            table.append(
                [
                    f"{n},{hidden},{vocab}",
                    name,
                    f"{row['seconds'] * 1000:.2f} ms",
                    fmt(row["time_vs_naive"], ".2f"),
                    fmt(row["peak_mb"], ".0f") + (" MB" if row["peak_mb"] is not None else ""),
                    fmt(row["peak_vs_naive"], ".0%"),
                    fmt(row["share_of_gemm_floor"], ".0%"),
                    fmt(row.get("max_rel_err"), ".1e"),
                ]
            )
        del h_s, h_t, w_s, w_t, tensors
        release(ctx.device)
    section.figures["rows"] = rows
    section.tables.append(
        md_table(
            ["N, H, V", "variant", "time", "vs naive", "peak", "vs naive", "share of GEMM floor", "max rel. error"],
            table,
        )
    )


class _Head(torch.nn.Module):
    """A bare module with an `lm_head`, for asking `chunk_size_for` what the trainer would choose at a vocabulary."""

    def __init__(self, head: torch.nn.Linear) -> None:
        super().__init__()
        self.lm_head = head

    def get_output_embeddings(self) -> torch.nn.Linear:
        return self.lm_head
