"""Teacher vs student on the same evaluation set, by the same code path: the trainer's own `evaluate`, run once with
the student and once with the teacher standing in for it. The result goes into the lineage record and the card."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

from .teacher import accepted_arguments

# Keys of `Trainer.evaluate` output that are bookkeeping, not quality metrics.
_BOOKKEEPING = (
    "loss",
    "distillation_loss",
    "kd_loss",
    "ce_loss",
    "agreement",
    "runtime",
    "samples_per_second",
    "steps_per_second",
    "epoch",
    "model_preparation_time",
    "jit_compilation_time",
)


# Metric names containing these are better when lower.
_LOWER_IS_BETTER = ("loss", "error", "perplexity")


@contextlib.contextmanager
def teacher_as_model(trainer: Any) -> Iterator[None]:
    """Within the block, `trainer.model` is the teacher, so `evaluate` scores the teacher exactly as it scores the
    student (same batches, same `compute_metrics`; its KD term to itself is 0)."""
    if trainer.teacher_placement.kind != "replicate":
        raise ValueError(
            f"compare_with_teacher needs a teacher replicated on each process; this run places it "
            f"'{trainer.teacher_placement.describe()}'. Evaluate the teacher in a separate run."
        )
    saved = {
        "model": trainer.model,
        "model_wrapped": trainer.model_wrapped,
        "_student_arguments": trainer._student_arguments,
        "_chunk_size": trainer._chunk_size,
    }
    prepared = list(trainer.accelerator._models)  # evaluate() may register the model it is given; undo that
    trainer.model = trainer.model_wrapped = trainer.teacher_model
    trainer._student_arguments = accepted_arguments(trainer.teacher_model)
    trainer._chunk_size = 0  # the logits path: the teacher's own logits are what compute_metrics sees
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(trainer, name, value)
        trainer.accelerator._models[:] = prepared


def _task_metric(student: dict[str, float], prefix: str, args: Any) -> tuple[str, bool] | None:
    """The metric to compare: `metric_for_best_model`, else the first `compute_metrics` key, else perplexity."""
    wanted = getattr(args, "metric_for_best_model", None)
    if wanted:
        name = wanted[len(prefix) + 1 :] if wanted.startswith(f"{prefix}_") else wanted
        if f"{prefix}_{name}" in student:
            return name, bool(args.greater_is_better) if args.greater_is_better is not None else False
    own = [
        k[len(prefix) + 1 :]
        for k in student
        if k.startswith(f"{prefix}_") and k[len(prefix) + 1 :] not in _BOOKKEEPING
    ]
    if own:
        return own[0], not any(word in own[0] for word in _LOWER_IS_BETTER)
    return None


def compare_with_teacher(trainer: Any, eval_dataset: Any = None, dataset_name: str | None = None) -> dict[str, Any]:
    """Evaluate student and teacher on `eval_dataset` (default: the trainer's) and return the comparison record.

    Returns:
        `dict` with `dataset`, `examples`, `metric` (`name`, `teacher`, `student`, `higher_is_better`: the
        `compute_metrics` metric, else perplexity for a language model), `ce_loss` per model, the student's `kd_loss`
        and top-1 `agreement` with the teacher, `parameters` per model, and `size_on_disk` (filled in when saved).
    """
    dataset = eval_dataset if eval_dataset is not None else trainer.eval_dataset
    if dataset is None:
        raise ValueError("compare_with_teacher needs an evaluation set: pass eval_dataset= or give the trainer one.")
    student = trainer.evaluate(dataset, metric_key_prefix="eval")
    with teacher_as_model(trainer):
        teacher = trainer.evaluate(dataset, metric_key_prefix="eval_teacher")
    teacher = {"eval_" + k[len("eval_teacher_") :]: v for k, v in teacher.items()}
    chosen = _task_metric(student, "eval", trainer.args)
    metric = None
    if chosen is not None:
        name, higher = chosen
        metric = {"name": name, "teacher": teacher[f"eval_{name}"], "student": student[f"eval_{name}"]}
        metric["higher_is_better"] = higher
    elif "eval_ce_loss" in student and "eval_ce_loss" in teacher and trainer._shift_labels:
        metric = {
            "name": "perplexity",
            "teacher": math.exp(teacher["eval_ce_loss"]),
            "student": math.exp(student["eval_ce_loss"]),
            "higher_is_better": False,
        }
    info = getattr(dataset, "info", None)
    lineage = trainer.lineage()
    return {
        "dataset": dataset_name or getattr(info, "dataset_name", None) or "held-out evaluation set",
        "examples": len(dataset) if hasattr(dataset, "__len__") else None,
        "metric": metric,
        "ce_loss": {"teacher": teacher.get("eval_ce_loss"), "student": student.get("eval_ce_loss")},
        "kd_loss": student.get("eval_kd_loss"),
        "agreement": student.get("eval_agreement"),
        "parameters": {"teacher": lineage.teacher["parameters"], "student": lineage.student["parameters"]},
        "size_on_disk": {"teacher": lineage.teacher.get("weights_bytes"), "student": None},
    }
