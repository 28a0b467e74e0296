"""NaN/inf stop training before the optimizer step, naming the model that produced them and the step: a teacher
that is NaN from the first batch or turns NaN later, on the logits path, the memory-efficient path and a classifier;
a student that produces inf. The student's weights stay finite (and untouched by the failing step)."""

import pytest
import torch
from datasets import Dataset
from tiny_models import bert_sequence, collate, examples, llama

from hf_distill import DistillationConfig, DistillationTrainer
from hf_distill.training.finite import NonFiniteLossError


def _poison(module, trainer_ref, from_step, value):
    """From optimizer step `from_step` on (trainer.state.global_step), `module`'s output is filled with `value`."""

    def hook(_module, _inputs, output):
        trainer = trainer_ref[0]
        if trainer is None or trainer.state.global_step < from_step:
            return output
        tensor = output[0] if isinstance(output, tuple) else output
        poisoned = torch.full_like(tensor, value)
        return (poisoned, *output[1:]) if isinstance(output, tuple) else poisoned

    return module.register_forward_hook(hook)


def _train(tmp_path, student, teacher, task, chunk=0, **kw):
    args = DistillationConfig(
        output_dir=str(tmp_path),
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        max_steps=6,
        optim="sgd",
        learning_rate=0.5,
        logging_steps=1,
        save_strategy="no",
        per_device_train_batch_size=2,
        kd_chunk_size=chunk,
        ce_weight=0.5,
        **kw,
    )
    return DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=Dataset.from_list(examples(task, 16)),
        data_collator=collate,
    )


def _snapshot(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _assert_stopped(trainer, student, before, source, step):
    # `step` optimizer steps completed; the one that failed is step + 1 (counted from 1).
    expected = rf"Non-finite loss at optimizer step {step + 1} \(trainer.state.global_step was {step}\)"
    with pytest.raises(NonFiniteLossError, match=expected) as info:
        trainer.train()
    assert info.value.source == source and info.value.step == step + 1 and info.value.global_step == step
    assert trainer.state.global_step == step
    assert source.split()[0] in str(info.value)
    after = dict(student.named_parameters())
    assert all(torch.isfinite(p).all() for p in after.values())  # no NaN reached the student
    changed = [name for name, p in after.items() if not torch.equal(p.detach(), before[name])]
    if step == 0:
        assert changed == []  # the failing step never ran the optimizer
    else:
        assert changed  # earlier, finite steps did train


@pytest.mark.parametrize("chunk", [0, 4], ids=["logits_path", "chunked_path"])
@pytest.mark.parametrize("from_step", [0, 3])
def test_nan_teacher_stops_causal_lm_training(tmp_path, chunk, from_step):
    torch.manual_seed(0)
    student, teacher = llama(32, 1), llama(64, 2)
    trainer_ref = [None]
    _poison(teacher.model.norm, trainer_ref, from_step, float("nan"))  # the head's input: both paths see it
    trainer = _train(tmp_path, student, teacher, "causal_lm", chunk=chunk)
    trainer_ref[0] = trainer
    assert trainer.kd_chunk_size == chunk
    before = _snapshot(student)
    _assert_stopped(trainer, student, before, "teacher", from_step)
    if chunk:
        assert trainer._heads_verified is True  # the first-batch head check did not trip over the NaN teacher


def test_inf_teacher_logits_stop_training_and_the_head_check_does_not_crash(tmp_path):
    torch.manual_seed(0)
    student, teacher = llama(32, 1), llama(64, 2)

    def logits_hook(_module, _inputs, output):  # the logits themselves: the head's projection cannot reproduce them
        output["logits"] = torch.full_like(output["logits"], float("inf"))
        return output

    teacher.register_forward_hook(logits_hook)
    trainer = _train(tmp_path, student, teacher, "causal_lm", chunk=4)
    before = _snapshot(student)
    _assert_stopped(trainer, student, before, "teacher", 0)
    assert trainer._heads_verified is False  # fell back to the logits path, where the inf is seen


@pytest.mark.parametrize("from_step", [0, 3])
def test_nan_classifier_teacher_stops_training(tmp_path, from_step):
    torch.manual_seed(0)
    student, teacher = bert_sequence(32, 1), bert_sequence(48, 2)
    trainer_ref = [None]
    _poison(teacher.classifier, trainer_ref, from_step, float("nan"))
    trainer = _train(tmp_path, student, teacher, "sequence_classification")
    trainer_ref[0] = trainer
    _assert_stopped(trainer, student, _snapshot(student), "teacher", from_step)


@pytest.mark.parametrize("chunk", [0, 4], ids=["logits_path", "chunked_path"])
def test_inf_student_stops_training(tmp_path, chunk):
    torch.manual_seed(0)
    student, teacher = llama(32, 1), llama(64, 2)
    trainer_ref = [None]
    _poison(student.model.norm, trainer_ref, 2, float("inf"))
    trainer = _train(tmp_path, student, teacher, "causal_lm", chunk=chunk)
    trainer_ref[0] = trainer
    _assert_stopped(trainer, student, _snapshot(student), "student", 2)


def test_gradient_accumulation_stops_at_the_step_whose_micro_batch_failed(tmp_path):
    torch.manual_seed(0)
    student, teacher = llama(32, 1), llama(64, 2)
    calls = {"n": 0}

    def hook(_module, _inputs, output):
        calls["n"] += 1
        if calls["n"] == 6:  # the 2nd micro-batch of the 3rd optimizer step (GA=2)
            output["logits"] = torch.full_like(output["logits"], float("nan"))
        return output

    teacher.register_forward_hook(hook)
    trainer = _train(tmp_path, student, teacher, "causal_lm", gradient_accumulation_steps=2)
    _assert_stopped(trainer, student, _snapshot(student), "teacher", 2)


def test_finite_training_is_not_stopped(tmp_path):
    torch.manual_seed(0)
    student, teacher = llama(32, 1), llama(64, 2)
    trainer = _train(tmp_path, student, teacher, "causal_lm", chunk=4)
    trainer.train()
    assert trainer.state.global_step == 6
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 6 and all(0 < loss < 100 for loss in losses)


@pytest.mark.slow
def test_overhead_benchmark_runs_and_prints_both_paths_side_by_side():
    import os
    import subprocess
    import sys

    script = os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "bench_nonfinite_check.py"
    )
    result = subprocess.run(
        [sys.executable, script, "--steps", "10", "--vocab", "128", "--seq-len", "16"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {
        line.split("|")[1].strip(): line
        for line in result.stdout.splitlines()
        if line.startswith("| logits") or line.startswith("| chunked")
    }
    assert set(rows) == {"logits", "chunked"}
    for row in rows.values():
        with_check, without, ratio = (float(cell) for cell in row.strip(" |").split("|")[1:])
        assert ratio == pytest.approx(with_check / without, rel=0.01)


class _OneProcess:
    distributed_type = "NO"
    num_processes = 1


def _sums(total=1.0, kd=1.0, ce=1.0):
    from hf_distill.losses import ObjectiveSums

    return ObjectiveSums(
        total=torch.tensor(total),
        kd=torch.tensor(kd),
        ce=torch.tensor(ce),
        num_targets=torch.tensor(4),
        agreement=torch.tensor(0),
    )


@pytest.mark.parametrize(
    ("sums", "teacher", "student", "source"),
    [
        (_sums(total=float("nan"), kd=float("nan")), float("nan"), 0.0, "teacher"),
        (_sums(total=float("nan"), kd=float("nan")), 0.0, float("inf"), "student"),
        (_sums(total=float("inf"), kd=float("inf")), 0.0, 0.0, "KD term"),
        (_sums(total=float("nan"), ce=float("nan")), 0.0, 0.0, "CE term"),
        (_sums(total=float("inf")), 0.0, 0.0, "loss"),
    ],
    ids=["teacher", "student", "kd_term", "ce_term", "total"],
)
def test_the_error_names_what_produced_the_non_finite_value(sums, teacher, student, source):
    from hf_distill.training.finite import FiniteCheck

    check = FiniteCheck(_OneProcess(), torch.nn.Linear(2, 2))
    model = torch.nn.Linear(1, 1).train()
    check.observe(model, _sums(), torch.zeros(2, 3), torch.zeros(2, 3))  # a finite micro-batch first (GA window)
    check.observe(model, sums, torch.full((2, 3), teacher), torch.full((2, 3), student))
    with pytest.raises(NonFiniteLossError, match=r"at optimizer step 8 \(trainer.state.global_step was 7\)") as info:
        check.check(7)
    assert info.value.source == source
    check.check(8)  # the flags were consumed: the next step starts clean


def test_nan_only_where_no_loss_term_reads_does_not_stop_training():
    from hf_distill.training.finite import FiniteCheck

    check = FiniteCheck(_OneProcess())
    model = torch.nn.Linear(1, 1).train()
    check.observe(model, _sums(), torch.full((2, 3), float("nan")), None)  # e.g. NaN in padding rows only
    check.check(0)
    check.observe(model.eval(), _sums(total=float("nan")))  # evaluation batches are not watched
    check.check(1)


def test_an_fp16_overflowing_teacher_on_the_chunked_path_is_blamed_on_the_teacher(tmp_path):
    # The memory-efficient path never builds the teacher's logits: its fp16 head overflows only inside the KD term.
    torch.manual_seed(0)
    student, teacher = llama(32, 1), llama(64, 2)
    with torch.no_grad():
        teacher.lm_head.weight.mul_(3e5)
    trainer = _train(tmp_path, student, teacher, "causal_lm", chunk=4, teacher_dtype="float16")
    assert trainer.kd_chunk_size == 4
    with pytest.raises(NonFiniteLossError, match="the teacher produced NaN/inf") as info:
        trainer.train()
    assert info.value.source == "teacher" and trainer._heads_verified is True
    assert trainer._finite_check._teacher_hidden is None  # the reference is dropped once diagnosed


@pytest.mark.parametrize("chunk", [0, 4])
def test_a_nan_teacher_during_evaluate_logs_one_warning_naming_the_teacher(tmp_path, chunk, caplog):
    import logging

    torch.manual_seed(0)
    student, teacher = llama(32, 1), llama(64, 2)
    from types import SimpleNamespace

    always = [SimpleNamespace(state=SimpleNamespace(global_step=0))]
    _poison(teacher.model.norm, always, 0, float("nan"))
    trainer = _train(tmp_path, student, teacher, "causal_lm", chunk=chunk)
    with caplog.at_level(logging.WARNING, logger="hf_distill"):
        metrics = trainer.evaluate(Dataset.from_list(examples("causal_lm", 6)))
    assert metrics["eval_kd_loss"] != metrics["eval_kd_loss"]  # nan, reported as it is
    warnings = [r.getMessage() for r in caplog.records if "NaN/inf" in r.getMessage()]
    assert len(warnings) == 1 and "the teacher produced NaN/inf" in warnings[0] and "eval" in warnings[0]


def test_a_finite_evaluate_logs_no_warning(tmp_path, caplog):
    import logging

    torch.manual_seed(0)
    trainer = _train(tmp_path, llama(32, 1), llama(64, 2), "causal_lm")
    with caplog.at_level(logging.WARNING, logger="hf_distill"):
        trainer.evaluate(Dataset.from_list(examples("causal_lm", 6)))
    assert not [r for r in caplog.records if "NaN/inf" in r.getMessage()]
