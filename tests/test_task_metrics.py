"""The `evaluate`-module task metrics: equal to naive references, the same numbers for teacher and student through
`compare_with_teacher`, and clear errors for inputs they cannot score."""

import math

import numpy as np
import pytest
import torch
from datasets import Dataset
from tiny_models import llama
from transformers import EvalPrediction, Trainer, TrainingArguments

from hf_distill import DistillationConfig, DistillationTrainer
from hf_distill.task_metrics import accuracy_metrics, label_log_probs, perplexity_metrics

VOCAB = 64


def _naive_accuracy(logits, labels):
    hits = total = 0
    for row_logits, label in zip(np.reshape(logits, (-1, logits.shape[-1])), np.reshape(labels, -1)):
        if label != -100:
            hits += int(max(range(len(row_logits)), key=lambda i: row_logits[i]) == label)
            total += 1
    return hits / total


ACCURACY_CASES = {
    "per example": ((50, 3), (50,)),
    "per token, some -100": ((6, 9, 5), (6, 9)),
}


@pytest.mark.parametrize("logit_shape,label_shape", ACCURACY_CASES.values(), ids=ACCURACY_CASES)
def test_accuracy_equals_a_naive_count(logit_shape, label_shape):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=logit_shape).astype(np.float32)
    labels = rng.integers(0, logit_shape[-1], size=label_shape)
    if len(label_shape) == 2:
        labels[rng.random(label_shape) < 0.3] = -100
    expected = _naive_accuracy(logits, labels)
    assert accuracy_metrics(EvalPrediction(predictions=logits, label_ids=labels)) == {"accuracy": expected}
    # Extra model outputs after the logits are ignored.
    extra = (logits, np.zeros((logit_shape[0], 2)))
    assert accuracy_metrics(EvalPrediction(predictions=extra, label_ids=labels))["accuracy"] == expected


def _ragged_rows(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in lengths]
    labels = [list(r) for r in rows]
    labels[0][3:5] = [-100, -100]  # positions without a loss inside a row
    return Dataset.from_dict({"input_ids": rows, "labels": labels})


def _pad(features):
    width = max(len(f["input_ids"]) for f in features)
    batch = {"input_ids": [], "attention_mask": [], "labels": []}
    for f in features:
        gap = width - len(f["input_ids"])
        batch["input_ids"].append(f["input_ids"] + [0] * gap)
        batch["attention_mask"].append([1] * len(f["input_ids"]) + [0] * gap)
        batch["labels"].append(f["labels"] + [-100] * gap)
    return {k: torch.tensor(v) for k, v in batch.items()}


def _naive_perplexity(model, dataset):
    # One unpadded row at a time, token-weighted over every labelled next token.
    total, count = 0.0, 0
    with torch.no_grad():
        for row in dataset:
            ids, labels = torch.tensor([row["input_ids"]]), torch.tensor(row["labels"])
            logits = model(input_ids=ids).logits[0, :-1].double()
            keep = labels[1:] != -100
            total += torch.nn.functional.cross_entropy(logits[keep], labels[1:][keep], reduction="sum").item()
            count += int(keep.sum())
    return math.exp(total / count)


def _eval_args(tmp_path, cls=TrainingArguments, **extra):
    return cls(
        output_dir=str(tmp_path), per_device_eval_batch_size=2, per_device_train_batch_size=2, report_to=[],
        use_cpu=True, disable_tqdm=True, save_strategy="no", **extra,
    )  # fmt: skip


def test_perplexity_from_label_log_probs_equals_a_row_by_row_reference(tmp_path):
    model = llama(32, 1, vocab=VOCAB).eval()
    dataset = _ragged_rows([7, 12, 5, 9, 11])  # batches padded to different widths, then padded again to gather
    trainer = Trainer(
        model=model, args=_eval_args(tmp_path), eval_dataset=dataset, data_collator=_pad,
        compute_metrics=perplexity_metrics, preprocess_logits_for_metrics=label_log_probs,
    )  # fmt: skip
    metrics = trainer.evaluate()
    assert metrics["eval_perplexity"] == pytest.approx(_naive_perplexity(model, dataset), rel=1e-5)


def test_compare_with_teacher_reports_the_evaluate_perplexity_of_both_models(tmp_path):
    teacher, student = llama(32, 2, vocab=VOCAB), llama(32, 1, vocab=VOCAB)
    evaluation = _ragged_rows([8, 6, 10], seed=1)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=_eval_args(tmp_path, DistillationConfig, max_steps=2,
        preflight="off"), train_dataset=_ragged_rows([8] * 4), eval_dataset=evaluation, data_collator=_pad,
        compute_metrics=perplexity_metrics, preprocess_logits_for_metrics=label_log_probs,
    )  # fmt: skip
    trainer.train()
    calls = []
    hook = teacher.register_forward_hook(lambda *_: calls.append(1))
    metric = trainer.compare_with_teacher()["metric"]
    hook.remove()
    # 2 batches: the teacher's targets for the student's, then its own scoring, which is not run a second time.
    assert len(calls) == 2 + 2
    assert metric["name"] == "perplexity" and metric["higher_is_better"] is False
    assert metric["teacher"] == pytest.approx(_naive_perplexity(teacher, evaluation), rel=1e-5)
    assert metric["student"] == pytest.approx(_naive_perplexity(trainer.model, evaluation), rel=1e-5)


def test_perplexity_without_label_log_probs_says_what_to_pass():
    logits = np.zeros((2, 4, VOCAB), dtype=np.float32)
    with pytest.raises(ValueError, match="preprocess_logits_for_metrics=label_log_probs"):
        perplexity_metrics(EvalPrediction(predictions=logits, label_ids=np.zeros((2, 4), dtype=np.int64)))


def test_metrics_refuse_an_evaluation_set_without_labels():
    unlabelled = np.full((2, 4), -100)
    with pytest.raises(ValueError, match="every label in the evaluation set is -100"):
        perplexity_metrics(EvalPrediction(predictions=np.zeros((2, 4)), label_ids=unlabelled))
    with pytest.raises(ValueError, match="at least one reference"):
        accuracy_metrics(EvalPrediction(predictions=np.zeros((2, 4, 3)), label_ids=unlabelled))
