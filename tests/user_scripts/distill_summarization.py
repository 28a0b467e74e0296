"""A summarization script in the shape of transformers' examples/pytorch/summarization/run_summarization.py
(Seq2SeqTrainingArguments with predict_with_generate, generation length and beams, a ROUGE compute_metrics on the
decoded generations), after the documented change: the seq2seq distillation config and trainer."""

import json
import os
from dataclasses import dataclass, field

import numpy as np
from datasets import load_dataset
from transformers import (
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    HfArgumentParser,
    set_seed,
)

from hf_distill import Seq2SeqDistillationConfig, Seq2SeqDistillationTrainer


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "The student to start from."})


@dataclass
class DataTrainingArguments:
    train_file: str | None = field(default=None)
    validation_file: str | None = field(default=None)
    text_column: str = field(default="text")
    summary_column: str = field(default="summary")
    max_source_length: int = field(default=24)
    max_target_length: int = field(default=8)
    val_max_target_length: int | None = field(default=None)
    num_beams: int | None = field(default=None)
    ignore_pad_token_for_loss: bool = field(default=True)


def rouge1(prediction: str, reference: str) -> float:
    """Unigram-overlap F1 (ROUGE-1), computed here because `evaluate.load("rouge")` downloads its script."""
    p, r = prediction.split(), reference.split()
    overlap = sum(min(p.count(w), r.count(w)) for w in set(p))
    if not p or not r or not overlap:
        return 0.0
    precision, recall = overlap / len(p), overlap / len(r)
    return 2 * precision * recall / (precision + recall)


def main():
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, Seq2SeqDistillationConfig))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses()
    set_seed(training_args.seed)
    raw_datasets = load_dataset(
        "json", data_files={"train": data_args.train_file, "validation": data_args.validation_file}
    )
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_args.model_name_or_path)

    def preprocess_function(examples):
        model_inputs = tokenizer(
            examples[data_args.text_column], max_length=data_args.max_source_length, truncation=True
        )
        labels = tokenizer(
            text_target=examples[data_args.summary_column], max_length=data_args.max_target_length, truncation=True
        )
        model_inputs["labels"] = labels["input_ids"]
        return model_inputs

    columns = raw_datasets["train"].column_names
    processed = raw_datasets.map(preprocess_function, batched=True, remove_columns=columns)
    label_pad_token_id = -100 if data_args.ignore_pad_token_for_loss else tokenizer.pad_token_id
    data_collator = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=label_pad_token_id)

    def compute_metrics(eval_preds):
        preds, labels = eval_preds
        if isinstance(preds, tuple):
            preds = preds[0]
        preds = np.where(preds != -100, preds, tokenizer.pad_token_id)
        decoded_preds = tokenizer.batch_decode(preds, skip_special_tokens=True)
        labels = np.where(labels != -100, labels, tokenizer.pad_token_id)
        decoded_labels = tokenizer.batch_decode(labels, skip_special_tokens=True)
        scores = [rouge1(p, r) for p, r in zip(decoded_preds, decoded_labels)]
        prediction_lens = [np.count_nonzero(pred != tokenizer.pad_token_id) for pred in preds]
        return {"rouge1": round(100 * float(np.mean(scores)), 4), "gen_len": float(np.mean(prediction_lens))}

    trainer = Seq2SeqDistillationTrainer(
        model=model,
        args=training_args,
        train_dataset=processed["train"] if training_args.do_train else None,
        eval_dataset=processed["validation"] if training_args.do_eval else None,
        processing_class=tokenizer,
        data_collator=data_collator,
        compute_metrics=compute_metrics if training_args.predict_with_generate else None,
    )
    if training_args.do_train:
        train_result = trainer.train()
        trainer.save_model()
        trainer.log_metrics("train", train_result.metrics)
        trainer.save_metrics("train", train_result.metrics)
        trainer.save_state()
    max_length = (
        training_args.generation_max_length
        if training_args.generation_max_length is not None
        else data_args.val_max_target_length
    )
    num_beams = data_args.num_beams if data_args.num_beams is not None else training_args.generation_num_beams
    if training_args.do_eval:
        metrics = trainer.evaluate(max_length=max_length, num_beams=num_beams, metric_key_prefix="eval")
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    if training_args.do_predict:
        predict_results = trainer.predict(
            processed["validation"], metric_key_prefix="predict", max_length=max_length, num_beams=num_beams
        )
        trainer.log_metrics("predict", predict_results.metrics)
        trainer.save_metrics("predict", predict_results.metrics)
        if trainer.is_world_process_zero() and training_args.predict_with_generate:
            predictions = np.where(
                predict_results.predictions != -100, predict_results.predictions, tokenizer.pad_token_id
            )
            predictions = tokenizer.batch_decode(
                predictions, skip_special_tokens=True, clean_up_tokenization_spaces=True
            )
            with open(os.path.join(training_args.output_dir, "generated_predictions.txt"), "w") as writer:
                writer.write("\n".join(pred.strip() for pred in predictions))
            print("GENERATED " + json.dumps([len(p.split()) for p in predictions]))
    kwargs = {"finetuned_from": model_args.model_name_or_path, "tasks": "summarization"}
    if training_args.push_to_hub:
        trainer.push_to_hub(**kwargs)
    else:
        trainer.create_model_card(**kwargs)


if __name__ == "__main__":
    main()
