"""Launched by tests/test_multiprocess.py: train a tiny student from a teacher that is either a local folder (loaded
in process) or a served teacher's spec (`openai-compatible:...`), and save the result for comparison.

    python tests/scripts/served_parity.py OUT.pt 4 1 TEACHER_FOLDER
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \
        --mixed_precision no --dynamo_backend no tests/scripts/served_parity.py OUT.pt 2 2 openai-compatible:URL#NAME
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from tiny_models import PARITY_ARGS, VOCAB, collate, examples, llama  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from hf_distill import DistillationConfig, DistillationTrainer  # noqa: E402


def main(out: str, per_device_batch: int, expected_world_size: int, teacher: str) -> None:
    torch.manual_seed(0)
    student = llama(32, 1)
    served = teacher.startswith("openai-compatible:")
    args = DistillationConfig(
        output_dir=os.path.dirname(out),
        per_device_train_batch_size=per_device_batch,
        **PARITY_ARGS,
        use_cpu=True,
        ce_weight=0.5,
        teacher_top_k=VOCAB,  # the whole vocabulary: the sparse loss is then the dense one
    )
    assert args.world_size == expected_world_size, (args.world_size, expected_world_size)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher if served else AutoModelForCausalLM.from_pretrained(teacher),
        args=args,
        train_dataset=Dataset.from_list(examples("causal_lm", 8)),  # lengths 4..10: ranks see different token counts
        data_collator=collate,
    )
    trainer.train()
    if served:  # every training batch of this rank was sent ahead and found by its tokens
        assert trainer.teacher.queue.hits == 2 and trainer.teacher.queue.misses == 0, vars(trainer.teacher.queue)
    if trainer.is_world_process_zero():
        logs = [e for e in trainer.state.log_history if "loss" in e]
        torch.save({"params": student.state_dict(), "logs": logs, "world_size": args.world_size}, out)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
