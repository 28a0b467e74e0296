"""Datasets for the CLI recipes: text split into token blocks or rows in an LLM dataset format (causal LM), or labelled
text (classification)."""

from __future__ import annotations

import os
from typing import Any

from datasets import Dataset, load_dataset

from .. import _packaged as assets
from ..data import detect_format, tokenize_for_distillation
from .recipe import DataSpec


def read_text(text_file: str) -> str:
    path = assets.packaged_text_path(text_file) if assets.is_packaged(text_file) else text_file
    with open(path, encoding="utf-8") as f:
        return f.read()


def _blocks(token_ids: list[int], block_size: int, prompt_length: int | None = None) -> Dataset:
    # Whole blocks only: a ragged last block would need padding that the loss then has to ignore.
    n = len(token_ids) // block_size
    blocks = [token_ids[i * block_size : (i + 1) * block_size] for i in range(n)]
    labels = blocks
    if prompt_length is not None:  # the leading run of -100 labels is the prompt (hf_distill.on_policy.prompts)
        labels = [[-100] * prompt_length + block[prompt_length:] for block in blocks]
    return Dataset.from_dict({"input_ids": blocks, "attention_mask": [[1] * block_size] * n, "labels": labels})


def causal_lm_datasets(spec: DataSpec, tokenizer: Any, teacher_tokenizer: Any = None) -> tuple[Dataset, Dataset]:
    """Train and eval rows, holding out the *last* `eval_fraction` of them (a contiguous tail, so no evaluation text
    is seen in training).

    A text file, or a table in the `text` format, is tokenized and cut into `block_size`-token blocks. A table in
    another format (`spec.format`, or the one its columns show) becomes rows by
    `hf_distill.data.tokenize_for_distillation` (truncated to `spec.max_length`); tokenized rows (e.g.
    `hf-distill generate` output) are kept as they are.
    """
    if spec.text_file is not None:
        text = read_text(spec.text_file)
    else:
        table = load_dataset(spec.dataset, data_files=spec.data_files, split=spec.split)
        rows = _formatted_rows(table, spec, tokenizer, teacher_tokenizer)
        if rows is not None:
            if spec.prompt_length is not None:
                raise ValueError(
                    "data: prompt_length cuts prompts out of text blocks; these rows are in an LLM dataset format "
                    "whose prompts are already marked (labels -100): remove prompt_length."
                )
            return _split_tail(rows, spec)
        if spec.text_column not in table.column_names:
            raise ValueError(
                f"data: text_column={spec.text_column!r} is not in the dataset (columns: "
                f"{', '.join(table.column_names)}); set data.text_column, or data.format for rows of another format."
            )
        text = "\n\n".join(table[spec.text_column])
    # Line by line: one call on a whole book warns about the model's maximum length, and blocks are cut later anyway.
    lines = tokenizer(text.splitlines(keepends=True))["input_ids"]
    if spec.prompt_length is not None and spec.prompt_length >= spec.block_size:
        raise ValueError(
            f"data: prompt_length={spec.prompt_length} leaves no continuation in blocks of block_size="
            f"{spec.block_size} tokens; use a prompt_length below block_size."
        )
    blocks = _blocks([token for line in lines for token in line], spec.block_size, spec.prompt_length)
    if len(blocks) < 2:
        raise ValueError(f"data: the text gives {len(blocks)} block(s) of {spec.block_size} tokens; need at least 2.")
    return _split_tail(blocks, spec)


def _formatted_rows(table: Dataset, spec: DataSpec, tokenizer: Any, teacher_tokenizer: Any = None) -> Dataset | None:
    """The table's rows tokenized by their LLM dataset format, or `None` for plain text (cut into blocks instead);
    with a `teacher_tokenizer` (another family), conversations are also rendered by its chat template."""
    try:
        data_format = detect_format(table, text_column=spec.text_column) if spec.format == "auto" else spec.format
        if data_format == "text":
            return None
        return tokenize_for_distillation(
            table, tokenizer, format=data_format, max_length=spec.max_length, text_column=spec.text_column,
            teacher_tokenizer=teacher_tokenizer,
        )  # fmt: skip
    except ValueError as error:
        raise ValueError(f"data: {error}") from None


def _split_tail(rows: Dataset, spec: DataSpec) -> tuple[Dataset, Dataset]:
    num_eval = max(1, round(len(rows) * spec.eval_fraction))
    if len(rows) - num_eval < 1:
        raise ValueError(f"data: {len(rows)} example(s) leave nothing to train on after holding out {num_eval}.")
    train, evaluation = rows.select(range(len(rows) - num_eval)), rows.select(range(len(rows) - num_eval, len(rows)))
    if spec.max_train_examples is not None:
        train = train.select(range(min(spec.max_train_examples, len(train))))
    return _named(train, spec), _named(evaluation, spec)


def _named(dataset: Dataset, spec: DataSpec) -> Dataset:
    """Name the dataset after its source (for the student's lineage): a packaged text or Hub id as given, a local
    file or folder by its base name only."""
    if spec.text_file is None and spec.data_files:  # a format name (csv, json) with files: name the files
        files = [spec.data_files] if isinstance(spec.data_files, str) else list(spec.data_files)
        dataset.info.dataset_name = ",".join(os.path.basename(f) for f in files)
        return dataset
    source = spec.text_file or spec.dataset
    if source and not assets.is_packaged(source) and os.path.exists(source):
        source = os.path.basename(os.path.normpath(source))
    dataset.info.dataset_name = source
    return dataset


def classification_datasets(spec: DataSpec, tokenizer: Any) -> tuple[Dataset, Dataset, list[str]]:
    """Tokenized `text_column` with integer `labels` from `label_column`; returns train, eval and the label names."""
    table = load_dataset(spec.dataset, data_files=spec.data_files, split=spec.split)
    for column in (spec.text_column, spec.label_column):
        if column not in table.column_names:
            raise ValueError(
                f"data: column {column!r} is not in the dataset (columns: {', '.join(table.column_names)})."
            )
    names = sorted({str(v) for v in table[spec.label_column]})
    index = {name: i for i, name in enumerate(names)}

    def encode(batch: dict[str, list]) -> dict[str, list]:
        encoded = tokenizer(batch[spec.text_column], truncation=True, max_length=spec.max_length)
        encoded["labels"] = [index[str(v)] for v in batch[spec.label_column]]
        return encoded

    table = table.map(encode, batched=True, remove_columns=table.column_names)
    split = table.train_test_split(test_size=spec.eval_fraction, seed=spec.seed)
    train = split["train"]
    if spec.max_train_examples is not None:
        train = train.select(range(min(spec.max_train_examples, len(train))))
    return _named(train, spec), _named(split["test"], spec), names
