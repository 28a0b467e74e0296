"""Peak memory and time of the cross-tokenizer loss against the same-tokenizer chunked loss, at two sequence lengths.

    python benchmarks/bench_cross_tokenizer.py                  # N = 1024 and 4096 tokens
    python benchmarks/bench_cross_tokenizer.py --tokens 512 2048 --variants cross_chunk

Every variant runs in its own process with one torch thread. One step is the teacher's side (no gradients) and the
student's forward + backward of the loss, from final hidden states (`HeadInput`) as the trainer's memory-efficient path
gives them: student H=256, V_s=32,768; teacher H=256, V_t=131,072 (a different vocabulary: every student token has a
teacher token of its own bytes, the teacher's other 98,304 tokens fall in the rest bucket). The alignment cuts the text
into chunks of 1 to 3 student tokens against 1 to 2 teacher tokens. Peak memory is the process's high-water mark above
what the inputs hold (`process_memory.py`). Flat in the sequence length means the 4x-longer batch peaks at about the
same memory. On glibc, run it with `MALLOC_MMAP_THRESHOLD_=131072`: the default threshold rises after the first
multi-MB block is freed, and blocks freed later stay in the heap, so the high-water mark then grows with the number of
loss blocks although live tensors do not (README, "Different tokenizers").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from process_memory import peak_mb, reset_peak

VARIANTS = ["same_tokenizer", "cross_exact", "cross_chunk", "cross_uld"]
H, V_S, V_T = 256, 32768, 131072


def _layout(tokens: int):
    """A synthetic alignment of `tokens` student positions: chunks of 1-3 student and 1-2 teacher tokens."""
    import torch

    g = torch.Generator().manual_seed(0)
    student_chunk, teacher_chunk, chunk = [], [], 0
    while len(student_chunk) < tokens - 1:
        student_chunk += [chunk] * int(torch.randint(1, 4, (1,), generator=g))
        teacher_chunk += [chunk] * int(torch.randint(1, 3, (1,), generator=g))
        chunk += 1
    student_chunk = student_chunk[: tokens - 1] + [-1]
    last = student_chunk[-2]
    teacher_chunk = [c if c <= last else -1 for c in teacher_chunk] + [-1]
    teacher_chunk = [c for c in teacher_chunk if c != -1] + [-1]
    return torch.tensor([student_chunk]), torch.tensor([teacher_chunk]), last + 1


def _run(variant: str, tokens: int, vocab: tuple[int, int] = (V_S, V_T)) -> dict:
    import torch

    V_S, V_T = vocab  # noqa: N806 - the module's names, smaller for a smoke run
    from hf_distill.losses import (
        AlignedTeacher,
        ChunkLayout,
        HeadInput,
        KDObjective,
        LinearHead,
        Positions,
        aligned_objective_sums,
        chunked_objective_sums,
        lazy_first_rows,
        select_chunks,
        teacher_targets,
    )

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    w_s = (torch.randn(V_S, H, generator=g) / H**0.5).requires_grad_()
    w_t = torch.randn(V_T, H, generator=g) / H**0.5
    objective, chunk_size = KDObjective(), 2**24 // V_S
    if variant == "same_tokenizer":
        h_s = torch.randn(1, tokens, H, generator=g).requires_grad_()
        h_t = torch.randn(1, tokens, H, generator=g)
        w_same = w_t[:V_S].clone()
        base = reset_peak()
        start = time.perf_counter()
        sums = chunked_objective_sums(
            objective, HeadInput(h_s, LinearHead(w_s)), HeadInput(h_t, LinearHead(w_same)), Positions(None, None, True),
            chunk_size,
        )  # fmt: skip
        sums.total.backward()
        return {"seconds": time.perf_counter() - start, "peak_mb": peak_mb() - base}
    method = variant.split("_", 1)[1]
    student_chunk, teacher_chunk, chunks = _layout(tokens)
    t_tokens = teacher_chunk.shape[1]
    h_s = torch.randn(1, tokens, H, generator=g).requires_grad_()
    h_t = torch.randn(1, t_tokens, H, generator=g)
    student_next = torch.where(student_chunk >= 0, torch.randint(0, V_S, (1, tokens), generator=g), -1)
    teacher_next = torch.where(teacher_chunk >= 0, torch.randint(0, V_T, (1, t_tokens), generator=g), -1)
    layout = ChunkLayout(student_chunk, teacher_chunk, student_next, torch.ones(1, chunks, dtype=torch.long))
    labels = torch.cat([torch.zeros(1, 1, dtype=torch.long), student_next[:, :-1].clamp_min(0)], dim=1)
    positions = Positions(labels, None, True)
    valid = torch.ones(1, tokens, dtype=torch.bool)
    valid[0, -1] = False
    to_shared_t = torch.full((V_T,), V_S, dtype=torch.long)
    to_shared_t[torch.randperm(V_T, generator=g)[:V_S]] = torch.randperm(V_S, generator=g)
    to_shared_s = torch.arange(V_S)
    teacher = HeadInput(h_t, LinearHead(w_t))
    base = reset_peak()
    start = time.perf_counter()
    selection = select_chunks(layout, valid)
    _, _, chunk_logprob = teacher_targets(
        method, teacher, teacher_next, selection, to_shared_t, V_S + 1, 1.0, V_S, 2**24 // V_T, first_rows=False
    )
    rows_for = lazy_first_rows(method, teacher, selection, to_shared_t, V_S + 1, 1.0, V_S)
    aligned = AlignedTeacher(method, selection, to_shared_s, V_S + 1, None, None, chunk_logprob, rows_for)
    sums = aligned_objective_sums(objective, HeadInput(h_s, LinearHead(w_s)), aligned, positions, chunk_size)
    sums.total.backward()
    return {"seconds": time.perf_counter() - start, "peak_mb": peak_mb() - base}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="*", default=[1024, 4096])
    parser.add_argument("--variants", nargs="*", default=VARIANTS)
    parser.add_argument("--vocab", type=int, nargs=2, default=[V_S, V_T], help="student and teacher vocabularies")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_run(args.child[0], int(args.child[1]), tuple(args.vocab))))
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    results = {}
    for variant in args.variants:
        for tokens in args.tokens:
            out = subprocess.run(
                [sys.executable, __file__, "--child", variant, str(tokens), "--vocab", *map(str, args.vocab)],
                env=env,
                capture_output=True,
                text=True,
            )
            if out.returncode:
                raise SystemExit(out.stderr[-3000:])
            results[variant, tokens] = json.loads(out.stdout.strip().splitlines()[-1])
    first, last = args.tokens[0], args.tokens[-1]
    print(f"| variant | N | time | peak memory | peak at N={last} / N={first} |")
    print("|---|---|---|---|---|")
    for variant in args.variants:
        for tokens in args.tokens:
            r = results[variant, tokens]
            ratio = results[variant, last]["peak_mb"] / max(results[variant, first]["peak_mb"], 1e-9)
            shown = f"{ratio:.2f}x" if tokens == last else ""
            print(f"| {variant} | {tokens} | {r['seconds']:.2f} s | {r['peak_mb']:.0f} MB | {shown} |")


if __name__ == "__main__":
    main()
