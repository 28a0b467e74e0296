"""`eval_loss` keeps its `Trainer` meaning: with labels it is the student's own label loss, equal to what plain
`Trainer` reports for the same student and data (so `exp(eval_loss)` is the perplexity); the distillation objective is
`eval_distillation_loss`. Without labels `eval_loss` is the objective. Same for `predict()` (`test_` prefix)."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from tiny_models import TASKS, collate, examples
from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, Trainer, TrainingArguments

from hf_distill import DistillationConfig, DistillationTrainer, Seq2SeqDistillationConfig, Seq2SeqDistillationTrainer

_COMMON = dict(per_device_eval_batch_size=3, report_to=[], use_cpu=True, disable_tqdm=True, save_strategy="no")


def _pair(task):
    make_student, make_teacher = TASKS[task]
    torch.manual_seed(0)
    return make_student(), make_teacher()


def _distiller(tmp_path, student, teacher, eval_rows, cls=DistillationTrainer, config=DistillationConfig, **args):
    args = config(output_dir=str(tmp_path / "distil"), kd_temperature=2.0, kd_weight=0.7, ce_weight=0.5,
                  **{**_COMMON, **args})  # fmt: skip
    return cls(model=student, teacher_model=teacher, args=args, eval_dataset=Dataset.from_list(eval_rows))


def _plain(tmp_path, student, eval_rows, cls=Trainer, arguments=TrainingArguments, **args):
    args = arguments(output_dir=str(tmp_path / "plain"), **{**_COMMON, **args})
    return cls(model=copy.deepcopy(student), args=args, eval_dataset=Dataset.from_list(eval_rows))


def _naive_objective(student, teacher, rows, task, kd_weight=0.7, ce_weight=0.5, temperature=2.0):
    """The objective's mean over every valid position of the set, in float64 from both models' logits."""
    batch = collate(rows)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if task == "seq2seq":
        inputs["decoder_input_ids"] = student.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
    with torch.no_grad():
        s, t = student(**inputs).logits.double(), teacher(**inputs).logits.double()
    labels = batch["labels"]
    if task == "causal_lm":
        s, t, labels = s[:, :-1], t[:, :-1], labels[:, 1:]
    valid = labels != -100
    s, t, labels = s[valid], t[valid], labels[valid]
    kd = F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1), log_target=True,
                  reduction="none").sum(-1) * temperature**2  # fmt: skip
    ce = F.cross_entropy(s, labels, reduction="none")
    return (kd_weight * kd + ce_weight * ce).mean().item()


@pytest.mark.parametrize("task", ["causal_lm", "sequence_classification", "token_classification", "seq2seq"])
@pytest.mark.parametrize("chunk", [None, 0])
def test_eval_loss_equals_plain_trainer_on_ragged_batches(tmp_path, task, chunk):
    """7 examples in batches of 3, 3, 1: `Trainer` weights each batch's mean by its size; so must we."""
    student, teacher = _pair(task)
    rows = examples(task, 7, seed=3)
    distiller = _distiller(tmp_path, student, teacher, rows, kd_chunk_size=chunk)
    metrics = distiller.evaluate()
    expected = _plain(tmp_path, student, rows).evaluate()["eval_loss"]
    assert metrics["eval_loss"] == pytest.approx(expected, rel=1e-6, abs=1e-7)
    assert math.exp(metrics["eval_loss"]) == pytest.approx(math.exp(expected), rel=1e-6)  # run_clm's perplexity
    # The objective is reported under its own key, averaged over every valid position of the set.
    assert metrics["eval_distillation_loss"] == pytest.approx(_naive_objective(student, teacher, rows, task), rel=1e-5)
    assert metrics["eval_distillation_loss"] == pytest.approx(
        0.7 * metrics["eval_kd_loss"] + 0.5 * metrics["eval_ce_loss"], rel=1e-6
    )
    assert abs(metrics["eval_distillation_loss"] - metrics["eval_loss"]) > 1e-3  # two different quantities


def test_eval_loss_on_the_logits_path_with_compute_metrics(tmp_path):
    """compute_metrics asks for the logits, so the logits path runs: the label loss is the same."""
    student, teacher = _pair("causal_lm")
    rows = examples("causal_lm", 7, seed=4)
    distiller = _distiller(tmp_path, student, teacher, rows)
    distiller.compute_metrics = lambda prediction: {"seen": float(prediction.predictions.shape[0])}
    metrics = distiller.evaluate()
    assert metrics["eval_seen"] == 7.0
    assert metrics["eval_loss"] == pytest.approx(_plain(tmp_path, student, rows).evaluate()["eval_loss"], rel=1e-6)


def test_predict_reports_test_loss_like_trainer(tmp_path):
    student, teacher = _pair("sequence_classification")
    rows = examples("sequence_classification", 5, seed=5)
    output = _distiller(tmp_path, student, teacher, rows).predict(Dataset.from_list(rows))
    expected = _plain(tmp_path, student, rows).predict(Dataset.from_list(rows)).metrics["test_loss"]
    assert output.metrics["test_loss"] == pytest.approx(expected, rel=1e-6)
    assert {"test_distillation_loss", "test_kd_loss", "test_ce_loss", "test_agreement"} <= set(output.metrics)
    assert output.predictions.shape == (5, 3)


def test_without_labels_eval_loss_is_the_objective(tmp_path):
    student, teacher = _pair("causal_lm")
    rows = [{k: v for k, v in row.items() if k != "labels"} for row in examples("causal_lm", 7, seed=6)]
    distiller = _distiller(tmp_path, student, teacher, rows)
    metrics = distiller.evaluate()
    assert "eval_ce_loss" not in metrics  # no labels, no CE
    assert metrics["eval_loss"] == metrics["eval_distillation_loss"]
    assert metrics["eval_loss"] == pytest.approx(0.7 * metrics["eval_kd_loss"], rel=1e-6)
    test = distiller.predict(Dataset.from_list(rows)).metrics
    # predict() keeps the logits (the logits path), evaluate() did not (the chunked path): equal up to rounding.
    assert test["test_loss"] == test["test_distillation_loss"] == pytest.approx(metrics["eval_loss"], rel=1e-5)


def test_eval_loss_with_label_smoothing_equals_plain_trainer(tmp_path):
    student, teacher = _pair("causal_lm")
    rows = examples("causal_lm", 7, seed=7)
    distiller = _distiller(tmp_path, student, teacher, rows, label_smoothing_factor=0.1)
    expected = _plain(tmp_path, student, rows, label_smoothing_factor=0.1).evaluate()["eval_loss"]
    unsmoothed = _plain(tmp_path, student, rows).evaluate()["eval_loss"]
    assert distiller.evaluate()["eval_loss"] == pytest.approx(expected, rel=1e-6)
    assert abs(expected - unsmoothed) > 1e-3


def test_seq2seq_trainer_eval_loss_matches_seq2seq_trainer(tmp_path):
    """`Seq2SeqTrainer.evaluate` gathers losses without dropping the last batch's repeats; the swap keeps that."""
    student, teacher = _pair("seq2seq")
    rows = examples("seq2seq", 7, seed=8)
    distiller = _distiller(
        tmp_path, student, teacher, rows, cls=Seq2SeqDistillationTrainer, config=Seq2SeqDistillationConfig
    )
    plain = _plain(tmp_path, student, rows, cls=Seq2SeqTrainer, arguments=Seq2SeqTrainingArguments)
    assert distiller.evaluate()["eval_loss"] == pytest.approx(plain.evaluate()["eval_loss"], rel=1e-6)


@pytest.mark.parametrize("metric", ["eval_loss", "eval_distillation_loss"])
def test_metric_for_best_model_with_either_loss(tmp_path, metric):
    student, teacher = _pair("causal_lm")
    train = Dataset.from_list(examples("causal_lm", 8, seed=9))
    settings = dict(
        output_dir=str(tmp_path / "best"), kd_weight=0.7, ce_weight=0.5, per_device_train_batch_size=4, max_steps=3,
        learning_rate=0.5, optim="sgd", eval_strategy="steps", eval_steps=1, save_steps=1,
        load_best_model_at_end=True, metric_for_best_model=metric,
        greater_is_better=True,  # the losses fall step by step, so the "best" is the first checkpoint, not the last
    )  # fmt: skip
    args = DistillationConfig(**{**_COMMON, "save_strategy": "steps", **settings})
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=train, eval_dataset=train
    )
    trainer.train()
    evals = [e for e in trainer.state.log_history if metric in e]
    assert len(evals) == 3
    best = max(evals, key=lambda e: e[metric])
    assert best["step"] == 1 and evals[-1][metric] < best[metric]
    assert trainer.state.best_metric == best[metric]
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-1")
    # The best checkpoint's weights were loaded: evaluating again gives the best value.
    assert trainer.evaluate()[metric] == pytest.approx(best[metric], rel=1e-5)
