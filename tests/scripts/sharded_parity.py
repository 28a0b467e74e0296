"""Launched by tests/test_multiprocess.py: the tiny distillation of ddp_parity.py with the student sharded (FSDP2 or
DeepSpeed ZeRO-3) and the teacher sharded like it (`teacher_placement="auto"` -> "shard"); saves the full student,
the logs, and the share of each model's elements that rank 0 holds.

Accelerate never picks FSDP or DeepSpeed for a CPU state, so (test-only, see ../shared/MULTIPROC.md) the script
configures the gloo state itself before the arguments are built:

    accelerate launch --use_fsdp --fsdp_version 2 --num_processes 2 --num_machines 1 --mixed_precision no \
        --dynamo_backend no --fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP \
        --fsdp_transformer_layer_cls_to_wrap LlamaDecoderLayer --fsdp_state_dict_type FULL_STATE_DICT \
        --fsdp_reshard_after_forward true --fsdp_cpu_ram_efficient_loading false \
        tests/scripts/sharded_parity.py fsdp2 OUT.pt
    accelerate launch --use_deepspeed --deepspeed_config_file tests/scripts/ds_zero3.json --num_processes 2 \
        --num_machines 1 --mixed_precision no --dynamo_backend no tests/scripts/sharded_parity.py zero3 OUT.pt
(`zero3_teacher_config` instead of `zero3`: the teacher's engine from `teacher_deepspeed_config`.)
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402
from accelerate.state import PartialState  # noqa: E402
from accelerate.utils import DistributedType  # noqa: E402
from datasets import Dataset  # noqa: E402
from tiny_models import PARITY_ARGS, collate, examples, llama  # noqa: E402
from torch.distributed.tensor import DTensor  # noqa: E402

from hf_distill import DistillationConfig, DistillationTrainer  # noqa: E402


def _local_share(model: torch.nn.Module) -> float:
    """Elements this rank holds over the model's elements (FSDP2: DTensor shards; ZeRO-3: `ds_tensor` partitions)."""
    local = total = 0
    for p in model.parameters():
        if isinstance(p, DTensor):
            local, total = local + p.to_local().numel(), total + p.numel()
        elif hasattr(p, "ds_tensor"):
            local, total = local + p.ds_tensor.numel(), total + p.ds_numel
        else:
            local, total = local + p.numel(), total + p.numel()
    return local / total


def _configure_state(mode: str) -> None:
    if mode == "fsdp2":
        PartialState(cpu=True)  # gloo process group
        PartialState._shared_state["distributed_type"] = DistributedType.MULTI_GPU  # so that accelerate picks FSDP
    else:
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        PartialState(backend="gloo")


def _check_launch(trainer: DistillationTrainer, mode: str) -> None:
    """Inside the launched script: the launch really made 2 processes of the intended kind."""
    accelerator = trainer.accelerator
    assert trainer.args.world_size == 2, trainer.args.world_size
    if mode == "fsdp2":
        assert accelerator.distributed_type == DistributedType.FSDP and accelerator.is_fsdp2
    else:
        assert accelerator.distributed_type == DistributedType.DEEPSPEED
        assert accelerator.state.deepspeed_plugin.zero_stage == 3
    assert trainer.teacher_placement.kind == "shard", trainer.teacher_placement


def main(mode: str, out: str) -> None:
    # zero3_teacher_config: the teacher's engine from `teacher_deepspeed_config` instead of the student's config
    own_config = {"teacher_deepspeed_config": os.path.join(os.path.dirname(__file__), "ds_zero3.json")}
    extra = own_config if mode == "zero3_teacher_config" else {}
    mode = "zero3" if mode.startswith("zero3") else mode
    _configure_state(mode)
    torch.manual_seed(0)
    student, teacher = llama(32, 1), llama(64, 2)
    args = DistillationConfig(
        output_dir=os.path.dirname(out),
        per_device_train_batch_size=2,
        **PARITY_ARGS,
        ce_weight=0.5,
        kd_temperature=2.0,
        accelerator_config={"use_configured_state": True},
        **extra,
    )
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=Dataset.from_list(examples("causal_lm", 8)),
        data_collator=collate,
    )
    _check_launch(trainer, mode)
    teacher_module = getattr(trainer.teacher_model, "module", trainer.teacher_model)  # a ZeRO-3 engine wraps it
    teacher_share = _local_share(teacher_module)
    trainer.train()
    student_share = _local_share(getattr(trainer.model_wrapped, "module", trainer.model_wrapped))
    full = trainer.accelerator.get_state_dict(trainer.model_wrapped)  # collective: every rank calls it
    if trainer.is_world_process_zero():
        logs = [e for e in trainer.state.log_history if "loss" in e]
        shares = {"teacher": teacher_share, "student": student_share}
        torch.save({"params": full, "logs": logs, "world_size": args.world_size, "shares": shares}, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
