"""Composition root of `hf-distill cache-teacher` and `hf-distill generate`: run the teacher once, write what it
produced (its top-k distributions, or its responses), and say what it costs on disk."""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

from datasets import load_dataset

from ..offline.generation import generate_responses
from ..offline.writer import cache_teacher
from ..served.endpoint import is_served_spec
from ..served.setup import served_settings
from .recipe import Recipe
from .train import load_data, load_teacher_model, load_tokenizer


def cache_recipe(recipe: Recipe) -> dict[str, Any]:
    """Cache the teacher's top-k over the recipe's train and eval sets, in `<cache.output_dir>/{train,eval}`.

    Returns:
        `dict` per split: folder, rows, positions, bytes on disk and bytes per position.
    """
    spec = recipe.cache
    _, tokenizer = load_tokenizer(recipe)
    train, evaluation, collator, load_kwargs = load_data(recipe, tokenizer)
    served = is_served_spec(recipe.teacher.model_name_or_path)  # scored by its server: nothing is loaded
    teacher = recipe.teacher.model_name_or_path if served else load_teacher_model(recipe, **load_kwargs)
    # A served teacher's request settings are the recipe's `args.teacher_request_*` fields (k is `cache.k`).
    settings = served_settings(SimpleNamespace(**recipe.args)) if served else None
    results = {}
    for split, rows in (("train", train), ("eval", evaluation)):
        folder = os.path.join(spec.output_dir, split)
        info = cache_teacher(
            teacher,
            rows,
            folder,
            k=spec.k,
            temperature=spec.temperature,
            logprob_dtype=spec.logprob_dtype,
            batch_size=spec.batch_size,
            shard_size=spec.shard_size,
            collator=collator,
            tokenizer=tokenizer,
            # `cache.teacher_tokenized: true`: rows of the teacher's own tokens, for students of any tokenizer
            teacher_tokenized=spec.teacher_tokenized,
            served_settings=settings,
        )
        size = info.bytes_on_disk(folder)
        results[split] = {"folder": folder, "rows": info.total_rows, "positions": info.tokens, "bytes": size}
        results[split]["bytes_per_position"] = size / max(info.tokens, 1)
        print(
            f"{split}: {info.total_rows} examples, {info.tokens} positions, {size / 1e6:.2f} MB, "
            f"{size / max(info.tokens, 1):.1f} bytes per position (top-{spec.k}, {spec.logprob_dtype}) -> {folder}"
        )
    print(
        f"Train from it with `args.teacher_cache: {results['train']['folder']}` (and kd_temperature: {spec.temperature})."
    )
    return results


def generate_recipe(recipe: Recipe) -> dict[str, Any]:
    """The teacher's responses to the prompts in `data.dataset[generate.prompt_column]`, in `generate.output_dir`."""
    spec = recipe.generate
    if recipe.task != "causal_lm":
        raise ValueError(f"generate needs task=causal_lm, not {recipe.task!r}.")
    table = load_dataset(recipe.data.dataset, data_files=recipe.data.data_files, split=recipe.data.split)
    if spec.prompt_column not in table.column_names:
        raise ValueError(
            f"generate.prompt_column={spec.prompt_column!r} is not a column of the prompts dataset "
            f"(columns: {', '.join(table.column_names)})."
        )
    if spec.max_prompts is not None:
        table = table.select(range(min(spec.max_prompts, len(table))))
    _, tokenizer = load_tokenizer(recipe)
    teacher = load_teacher_model(recipe)
    info = generate_responses(
        teacher,
        tokenizer,
        [str(p) for p in table[spec.prompt_column]],
        spec.output_dir,
        spec.generation_config(),
        seed=spec.seed,
        chat_template=spec.chat_template,
        batch_size=spec.batch_size,
        cache_top_k=spec.cache_top_k,
        cache_temperature=spec.cache_temperature,
        logprob_dtype=spec.logprob_dtype,
        prompts_fingerprint=table._fingerprint,
    )
    print(f"{info.total_rows} responses ({info.tokens} tokens) -> {spec.output_dir}")
    return {"folder": spec.output_dir, "rows": info.total_rows, "tokens": info.tokens}
