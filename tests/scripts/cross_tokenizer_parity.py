"""Launched by tests/test_multiprocess.py: a student with a byte-level BPE distilled from a teacher with a
SentencePiece-style tokenizer (the alignment in the collator, per process), so that 1 process (batch 4) and 2
processes (batch 2 each) can be compared.

    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \
        --mixed_precision no --dynamo_backend no tests/scripts/cross_tokenizer_parity.py OUT.pt 2 2 chunk
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from tiny_models import PARITY_ARGS  # noqa: E402
from tokenizer_pairs import CORPUS, PadCollator, byte_level_bpe, sentencepiece_bpe, text_rows, tiny_causal_lm  # noqa: E402

from hf_distill import DistillationConfig, DistillationTrainer  # noqa: E402


def main(out: str, per_device_batch: int, expected_world_size: int, method: str) -> None:
    student_tokenizer, teacher_tokenizer = byte_level_bpe(), sentencepiece_bpe()
    torch.manual_seed(0)
    student = tiny_causal_lm(len(student_tokenizer))
    teacher = tiny_causal_lm(len(teacher_tokenizer), hidden=48, layers=2)
    args = DistillationConfig(
        output_dir=os.path.dirname(out),
        per_device_train_batch_size=per_device_batch,
        **PARITY_ARGS,
        use_cpu=True,
        ce_weight=0.5,
        kd_temperature=2.0,
        cross_tokenizer=method,
    )
    assert args.world_size == expected_world_size, (args.world_size, expected_world_size)
    # rows of different lengths and prompts: ranks see different numbers of tokens and of aligned chunks
    rows = text_rows(student_tokenizer, CORPUS[:8], prompt_tokens=2)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=Dataset.from_list(rows),
        data_collator=PadCollator(student_tokenizer),
        processing_class=student_tokenizer,
        teacher_processing_class=teacher_tokenizer,
    )
    trainer.train()
    if trainer.is_world_process_zero():
        logs = [e for e in trainer.state.log_history if "loss" in e]
        torch.save({"params": student.state_dict(), "logs": logs, "world_size": args.world_size}, out)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
