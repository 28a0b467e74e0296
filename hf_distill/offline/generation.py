"""The teacher's own responses to a set of prompts, for sequence-level distillation (the student learns from what
the teacher says), optionally with the teacher's top-k distribution at every response token from the same
`generate` pass, which makes the output a teacher cache the student can train from with no teacher loaded."""

from __future__ import annotations

import copy
import os
from dataclasses import asdict
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import GenerationConfig

from .._logging import get_logger
from ..utils.atomic import write_json
from .cache import IDS, LOGPROBS, TAIL, CacheFingerprint, CacheInfo, encode_logprobs, tokenizer_sha256
from .writer import cache_features, hf_distill_version, teacher_record, write_shard

logger = get_logger(__name__)
GENERATION_FILE = "generation.json"
# The `GenerationConfig` fields a generated cache records in its fingerprint, in the order caches have always had.
RECORDED_FIELDS = ("max_new_tokens", "do_sample", "temperature", "top_p", "top_k")


def _prompt_texts(prompts: list[str], tokenizer: Any, use_chat_template: bool) -> tuple[list[str], bool]:
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        texts = [
            tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in prompts
        ]
        return texts, True
    return list(prompts), False


def _stop_ids(tokenizer: Any, teacher: nn.Module) -> set[int]:
    configured = getattr(getattr(teacher, "generation_config", None), "eos_token_id", None)
    configured = configured if isinstance(configured, list) else [configured]
    return {i for i in [tokenizer.eos_token_id, *configured] if i is not None}


def _response_length(tokens: list[int], stop_ids: set[int]) -> int:
    """Tokens up to and including the first end-of-sequence (padding after it is not part of the response)."""
    for i, token in enumerate(tokens):
        if token in stop_ids:
            return i + 1
    return len(tokens)


@torch.no_grad()
def generate_responses(
    teacher: nn.Module,
    tokenizer: Any,
    prompts: list[str],
    output_dir: str,
    generation_config: GenerationConfig,
    *,
    seed: int = 0,
    chat_template: bool = True,
    batch_size: int = 8,
    cache_top_k: int | None = None,
    cache_temperature: float = 1.0,
    logprob_dtype: str = "float16",
    prompts_fingerprint: str | None = None,
    progress: bool = True,
) -> CacheInfo:
    """Have `teacher` answer `prompts` and write the rows to `output_dir` as one parquet shard plus a manifest.

    Each row: `prompt`, `response` (text), `input_ids` (prompt then response tokens), `attention_mask`, `labels`
    (-100 on the prompt, the response tokens after it) and, with `cache_top_k`, the cache columns: at the position
    that predicts each response token, the teacher's top-k log-probabilities of that step's logits (zeros elsewhere,
    where the labels are -100 anyway). The manifest is a teacher cache manifest (`teacher_cache.json`), whose
    fingerprint records the sampling parameters, so `teacher_cache=output_dir` trains from it.

    Args:
        generation_config (`GenerationConfig`): how the teacher answers (`max_new_tokens`, `do_sample`, `temperature`,
            `top_p`, `top_k` are recorded); what it leaves unset comes from the teacher's own generation config.
        seed (`int`, *optional*, defaults to 0): `torch.manual_seed` before the first batch (sampling).
        chat_template (`bool`, *optional*, defaults to `True`): format each prompt as a user turn with the tokenizer's
            chat template, when it has one.
    """
    if cache_top_k is not None and not 1 <= cache_top_k <= teacher.config.vocab_size:
        raise ValueError(
            f"cache_top_k={cache_top_k} must be between 1 and the vocabulary size ({teacher.config.vocab_size})."
        )
    torch.manual_seed(seed)
    teacher.eval()
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"  # generation continues the right end
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stop_ids = _stop_ids(tokenizer, teacher)
    columns: dict[str, list] = {"prompt": [], "response": [], "input_ids": [], "attention_mask": [], "labels": []}
    if cache_top_k is not None:
        columns.update({IDS: [], LOGPROBS: [], TAIL: []})
    device = next(teacher.parameters()).device
    run_config = copy.deepcopy(generation_config)  # the caller's config is recorded as given
    run_config.update(pad_token_id=pad_id, return_dict_in_generate=True, output_logits=cache_top_k is not None)
    try:
        for start in tqdm(range(0, len(prompts), batch_size), disable=not progress, unit="batch"):
            batch_prompts = prompts[start : start + batch_size]
            texts, templated = _prompt_texts(batch_prompts, tokenizer, chat_template)
            encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not templated).to(device)
            out = teacher.generate(**encoded, generation_config=run_config)
            width = encoded["input_ids"].shape[1]
            step_logits = torch.stack(out.logits, dim=1) if cache_top_k is not None else None  # (B, R, V)
            for i, prompt in enumerate(batch_prompts):
                prompt_ids = encoded["input_ids"][i][encoded["attention_mask"][i].bool()].tolist()
                generated = out.sequences[i, width:].tolist()
                response = generated[: _response_length(generated, stop_ids)]
                ids = prompt_ids + response
                columns["prompt"].append(prompt)
                columns["response"].append(tokenizer.decode(response, skip_special_tokens=True))
                columns["input_ids"].append(ids)
                columns["attention_mask"].append([1] * len(ids))
                columns["labels"].append([-100] * len(prompt_ids) + response)
                if step_logits is not None:
                    _add_cache_row(
                        columns,
                        step_logits[i, : len(response)],
                        len(prompt_ids),
                        len(ids),
                        cache_top_k,
                        cache_temperature,
                        logprob_dtype,
                    )
    finally:
        tokenizer.padding_side = padding_side
    recorded = {
        **{name: getattr(generation_config, name) for name in RECORDED_FIELDS},
        "seed": seed,
        "chat_template": chat_template,
    }
    return _write(
        output_dir,
        columns,
        teacher,
        tokenizer,
        recorded,
        cache_top_k,
        cache_temperature,
        logprob_dtype,
        prompts_fingerprint,
    )


def _add_cache_row(
    columns: dict, logits: torch.Tensor, prompt_length: int, length: int, k: int, temperature: float, dtype: str
) -> None:
    # Position t predicts token t+1: the logits that produced response token j sit at position prompt_length - 1 + j.
    top, ids = torch.log_softmax(logits.float() / temperature, dim=-1).topk(k, dim=-1)
    tail = (1 - top.exp().sum(-1)).clamp_min(0)
    full_ids = torch.zeros(length, k, dtype=torch.int32)
    full_logprobs = torch.zeros(length, k)
    full_tail = torch.zeros(length)
    rows = slice(prompt_length - 1, prompt_length - 1 + logits.shape[0])
    full_ids[rows], full_logprobs[rows], full_tail[rows] = ids.to(torch.int32).cpu(), top.cpu(), tail.cpu()
    columns[IDS].append(full_ids.tolist())
    columns[LOGPROBS].append(encode_logprobs(full_logprobs, dtype).tolist())
    columns[TAIL].append(full_tail.tolist())


def _write(output_dir, columns, teacher, tokenizer, recorded, k, temperature, dtype, prompts_fingerprint) -> CacheInfo:
    from datasets import Features, Sequence, Value

    os.makedirs(output_dir, exist_ok=True)
    base = Features(
        {
            "prompt": Value("string"),
            "response": Value("string"),
            "input_ids": Sequence(Value("int32")),
            "attention_mask": Sequence(Value("int8")),
            "labels": Sequence(Value("int64")),
        }
    )
    features = cache_features(base, dtype, per_position=True) if k is not None else base
    shard = write_shard(output_dir, "shard-00000.parquet", columns, features)
    tokens = sum(len(ids) for ids in columns["input_ids"])
    fingerprint = CacheFingerprint(
        teacher=teacher_record(teacher),
        tokenizer_sha256=tokenizer_sha256(tokenizer),
        temperature=float(temperature),
        k=k or 0,
        vocab_size=teacher.config.vocab_size,
        dataset_fingerprint=prompts_fingerprint or "unknown",
        logprob_dtype=dtype,
        hf_distill_version=hf_distill_version(),
        generation={**recorded, "prompts": len(columns["prompt"]), "top_k_cached": k is not None},
    )
    info = CacheInfo(
        fingerprint, [{**shard, "tokens": tokens}], len(columns["prompt"]), len(columns["prompt"]), tokens
    )
    if k is not None:
        info.save(output_dir)  # a teacher cache: `teacher_cache=output_dir` trains from it
    else:  # responses only: the same manifest under another name, so it is never mistaken for a cache
        write_json(os.path.join(output_dir, GENERATION_FILE), asdict(info), indent=2)
    logger.info(f"{len(columns['prompt'])} teacher responses written to {output_dir} ({tokens} tokens).")
    return info
