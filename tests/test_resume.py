"""`train(resume_from_checkpoint=True)` resumes from the newest *complete* checkpoint, naming each incomplete one it
skips, instead of crashing on (or silently half-loading) a checkpoint a killed run left behind."""

import logging
import os
import shutil

import pytest
import torch
from datasets import Dataset
from tiny_models import llama
from transformers import TrainerCallback

from hf_distill import DistillationConfig, DistillationTrainer
from hf_distill.training.checkpoints import checkpoint_problem


class _Steps(TrainerCallback):
    def __init__(self):
        self.steps = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _trainer(output_dir, **kwargs):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 90, (8, 8), generator=g).tolist()
    args = DistillationConfig(
        output_dir=str(output_dir),
        max_steps=4,
        save_strategy="steps",
        save_steps=2,
        per_device_train_batch_size=2,
        logging_steps=1,
        learning_rate=1e-2,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        preflight="off",
        **kwargs,
    )
    steps = _Steps()
    trainer = DistillationTrainer(
        model=llama(32, 1),
        teacher_model=llama(32, 2),
        args=args,
        train_dataset=Dataset.from_dict({"input_ids": ids, "labels": ids}),
        callbacks=[steps],
    )
    return trainer, steps


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "out"
    trainer, _ = _trainer(out)
    trainer.train()
    assert sorted(os.listdir(out)) == ["checkpoint-2", "checkpoint-4"]
    return out


def _truncate(path, keep=0.5):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * keep)])


CORRUPTIONS = {
    "state missing": (lambda c: os.remove(c / "trainer_state.json"), "trainer_state.json is missing"),
    "state truncated": (lambda c: _truncate(c / "trainer_state.json"), "trainer_state.json is truncated or not JSON"),
    "weights missing": (
        lambda c: os.remove(c / "model.safetensors"),
        "no model weights (model.safetensors, adapter_model.safetensors, ...)",
    ),
    "weights truncated": (lambda c: _truncate(c / "model.safetensors", 0.9), "model.safetensors is truncated"),
    "optimizer missing": (lambda c: os.remove(c / "optimizer.pt"), "optimizer.pt is missing"),
    "optimizer truncated": (lambda c: _truncate(c / "optimizer.pt", 0.9), "optimizer.pt is truncated"),
}


@pytest.mark.slow
@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_an_incomplete_newest_checkpoint_is_skipped_with_a_warning(trained, tmp_path, corruption):
    out = tmp_path / "out"
    shutil.copytree(trained, out)
    corrupt, why = CORRUPTIONS[corruption]
    corrupt(out / "checkpoint-4")
    assert checkpoint_problem(str(out / "checkpoint-4")) == why

    trainer, steps = _trainer(out)
    records, root = _Records(), logging.getLogger("hf_distill")
    root.addHandler(records)
    try:
        trainer.train(resume_from_checkpoint=True)
    finally:
        root.removeHandler(records)
    assert steps.steps == [3, 4]  # resumed after step 2: only steps 3 and 4 ran
    assert [e["step"] for e in trainer.state.log_history if "loss" in e] == [1, 2, 3, 4]
    assert [m for m in records.messages if m.startswith("Not resuming from")] == [
        f"Not resuming from {out / 'checkpoint-4'}: it is incomplete ({why}); resuming from {out / 'checkpoint-2'} "
        "instead."
    ]


def test_a_complete_newest_checkpoint_is_used_as_trainer_would(trained, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(trained, out)
    assert checkpoint_problem(str(out / "checkpoint-4")) is None
    trainer, steps = _trainer(out)
    trainer.train(True)  # positional, as Trainer.train accepts it
    assert steps.steps == [] and trainer.state.global_step == 4


def test_no_complete_checkpoint_is_a_clear_error(trained, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(trained, out)
    os.remove(out / "checkpoint-4" / "optimizer.pt")
    _truncate(out / "checkpoint-2" / "trainer_state.json")
    trainer, _ = _trainer(out)
    with pytest.raises(ValueError, match="no checkpoint in .* is complete: .*checkpoint-4: optimizer.pt is missing; "):
        trainer.train(resume_from_checkpoint=True)


def test_save_only_model_checkpoints_need_no_optimizer(trained, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(trained, out)
    for name in ("checkpoint-2", "checkpoint-4"):
        os.remove(out / name / "optimizer.pt")
    assert checkpoint_problem(str(out / "checkpoint-4"), optimizer_expected=False) is None


def _train_with_records(trainer, resume):
    records, root = _Records(), logging.getLogger("hf_distill")
    root.addHandler(records)
    try:
        trainer.train(resume_from_checkpoint=resume)
    finally:
        root.removeHandler(records)
    return [m for m in records.messages if m.startswith("Not resuming from")]


@pytest.mark.parametrize("corruption", ["state missing", "weights truncated", "optimizer missing"])
def test_a_scripts_get_last_checkpoint_path_resumes_from_the_newest_complete(trained, tmp_path, corruption):
    from transformers.trainer_utils import get_last_checkpoint

    out = tmp_path / "out"
    shutil.copytree(trained, out)
    corrupt, why = CORRUPTIONS[corruption]
    corrupt(out / "checkpoint-4")
    trainer, steps = _trainer(out)
    skipped = _train_with_records(trainer, get_last_checkpoint(str(out)))  # what run_clm-shaped scripts pass
    assert steps.steps == [3, 4]
    assert skipped == [
        f"Not resuming from {out / 'checkpoint-4'}: it is incomplete ({why}); resuming from {out / 'checkpoint-2'} "
        "instead."
    ]


@pytest.mark.parametrize("flag", ["True", "true"])
def test_the_string_true_from_the_command_line_means_true(trained, tmp_path, flag, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(trained, out)
    _truncate(out / "checkpoint-4" / "trainer_state.json")
    monkeypatch.chdir(tmp_path)  # no folder named "True" here
    trainer, steps = _trainer(out)
    skipped = _train_with_records(trainer, flag)
    assert steps.steps == [3, 4] and len(skipped) == 1 and "checkpoint-4" in skipped[0]


def test_an_older_incomplete_checkpoint_named_explicitly_is_a_clear_error(trained, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(trained, out)
    os.remove(out / "checkpoint-2" / "optimizer.pt")
    trainer, steps = _trainer(out)
    with pytest.raises(ValueError) as info:
        trainer.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    message = str(info.value)
    assert f"resume_from_checkpoint={str(out / 'checkpoint-2')!r} is an incomplete checkpoint" in message
    assert "optimizer.pt is missing" in message and repr(str(out / "checkpoint-4")) in message
    assert steps.steps == []


@pytest.mark.parametrize("name", ["scheduler.pt", "rng_state.pth"])
@pytest.mark.parametrize("how", ["empty", "truncated"])
def test_an_empty_or_truncated_scheduler_or_rng_state_is_incomplete(trained, tmp_path, name, how):
    out = tmp_path / "out"
    shutil.copytree(trained, out)
    path = out / "checkpoint-4" / name
    assert path.is_file()
    _truncate(path, 0 if how == "empty" else 0.9)
    assert checkpoint_problem(str(out / "checkpoint-4")) in (f"{name} is truncated", f"{name} is empty or truncated")
    trainer, steps = _trainer(out)
    skipped = _train_with_records(trainer, True)
    assert steps.steps == [3, 4] and len(skipped) == 1 and name in skipped[0]
