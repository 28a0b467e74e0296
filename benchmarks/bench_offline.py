"""Offline teacher vs online teacher: what a top-k cache costs on disk, and a training step without the teacher.

    python benchmarks/bench_offline.py                       # V = 32k, k = 16 and 64, 3 timed steps after 1 warm-up
    python benchmarks/bench_offline.py --teacher-layers 12   # a deeper teacher: the online step pays more for it

Setup of `../shared/BENCHMARKS.md` (bench_step.py): tiny random Llama student (H=256, 4 layers) and teacher (H=512,
6 layers), a batch of 4 × 512 tokens, AdamW, fp32 on CPU with one torch thread. The cache is built once per k by
`hf_distill.cache_teacher`; each training variant runs in its own process:
  student_ce   the student trained alone on its labels (the floor of any distillation step)
  online       DistillationTrainer.training_step with the teacher in memory (default chunked loss)
  cache_k<k>   DistillationTrainer.training_step from the teacher cache (float16 top-k), no teacher loaded
Storage is the cache's parquet bytes per position, beside the fp32 logits it replaces (4·V bytes per position).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from bench_step import _llama
from process_memory import peak_mb, reset_peak

BATCH = 4
SEQ = 512  # set from --seq-len


def _data(vocab: int, rows: int):
    import torch
    from datasets import Dataset

    ids = torch.randint(0, vocab, (rows, SEQ), generator=torch.Generator().manual_seed(0)).tolist()
    return Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * SEQ] * rows, "labels": ids})


def _child(variant: str, vocab: int, teacher_layers: int, repeats: int, cache: str | None) -> None:
    import torch
    from transformers import default_data_collator

    torch.set_num_threads(1)
    torch.manual_seed(0)
    student = _llama(256, 4, vocab)
    teacher = None if variant.startswith("cache") else _llama(512, teacher_layers, vocab)
    rows = _data(vocab, BATCH)
    if variant == "student_ce":
        batch = default_data_collator([rows[i] for i in range(BATCH)])
        optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)

        def step():
            student(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    else:
        from hf_distill import DistillationConfig, DistillationTrainer
        from hf_distill.offline.cache import CacheCollator

        with tempfile.TemporaryDirectory() as out:
            args = DistillationConfig(output_dir=out, report_to=[], use_cpu=True, preflight="off")
            kwargs = {"teacher_cache": cache} if cache else {"teacher_model": teacher}
            trainer = DistillationTrainer(model=student, args=args, **kwargs)
        source = trainer.train_dataset if cache else rows
        collate = CacheCollator(default_data_collator) if cache else default_data_collator
        batch = collate([dict(source[i]) for i in range(BATCH)])
        optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)

        def step():
            trainer.training_step(student, dict(batch), num_items_in_batch=None)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    base = reset_peak()
    step()  # warm-up; AdamW state exists after it
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    print(json.dumps({"variant": variant, "time": statistics.median(times), "peak_mb": peak_mb() - base}))


def _run(variant: str, vocab: int, teacher_layers: int, repeats: int, cache: str | None = None) -> dict:
    command = [sys.executable, __file__, "--child", variant, "--vocab", str(vocab), "--repeats", str(repeats)]
    command += ["--teacher-layers", str(teacher_layers), "--seq-len", str(SEQ)] + (["--cache", cache] if cache else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def _build_cache(folder: str, vocab: int, teacher_layers: int, k: int, dtype: str, rows: int) -> dict:
    import torch

    from hf_distill.offline.writer import cache_teacher

    torch.set_num_threads(1)
    torch.manual_seed(0)
    teacher = _llama(512, teacher_layers, vocab)
    start = time.perf_counter()
    info = cache_teacher(
        teacher, _data(vocab, rows), folder, k=k, logprob_dtype=dtype, batch_size=BATCH, progress=False
    )
    seconds = time.perf_counter() - start
    return {
        "bytes_per_position": info.bytes_on_disk(folder) / info.tokens,
        "seconds_per_1k": 1000 * seconds / info.tokens,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--k", type=int, nargs="*", default=[16, 64])
    parser.add_argument("--teacher-layers", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=8, help="sequences cached for the storage figures")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    global SEQ
    SEQ = args.seq_len
    if args.child:
        return _child(args.child, args.vocab, args.teacher_layers, args.repeats, args.cache)
    with tempfile.TemporaryDirectory() as root:
        print(
            f"Cache storage, V={args.vocab}, {args.rows} × {SEQ} positions (dense fp32 logits: {4 * args.vocab} B)\n"
        )
        print("| k | log-prob dtype | bytes / position | vs dense fp32 logits | cache build s / 1k positions |")
        print("|---|---|---|---|---|")
        caches = {}
        for k in args.k:
            for dtype in ("float32", "float16", "uint8"):
                folder = os.path.join(root, f"k{k}-{dtype}")
                row = _build_cache(folder, args.vocab, args.teacher_layers, k, dtype, max(args.rows, BATCH))
                caches[(k, dtype)] = folder
                print(
                    f"| {k} | {dtype} | {row['bytes_per_position']:.0f} | "
                    f"{row['bytes_per_position'] / (4 * args.vocab):.4f} | {row['seconds_per_1k']:.2f} |"
                )
        print(
            f"\nOne training step, 4 × {SEQ} tokens, teacher H=512 × {args.teacher_layers} layers, median of {args.repeats}\n"
        )
        print("| variant | time | vs online | vs student CE step | peak | peak vs online |")
        print("|---|---|---|---|---|---|")
        rows = {"student_ce": _run("student_ce", args.vocab, args.teacher_layers, args.repeats)}
        rows["online"] = _run("online", args.vocab, args.teacher_layers, args.repeats)
        for k in args.k:
            rows[f"cache_k{k}"] = _run(
                f"cache_k{k}", args.vocab, args.teacher_layers, args.repeats, caches[(k, "float16")]
            )
        for name, row in rows.items():
            print(
                f"| {name} | {row['time']:.2f} s | {row['time'] / rows['online']['time']:.2f} | "
                f"{row['time'] / rows['student_ce']['time']:.2f} | {row['peak_mb']:.0f} MB | "
                f"{row['peak_mb'] / rows['online']['peak_mb']:.2f} |"
            )
    return None


if __name__ == "__main__":
    main()
