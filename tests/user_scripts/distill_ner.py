"""A token-classification script in the shape of transformers' examples/pytorch/token-classification/run_ner.py
(words pre-split, labels aligned to the first sub-token of each word), after the documented two-line change."""

import json
import os
from dataclasses import dataclass, field

import numpy as np
from datasets import load_dataset
from transformers import (
    AutoConfig,
    AutoModelForTokenClassification,
    AutoTokenizer,
    DataCollatorForTokenClassification,
    HfArgumentParser,
    set_seed,
)

from hf_distill import DistillationConfig, DistillationTrainer


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "The student to start from."})


@dataclass
class DataTrainingArguments:
    train_file: str | None = field(default=None)
    validation_file: str | None = field(default=None)
    label_all_tokens: bool = field(default=False)


def main():
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, DistillationConfig))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses()
    set_seed(training_args.seed)
    raw_datasets = load_dataset(
        "json", data_files={"train": data_args.train_file, "validation": data_args.validation_file}
    )
    label_list = sorted({tag for tags in raw_datasets["train"]["ner_tags"] for tag in tags})
    label_to_id = {label: i for i, label in enumerate(label_list)}
    config = AutoConfig.from_pretrained(
        model_args.model_name_or_path,
        num_labels=len(label_list),
        label2id=label_to_id,
        id2label={i: label for label, i in label_to_id.items()},
    )
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    model = AutoModelForTokenClassification.from_pretrained(model_args.model_name_or_path, config=config)

    def tokenize_and_align_labels(examples):
        tokenized = tokenizer(examples["tokens"], truncation=True, is_split_into_words=True)
        labels = []
        for i, label in enumerate(examples["ner_tags"]):
            previous, ids = None, []
            for word_idx in tokenized.word_ids(batch_index=i):
                if word_idx is None:
                    ids.append(-100)
                elif word_idx != previous:
                    ids.append(label_to_id[label[word_idx]])
                else:
                    ids.append(label_to_id[label[word_idx]] if data_args.label_all_tokens else -100)
                previous = word_idx
            labels.append(ids)
        tokenized["labels"] = labels
        return tokenized

    columns = raw_datasets["train"].column_names
    processed = raw_datasets.map(tokenize_and_align_labels, batched=True, remove_columns=columns)

    def compute_metrics(p):
        predictions, labels = p
        predictions = np.argmax(predictions, axis=2)
        keep = labels != -100
        return {"accuracy": float((predictions[keep] == labels[keep]).mean())}

    trainer = DistillationTrainer(
        model=model,
        args=training_args,
        train_dataset=processed["train"],
        eval_dataset=processed["validation"],
        processing_class=tokenizer,
        data_collator=DataCollatorForTokenClassification(tokenizer),
        compute_metrics=compute_metrics,
    )
    if training_args.do_train:
        train_result = trainer.train()
        trainer.save_model()
        trainer.log_metrics("train", train_result.metrics)
        trainer.save_metrics("train", train_result.metrics)
        trainer.save_state()
    if training_args.do_eval:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    if training_args.do_predict:
        predictions, labels, metrics = trainer.predict(processed["validation"], metric_key_prefix="predict")
        predictions = np.argmax(predictions, axis=2)
        true_predictions = [
            [label_list[p] for (p, lab) in zip(prediction, label) if lab != -100]
            for prediction, label in zip(predictions, labels)
        ]
        trainer.log_metrics("predict", metrics)
        trainer.save_metrics("predict", metrics)
        if trainer.is_world_process_zero():
            with open(os.path.join(training_args.output_dir, "predictions.txt"), "w") as writer:
                for prediction in true_predictions:
                    writer.write(" ".join(prediction) + "\n")
    kwargs = {"finetuned_from": model_args.model_name_or_path, "tasks": "token-classification"}
    if training_args.push_to_hub:
        trainer.push_to_hub(**kwargs)
    else:
        trainer.create_model_card(**kwargs)
    print("LABELS " + json.dumps(label_list))


if __name__ == "__main__":
    main()
