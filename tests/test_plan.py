"""The preflight memory plan: exact weight, gradient and optimizer bytes; the teacher counted as its placement holds
it; a refusal that names what would fit; `hf-distill plan`."""

import math

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from tiny_models import collate, examples, llama

import hf_distill.preflight as preflight
from hf_distill import DistillationConfig, DistillationTrainer
from hf_distill.preflight import MemoryPlanInputs, estimate_memory_plan


def _bytes(model):
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _trainer(training_args, output_dir, student=None, teacher=None, **kw):
    args = training_args(output_dir, save_strategy="no", **kw)
    return DistillationTrainer(
        model=student or llama(32, 1),
        teacher_model=teacher or llama(64, 2),
        args=args,
        data_collator=collate,
        train_dataset=Dataset.from_list(examples("causal_lm", 8)),
        **({"peft_config": kw.pop("peft_config")} if "peft_config" in kw else {}),
    )


def _rows(plan):
    return dict(plan.rows)


def test_weights_gradients_and_optimizer_state_are_counted_exactly(tmp_path, training_args):
    trainer = _trainer(training_args, tmp_path, max_steps=1)
    rows = _rows(trainer.memory_plan())
    student = _bytes(trainer.model)
    assert rows["student weights"] == student and rows["student gradients"] == student
    assert rows["optimizer state"] == 2 * student  # AdamW: two float32 moments per parameter
    assert rows["teacher weights (replicate)"] == _bytes(trainer.teacher_model)
    assert rows["loss tiles (chunked)"] > 0 and rows["activations (estimate)"] > 0
    sgd = _rows(_trainer(training_args, tmp_path, optim="sgd").memory_plan())
    assert sgd["optimizer state"] == 0


def test_an_adapter_student_counts_only_adapter_gradients_and_a_shared_base_teacher_nothing(tmp_path):
    config = LoraConfig(r=2, target_modules=["q_proj", "lm_head"])
    trainer = DistillationTrainer(
        model=llama(32, 1),
        teacher_model="base",
        args=DistillationConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True),
        peft_config=config,
        train_dataset=Dataset.from_list(examples("causal_lm", 8)),
        data_collator=collate,
    )
    rows = _rows(trainer.memory_plan())
    trainable = sum(p.numel() * 4 for p in trainer.model.parameters() if p.requires_grad)
    assert rows["student gradients"] == trainable and rows["optimizer state"] == 2 * trainable
    assert rows["teacher weights (shared_base)"] == 0


def _inputs(placement, processes=2, sharded=True):
    torch.manual_seed(0)
    return MemoryPlanInputs(
        student=llama(32, 1),
        teacher=llama(64, 2),
        teacher_placement=placement,
        processes=processes,
        student_sharded=sharded,
        batch_size=8,
        sequence_length=64,
        vocab_size=97,
        chunk_size=0,
        optimizer_states=2,
        activation_checkpointing=False,
        compute_bytes=4,
    )


def test_the_teacher_is_counted_as_its_placement_holds_it():
    full = _bytes(_inputs("replicate").teacher)
    by_placement = {
        p: _rows(estimate_memory_plan(_inputs(p), "cpu", None))[f"teacher weights ({p})"]
        for p in ("replicate", "shard", "offload")
    }
    largest = by_placement["offload"]  # one layer's weights at a time
    assert by_placement["replicate"] == full
    assert by_placement["shard"] == math.ceil(full / 2) + largest
    assert 0 < largest < full / 2


def test_a_plan_that_does_not_fit_names_a_placement_that_would():
    replicate = estimate_memory_plan(_inputs("replicate"), "cuda:0", None)
    shard = estimate_memory_plan(_inputs("shard"), "cuda:0", None)
    capacity = (replicate.total + shard.total) // 2  # room for the sharded teacher, not the replicated one
    plan = estimate_memory_plan(_inputs("replicate"), "cuda:0", capacity)
    assert not plan.fits and "teacher_placement='shard'" in plan.suggestions


def test_training_is_refused_before_it_starts_when_the_plan_cannot_fit(tmp_path, monkeypatch, training_args):
    trainer = _trainer(training_args, tmp_path, max_steps=1, per_device_train_batch_size=8)
    plan = trainer.memory_plan()
    room = plan.total - plan.scalable + plan.scalable // 2  # half the batch's activations and tiles fit
    monkeypatch.setattr(preflight, "device_capacity", lambda device, processes=1: room)
    with pytest.raises(ValueError, match="(?s)memory plan needs .* per process.*per_device_train_batch_size=4 "):
        trainer.train()
    assert trainer.state.global_step == 0
    trainer.args.preflight = "print"  # an estimate: the user may overrule it
    trainer.train()
    assert trainer.state.global_step == 1


def test_bad_preflight_value_is_refused(tmp_path):
    with pytest.raises(ValueError, match="preflight='maybe'; use refuse, print or off"):
        DistillationConfig(output_dir=str(tmp_path), preflight="maybe")


def test_cli_plan_prints_the_table_without_training(tmp_path, capsys):
    import yaml
    from tiny_models import save_tiny_teacher, tiny_recipe

    from hf_distill.cli.main import main

    save_tiny_teacher(tmp_path / "teacher", tmp_path / "corpus.txt")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tmp_path, tmp_path / "teacher", max_steps=1)))
    assert main(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Memory plan per process on cpu" in out and "teacher weights (replicate)" in out and "available" in out
    assert not list(tmp_path.glob("student/**/*.safetensors"))  # nothing trained, nothing saved
