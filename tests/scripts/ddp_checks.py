"""Launched by tests/test_multiprocess.py with 2 DDP processes (gloo on CPU): parameters identical across ranks, the
teacher frozen and never checkpointed, and resume from a checkpoint continuing exactly as the uninterrupted run.

    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \
        --mixed_precision no --dynamo_backend no tests/scripts/ddp_checks.py OUT_DIR
"""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from tiny_models import collate, examples, llama  # noqa: E402

from hf_distill import DistillationConfig, DistillationTrainer  # noqa: E402


def _run(out: str, resume: str | None = None) -> DistillationTrainer:
    torch.manual_seed(0)
    student, teacher = llama(32, 1), llama(64, 2)
    if resume:  # start from other weights: only really loading the checkpoint can give the uninterrupted losses
        with torch.no_grad():
            for parameter in student.parameters():
                parameter.add_(0.1)
    args = DistillationConfig(
        output_dir=out,
        per_device_train_batch_size=2,
        max_steps=4,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="steps",
        save_steps=2,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        ce_weight=0.5,
        seed=0,
    )
    assert args.world_size == 2 and args.distributed_state.distributed_type.value == "MULTI_CPU"
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=Dataset.from_list(examples("causal_lm", 16)),
        data_collator=collate,
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def main(out: str) -> None:
    torch.manual_seed(0)
    llama(32, 1)
    teacher_at_start = llama(64, 2).state_dict()  # the same draw as the teacher of `_run`
    full = _run(os.path.join(out, "full"))
    accelerator = full.accelerator
    flat = torch.cat([p.detach().reshape(-1) for p in full.model.parameters()])
    gathered = accelerator.gather(flat[None])  # (2, n): one row per rank
    teacher_state = full.teacher_model.state_dict()
    checks = {
        "identical_across_ranks": bool(torch.equal(gathered[0], gathered[1])),
        "teacher_unchanged": all(torch.equal(teacher_state[k], v) for k, v in teacher_at_start.items()),
        "teacher_frozen": not any(p.requires_grad for p in full.teacher_model.parameters()),
    }
    checkpoint = os.path.join(out, "full", "checkpoint-2")
    resumed = _run(os.path.join(out, "resumed"), resume=checkpoint)
    if accelerator.is_main_process:
        saved = load_file(os.path.join(checkpoint, "model.safetensors"))
        student_keys = set(full.accelerator.unwrap_model(full.model).state_dict())
        checks["checkpoint_holds_student_only"] = set(saved) <= student_keys and len(saved) > 0
        checks["checkpoint_files"] = sorted(os.listdir(checkpoint))
        losses = {
            name: {e["step"]: e["loss"] for e in trainer.state.log_history if "loss" in e}
            for name, trainer in (("full", full), ("resumed", resumed))
        }
        checks["losses"] = losses
        with open(os.path.join(out, "checks.json"), "w") as f:
            json.dump(checks, f)


if __name__ == "__main__":
    main(sys.argv[1])
