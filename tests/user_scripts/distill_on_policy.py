"""On-policy distillation as a user writes it: a TRL-style prompt–completion JSONL, `HfArgumentParser` flags, the
trainer swapped in. (The shape of TRL's sft/gkd example scripts.)"""

from dataclasses import dataclass, field

from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, HfArgumentParser

from hf_distill import DistillationConfig, DistillationTrainer
from hf_distill.data import tokenize_for_distillation


@dataclass
class ScriptArguments:
    model_name_or_path: str = field(metadata={"help": "the student"})
    teacher_name_or_path: str = field(metadata={"help": "the teacher"})
    train_file: str = field(metadata={"help": "prompt-completion JSONL"})
    validation_file: str = field(metadata={"help": "prompt-completion JSONL"})


def main() -> None:
    script_args, training_args = HfArgumentParser((ScriptArguments, DistillationConfig)).parse_args_into_dataclasses()
    tokenizer = AutoTokenizer.from_pretrained(script_args.model_name_or_path)
    raw = load_dataset("json", data_files={"train": script_args.train_file, "validation": script_args.validation_file})
    train = tokenize_for_distillation(raw["train"], tokenizer, max_length=64)
    validation = tokenize_for_distillation(raw["validation"], tokenizer, max_length=64)
    trainer = DistillationTrainer(
        model=AutoModelForCausalLM.from_pretrained(script_args.model_name_or_path),
        teacher_model=script_args.teacher_name_or_path,
        args=training_args,
        train_dataset=train,
        eval_dataset=validation,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True),
        processing_class=tokenizer,
    )
    trainer.train()
    trainer.save_state()
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    trainer.save_model()


if __name__ == "__main__":
    main()
