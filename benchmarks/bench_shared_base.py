"""Memory of a LoRA student whose teacher is its own base (`teacher_model="base"`) against a separate teacher copy.

    python benchmarks/bench_shared_base.py                  # Llama H=512, 6 layers, V=32k; LoRA r=16 incl. lm_head
    python benchmarks/bench_shared_base.py --hidden 256 --layers 2 --vocab 4096

Self-distillation, context distillation or shrinking an adapter's rank all train a LoRA student over the teacher's
own weights. `shared_base` runs the teacher as the student's base with its adapters disabled; `separate_copy` loads
the same weights a second time as a separate frozen teacher (what any trainer without this option needs). Each variant
runs in its own process with one torch thread: memory is resident memory once models and trainer exist, and the peak
of one training step (after a warm-up step), both above the process's memory before the models were built.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from process_memory import peak_mb, reset_peak, rss_mb

VARIANTS = ["shared_base", "separate_copy"]


def _child(variant: str, hidden: int, layers: int, vocab: int, seq_len: int) -> None:
    import torch
    from bench_step import _llama  # the same random Llama as the step benchmark
    from peft import LoraConfig

    from hf_distill import DistillationConfig, DistillationTrainer

    torch.set_num_threads(1)
    torch.manual_seed(0)
    before = rss_mb()
    base = _llama(hidden, layers, vocab)
    if variant == "shared_base":
        teacher = "base"
    else:
        teacher = _llama(hidden, layers, vocab)
        teacher.load_state_dict(base.state_dict())
    lora = LoraConfig(r=16, target_modules=["q_proj", "v_proj", "lm_head"], init_lora_weights=False)
    ids = torch.randint(0, vocab, (4, seq_len))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    with tempfile.TemporaryDirectory() as out:
        args = DistillationConfig(output_dir=out, report_to=[], use_cpu=True)
        trainer = DistillationTrainer(model=base, teacher_model=teacher, args=args, peft_config=lora)
    student = trainer.model
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-4)

    def step():
        trainer.training_step(student, dict(batch), num_items_in_batch=None)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    setup = rss_mb() - before
    step()  # warm-up: optimizer state exists after it
    reset_peak()
    start = time.perf_counter()
    step()
    elapsed = time.perf_counter() - start
    print(json.dumps({"variant": variant, "setup_mb": setup, "step_peak_mb": peak_mb() - before, "time": elapsed}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = ["--hidden", str(args.hidden), "--layers", str(args.layers), "--vocab", str(args.vocab)]
    shape += ["--seq-len", str(args.seq_len)]
    if args.child:
        return _child(args.child, args.hidden, args.layers, args.vocab, args.seq_len)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    rows = {}
    for variant in VARIANTS:
        done = subprocess.run(
            [sys.executable, __file__, "--child", variant, *shape], capture_output=True, text=True, env=env
        )
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-2000:])
        rows[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    print(
        f"LoRA student over Llama H={args.hidden}, {args.layers} layers, V={args.vocab}; 4 × {args.seq_len} tokens\n"
    )
    print("| teacher | memory after setup | vs separate copy | step peak | vs separate copy | step time |")
    print("|---|---|---|---|---|---|")
    reference = rows["separate_copy"]
    for variant, row in rows.items():
        print(
            f"| {variant} | {row['setup_mb']:.0f} MB | {row['setup_mb'] / reference['setup_mb']:.2f} | "
            f"{row['step_peak_mb']:.0f} MB | {row['step_peak_mb'] / reference['step_peak_mb']:.2f} | "
            f"{row['time']:.2f} s |"
        )
    saved = reference["step_peak_mb"] - rows["shared_base"]["step_peak_mb"]
    print(f"\nSaved by teacher_model='base': {saved:.0f} MB at the step peak.")
    return None


if __name__ == "__main__":
    main()
