"""Teacher placement and dtype in one process: every placement gives the replicated teacher's loss; bad placements are
refused with what to change. Two-process FSDP2 sharding is in test_multiprocess.py."""

from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from tiny_models import collate, examples, llama

from hf_distill import DistillationConfig, DistillationTrainer
from hf_distill.teacher.placement import Placement, resolve_placement


def _trainer(training_args, output_dir, teacher, **kw):
    torch.manual_seed(0)
    student = llama(32, 1)
    args = training_args(output_dir, **kw)
    return DistillationTrainer(model=student, teacher_model=teacher, args=args, data_collator=collate)


def _loss(trainer):
    trainer.model.train()
    return trainer.compute_loss(trainer.model, collate(examples("causal_lm", 4))).item()


def _state(distributed_type=DistributedType.NO, processes=1, fsdp2=False, zero_stage=None):
    plugin = None if zero_stage is None else SimpleNamespace(zero_stage=zero_stage)
    return SimpleNamespace(
        distributed_type=distributed_type,
        num_processes=processes,
        is_fsdp2=fsdp2,
        state=SimpleNamespace(deepspeed_plugin=plugin),
    )


@pytest.mark.parametrize(
    "value, state, expected",
    [
        ("auto", _state(), Placement("replicate")),
        ("auto", _state(DistributedType.MULTI_CPU, 2), Placement("replicate")),
        ("auto", _state(DistributedType.FSDP, 2, fsdp2=True), Placement("shard")),
        ("shard", _state(DistributedType.FSDP, 2, fsdp2=True), Placement("shard")),
        ("auto", _state(DistributedType.DEEPSPEED, 2, zero_stage=3), Placement("shard")),
        ("auto", _state(DistributedType.DEEPSPEED, 2, zero_stage=2), Placement("replicate")),
        ("offload", _state(DistributedType.MULTI_CPU, 2), Placement("offload")),
        ("cpu", _state(), Placement("devices", ("cpu",))),
    ],
)
def test_placement_follows_the_student_strategy(value, state, expected):
    assert resolve_placement(value, state) == expected


@pytest.mark.parametrize(
    "value, state, message",
    [
        ("shard", _state(DistributedType.MULTI_CPU, 2), "teacher_placement='shard'.*student runs 'ddp'.*'replicate'"),
        ("shard", _state(), "student runs 'single'"),
        ("shard", _state(DistributedType.DEEPSPEED, 2, zero_stage=2), "student runs 'deepspeed'"),
        ("cuda:3", _state(), "teacher_placement='cuda:3' names cuda:3, but this machine has 0 CUDA device"),
        ("replicat", _state(), "'replicat' is not a placement \\(auto, replicate, shard, offload\\)"),
        ("cpu", _state(DistributedType.MULTI_CPU, 2), "only works in a single-process run; this run has 2"),
    ],
)
def test_bad_placements_say_what_to_change(value, state, message):
    with pytest.raises(ValueError, match=message):
        resolve_placement(value, state)


@pytest.mark.parametrize("placement", ["offload", "cpu"])
def test_every_placement_gives_the_replicated_loss(tmp_path, placement, training_args):
    torch.manual_seed(1)
    teacher = llama(64, 2)
    reference = _loss(_trainer(training_args, tmp_path / "r", teacher, teacher_placement="replicate", kd_chunk_size=0))
    trainer = _trainer(training_args, tmp_path / "p", teacher, teacher_placement=placement)
    assert trainer.teacher_placement.kind == ("offload" if placement == "offload" else "devices")
    assert _loss(trainer) == pytest.approx(reference, rel=1e-6)
    if placement == "offload":  # weights live off the module, brought in by hooks for each forward
        assert trainer._chunk_size == 0 and hasattr(trainer.teacher_model, "_hf_hook")


def test_teacher_dtype_defaults_to_the_students_and_can_be_set(tmp_path, training_args):
    assert _trainer(training_args, tmp_path, llama(64, 2).to(torch.bfloat16)).teacher_model.dtype == torch.float32
    assert (
        _trainer(training_args, tmp_path, llama(64, 2), teacher_dtype="bfloat16").teacher_model.dtype == torch.bfloat16
    )
    with pytest.raises(ValueError, match="teacher_dtype='int8'; use float32, bfloat16, float16"):
        DistillationConfig(output_dir=str(tmp_path), teacher_dtype="int8")


def test_a_bad_device_is_refused_before_training(tmp_path, training_args):
    with pytest.raises(ValueError, match="names cuda:1, but this machine has 0 CUDA"):
        _trainer(training_args, tmp_path, llama(64, 2), teacher_placement="cuda:1")
