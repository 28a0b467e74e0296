"""Launched by tests/test_multiprocess.py: train a tiny student on padded, variable-length batches and save the
result, so that 1 process (batch 4) and 2 processes (batch 2 each) can be compared.

    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \
        --mixed_precision no --dynamo_backend no tests/scripts/ddp_parity.py OUT.pt 2 2
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from tiny_models import PARITY_ARGS, collate, examples, llama  # noqa: E402

from hf_distill import DistillationConfig, DistillationTrainer  # noqa: E402


def main(out: str, per_device_batch: int, expected_world_size: int) -> None:
    torch.manual_seed(0)
    student, teacher = llama(32, 1), llama(64, 2)
    args = DistillationConfig(
        output_dir=os.path.dirname(out),
        per_device_train_batch_size=per_device_batch,
        **PARITY_ARGS,
        use_cpu=True,
        ce_weight=0.5,
        kd_temperature=2.0,
    )
    # Inside the launched script: a launcher that silently starts one process (or two independent ones) fails here.
    assert args.world_size == expected_world_size, (args.world_size, expected_world_size)
    if expected_world_size > 1:
        assert args.distributed_state.distributed_type.value == "MULTI_CPU", args.distributed_state.distributed_type
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=Dataset.from_list(examples("causal_lm", 8)),  # lengths 4..10: ranks see different token counts
        data_collator=collate,
    )
    trainer.train()
    if trainer.is_world_process_zero():
        logs = [e for e in trainer.state.log_history if "loss" in e]
        torch.save({"params": student.state_dict(), "logs": logs, "world_size": args.world_size}, out)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
