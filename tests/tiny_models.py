"""Tiny models built from configs (no downloads), one student/teacher pair per task, and batches for them."""

from __future__ import annotations

import torch
from torch import nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertForTokenClassification,
    LlamaConfig,
    LlamaForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
    ViTConfig,
    ViTForImageClassification,
    Wav2Vec2Config,
    Wav2Vec2ForSequenceClassification,
)

VOCAB = 97  # odd on purpose
NUM_LABELS = 3

# Two steps of plain SGD at a constant rate, logged every step: runs that must agree (accumulation, processes,
# sharding) then differ in nothing but what each test varies.
PARITY_ARGS = {
    "max_steps": 2,
    "optim": "sgd",
    "learning_rate": 0.5,
    "lr_scheduler_type": "constant",
    "logging_steps": 1,
    "save_strategy": "no",
    "report_to": [],
    "disable_tqdm": True,
}


def llama(hidden=32, layers=1, vocab=VOCAB, max_positions=64):
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config)


def t5(d_model=32, layers=1, dropout=0.1):
    config = T5Config(
        dropout_rate=dropout,
        vocab_size=VOCAB,
        d_model=d_model,
        d_kv=8,
        d_ff=2 * d_model,
        num_layers=layers,
        num_heads=2,
        decoder_start_token_id=0,
        pad_token_id=0,
    )
    return T5ForConditionalGeneration(config)


def _bert_config(hidden, layers):
    return BertConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
        num_labels=NUM_LABELS,
    )


def bert_sequence(hidden=32, layers=1):
    return BertForSequenceClassification(_bert_config(hidden, layers))


def bert_token(hidden=32, layers=1):
    return BertForTokenClassification(_bert_config(hidden, layers))


def vit(hidden=32, layers=1):
    config = ViTConfig(
        image_size=16,
        patch_size=8,
        num_channels=3,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        num_labels=NUM_LABELS,
    )
    return ViTForImageClassification(config)


def wav2vec2(hidden=32, layers=1):
    config = Wav2Vec2Config(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        conv_dim=(16, 16),
        conv_stride=(5, 2),
        conv_kernel=(10, 3),
        num_conv_pos_embeddings=4,
        num_conv_pos_embedding_groups=2,
        classifier_proj_size=16,
        num_labels=NUM_LABELS,
        mask_time_prob=0.0,
    )
    return Wav2Vec2ForSequenceClassification(config)


class PlainClassifier(nn.Module):
    """Not a transformers model: a forward over `features` that returns a dict with `logits`."""

    def __init__(self, hidden=16, key="logits"):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, NUM_LABELS))
        self.key = key

    def forward(self, features):
        return {self.key: self.net(features)}


def _tokens(n, length, lengths=None):
    ids = torch.randint(1, VOCAB, (n, length))
    mask = torch.ones(n, length, dtype=torch.long)
    if lengths is not None:
        for i, real in enumerate(lengths):
            ids[i, real:] = 0
            mask[i, real:] = 0
    return ids, mask


def examples(task: str, n: int = 8, seed: int = 0) -> list[dict]:
    """`n` examples (lists of dicts, as a Dataset row) for `task`, padded, with variable lengths where it applies."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    lengths = torch.randint(4, 11, (n,), generator=g).tolist()
    rows = []
    if task == "causal_lm":
        ids, mask = _tokens(n, 10, lengths)
        labels = ids.masked_fill(mask == 0, -100)
        rows = [{"input_ids": i, "attention_mask": m, "labels": lab} for i, m, lab in zip(ids, mask, labels)]
    elif task == "seq2seq":
        ids, mask = _tokens(n, 10, lengths)
        target, target_mask = _tokens(n, 6, [max(2, x // 2) for x in lengths])
        labels = target.masked_fill(target_mask == 0, -100)
        rows = [{"input_ids": i, "attention_mask": m, "labels": lab} for i, m, lab in zip(ids, mask, labels)]
    elif task == "sequence_classification":
        ids, mask = _tokens(n, 10, lengths)
        labels = torch.randint(0, NUM_LABELS, (n,), generator=g)
        rows = [{"input_ids": i, "attention_mask": m, "labels": lab} for i, m, lab in zip(ids, mask, labels)]
    elif task == "token_classification":
        ids, mask = _tokens(n, 10, lengths)
        labels = torch.randint(0, NUM_LABELS, (n, 10), generator=g).masked_fill(mask == 0, -100)
        labels[:, 0] = -100  # e.g. [CLS]
        rows = [{"input_ids": i, "attention_mask": m, "labels": lab} for i, m, lab in zip(ids, mask, labels)]
    elif task == "image_classification":
        pixels = torch.randn(n, 3, 16, 16, generator=g)
        labels = torch.randint(0, NUM_LABELS, (n,), generator=g)
        rows = [{"pixel_values": p, "labels": lab} for p, lab in zip(pixels, labels)]
    elif task == "audio_classification":
        audio = torch.randn(n, 400, generator=g)
        labels = torch.randint(0, NUM_LABELS, (n,), generator=g)
        rows = [{"input_values": a, "labels": lab} for a, lab in zip(audio, labels)]
    elif task == "plain":
        feats = torch.randn(n, 8, generator=g)
        labels = torch.randint(0, NUM_LABELS, (n,), generator=g)
        rows = [{"features": f, "labels": lab} for f, lab in zip(feats, labels)]
    return [{k: v.tolist() for k, v in row.items()} for row in rows]


# task -> (student builder, teacher builder)
TASKS = {
    "causal_lm": (lambda: llama(32, 1), lambda: llama(64, 2)),
    "seq2seq": (lambda: t5(32, 1), lambda: t5(48, 2)),
    "sequence_classification": (lambda: bert_sequence(32, 1), lambda: bert_sequence(48, 2)),
    "token_classification": (lambda: bert_token(32, 1), lambda: bert_token(48, 2)),
    "image_classification": (lambda: vit(32, 1), lambda: vit(48, 2)),
    "audio_classification": (lambda: wav2vec2(32, 1), lambda: wav2vec2(48, 2)),
    "plain": (lambda: PlainClassifier(16), lambda: PlainClassifier(64)),
}


def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
    return {k: torch.tensor([r[k] for r in rows]) for k in rows[0]}


def save_tiny_teacher(folder, corpus_path) -> None:
    """A 3-layer Llama teacher with a word-level tokenizer saved like a Hub checkpoint, and a text corpus for it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<pad>"] + [f"w{i}" for i in range(95)]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>")
    torch.manual_seed(0)
    llama(64, 3).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    generator = torch.Generator().manual_seed(0)
    lines = [" ".join(f"w{int(i)}" for i in torch.randint(0, 95, (20,), generator=generator)) for _ in range(40)]
    with open(corpus_path, "w") as f:
        f.write("\n".join(lines))


def tiny_recipe(tmp_path, teacher_folder, **args) -> dict:
    """A CLI recipe distilling the tiny teacher into 2 of its layers on the tiny corpus."""
    return {
        "task": "causal_lm",
        "teacher": {"model_name_or_path": str(teacher_folder)},
        "student": {"init": "teacher_layers", "layers": [0, 2]},
        "data": {"text_file": str(tmp_path / "corpus.txt"), "block_size": 16},
        "args": {
            "output_dir": str(tmp_path / "student"),
            "report_to": [],
            "use_cpu": True,
            "per_device_train_batch_size": 4,
            "save_strategy": "no",
            "disable_tqdm": True,
            **args,
        },
    }
