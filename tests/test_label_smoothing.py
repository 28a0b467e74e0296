"""`label_smoothing_factor` smooths the CE term exactly as `Trainer`'s `LabelSmoother` does: on the logits path and on
the chunked (memory-efficient) path, in training and in `eval_loss`."""

import copy

import pytest
import torch
from datasets import Dataset
from tiny_models import PARITY_ARGS, TASKS, examples
from torch import nn
from transformers import Trainer, TrainingArguments
from transformers.trainer_pt_utils import LabelSmoother

from hf_distill import DistillationConfig, DistillationTrainer
from hf_distill.losses import KDObjective, Positions, objective_sums
from hf_distill.losses.chunked import HeadInput, LinearHead, chunked_objective_sums
from hf_distill.losses.objective import smoothed_cross_entropy_sum

EPS = 0.1


def _no_dropout(model):
    # Both runs must consume the same random numbers; the teacher's extra forward must not shift the student's.
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model


def _runs(tmp_path, task, **distillation):
    make_student, make_teacher = TASKS[task]
    torch.manual_seed(0)
    student, teacher = _no_dropout(make_student()), make_teacher()
    rows = examples(task, 8, seed=1)
    common = {**PARITY_ARGS, "per_device_train_batch_size": 4, "use_cpu": True, "label_smoothing_factor": EPS}
    plain = Trainer(
        model=copy.deepcopy(student),
        args=TrainingArguments(output_dir=str(tmp_path / "plain"), **common),
        train_dataset=Dataset.from_list(rows),
    )
    args = DistillationConfig(
        output_dir=str(tmp_path / "distil"), kd_weight=0.0, ce_weight=1.0, **common, **distillation
    )
    distil = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=Dataset.from_list(rows)
    )
    return plain, distil


@pytest.mark.parametrize(
    "task, chunk",
    [("causal_lm", 0), ("causal_lm", 5), ("sequence_classification", None), ("token_classification", None)],
)
def test_two_sgd_steps_equal_plain_trainer_with_label_smoothing(tmp_path, task, chunk):
    plain, distil = _runs(tmp_path, task, kd_chunk_size=chunk)
    plain.train()
    distil.train()
    if task == "causal_lm":
        assert distil.kd_chunk_size == (chunk or 0)
        assert distil._heads_verified is (True if chunk else None)  # the chunked path really ran
    expected = [e["loss"] for e in plain.state.log_history if "loss" in e]
    got = [e["loss"] for e in distil.state.log_history if "loss" in e]
    assert len(got) == 2 and got == pytest.approx(expected, rel=1e-5)
    assert [e["ce_loss"] for e in distil.state.log_history if "loss" in e] == pytest.approx(expected, rel=1e-5)
    for (name, a), b in zip(plain.model.named_parameters(), distil.model.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("task", ["sequence_classification", "seq2seq"])
def test_eval_loss_with_label_smoothing_equals_plain_trainer(tmp_path, task):
    plain, distil = _runs(tmp_path, task)
    rows = examples(task, 7, seed=2)
    if task == "seq2seq":  # Trainer's label smoother takes the labels away: the batch brings its decoder inputs,
        # as DataCollatorForSeq2Seq(model=...) makes them
        shift = plain.model.prepare_decoder_input_ids_from_labels
        rows = [{**row, "decoder_input_ids": shift(labels=torch.tensor([row["labels"]]))[0].tolist()} for row in rows]
    rows = Dataset.from_list(rows)
    plain.args.per_device_eval_batch_size = distil.args.per_device_eval_batch_size = 3
    assert distil.evaluate(rows)["eval_loss"] == pytest.approx(plain.evaluate(rows)["eval_loss"], rel=1e-6)


@pytest.mark.parametrize("shift", [True, False])
def test_smoothed_ce_equals_label_smoother(shift):
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 11)
    labels = torch.randint(0, 11, (3, 7))
    labels[0, 2:] = -100
    labels[2, 0] = -100
    expected = LabelSmoother(epsilon=EPS)({"logits": logits}, labels, shift_labels=shift)
    rows, targets = (logits[:, :-1], labels[:, 1:]) if shift else (logits, labels)
    valid = targets != -100
    got = smoothed_cross_entropy_sum(rows[valid], targets[valid], EPS) / valid.sum()
    torch.testing.assert_close(got, expected)
    positions = Positions(labels, shift_labels=shift)
    sums = objective_sums(KDObjective(ce_weight=1.0, label_smoothing_factor=EPS), logits, logits, positions)
    torch.testing.assert_close(sums.ce / sums.num_targets, expected)
    plain = objective_sums(KDObjective(ce_weight=1.0), logits, logits, positions)
    assert abs((plain.ce / plain.num_targets - expected).item()) > 1e-2  # the smoothing is not a no-op here


@pytest.mark.parametrize("temperature, shared", [(1.0, None), (2.0, None), (1.0, 9)])
def test_chunked_smoothed_objective_and_gradient_equal_the_logits_path(temperature, shared):
    """Odd sizes, a chunk that does not divide the positions, and a student head wider than the shared vocabulary."""
    torch.manual_seed(0)
    objective = KDObjective(kd_weight=0.7, ce_weight=0.5, kd_temperature=temperature, label_smoothing_factor=EPS)
    hidden_s = torch.randn(3, 7, 5, dtype=torch.float64).float().requires_grad_()
    hidden_t = torch.randn(3, 7, 6)
    weight_s = torch.randn(11, 5, requires_grad=True)
    weight_t = torch.randn(shared or 11, 6)
    labels = torch.randint(0, shared or 11, (3, 7))
    labels[1, 3:] = -100
    positions = Positions(labels, shift_labels=True)
    reference = objective_sums(objective, hidden_s @ weight_s.t(), hidden_t @ weight_t.t(), positions, shared)
    ref_grads = torch.autograd.grad(reference.total, (hidden_s, weight_s))
    student, teacher = HeadInput(hidden_s, LinearHead(weight_s)), HeadInput(hidden_t, LinearHead(weight_t))
    chunked = chunked_objective_sums(objective, student, teacher, positions, 4, shared)
    grads = torch.autograd.grad(chunked.total, (hidden_s, weight_s))
    torch.testing.assert_close(chunked.ce, reference.ce)
    torch.testing.assert_close(chunked.total, reference.total)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("value", [1.0, -0.1, 1.5])
def test_label_smoothing_out_of_range_is_refused(tmp_path, value):
    with pytest.raises(ValueError, match=rf"label_smoothing_factor={value} must lie in \[0, 1\)"):
        DistillationConfig(output_dir=str(tmp_path), label_smoothing_factor=value)
