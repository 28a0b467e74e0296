"""On-policy vs off-policy distillation on real text: SmolLM2-135M-Instruct grades a 6-layer student cut from its
layers that continues 32-token prompts from Hamlet.

    python benchmarks/quality/on_policy_smollm2.py --card-dir benchmarks/quality/cards   # 3 arms, 20 steps, seed 0
    python benchmarks/quality/on_policy_smollm2.py --steps 2 --eval-prompts 4 --max-new-tokens 8   # smoke size

Three arms from the same initial student, the same steps, batch and learning rate, reverse KL as the divergence:
off-policy (KD on the play's own continuations, `on_policy_fraction=0`), mixed (`0.5`) and on-policy (`1.0`: the
student samples, the teacher grades every token). Each is scored on held-out prompts by
`eval_on_policy_reverse_kl`: the teacher-vs-student reverse KL on the student's own greedy completions, the quantity
exposure bias shows up in, and by the forward KL on the held-out continuations (`eval_kd_loss` of an off-policy
evaluation with forward KL). Teacher: the packaged Q4_1 GGUF weights expanded to fp32 (not the original checkpoint).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import shutil
import tempfile
import time

import torch
from transformers import AutoTokenizer, DataCollatorForSeq2Seq

from hf_distill import DistillationConfig, DistillationTrainer
from hf_distill._packaged import resolve_packaged_model
from hf_distill.cli.data import causal_lm_datasets
from hf_distill.cli.recipe import DataSpec
from hf_distill.modeling.student_init import student_from_teacher_layers
from hf_distill.teacher.loading import load_teacher

LAYERS = [0, 6, 12, 18, 24, 29]
ARMS = {"off-policy": 0.0, "mixed 0.5": 0.5, "on-policy": 1.0}


def run(
    steps: int, eval_prompts: int, max_new_tokens: int, seed: int, card_dir: str | None = None
) -> dict[str, dict[str, float]]:
    """`{arm: {"on_policy_reverse_kl": ..., "continuation_forward_kl": ..., "seconds": ...}}` after `steps` steps."""
    path = resolve_packaged_model("packaged:smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(path)
    teacher = load_teacher("packaged:smollm2-135m-instruct", task="causal_lm")
    spec = DataSpec(text_file="packaged:hamlet", block_size=64, prompt_length=32, eval_fraction=0.05)
    train, evaluation = causal_lm_datasets(spec, tokenizer)
    evaluation = evaluation.select(range(min(eval_prompts, len(evaluation))))
    initial = student_from_teacher_layers(teacher, LAYERS)
    results = {}
    for arm, fraction in ARMS.items():
        torch.manual_seed(seed)
        name = f"smollm2-6l-hamlet-on-policy-{fraction:g}-seed{seed}"
        with tempfile.TemporaryDirectory() as scratch:
            out = os.path.join(scratch, name)  # the card is titled by the output folder's name
            args = DistillationConfig(
                output_dir=out,
                kd_loss="reverse_kl",
                ce_weight=0.0,
                on_policy_fraction=fraction,
                max_new_tokens=max_new_tokens,
                generation_temperature=1.0,
                eval_on_policy=True,  # also for the off-policy arm: the same metric for all three
                max_steps=steps,
                per_device_train_batch_size=4,
                per_device_eval_batch_size=4,
                learning_rate=5e-4,
                lr_scheduler_type="cosine",
                warmup_steps=min(2, steps - 1),
                weight_decay=0.0,
                logging_steps=max(1, steps // 4),
                save_strategy="no",
                report_to=[],
                seed=seed,
                use_cpu=True,
                disable_tqdm=True,
            )
            trainer = DistillationTrainer(
                model=copy.deepcopy(initial),
                teacher_model=teacher,
                args=args,
                train_dataset=train,
                eval_dataset=evaluation,
                data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True),
                processing_class=tokenizer,
            )
            start = time.perf_counter()
            trainer.train()
            seconds = time.perf_counter() - start
            on_policy = trainer.evaluate()["eval_on_policy_reverse_kl"]
            # The off-policy view of the same student: forward KL to the teacher on the play's own continuations.
            trained_with, trainer.kd_objective = (
                trainer.kd_objective,
                dataclasses.replace(trainer.kd_objective, kd_loss="forward_kl"),
            )
            continuation = trainer.evaluate(metric_key_prefix="cont")["cont_kd_loss"]
            trainer.kd_objective = trained_with  # the card records the objective the student trained with
            if card_dir:  # the student's card: its lineage (objective, on-policy fraction, generation settings)
                trainer.compare_with_teacher(dataset_name="Hamlet, last 5% (scattertext)")
                trainer.save_model()
                trainer.create_model_card()
                os.makedirs(card_dir, exist_ok=True)
                shutil.copy(os.path.join(out, "README.md"), os.path.join(card_dir, f"{name}.md"))
        results[arm] = {"on_policy_reverse_kl": on_policy, "continuation_forward_kl": continuation, "seconds": seconds}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--eval-prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--card-dir", help="copy each distilled student's model card here")
    options = parser.parse_args()
    results = run(options.steps, options.eval_prompts, options.max_new_tokens, options.seed, options.card_dir)
    print(f"\n{options.steps} steps × 4 prompts, {options.eval_prompts} held-out prompts, seed {options.seed}\n")
    print("| arm | reverse KL on own greedy completions | forward KL on held-out continuations | train time |")
    print("|---|---|---|---|")
    for arm, row in results.items():
        print(
            f"| {arm} | {row['on_policy_reverse_kl']:.4f} | {row['continuation_forward_kl']:.4f} | "
            f"{row['seconds']:.0f} s |"
        )
    if options.json:
        with open(options.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
