"""One full distillation training step against what cannot be avoided: a plain student CE step plus a teacher forward.

    python benchmarks/bench_step.py                   # V = 32k and 128k, 3 timed steps after 1 warm-up
    python benchmarks/bench_step.py --vocab 32768 --repeats 2

Setup of `../shared/BENCHMARKS.md`: tiny random Llama student (H=256, 4 layers) and teacher (H=512, 6 layers),
a batch of 4 × 512 tokens, AdamW, fp32 on CPU with one torch thread. Each variant runs in its own process; time is the
median step, memory the process's peak RSS (high-water mark reset once models exist) minus its RSS then.
  student_ce       the student trained alone on its labels (forward, backward, optimizer step)
  teacher_forward  one teacher forward under no_grad
  naive_kd         DistillationTrainer.training_step + optimizer step with kd_chunk_size=0 (both models' logits)
  hf_distill       the same with the default chunked loss (neither model's logits exist)
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

from process_memory import peak_mb, reset_peak

VARIANTS = ["student_ce", "teacher_forward", "naive_kd", "hf_distill"]


def _llama(hidden: int, layers: int, vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def _child(variant: str, vocab: int, repeats: int, seq_len: int) -> None:
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    student, teacher = _llama(256, 4, vocab), _llama(512, 6, vocab)
    ids = torch.randint(0, vocab, (4, seq_len))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

    if variant in ("naive_kd", "hf_distill"):
        from hf_distill import DistillationConfig, DistillationTrainer

        with tempfile.TemporaryDirectory() as out:
            args = DistillationConfig(
                output_dir=out, report_to=[], use_cpu=True, kd_chunk_size=0 if variant == "naive_kd" else None
            )
            trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args)
        optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)

        def step():
            trainer.training_step(student, dict(batch), num_items_in_batch=None)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    elif variant == "student_ce":
        optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)

        def step():
            student(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    else:
        teacher.eval()

        def step():
            with torch.no_grad():
                teacher(input_ids=ids, attention_mask=batch["attention_mask"])

    base = reset_peak()
    step()  # warm-up; AdamW state exists after it, as in any step but the first
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = peak_mb() - base
    print(json.dumps({"variant": variant, "time": statistics.median(times), "peak_mb": peak}))


def _run(variant: str, vocab: int, repeats: int, seq_len: int) -> dict:
    command = [sys.executable, __file__, "--child", variant, "--vocab", str(vocab), "--repeats", str(repeats)]
    command += ["--seq-len", str(seq_len)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, nargs="*", default=[32768, 131072])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child(args.child, args.vocab[0], args.repeats, args.seq_len)
    print(f"One step, 4 × {args.seq_len} tokens, CPU, 1 thread, median of {args.repeats}\n")
    print("| V | variant | time | time / (student CE step + teacher forward) | peak | peak / student CE step peak |")
    print("|---|---|---|---|---|---|")
    for vocab in args.vocab:
        rows = {variant: _run(variant, vocab, args.repeats, args.seq_len) for variant in VARIANTS}
        floor = rows["student_ce"]["time"] + rows["teacher_forward"]["time"]
        for variant, row in rows.items():
            print(
                f"| {vocab} | {variant} | {row['time']:.2f} s | {row['time'] / floor:.2f} | {row['peak_mb']:.0f} MB | "
                f"{row['peak_mb'] / rows['student_ce']['peak_mb']:.2f} |"
            )
    return None


if __name__ == "__main__":
    main()
