"""Tiny tokenizers of two families, trained in a fraction of a second, for cross-tokenizer tests: a byte-level BPE
(GPT-2 / SmolLM2 style: spaces are part of the next token, every byte has a token) and a SentencePiece-style BPE
(Gemma / Llama 2 style: spaces become `▁`, unknown characters fall back to `<0xNN>` byte tokens), and a copy of a
tokenizer whose ids are permuted (the same vocabulary, other ids)."""

from __future__ import annotations

import json
import random

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "To be, or not to be, that is the question:",
    "Whether 'tis nobler in the mind to suffer",
    "The slings and arrows of outrageous fortune,",
    "Or to take arms against a sea of troubles",
    "And by opposing end them. To die, to sleep;",
    "No more; and by a sleep to say we end",
    "numbers 12345 and 67890, tabs\tand\nnewlines",
] * 4


def byte_level_bpe(vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """A byte-level BPE: 256 byte symbols, merges learnt on `CORPUS`, `<|endoftext|>` as EOS and padding."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def sentencepiece_bpe(vocab_size: int = 200) -> PreTrainedTokenizerFast:
    """A SentencePiece-style BPE (`▁` for spaces, `<0xNN>` byte fallback) with `<bos>` added in front of every text."""
    trained = Tokenizer(models.BPE())
    trained.normalizer = normalizers.Replace(" ", "▁")
    trained.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "<eos>", "<bos>"], show_progress=False
    )
    trained.train_from_iterator(CORPUS, trainer)
    state = json.loads(trained.to_str())
    vocab, merges = state["model"]["vocab"], state["model"]["merges"]
    for byte in range(256):  # every byte reachable: a character outside the vocabulary falls back to its bytes
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True))
    tokenizer.normalizer = normalizers.Replace(" ", "▁")
    tokenizer.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tokenizer.add_special_tokens(["<pad>", "<eos>", "<bos>"])
    from tokenizers.processors import TemplateProcessing

    bos = vocab["<bos>"]
    tokenizer.post_processor = TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", bos)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def permuted(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> tuple[PreTrainedTokenizerFast, list[int]]:
    """The same tokenizer with its ids shuffled: `(copy, permutation)` where `permutation[old_id] = new_id`."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    size = len(tokenizer)
    permutation = list(range(size))
    random.Random(seed).shuffle(permutation)
    state["model"]["vocab"] = {token: permutation[i] for token, i in state["model"]["vocab"].items()}
    for added in state["added_tokens"]:
        added["id"] = permutation[added["id"]]
    post = state.get("post_processor")
    if post and post.get("type") == "TemplateProcessing":
        for entry in post["special_tokens"].values():
            entry["ids"] = [permutation[i] for i in entry["ids"]]
    copy = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(state)),
        **{k: v for k, v in tokenizer.special_tokens_map.items() if k in ("bos_token", "eos_token", "pad_token")},
    )
    return copy, permutation


def text_rows(tokenizer: PreTrainedTokenizerFast, texts: list[str], prompt_tokens: int = 0) -> list[dict]:
    """Tokenized rows of `texts` (lengths differ), labels = input_ids with the first `prompt_tokens` at -100."""
    rows = []
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        labels = [-100] * min(prompt_tokens, len(ids)) + ids[prompt_tokens:]
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    return rows


class PadCollator:
    """Right-pads `input_ids` with the tokenizer's pad id, `labels` with -100, `attention_mask` with 0."""

    def __init__(self, tokenizer: PreTrainedTokenizerFast) -> None:
        self.pad = tokenizer.pad_token_id

    def __call__(self, rows: list[dict]) -> dict:
        import torch

        width = max(len(r["input_ids"]) for r in rows)
        fill = {"input_ids": self.pad, "attention_mask": 0, "labels": -100}
        return {
            key: torch.tensor([r[key] + [value] * (width - len(r[key])) for r in rows])
            for key, value in fill.items()
            if key in rows[0]
        }


def tiny_causal_lm(vocab: int, hidden: int = 32, layers: int = 1, pad_token_id: int = 0):
    """A tiny Llama over `vocab` tokens, 128 positions (pad id 0: both tiny tokenizers put a pad token first)."""
    from tiny_models import llama

    model = llama(hidden, layers, vocab, max_positions=128)
    model.config.pad_token_id = pad_token_id
    return model


def permuted_model(model, permutation: list[int]):
    """A copy of `model` whose token ids are permuted like `permuted(tokenizer)`'s: embedding and head rows moved."""
    import copy

    import torch

    inverse = torch.argsort(torch.tensor(permutation))  # new row j holds old row inverse[j]
    moved = copy.deepcopy(model)
    with torch.no_grad():
        moved.get_input_embeddings().weight.copy_(model.get_input_embeddings().weight[inverse])
        if moved.get_output_embeddings().weight is not moved.get_input_embeddings().weight:
            moved.get_output_embeddings().weight.copy_(model.get_output_embeddings().weight[inverse])
    return moved
