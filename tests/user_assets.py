"""Model folders, tokenizers and data files for the user-shaped scripts in tests/user_scripts/: saved the way a user
has them on disk (a checkpoint folder with its tokenizer, CSV/JSON/text files), built from configs, no downloads."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    BertConfig,
    BertForSequenceClassification,
    BertForTokenClassification,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

WORDS = [f"w{i}" for i in range(60)]


def word_tokenizer(
    specials: list[str], wrap: tuple[str, str] | None = None, **special_names
) -> PreTrainedTokenizerFast:
    """A word-level fast tokenizer over `specials + WORDS`; `wrap=(first, last)` adds them around every text."""
    vocab = {w: i for i, w in enumerate([*specials, *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=special_names.get("unk_token")))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if wrap is not None:
        first, last = wrap
        pieces = [first] if first else []
        backend.post_processor = processors.TemplateProcessing(
            single=" ".join([*pieces, "$A", last]),
            special_tokens=[(t, vocab[t]) for t in (*pieces, last)],
        )
    return PreTrainedTokenizerFast(tokenizer_object=backend, **special_names)


def sentences(n: int, length: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(length // 2, length))) for _ in range(n)]


# ---- causal LM (run_clm) ----


def clm_folders(root: Path) -> dict[str, str]:
    """A student and a teacher Llama sharing one tokenizer, and train/validation text files."""
    tokenizer = word_tokenizer(["<unk>", "<pad>"], unk_token="<unk>", pad_token="<pad>")
    out = {}
    for name, hidden, layers in (("student", 32, 1), ("teacher", 64, 2)):
        torch.manual_seed(len(name))
        config = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=1,
        )  # fmt: skip
        folder = root / name
        LlamaForCausalLM(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        out[name] = str(folder)
    for split, n, seed in (("train", 40, 0), ("validation", 12, 1)):
        path = root / f"{split}.txt"
        path.write_text("\n".join(sentences(n, 12, seed)) + "\n")
        out[split] = str(path)
    return out


# ---- classification (run_glue, run_ner) ----

LABELS = ["negative", "neutral", "positive"]
TAGS = ["B-LOC", "I-LOC", "O"]


def _bert_config(tokenizer, hidden: int, layers: int, labels: list[str]) -> BertConfig:
    return BertConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=2 * hidden, max_position_embeddings=64, pad_token_id=0,
        id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)},
    )  # fmt: skip


def _bert_tokenizer() -> PreTrainedTokenizerFast:
    return word_tokenizer(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]"], wrap=("[CLS]", "[SEP]"),
        pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
    )  # fmt: skip


def glue_files(root: Path) -> dict[str, str]:
    """CSV files whose label is a function of the words, a pretrained-student folder (no labels yet) and the folder
    to fine-tune the teacher in."""
    tokenizer = _bert_tokenizer()
    out = {}
    for split, n, seed in (("train", 48, 0), ("validation", 16, 1), ("test", 8, 2)):
        rows = ["sentence,label"]
        for text in sentences(n, 8, seed):
            rows.append(f"{text},{LABELS[sum(int(w[1:]) for w in text.split()) % 3]}")
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
        out[split] = str(root / f"{split}.csv")
    torch.manual_seed(0)
    for name, hidden, layers in (("student", 32, 1), ("teacher_base", 48, 2)):
        BertForSequenceClassification(
            _bert_config(tokenizer, hidden, layers, ["LABEL_0", "LABEL_1", "LABEL_2"])
        ).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        out[name] = str(root / name)
    return out


def ner_files(root: Path) -> dict[str, str]:
    tokenizer = _bert_tokenizer()
    out = {}
    for split, n, seed in (("train", 32, 0), ("validation", 8, 1)):
        with open(root / f"{split}.json", "w") as f:
            for text in sentences(n, 8, seed):
                words = text.split()
                f.write(json.dumps({"tokens": words, "ner_tags": [TAGS[int(w[1:]) % 3] for w in words]}) + "\n")
        out[split] = str(root / f"{split}.json")
    torch.manual_seed(0)
    for name, hidden, layers in (("student", 32, 1), ("teacher", 48, 2)):
        model = BertForTokenClassification(_bert_config(tokenizer, hidden, layers, TAGS))
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        out[name] = str(root / name)
    return out


# ---- summarization (run_summarization), BART: a head with `final_logits_bias` ----


def summarization_files(root: Path) -> dict[str, str]:
    tokenizer = word_tokenizer(
        ["<s>", "<pad>", "</s>", "<unk>"], wrap=("", "</s>"),
        bos_token="<s>", pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
    )  # fmt: skip
    out = {}
    for split, n, seed in (("train", 32, 0), ("validation", 8, 1)):
        with open(root / f"{split}.json", "w") as f:
            for text in sentences(n, 12, seed):
                f.write(json.dumps({"text": text, "summary": " ".join(text.split()[:3])}) + "\n")
        out[split] = str(root / f"{split}.json")
    for name, d_model, layers in (("student", 32, 1), ("teacher", 48, 2)):
        torch.manual_seed(len(name))
        config = BartConfig(
            vocab_size=len(tokenizer), d_model=d_model, encoder_layers=layers, decoder_layers=layers,
            encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=2 * d_model,
            decoder_ffn_dim=2 * d_model, max_position_embeddings=64, pad_token_id=1, bos_token_id=0, eos_token_id=2,
            decoder_start_token_id=2, forced_eos_token_id=2,
        )  # fmt: skip
        model = BartForConditionalGeneration(config)
        with torch.no_grad():
            model.final_logits_bias.normal_(0, 0.5)  # as a pretrained BART's: not zero
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        out[name] = str(root / name)
    return out
