"""Teacher vs student on the same evaluation set, scored by one code path: `evaluate_model`, a plain
`transformers.Trainer` evaluation of one model with the run's batches, collator and `compute_metrics`, and its label
loss summed over valid positions as the distillation objective's CE term sums it. The CLI scores its models with it
too. The result goes into the lineage record and the card."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import Trainer, TrainingArguments
from transformers.trainer_pt_utils import nested_detach
from transformers.trainer_utils import EvalLoopOutput

from ..losses import KDObjective, Positions, objective_sums
from ..modeling.forward import LABEL_COLUMNS, model_logits, outputs_for_metrics

# Keys of `Trainer.evaluate` output that are bookkeeping, not quality metrics.
_BOOKKEEPING = (
    "loss",
    "distillation_loss",
    "kd_loss",
    "ce_loss",
    "agreement",
    "on_policy_reverse_kl",  # a distillation metric of the student alone (hf_distill.on_policy), not a task metric
    "runtime",
    "samples_per_second",
    "steps_per_second",
    "epoch",
    "model_preparation_time",
    "jit_compilation_time",
)

# Metric names containing these are better when lower.
_LOWER_IS_BETTER = ("loss", "error", "perplexity")

# `TrainingArguments` fields that decide how an evaluation batches, places and reports: copied into the scratch
# arguments of `evaluate_model`, so that a model is scored as the run scores its student.
_EVALUATION_FIELDS = (
    "per_device_eval_batch_size",
    "use_cpu",
    "bf16",
    "fp16",
    "bf16_full_eval",
    "fp16_full_eval",
    "eval_accumulation_steps",
    "eval_do_concat_batches",
    "include_for_metrics",
    "batch_eval_metrics",
    "remove_unused_columns",
    "label_names",
    "dataloader_num_workers",
    "dataloader_pin_memory",
    "disable_tqdm",
    "seed",
)


@dataclass(frozen=True)
class LabelLoss:
    """How a model's label loss is summed: as the distillation objective's CE term (label smoothing included).

    Attributes:
        objective (`KDObjective`): its `label_smoothing_factor` smooths the CE term.
        shift_labels (`bool`): causal LM, position t predicts token t+1.
        mask_column (`str`): the batch column that selects positions when there are no labels.
    """

    objective: KDObjective
    shift_labels: bool = False
    mask_column: str = "attention_mask"


class _ModelEvaluator(Trainer):
    """A plain `Trainer` evaluation of one model: its outputs to `compute_metrics`, and `{prefix}_ce_loss`, its label
    loss averaged over every valid position of the set (not per batch), as the distillation metrics average it."""

    def __init__(
        self, *args: Any, outputs: Callable[[dict, Any], Any] | None, label_loss: LabelLoss | None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._outputs = outputs
        self._label_loss = label_loss
        self._ce_sums = torch.zeros(2, dtype=torch.float64, device=self.args.device)  # (CE sum, positions)

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor | None, Any, Any]:
        inputs = self._prepare_inputs(inputs)
        labels = inputs.get("labels")
        features = {k: v for k, v in inputs.items() if k not in LABEL_COLUMNS}
        with torch.no_grad(), self.compute_loss_context_manager():
            outputs = model(**features) if self._outputs is None else self._outputs(features, labels)
        loss = None
        if labels is not None and self._label_loss is not None:
            logits = model_logits(outputs, "model")
            positions = Positions(labels, features.get(self._label_loss.mask_column), self._label_loss.shift_labels)
            sums = objective_sums(self._label_loss.objective, logits, logits, positions)  # KD to itself: 0
            self._ce_sums += torch.stack([sums.ce.detach().double(), sums.num_targets.double()])
            loss = (sums.ce.float() / sums.num_targets).detach()
        if prediction_loss_only:
            return loss, None, None
        if ignore_keys is None:
            ignore_keys = getattr(getattr(model, "config", None), "keys_to_ignore_at_inference", [])
        return loss, nested_detach(outputs_for_metrics(outputs, ignore_keys)), labels

    def evaluation_loop(
        self,
        dataloader: DataLoader,
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> EvalLoopOutput:
        self._ce_sums.zero_()
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        sums = self.accelerator.reduce(self._ce_sums, reduction="sum") if self.accelerator.num_processes > 1 else None
        ce, count = (self._ce_sums if sums is None else sums).tolist()
        if count:
            output.metrics[f"{metric_key_prefix}_ce_loss"] = ce / count
        return output


def evaluate_model(
    model: nn.Module,
    eval_data: Any,
    args: TrainingArguments,
    *,
    data_collator: Any = None,
    compute_metrics: Callable | None = None,
    preprocess_logits_for_metrics: Callable | None = None,
    label_loss: LabelLoss | None = None,
    outputs: Callable[[dict, Any], Any] | None = None,
    metric_key_prefix: str = "eval",
) -> dict[str, float]:
    """The metrics of one model (teacher or student alike) on an evaluation set, by a plain `Trainer` evaluation.

    Args:
        model (`nn.Module`): the model to score, in evaluation mode.
        eval_data (`Dataset` or `DataLoader`): the evaluation set, or the batches of one (e.g. a trainer's
            `get_eval_dataloader()`, to score on exactly its batches).
        args (`TrainingArguments`): the run's arguments; their evaluation fields (batch size, precision, device,
            `include_for_metrics`, ...) are copied into scratch arguments, and nothing is written to `output_dir`.
        data_collator, compute_metrics, preprocess_logits_for_metrics: as `Trainer` takes them.
        label_loss (`LabelLoss`, *optional*): adds `{prefix}_ce_loss`, the label loss over every valid position.
        outputs (`Callable[[dict, Tensor | None], Any]`, *optional*): computes the model's outputs from a batch's
            features and labels (e.g. a teacher's, with its logits in the student's label order); default: the
            model's own forward on the features.
        metric_key_prefix (`str`, *optional*, defaults to `"eval"`).

    Returns:
        `dict[str, float]`: `{prefix}_<metric>` from `compute_metrics`, `{prefix}_loss` and `{prefix}_ce_loss` with
        `label_loss` and labels, and `Trainer`'s timing entries.

    Example:
        ```python
        >>> metrics = evaluate_model(teacher, eval_dataset, args, compute_metrics=accuracy_metrics)
        >>> metrics["eval_accuracy"]
        ```
    """
    fields = {name: getattr(args, name) for name in _EVALUATION_FIELDS if hasattr(args, name)}
    with tempfile.TemporaryDirectory() as scratch:
        evaluator = _ModelEvaluator(
            model=model,
            args=TrainingArguments(output_dir=scratch, report_to=[], **fields),
            data_collator=data_collator,
            compute_metrics=compute_metrics,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
            outputs=outputs,
            label_loss=label_loss,
        )
        if isinstance(eval_data, DataLoader):
            return evaluator.evaluation_loop(eval_data, "Evaluation", metric_key_prefix=metric_key_prefix).metrics
        return evaluator.evaluate(eval_data, metric_key_prefix=metric_key_prefix)


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

    The student is scored by the trainer's own `evaluate` (which also gives its KD term and top-1 agreement with the
    teacher); the teacher by `evaluate_model` on the trainer's evaluation batches, with the same `compute_metrics`
    and the same label loss.

    Returns:
        `dict` with `dataset`, `examples`, `metric` (`name`, `teacher`, `student`, `higher_is_better`: the
        `compute_metrics` metric, else perplexity for a language model), `ce_loss` per model, the student's `kd_loss`
        and top-1 `agreement` with the teacher, `parameters` per model, and `size_on_disk` (filled in when saved).
    """
    dataset = eval_dataset if eval_dataset is not None else trainer.eval_dataset
    if dataset is None:
        raise ValueError("compare_with_teacher needs an evaluation set: pass eval_dataset= or give the trainer one.")
    teacher = trainer.teacher
    crosses = teacher.alignment_record() is not None  # another tokenizer: scored by the student's evaluation itself
    if not crosses and teacher.placement.kind != "replicate":
        raise ValueError(
            f"compare_with_teacher needs a teacher replicated on each process; this run places it "
            f"'{teacher.placement.describe()}'. Evaluate the teacher in a separate run."
        )
    student = trainer.evaluate(dataset, metric_key_prefix="eval")
    if crosses and "eval_teacher_bits_per_byte" in student:  # the eval scored both models on the same bytes
        return _cross_tokenizer_comparison(trainer, dataset, dataset_name, student)
    teacher_metrics = evaluate_model(
        teacher.module,
        trainer.get_eval_dataloader(dataset),
        trainer.args,
        compute_metrics=trainer.compute_metrics,
        preprocess_logits_for_metrics=trainer.preprocess_logits_for_metrics,
        label_loss=trainer.label_loss(),
        outputs=teacher.outputs,
    )
    trainer.log({"eval_teacher_" + k[len("eval_") :]: v for k, v in teacher_metrics.items() if k.startswith("eval_")})
    chosen = _task_metric(student, "eval", trainer.args)
    metric = None
    if chosen is not None:
        name, higher = chosen
        metric = {"name": name, "teacher": teacher_metrics[f"eval_{name}"], "student": student[f"eval_{name}"]}
        metric["higher_is_better"] = higher
    elif "eval_ce_loss" in student and "eval_ce_loss" in teacher_metrics and trainer.label_loss().shift_labels:
        metric = {
            "name": "perplexity",
            "teacher": math.exp(teacher_metrics["eval_ce_loss"]),
            "student": math.exp(student["eval_ce_loss"]),
            "higher_is_better": False,
        }
    return _record(trainer, dataset, dataset_name, student, metric, teacher_metrics.get("eval_ce_loss"))


def _cross_tokenizer_comparison(trainer: Any, dataset: Any, dataset_name: str | None, student: dict) -> dict[str, Any]:
    """Teacher and student of different tokenizers: their per-token losses are not comparable, their bits per byte
    of the same text are (both from the student's evaluation, over the chunks both tokenizations share)."""
    metric = {
        "name": "bits_per_byte",
        "teacher": student["eval_teacher_bits_per_byte"],
        "student": student["eval_student_bits_per_byte"],
        "higher_is_better": False,
    }
    trainer.log({"eval_teacher_bits_per_byte": metric["teacher"]})
    return _record(trainer, dataset, dataset_name, student, metric, None)


def _record(
    trainer: Any, dataset: Any, dataset_name: str | None, student: dict, metric: dict | None, teacher_ce: Any
) -> dict[str, Any]:
    info = getattr(dataset, "info", None)
    lineage = trainer.lineage()
    return {
        "dataset": dataset_name or getattr(info, "dataset_name", None) or "held-out evaluation set",
        "examples": len(dataset) if hasattr(dataset, "__len__") else None,
        "metric": metric,
        "ce_loss": {"teacher": teacher_ce, "student": student.get("eval_ce_loss")},
        "kd_loss": student.get("eval_kd_loss"),
        "agreement": student.get("eval_agreement"),
        "parameters": {"teacher": lineage.teacher.get("parameters"), "student": lineage.student["parameters"]},
        "size_on_disk": {"teacher": lineage.teacher.get("weights_bytes"), "student": None},
    }
