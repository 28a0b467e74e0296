"""Launched by tests/test_multiprocess.py: the same tiny distillation as ddp_parity.py, with the student under FSDP2 and
the teacher sharded like it (`teacher_placement="auto"` -> "shard"); saves the full student and the logs.

FSDP is never chosen for a CPU state by accelerate, so (test-only, see ../shared/MULTIPROC.md) the launched script
marks the gloo state as MULTI_GPU before the arguments are built:

    accelerate launch --use_fsdp --fsdp_version 2 --num_processes 2 --num_machines 1 --mixed_precision no \
        --dynamo_backend no --fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP \
        --fsdp_transformer_layer_cls_to_wrap LlamaDecoderLayer --fsdp_state_dict_type FULL_STATE_DICT \
        --fsdp_reshard_after_forward true --fsdp_cpu_ram_efficient_loading false tests/scripts/fsdp2_parity.py OUT.pt
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
    """Elements this rank holds over the model's elements."""
    local = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in model.parameters())
    return local / sum(p.numel() for p in model.parameters())


def main(out: str) -> None:
    PartialState(cpu=True)  # gloo process group
    PartialState._shared_state["distributed_type"] = DistributedType.MULTI_GPU  # so that accelerate picks FSDP
    torch.manual_seed(0)
    student, teacher = llama(32, 1), llama(64, 2)
    args = DistillationConfig(
        output_dir=os.path.dirname(out),
        per_device_train_batch_size=2,
        **PARITY_ARGS,
        ce_weight=0.5,
        kd_temperature=2.0,
        accelerator_config={"use_configured_state": True},
    )
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=Dataset.from_list(examples("causal_lm", 8)),
        data_collator=collate,
    )
    # Inside the launched script: the launch really made 2 FSDP2 processes.
    assert args.world_size == 2, args.world_size
    assert trainer.accelerator.distributed_type == DistributedType.FSDP and trainer.accelerator.is_fsdp2
    assert trainer._teacher_placement.kind == "shard", trainer._teacher_placement
    teacher_share = _local_share(trainer.teacher_model)
    trainer.train()
    student_share = _local_share(trainer.model)
    full = trainer.accelerator.get_state_dict(trainer.model)  # collective: every rank calls it
    if trainer.is_world_process_zero():
        logs = [e for e in trainer.state.log_history if "loss" in e]
        shares = {"teacher": teacher_share, "student": student_share}
        torch.save({"params": full, "logs": logs, "world_size": args.world_size, "shares": shares}, out)


if __name__ == "__main__":
    main(sys.argv[1])
