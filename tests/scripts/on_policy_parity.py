"""Launched by tests/test_multiprocess.py: train a tiny student on-policy (greedy, ragged completions, every other
step generated) and save the result, so that 1 process (batch 4) and 2 processes (batch 2 each) can be compared.

    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \
        --mixed_precision no --dynamo_backend no tests/scripts/on_policy_parity.py OUT.pt 2 2

With a fourth argument `fsdp2` or `zero3`, the student (and the teacher, `teacher_placement="auto"`) are sharded, with
the test-only gloo state of sharded_parity.py, launched as there:

    accelerate launch --use_fsdp --fsdp_version 2 ... tests/scripts/on_policy_parity.py OUT.pt 2 2 fsdp2
    accelerate launch --use_deepspeed --deepspeed_config_file tests/scripts/ds_zero3.json ... OUT.pt 2 2 zero3
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from sharded_parity import _check_launch, _configure_state  # noqa: E402
from test_on_policy import prompt_rows  # noqa: E402
from tiny_models import PARITY_ARGS, collate, llama  # noqa: E402

from hf_distill import DistillationConfig, DistillationTrainer  # noqa: E402

EOS = 3  # a token some greedy completions of the tiny student reach early and others not: ragged completions


def main(out: str, per_device_batch: int, expected_world_size: int, mode: str = "ddp") -> None:
    sharded = mode in ("fsdp2", "zero3")
    if sharded:
        _configure_state(mode)
    torch.manual_seed(0)
    student, teacher = llama(32, 1), llama(64, 2)
    args = DistillationConfig(
        output_dir=os.path.dirname(out),
        per_device_train_batch_size=per_device_batch,
        **{**PARITY_ARGS, "max_steps": 4},
        use_cpu=True,
        ce_weight=0.5,
        kd_loss="reverse_kl",
        on_policy_fraction=0.5,  # off, on, off, on
        generation_temperature=0.0,
        max_new_tokens=5,
        generation_kwargs={"eos_token_id": EOS},
        **({"accelerator_config": {"use_configured_state": True}} if sharded else {}),
    )
    # Inside the launched script: a launcher that silently starts one process (or two independent ones) fails here.
    assert args.world_size == expected_world_size, (args.world_size, expected_world_size)
    if expected_world_size > 1 and not sharded:
        assert args.distributed_state.distributed_type.value == "MULTI_CPU", args.distributed_state.distributed_type
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=Dataset.from_list(prompt_rows(16)),
        data_collator=collate,
    )
    if sharded:
        _check_launch(trainer, mode)
    trainer.train()
    params = trainer.accelerator.get_state_dict(trainer.model_wrapped) if sharded else student.state_dict()
    if trainer.is_world_process_zero():
        logs = [e for e in trainer.state.log_history if "loss" in e]
        torch.save({"params": params, "logs": logs, "world_size": args.world_size}, out)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:])
