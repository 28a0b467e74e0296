"""KD loss from hidden states on CPU: time and peak memory of naive, hf_distill (chunked), TRL and Liger, side by side.

    python benchmarks/bench_kd_loss.py                       # both shapes of the issue, 3 repeats
    python benchmarks/bench_kd_loss.py --shapes 2048,512,32768 --repeats 1
    python benchmarks/bench_kd_loss.py --scaling             # peak memory at N = 2048 and 8192 (V = 32k)

Every variant runs in its own process with one torch thread (`OMP_NUM_THREADS=1`); time is the median over repeats
of forward + backward (loss, grad wrt student hidden states and student head weight); peak memory is the process's
peak RSS (high-water mark reset once the inputs exist) minus its RSS then. "GEMM floor" is the four matmuls no implementation can avoid (student
and teacher projections, grad wrt hidden states, grad wrt head weight), timed alone with hf_distill's chunking.
Agreement is the largest relative difference of loss and gradients to the naive float32 result.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from process_memory import peak_mb, reset_peak

VARIANTS = ["naive", "hf_distill", "trl", "liger", "gemm_floor"]


def _inputs(n: int, hidden: int, vocab: int):
    import torch

    g = torch.Generator().manual_seed(0)
    h_s = torch.randn(n, hidden, generator=g).requires_grad_()
    h_t = torch.randn(n, hidden, generator=g)
    w_s = (torch.randn(vocab, hidden, generator=g) / hidden**0.5).requires_grad_()
    w_t = torch.randn(vocab, hidden, generator=g) / hidden**0.5
    return h_s, h_t, w_s, w_t


def _step(variant: str, h_s, h_t, w_s, w_t, temperature: float, beta: float, chunk: int):
    """One forward + backward; returns (loss, grad_h, grad_w)."""
    import torch

    h_s.grad = w_s.grad = None
    if variant == "naive":
        from hf_distill.losses import per_token_divergence

        loss_name = "forward_kl" if beta == 0 else "jsd"
        loss = per_token_divergence(h_s @ w_s.T, h_t @ w_t.T, loss=loss_name, temperature=temperature, beta=beta).sum()
    elif variant == "hf_distill":
        from hf_distill.losses import HeadInput, KDObjective, LinearHead, Positions, chunked_objective_sums

        objective = KDObjective(
            kd_loss="forward_kl" if beta == 0 else "jsd",
            kd_temperature=temperature,
            kd_temperature_scaling=False,
            jsd_beta=beta,
        )
        student, teacher = HeadInput(h_s[None], LinearHead(w_s)), HeadInput(h_t[None], LinearHead(w_t))
        sums = chunked_objective_sums(objective, student, teacher, Positions(), chunk)
        loss = sums.total
    elif variant == "trl":
        from trl.kernels.chunked_divergence import ChunkedDivergenceFunction

        divergence, _ = ChunkedDivergenceFunction.apply(h_s, w_s, None, h_t, w_t, None, beta, temperature)
        loss = divergence.sum()
    elif variant == "liger":
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

        fn = LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=beta, temperature=temperature)
        labels = torch.zeros(h_s.shape[0], dtype=torch.long)
        loss = fn(h_s, w_s, h_t, w_t, labels) * h_s.shape[0]
    elif variant == "gemm_floor":
        grad_w = None
        grad_h = torch.empty_like(h_s)
        # The same reusable output tiles as hf_distill's loop, so the floor pays no allocation either.
        s_tile, t_tile = torch.empty(chunk, w_s.shape[0]), torch.empty(chunk, w_t.shape[0])
        with torch.no_grad():
            for start in range(0, h_s.shape[0], chunk):
                hs, ht = h_s[start : start + chunk], h_t[start : start + chunk]
                s = torch.matmul(hs, w_s.T, out=s_tile[: hs.shape[0]])
                torch.matmul(ht, w_t.T, out=t_tile[: ht.shape[0]])
                grad_h[start : start + chunk] = s @ w_s
                grad_w = s.T @ hs if grad_w is None else grad_w.addmm_(s.T, hs)
        return torch.zeros(()), grad_h, grad_w
    loss.backward()
    return loss.detach(), h_s.grad, w_s.grad


def _import(variant: str) -> None:
    import importlib

    modules = {
        "naive": "hf_distill.losses",
        "hf_distill": "hf_distill.losses.chunked",
        "trl": "trl.kernels.chunked_divergence",
        "liger": "liger_kernel.chunked_loss",
    }
    if variant in modules:
        importlib.import_module(modules[variant])


def _child(args) -> None:
    import torch

    torch.set_num_threads(1)
    n, hidden, vocab = args.shape
    h_s, h_t, w_s, w_t = _inputs(n, hidden, vocab)
    chunk = 1 << max(5, (2**24 // vocab).bit_length() - 1) if args.chunk is None else args.chunk
    _import(args.variant)  # the libraries' own memory (hf_distill pulls in transformers) is not the loss's
    base = reset_peak()
    times = []
    for _ in range(args.repeats):
        loss = grad_h = grad_w = None  # one step's memory: the previous step's gradients are let go first
        start = time.perf_counter()
        loss, grad_h, grad_w = _step(args.variant, h_s, h_t, w_s, w_t, args.temperature, args.beta, chunk)
        times.append(time.perf_counter() - start)
    peak = peak_mb() - base
    result = {"variant": args.variant, "time": statistics.median(times), "peak_mb": peak, "chunk": chunk}
    if args.reference and args.variant != "gemm_floor":
        ref = torch.load(args.reference)
        rel = [((a - b).abs().max() / b.abs().max()).item() for a, b in zip((loss, grad_h, grad_w), ref)]
        result["max_rel_err"] = max(rel)
    if args.save_reference:
        torch.save((loss, grad_h, grad_w), args.save_reference)
    print(json.dumps(result))


def _run(variant, shape, args, reference=None, save_reference=None):
    command = [sys.executable, __file__, "--child", "--variant", variant, "--shapes", ",".join(map(str, shape))]
    command += ["--repeats", str(args.repeats), "--temperature", str(args.temperature), "--beta", str(args.beta)]
    if args.chunk is not None:
        command += ["--chunk", str(args.chunk)]
    if reference:
        command += ["--reference", reference]
    if save_reference:
        command += ["--save-reference", save_reference]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return {"variant": variant, "error": (done.stderr.strip().splitlines() or ["failed"])[-1][:80]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _available(variant: str) -> bool:
    if variant != "liger":
        return True
    import importlib.util

    return importlib.util.find_spec("liger_kernel") is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="*", default=["2048,512,32768", "2048,1024,131072"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--beta", type=float, default=0.0, help="0 = forward KL; otherwise generalized JSD")
    parser.add_argument("--chunk", type=int, default=None)
    parser.add_argument("--variants", nargs="*", default=VARIANTS)
    parser.add_argument("--scaling", action="store_true", help="hf_distill and naive peak memory, N=2048 vs 8192")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--reference", help=argparse.SUPPRESS)
    parser.add_argument("--save-reference", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.shape = tuple(int(x) for x in args.shapes[0].split(","))
        return _child(args)
    if args.scaling:
        args.repeats = 1
        print("| variant | peak N=2048 | peak N=8192 | growth |\n|---|---|---|---|")
        for variant in ("naive", "hf_distill"):
            small, large = (_run(variant, (n, 512, 32768), args)["peak_mb"] for n in (2048, 8192))
            print(f"| {variant} | {small:.0f} MB | {large:.0f} MB | {large / small:.2f}x |")
        return None
    import tempfile

    loss_name = "forward KL" if args.beta == 0 else f"JSD beta={args.beta}"
    print(f"KD loss ({loss_name}, T={args.temperature}), CPU, 1 thread, median of {args.repeats}\n")
    print("| N, H, V | variant | time | vs naive | peak memory | vs naive | share of GEMM floor | max rel. error |")
    print("|---|---|---|---|---|---|---|---|")
    for spec in args.shapes:
        shape = tuple(int(x) for x in spec.split(","))
        with tempfile.TemporaryDirectory() as scratch:
            reference = os.path.join(scratch, "naive.pt")
            rows = {"naive": _run("naive", shape, args, save_reference=reference)}
            for variant in args.variants:
                if variant != "naive" and _available(variant):
                    rows[variant] = _run(variant, shape, args, reference=reference)
        naive, floor = rows["naive"], rows.get("gemm_floor")
        for variant, row in rows.items():
            if "error" in row:
                print(f"| {spec} | {variant} | failed: {row['error']} | | | | | |")
                continue
            share = f"{floor['time'] / row['time']:.0%}" if floor and "time" in floor else "-"
            err = f"{row['max_rel_err']:.1e}" if "max_rel_err" in row else "-"
            print(
                f"| {spec} | {variant} | {row['time']:.2f} s | {row['time'] / naive['time']:.2f}x | "
                f"{row['peak_mb']:.0f} MB | {row['peak_mb'] / naive['peak_mb']:.0%} | {share} | {err} |"
            )
    return None


if __name__ == "__main__":
    main()
