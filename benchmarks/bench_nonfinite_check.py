"""Cost of the NaN/inf check (`hf_distill.training.finite`): training step time with and without it, side by side.

    python benchmarks/bench_nonfinite_check.py                  # 60 steps, logits path and chunked path
    python benchmarks/bench_nonfinite_check.py --steps 24 --vocab 512

Tiny random Llama student (H=64, 2 layers) and teacher (H=128, 2 layers), batch 4 × 64 tokens, SGD, fp32, one torch
thread, CPU (or the first CUDA device with --device cuda). One `DistillationTrainer.train()` per path runs with the
check on even optimizer steps and off on odd ones (off: no per-micro-batch reductions, no host sync), so drift on a
shared machine affects both alike; each figure is the median step time (step begin to step end) after 4 warm-up
steps. The check costs one float32 sum over each model's logits (or hidden states on the chunked path) per
micro-batch and one host sync per optimizer step.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
from typing import Any

import torch
from transformers import TrainerCallback

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _llama(hidden: int, layers: int, vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def _dataset(n: int, seq_len: int, vocab: int):
    from datasets import Dataset

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, vocab, (n, seq_len), generator=g)
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})


class _AlternatingTimer(TrainerCallback):
    """Turns the check on for even optimizer steps and off for odd ones, and times each step (begin to end)."""

    def __init__(self, check: Any, device: str) -> None:
        self.device, self.times, self.on = device, {True: [], False: []}, True
        observe = check.observe
        check.observe = lambda *a, **k: observe(*a, **k) if self.on else None  # off: no reductions, no sync

    def _sync(self) -> None:
        if self.device != "cpu":
            torch.cuda.synchronize()

    def on_step_begin(self, args, state, control, **kwargs):
        self.on = state.global_step % 2 == 0
        self._sync()
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self._sync()
        if state.global_step > 4:  # after warm-up (allocator, kernels)
            self.times[self.on].append(time.perf_counter() - self.start)


def _step_times(chunk: int, args: argparse.Namespace, folder: str) -> dict[bool, list[float]]:
    from hf_distill import DistillationConfig, DistillationTrainer

    torch.manual_seed(0)
    student, teacher = _llama(64, 2, args.vocab), _llama(128, 2, args.vocab)
    config = DistillationConfig(
        output_dir=folder,
        report_to=[],
        disable_tqdm=True,
        use_cpu=args.device == "cpu",
        max_steps=args.steps,
        per_device_train_batch_size=4,
        optim="sgd",
        learning_rate=1e-3,
        logging_steps=10**6,
        save_strategy="no",
        kd_chunk_size=chunk,
        preflight="off",
    )
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=config,
        train_dataset=_dataset(4 * args.steps, args.seq_len, args.vocab),
    )
    timer = _AlternatingTimer(trainer._finite_check, args.device)
    trainer.add_callback(timer)
    with contextlib.redirect_stdout(io.StringIO()):  # the Trainer prints its final metrics
        trainer.train()
    return timer.times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    import transformers

    transformers.logging.set_verbosity_error()
    os.environ.setdefault("HF_DISTILL_VERBOSITY", "error")
    print(f"steps={args.steps} vocab={args.vocab} batch=4x{args.seq_len} device={args.device}")
    print("| path | with check (ms/step) | without (ms/step) | with / without |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for path, chunk in (("logits", 0), ("chunked", 64)):
            times = _step_times(chunk, args, folder)
            with_check, without = statistics.median(times[True]), statistics.median(times[False])
            print(f"| {path} | {1e3 * with_check:.2f} | {1e3 * without:.2f} | {with_check / without:.3f} |")


if __name__ == "__main__":
    main()
