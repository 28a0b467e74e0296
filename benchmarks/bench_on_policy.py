"""What an on-policy step costs: where its time goes, how its generation compares with a plain `model.generate`, and
whether its scored pass keeps the chunked loss's memory.

    python benchmarks/bench_on_policy.py                                # SmolLM2-135M-sized models, 4 × (64 + 64)
    python benchmarks/bench_on_policy.py --layers 2 --teacher-layers 2 --prompt-length 16 --new-tokens 8   # smoke

Models: the SmolLM2-135M-Instruct config from the packaged asset (`hf_distill._packaged`; 30 layers, hidden 576,
vocabulary 49,152) with random weights, for the student (`--layers` of them) and the teacher (`--teacher-layers`).
Rows: `--batch` random prompts of `--prompt-length` tokens followed by `--new-tokens` label tokens. fp32 on CPU, one
torch thread. Two variants, each in its own process, each `1 + --repeats` optimizer steps of `DistillationTrainer`
(the first a warm-up, so AdamW's state exists as in any later step):
  on_policy    on_policy_fraction=1: the student samples `--new-tokens` tokens (temperature 1, `min_new_tokens` set so
               every completion has exactly that many), teacher and student are scored on prompt + completion
  off_policy   on_policy_fraction=0 on the rows themselves: the same total length and the same label tokens
Measured:
  - the step time split the trainer logs (`time_generation`, `time_teacher`, `time_student`, seconds per step);
  - generation inside training against a standalone `student.generate` on the same prompts with the same
    `GenerationConfig` and seed (eval mode, no grad), the median of `--repeats` calls in the same process;
  - the peak resident memory of the scored pass (`training_step`: the forward and backward of the student with the
    teacher's forward, after generation) against the same of the off-policy step, high-water mark reset just
    before it (benchmarks/process_memory.py). Both use the default chunked loss.
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

VARIANTS = ["on_policy", "off_policy"]


def _models(layers: int, teacher_layers: int):
    """Student and teacher with SmolLM2-135M's config (but their layer counts) and random weights; and the config."""
    from transformers import AutoConfig, LlamaForCausalLM

    from hf_distill._packaged import resolve_packaged_model

    config = AutoConfig.from_pretrained(resolve_packaged_model("smollm2-135m-instruct"))
    sized = [type(config).from_dict({**config.to_dict(), "num_hidden_layers": n}) for n in (layers, teacher_layers)]
    return [LlamaForCausalLM(c) for c in sized], config  # random weights: only the shapes matter here


def _generation_config(args, eos_token_id: int, pad_token_id: int):
    """The `GenerationConfig` an on-policy step builds from the config fields below (hf_distill/on_policy/settings.py),
    written out for the standalone `generate`."""
    from transformers import GenerationConfig

    return GenerationConfig(
        max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=True, temperature=1.0, top_p=1.0,
        top_k=0, use_cache=True, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
    )  # fmt: skip


def _child(variant: str, args) -> None:
    import torch
    from datasets import Dataset
    from transformers import default_data_collator

    from hf_distill import DistillationConfig, DistillationTrainer
    from hf_distill.on_policy.generation import generation_seed

    torch.set_num_threads(1)
    torch.manual_seed(0)
    (student, teacher), config = _models(args.layers, args.teacher_layers)
    eos, pad = config.eos_token_id, config.pad_token_id if config.pad_token_id is not None else config.eos_token_id
    length = args.prompt_length + args.new_tokens
    low = max(eos, pad) + 1  # random tokens that are neither EOS nor padding
    ids = torch.randint(low, config.vocab_size, (args.batch, length))
    labels = ids.clone()
    labels[:, : args.prompt_length] = -100
    rows = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": [[1] * length] * args.batch,
                              "labels": labels.tolist()})  # fmt: skip
    steps: list[dict] = []

    class Measured(DistillationTrainer):
        """Times the scored pass and measures its peak memory: `training_step` runs after the step's generation."""

        def training_step(self, *a, **k):
            base = reset_peak()
            start = time.perf_counter()
            loss = super().training_step(*a, **k)
            steps.append({"scored_seconds": time.perf_counter() - start, "scored_peak_mb": peak_mb() - base})
            return loss

    with tempfile.TemporaryDirectory() as out:
        trainer = Measured(
            model=student, teacher_model=teacher, train_dataset=rows, data_collator=default_data_collator,
            args=DistillationConfig(
                output_dir=out, max_steps=1 + args.repeats, per_device_train_batch_size=args.batch,
                learning_rate=1e-5, logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=True,
                use_cpu=True, preflight="off", seed=0, on_policy_fraction=1.0 if variant == "on_policy" else 0.0,
                max_new_tokens=args.new_tokens, generation_temperature=1.0,
                generation_kwargs={"min_new_tokens": args.new_tokens, "eos_token_id": eos, "pad_token_id": pad},
            ),
        )  # fmt: skip
        start = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - start
    logged = [log for log in trainer.state.log_history if "loss" in log][1:]  # the warm-up step dropped
    result = {
        "variant": variant,
        "step_seconds": wall / (1 + args.repeats),
        "scored_seconds": statistics.median(s["scored_seconds"] for s in steps[1:]),
        "scored_peak_mb": max(s["scored_peak_mb"] for s in steps[1:]),
    }
    if variant == "on_policy":
        for name in ("time_generation", "time_teacher", "time_student", "generated_length"):
            result[name] = statistics.median(log[name] for log in logged)
        # Standalone generation: the same prompts, GenerationConfig and seed as the last step, on the same model.
        prompts = ids[:, : args.prompt_length]
        generation_config = _generation_config(args, eos, pad)
        student.eval()
        times = []
        for _ in range(args.repeats):
            with torch.random.fork_rng(), torch.no_grad():
                torch.manual_seed(generation_seed(0, args.repeats, 0, 0))
                start = time.perf_counter()
                out = student.generate(
                    input_ids=prompts, attention_mask=torch.ones_like(prompts), generation_config=generation_config
                )
                times.append(time.perf_counter() - start)
        result["standalone_generate_seconds"] = statistics.median(times)
        result["standalone_new_tokens"] = out.shape[1] - args.prompt_length
    print(json.dumps(result))


def _run(variant: str, args) -> dict:
    command = [sys.executable, __file__, "--child", variant]
    for name in ("layers", "teacher_layers", "batch", "prompt_length", "new_tokens", "repeats"):
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(args) -> dict:
    """Both variants, each in its own process; returns their records and the ratios."""
    rows = {variant: _run(variant, args) for variant in VARIANTS}
    on, off = rows["on_policy"], rows["off_policy"]
    split = sum(on[name] for name in ("time_generation", "time_teacher", "time_student"))
    return {
        "settings": {k: v for k, v in vars(args).items() if k not in ("child", "json")},
        "variants": rows,
        "ratios": {
            "generation_share": on["time_generation"] / split,
            "teacher_share": on["time_teacher"] / split,
            "student_share": on["time_student"] / split,
            "generation_vs_standalone": on["time_generation"] / on["standalone_generate_seconds"],
            "scored_peak_vs_off_policy": on["scored_peak_mb"] / off["scored_peak_mb"],
            "on_policy_step_vs_off_policy_step": on["step_seconds"] / off["step_seconds"],
        },
    }


def print_tables(result: dict) -> None:
    s, on, off, r = (
        result["settings"],
        result["variants"]["on_policy"],
        result["variants"]["off_policy"],
        result["ratios"],
    )
    print(
        f"SmolLM2-135M config, random weights: student {s['layers']} layers, teacher {s['teacher_layers']} layers; "
        f"{s['batch']} × ({s['prompt_length']} prompt + {s['new_tokens']} generated) tokens; CPU, 1 thread; median "
        f"of {s['repeats']} steps after 1 warm-up\n"
    )
    print("| on-policy step | seconds per step | share |")
    print("|---|---|---|")
    for name, key in (("generation", "time_generation"), ("teacher scoring", "time_teacher"),
                      ("student update", "time_student")):  # fmt: skip
        print(f"| {name} | {on[key]:.2f} s | {100 * r[key.replace('time_', '') + '_share']:.0f}% |")
    print(
        f"\n(whole step, optimizer included: on-policy {on['step_seconds']:.2f} s, off-policy {off['step_seconds']:.2f} s)\n"
    )
    print("| ratio | measured | target |")
    print("|---|---|---|")
    print(
        f"| generation inside training / standalone `generate` ({on['time_generation']:.2f} s / "
        f"{on['standalone_generate_seconds']:.2f} s) | {r['generation_vs_standalone']:.2f}x | ≤ 1.1x |"
    )
    print(
        f"| peak memory, scored pass / off-policy step ({on['scored_peak_mb']:.0f} MB / {off['scored_peak_mb']:.0f} MB) "
        f"| {r['scored_peak_vs_off_policy']:.2f}x | ≤ 1.1x |"
    )


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=30, help="student layers (SmolLM2-135M has 30)")
    parser.add_argument("--teacher-layers", type=int, default=30)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompt-length", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", help="also write the numbers here as JSON")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args.child, args)
    result = measure(args)
    print_tables(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
