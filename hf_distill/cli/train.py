"""Composition root of `hf-distill train`: recipe in, trained and saved student out, with a side-by-side report."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from transformers import (
    AutoTokenizer,
    BitsAndBytesConfig,
    DataCollatorForSeq2Seq,
    DataCollatorWithPadding,
    TrainingArguments,
    default_data_collator,
)

from .. import _packaged as assets
from .._logging import get_logger
from ..config import cross_tokenizer_method
from ..hub.comparison import evaluate_model
from ..hub.licenses import LicensePolicyError
from ..modeling.adapters import is_peft_model, require_bitsandbytes
from ..modeling.heads import head_kind_of_task
from ..modeling.student_init import student_from_teacher_layers
from ..offline.cache import CACHE_COLUMNS, CACHE_INFO_FILE, cache_rows, load_teacher_cache
from ..preflight import MemoryPlan
from ..provenance import model_source, record_source, source_of
from ..served.endpoint import is_served_spec
from ..task_metrics import accuracy_metrics, label_log_probs, perplexity_metrics
from ..teacher.loading import load_teacher
from ..trainer import DistillationTrainer
from ..utils.atomic import write_json
from .data import causal_lm_datasets, classification_datasets
from .recipe import Recipe
from .report import ModelRow, format_table, parameter_count, size_on_disk

logger = get_logger(__name__)


def _local_path(name: str) -> str:
    return assets.resolve_packaged_model(name) if assets.is_packaged(name) else name


def metric_arguments(recipe: Recipe) -> dict[str, Any]:
    """The trainer arguments that score a model on the recipe's task with `evaluate` modules: accuracy for
    classification, perplexity (from the label tokens' log-probs) for causal LM; none across tokenizers, where the
    trainer's own evaluation reports bits per byte for teacher and student."""
    if recipe.args.get("cross_tokenizer") is not None:
        return {}
    if recipe.task == "sequence_classification":
        return {"compute_metrics": accuracy_metrics}
    return {"compute_metrics": perplexity_metrics, "preprocess_logits_for_metrics": label_log_probs}


def evaluate_task_metric(
    model: Any, recipe: Recipe, eval_dataset: Any, collator: Any, args: TrainingArguments
) -> float:
    """The task metric of any model on the eval set, by the one evaluation path for teacher and student alike
    (`hub.comparison.evaluate_model`, which `compare_with_teacher` uses too)."""
    metrics = evaluate_model(model, eval_dataset, args, data_collator=collator, **metric_arguments(recipe))
    return metrics["eval_accuracy" if recipe.task == "sequence_classification" else "eval_perplexity"]


@dataclass
class Loaded:
    """What a recipe loads before any training: arguments, tokenizers, models, data. `tokenizer` tokenized the data
    and is the student's (the teacher's own, unless `args.cross_tokenizer` is set); `teacher_tokenizer` is the
    teacher's."""

    args: Any
    tokenizer: Any
    teacher_path: str
    teacher: Any
    student: Any
    train: Any
    evaluation: Any
    collator: Any
    teacher_tokenizer: Any = None

    def __post_init__(self) -> None:
        if self.teacher_tokenizer is None:  # one tokenizer for both
            self.teacher_tokenizer = self.tokenizer


def load_tokenizer(recipe: Recipe) -> tuple[str, Any]:
    """The teacher's local folder (a packaged model is converted once) and its tokenizer; for a served teacher, its
    spec and the tokenizer `teacher.tokenizer` names (a server ships none)."""
    if is_served_spec(recipe.teacher.model_name_or_path):
        if not recipe.teacher.tokenizer:
            raise ValueError(
                f"teacher.model_name_or_path={recipe.teacher.model_name_or_path!r} is a served teacher: set "
                "teacher.tokenizer to the folder or Hub id of its tokenizer (the data is tokenized with it, and it "
                "is checked against the server's tokenization)."
            )
        return recipe.teacher.model_name_or_path, AutoTokenizer.from_pretrained(
            _local_path(recipe.teacher.tokenizer), trust_remote_code=recipe.teacher.trust_remote_code
        )
    teacher_path = _local_path(recipe.teacher.model_name_or_path)
    return teacher_path, AutoTokenizer.from_pretrained(
        teacher_path, revision=recipe.teacher.revision, trust_remote_code=recipe.teacher.trust_remote_code
    )


def crosses_tokenizers(recipe: Recipe) -> bool:
    """Whether the recipe distils across tokenizers (`args.cross_tokenizer` set): the data is then tokenized with the
    student's tokenizer, and teacher and student are compared in bits per byte."""
    return recipe.args.get("cross_tokenizer") is not None


def load_student_tokenizer(recipe: Recipe) -> Any:
    """The tokenizer saved with the pretrained student (`student.model_name_or_path`; a packaged model is converted
    once)."""
    return AutoTokenizer.from_pretrained(
        _local_path(recipe.student.model_name_or_path), trust_remote_code=recipe.student.trust_remote_code
    )


def load_student(recipe: Recipe, teacher: Any, auto: Any, load_kwargs: dict[str, Any]) -> Any:
    """The recipe's student: `student.layers` of the teacher, or the pretrained `student.model_name_or_path` (with
    only its `student.layers` kept, when given), its source recorded for the lineage."""
    if recipe.student.init == "teacher_layers":
        return student_from_teacher_layers(teacher, recipe.student.layers)
    if recipe.student.quantization:
        bits = {"4bit": {"load_in_4bit": True}, "8bit": {"load_in_8bit": True}}[recipe.student.quantization]
        load_kwargs = {**load_kwargs, "quantization_config": BitsAndBytesConfig(**bits)}
    name = recipe.student.model_name_or_path
    student_path = _local_path(name)
    student = auto.from_pretrained(student_path, trust_remote_code=recipe.student.trust_remote_code, **load_kwargs)
    folder = student_path if os.path.isdir(student_path) else None
    record_source(student, source_of(name), folder)
    if not recipe.student.layers:
        return student
    # A cut of the pretrained model, not of the teacher: its lineage is a `pretrained` init naming the model the
    # weights came from (checked against its checkpoint by the cut) and the layers kept, never `teacher_layers`.
    cut = student_from_teacher_layers(student, recipe.student.layers)
    source = {key: value for key, value in model_source(cut).items() if key != "init"}
    return record_source(cut, source, folder)


def load_data(recipe: Recipe, tokenizer: Any, teacher_tokenizer: Any = None) -> tuple[Any, Any, Any, dict[str, Any]]:
    """Train and eval datasets, their collator, and the head's loading arguments (labels of a classifier). With a
    `teacher_tokenizer` of another family, conversational rows are also rendered by the teacher's chat template."""
    if recipe.task == "causal_lm":
        train, evaluation = causal_lm_datasets(recipe.data, tokenizer, teacher_tokenizer)
        lengths = {len(ids) for split in (train, evaluation) if split is not None for ids in split["input_ids"]}
        if len(lengths) > 1:  # rows of their own lengths (formatted or tokenized rows), in either split: pad them
            return train, evaluation, DataCollatorForSeq2Seq(tokenizer, padding=True), {}
        return train, evaluation, default_data_collator, {}
    train, evaluation, names = classification_datasets(recipe.data, tokenizer)
    load_kwargs = {
        "num_labels": len(names),
        "id2label": dict(enumerate(names)),
        "label2id": {n: i for i, n in enumerate(names)},
    }
    return train, evaluation, DataCollatorWithPadding(tokenizer), load_kwargs


def load_teacher_model(recipe: Recipe, **load_kwargs: Any) -> Any:
    """The recipe's teacher, by the library's loader: pinned to `teacher.revision`'s commit, with its source (Hub
    commit, packaged asset or weights hash) recorded for the lineage."""
    teacher = recipe.teacher
    return load_teacher(
        teacher.model_name_or_path,
        trust_remote_code=teacher.trust_remote_code,
        revision=teacher.revision,
        task=recipe.task,
        **load_kwargs,
    )


def load_recipe_parts(recipe: Recipe) -> Loaded:
    """Load the tokenizer, teacher, student and datasets a recipe names (nothing is trained)."""
    args = recipe.training_arguments()
    if is_served_spec(recipe.teacher.model_name_or_path):
        raise ValueError(
            f"teacher.model_name_or_path={recipe.teacher.model_name_or_path!r} is a served teacher, which "
            "`hf-distill train` does not run (it loads its teacher to build and score the student): fill a cache "
            "from the server with `hf-distill cache-teacher` (same recipe) and train from it in Python with "
            "DistillationTrainer(teacher_cache=...), or distil online with "
            "DistillationTrainer(teacher_model='openai-compatible:...') (README, \"Served teachers\")."
        )
    if recipe.student.quantization:  # before anything is loaded
        require_bitsandbytes(f"student.quantization={recipe.student.quantization}")
    auto = head_kind_of_task(recipe.task).auto_class
    teacher_path, teacher_tokenizer = load_tokenizer(recipe)
    # Across tokenizers the rows are the student's tokens: the trainer re-tokenizes their text for the teacher.
    tokenizer = load_student_tokenizer(recipe) if crosses_tokenizers(recipe) else teacher_tokenizer
    crossing = teacher_tokenizer if tokenizer is not teacher_tokenizer else None
    train, evaluation, collator, load_kwargs = load_data(recipe, tokenizer, crossing)
    teacher = load_teacher_model(recipe, **load_kwargs)
    student = load_student(recipe, teacher, auto, load_kwargs)
    logger.info(f"{len(train)} training and {len(evaluation)} evaluation examples")
    return Loaded(args, tokenizer, teacher_path, teacher, student, train, evaluation, collator, teacher_tokenizer)


def _cached_eval(cache_path: str, evaluation: Any) -> Any:
    """Evaluation rows when training from a cache: the eval set's own cache, written beside the train cache by
    `hf-distill cache-teacher` (`<dir>/train`, `<dir>/eval`), when there is one; else none (no teacher to score)."""
    if all(c in evaluation.column_names for c in CACHE_COLUMNS):
        return evaluation
    sibling = os.path.join(os.path.dirname(os.path.normpath(cache_path)), "eval")
    if not os.path.isfile(os.path.join(sibling, CACHE_INFO_FILE)):
        logger.info(f"No teacher cache of the evaluation set at {sibling}: the trainer runs no distillation eval.")
        return None
    return cache_rows(load_teacher_cache(sibling), evaluation)


def build_trainer(recipe: Recipe, loaded: Loaded) -> DistillationTrainer:
    cache = loaded.args.teacher_cache
    return DistillationTrainer(
        model=loaded.student,
        teacher_model=None if cache else loaded.teacher,
        args=loaded.args,
        train_dataset=loaded.train,
        eval_dataset=_cached_eval(cache, loaded.evaluation) if cache else loaded.evaluation,
        data_collator=loaded.collator,
        processing_class=loaded.tokenizer,
        teacher_processing_class=loaded.teacher_tokenizer,
        peft_config=recipe.peft_config(),
        **metric_arguments(recipe),
    )


def _write_card(trainer: DistillationTrainer) -> None:
    """The student's card in the output folder; pushed too when the recipe's args say `push_to_hub: true`."""
    if trainer.args.push_to_hub:
        trainer.push_to_hub()
        return
    try:  # create_model_card itself writes a card that says "not yet cleared"; the CLI writes none until it is
        trainer.push_license_decision()
    except LicensePolicyError as error:
        logger.warning(f"No model card written: {error}")
        return
    trainer.create_model_card()


def recipe_memory_plan(recipe: Recipe) -> MemoryPlan:
    """The memory plan of a recipe (`hf-distill plan`): models and data are loaded, nothing is trained."""
    return build_trainer(recipe, load_recipe_parts(recipe)).memory_plan()


# Across tokenizers: what the results say instead of perplexity, and why.
BITS_PER_BYTE = "bits per byte (held out)"
BITS_PER_BYTE_NOTE = (
    "Teacher and student tokenize the text differently, so their per-token perplexities are not comparable; the "
    "bits per byte of the same held-out text are (from the trainer's evaluation, over the text chunks both "
    "tokenizations share)."
)


def _bits_per_byte(trainer: DistillationTrainer) -> tuple[float, float]:
    """(teacher, student) held-out bits per byte, from one evaluation of the trainer (the student as it is now)."""
    metrics = trainer.evaluate()
    return metrics["eval_teacher_bits_per_byte"], metrics["eval_student_bits_per_byte"]


def run_recipe(recipe: Recipe) -> dict[str, Any]:
    """Load teacher, student and data from `recipe`, distil, save the student, and report teacher vs student:
    perplexity (causal LM) or accuracy (classification), or bits per byte when the recipe distils across tokenizers
    (`args.cross_tokenizer`), where per-token perplexities of the two tokenizers are not comparable.

    Returns:
        `dict` with the metric name and, per model, parameters, bytes on disk and metric (also written to
        `<output_dir>/distillation_results.json`); across tokenizers also `cross_tokenizer` (the method) and
        `metric_note`.
    """
    loaded = load_recipe_parts(recipe)
    args, teacher, student, evaluation, collator = (
        loaded.args,
        loaded.teacher,
        loaded.student,
        loaded.evaluation,
        loaded.collator,
    )
    teacher_path = loaded.teacher_path
    cross = crosses_tokenizers(recipe)

    if cross:  # both values come from the trainer's evaluation, which aligns the two tokenizations
        metric_name = BITS_PER_BYTE
        trainer = build_trainer(recipe, loaded)
        teacher_metric, student_before = _bits_per_byte(trainer)
    else:
        metric_name = "perplexity (held out)" if recipe.task == "causal_lm" else "accuracy (held out)"
        teacher_metric = evaluate_task_metric(teacher, recipe, evaluation, collator, args)
        student_before = evaluate_task_metric(student, recipe, evaluation, collator, args)
        trainer = build_trainer(recipe, loaded)
    student = trainer.model  # with its adapters, when the recipe has a `peft` section
    trainer.train()
    comparison = None
    if trainer.teacher_placement.kind == "replicate":  # teacher vs student for the lineage record and the card
        comparison = trainer.compare_with_teacher(dataset_name=evaluation.info.dataset_name)
    trainer.save_model(args.output_dir)  # also saves the tokenizer (processing_class) and the lineage record
    if not cross:
        student_after = evaluate_task_metric(student, recipe, evaluation, collator, args)
    elif comparison is not None and (comparison.get("metric") or {}).get("name") == "bits_per_byte":
        student_after = comparison["metric"]["student"]  # the evaluation compare_with_teacher just ran
    else:
        student_after = _bits_per_byte(trainer)[1]
    _write_card(trainer)

    teacher_bytes = size_on_disk(teacher_path) if os.path.isdir(teacher_path) else None
    student_bytes = size_on_disk(args.output_dir)
    rows = [
        ModelRow(
            f"teacher {os.path.basename(teacher_path.rstrip('/'))}",
            parameter_count(teacher),
            teacher_bytes,
            teacher_metric,
        ),
        ModelRow("student before distillation", parameter_count(student), None, student_before),
        ModelRow("student after distillation", parameter_count(student), student_bytes, student_after),
    ]
    results = {
        "metric": metric_name,
        "models": [row.__dict__ for row in rows],
        "train_steps": trainer.state.global_step,
        "world_size": args.world_size,
    }
    if cross:
        results["cross_tokenizer"] = cross_tokenizer_method(args)
        results["metric_note"] = BITS_PER_BYTE_NOTE
    if trainer.is_world_process_zero():  # under `accelerate launch`, one report and one file
        print("\n" + format_table(rows, metric_name))
        adapter_only = is_peft_model(student) and not args.merge_adapter_on_save
        loader = "peft's AutoPeftModel...from_pretrained" if adapter_only else "transformers' from_pretrained"
        print(f"\nStudent saved to {args.output_dir} (load it with {loader}).")
        write_json(os.path.join(args.output_dir, "distillation_results.json"), results, indent=2)
    return results
