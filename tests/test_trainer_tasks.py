"""DistillationTrainer on every task that has logits: the loss equals a naive reference, the teacher stays frozen
and out of the optimizer and the checkpoints, and evaluation works as with Trainer."""

import glob
import logging
import os

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from safetensors import safe_open
from tiny_models import TASKS, collate, examples
from transformers import TrainingArguments

from hf_distill import DistillationConfig, DistillationTrainer


def _numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


# What these runs set beyond the `training_args` fixture's defaults (they write into tmp_path itself).
RUN = dict(
    per_device_train_batch_size=4,
    per_device_eval_batch_size=4,
    max_steps=2,
    learning_rate=1e-2,
    logging_steps=1,
    save_strategy="steps",
    save_steps=2,
    kd_temperature=2.0,
    ce_weight=0.5,
    kd_weight=0.7,
)


def _forward(model, batch, task):
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if task == "seq2seq":
        inputs["decoder_input_ids"] = model.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
    return model(**inputs)["logits"].double()


def naive_objective(student, teacher, batch, task, temperature, kd_weight, ce_weight):
    """The objective written out directly in float64 from both models' logits."""
    s, t, labels = _forward(student, batch, task), _forward(teacher, batch, task), batch["labels"]
    if task == "causal_lm":
        s, t, labels = s[:, :-1], t[:, :-1], labels[:, 1:]
    valid = labels != -100
    s, t, labels = s[valid], t[valid], labels[valid]
    p_t = torch.softmax(t / temperature, -1)
    kd = (p_t * (torch.log_softmax(t / temperature, -1) - torch.log_softmax(s / temperature, -1))).sum(-1)
    ce = F.cross_entropy(s, labels, reduction="none")
    return (kd_weight * temperature**2 * kd + ce_weight * ce).mean()


@pytest.mark.parametrize("task", list(TASKS))
def test_task_loss_equals_naive_reference_and_teacher_stays_frozen(task, tmp_path, training_args):
    make_student, make_teacher = TASKS[task]
    student, teacher = make_student(), make_teacher()
    rows = examples(task, 8)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=training_args(tmp_path, **RUN),
        train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(rows[:4]),
        data_collator=collate,
    )
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())

    batch = collate(rows[:4])
    student.eval()  # no dropout, so both computations see the same logits
    with torch.no_grad():
        got = trainer.compute_loss(student, batch)
        expected = naive_objective(student, teacher, batch, task, 2.0, 0.7, 0.5)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)

    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in student.state_dict().items()}
    trainer.train()

    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items())
    assert not teacher.training and all(p.grad is None for p in teacher.parameters())
    assert any(not torch.equal(v, student_before[k]) for k, v in student.state_dict().items())
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in student.parameters() if p.requires_grad}
    assert not optimized & {id(p) for p in teacher.parameters()}

    # The checkpoint holds the student's weights and nothing of the teacher's (transformers may rename keys on save,
    # so compare sizes: every saved element is one of the student's).
    checkpoint = os.path.join(tmp_path, "checkpoint-2")
    saved_numel = 0
    for path in glob.glob(os.path.join(checkpoint, "*.safetensors")):
        with safe_open(path, "pt") as f:
            saved_numel += sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())
    student_numel = sum(t.numel() for t in {t.data_ptr(): t for t in student.state_dict().values()}.values())
    assert saved_numel == student_numel

    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logs and all(torch.isfinite(torch.tensor([e["kd_loss"], e["ce_loss"], e["loss"]])).all() for e in logs)

    metrics = trainer.evaluate()
    assert {"eval_loss", "eval_kd_loss", "eval_ce_loss", "eval_agreement"} <= set(metrics)
    assert 0.0 <= metrics["eval_agreement"] <= 1.0


def test_compute_metrics_receives_student_logits_and_labels(tmp_path, training_args):
    make_student, make_teacher = TASKS["sequence_classification"]
    student, teacher = make_student(), make_teacher()
    rows = examples("sequence_classification", 8)
    seen = {}

    def compute_metrics(prediction):
        seen["predictions"], seen["labels"] = prediction.predictions, prediction.label_ids
        return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}

    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=training_args(tmp_path, **RUN),
        eval_dataset=Dataset.from_list(rows),
        data_collator=collate,
        compute_metrics=compute_metrics,
    )
    metrics = trainer.evaluate()
    student.eval()
    with torch.no_grad():
        expected = student(**{k: v for k, v in collate(rows).items() if k != "labels"}).logits
    assert seen["predictions"].shape == (8, 3)
    torch.testing.assert_close(torch.tensor(seen["predictions"]), expected, rtol=1e-5, atol=1e-5)
    assert seen["labels"].tolist() == [r["labels"] for r in rows]
    assert "eval_accuracy" in metrics and "eval_kd_loss" in metrics

    prediction = trainer.predict(Dataset.from_list(rows))
    assert prediction.predictions.shape == (8, 3) and "test_agreement" in prediction.metrics


def test_plain_training_arguments_use_documented_defaults(tmp_path):
    make_student, make_teacher = TASKS["causal_lm"]
    student, teacher = make_student(), make_teacher()
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args)
    assert trainer.kd_objective == DistillationConfig(output_dir=str(tmp_path)).kd_objective()
    assert (trainer.kd_objective.kd_loss, trainer.kd_objective.kd_weight, trainer.kd_objective.ce_weight) == (
        "forward_kl",
        1.0,
        0.0,
    )


def test_distillation_config_changes_no_upstream_default(tmp_path):
    ours, upstream = DistillationConfig(output_dir=str(tmp_path)), TrainingArguments(output_dir=str(tmp_path))
    upstream_fields = upstream.to_dict()
    assert {k: v for k, v in ours.to_dict().items() if k in upstream_fields} == upstream_fields


def test_batches_without_labels_train_on_kd_alone(tmp_path, training_args):
    make_student, make_teacher = TASKS["causal_lm"]
    student, teacher = make_student(), make_teacher()
    rows = [{k: v for k, v in r.items() if k != "labels"} for r in examples("causal_lm", 8)]
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=training_args(tmp_path, **{**RUN, "ce_weight": 0.0, "kd_weight": 1.0, "save_strategy": "no"}),
        train_dataset=Dataset.from_list(rows),
        data_collator=collate,
    )
    batch = collate(rows[:4])
    student.eval()
    with torch.no_grad():
        got = trainer.compute_loss(student, batch)
        s = student(**batch).logits[:, :-1].double()
        t = teacher(**batch).logits[:, :-1].double()
    valid = batch["attention_mask"][:, :-1].bool()  # real tokens only; padding never counts
    kd = (torch.softmax(t / 2, -1) * (torch.log_softmax(t / 2, -1) - torch.log_softmax(s / 2, -1))).sum(-1)
    torch.testing.assert_close(got.double(), 4 * kd[valid].mean(), rtol=1e-5, atol=1e-6)
    trainer.train()
    assert "ce_loss" not in trainer.state.log_history[0] and "kd_loss" in trainer.state.log_history[0]


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_objective_is_logged_once_in_one_line_at_train_start(tmp_path, training_args):
    make_student, make_teacher = TASKS["causal_lm"]
    trainer = DistillationTrainer(
        model=make_student(),
        teacher_model=make_teacher(),
        args=training_args(tmp_path, **{**RUN, "save_strategy": "no"}, kd_loss="jsd", jsd_beta=0.25),
        train_dataset=Dataset.from_list(examples("causal_lm", 8)),
        data_collator=collate,
    )
    collect = _Collect()
    logging.getLogger("hf_distill").addHandler(collect)
    try:
        trainer.train()
    finally:
        logging.getLogger("hf_distill").removeHandler(collect)
    lines = [message for message in collect.messages if "loss = " in message]
    assert lines == [
        "distilling LlamaForCausalLM (0.09M parameters) into LlamaForCausalLM (0.02M parameters, 0.02M trainable); "
        "loss = 0.7·[4 (T²) · jsd at T=2, beta=0.25] + 0.5·CE(labels), averaged over valid tokens of each "
        "optimizer step"
    ]
