"""Every bad input named in the spec gets a clear error that names the argument and the value."""

import pytest
import torch
from datasets import Dataset
from tiny_models import VOCAB, PlainClassifier, collate, examples, llama
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from hf_distill import DistillationTrainer


def tokenizer(tokens):
    vocab = {tok: i for i, tok in enumerate(tokens)}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token=tokens[0])))


WORDS = ["<unk>"] + [f"w{i}" for i in range(1, 90)]


def test_missing_teacher(training_args):
    with pytest.raises(ValueError, match="No teacher: pass `teacher_model=`"):
        DistillationTrainer(model=llama(), args=training_args())


def test_incompatible_tokenizers_name_the_first_differing_token(training_args):
    swapped = WORDS[:7] + ["w8", "w7"] + WORDS[9:]
    with pytest.raises(ValueError, match=r"token id 7 is 'w7' for the student but 'w8' for the teacher"):
        DistillationTrainer(
            model=llama(),
            teacher_model=llama(64, 2),
            args=training_args(),
            processing_class=tokenizer(WORDS),
            teacher_processing_class=tokenizer(swapped),
        )


def test_different_vocab_sizes_without_tokenizers_are_refused(training_args):
    with pytest.raises(ValueError, match=f"student predicts over {VOCAB} tokens and the teacher over 128"):
        DistillationTrainer(model=llama(), teacher_model=llama(64, 2, vocab=128), args=training_args())


def test_padded_vocabulary_is_compared_over_the_shared_entries(training_args):
    """Same tokenizer, embeddings padded to different sizes (as Qwen2.5 0.5B vs 7B): compare the shared rows."""
    student, teacher = llama(32, 1, vocab=VOCAB), llama(64, 2, vocab=128)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=training_args(),
        processing_class=tokenizer(WORDS),
        teacher_processing_class=tokenizer(WORDS),
    )
    batch = collate(examples("causal_lm", 4))
    student.eval()
    with torch.no_grad():
        got = trainer.compute_loss(student, batch)
        s = student(input_ids=batch["input_ids"]).logits[:, :-1, :VOCAB].double()
        t = teacher(input_ids=batch["input_ids"]).logits[:, :-1, :VOCAB].double()
    valid = batch["labels"][:, 1:] != -100
    kd = (torch.softmax(t, -1) * (torch.log_softmax(t, -1) - torch.log_softmax(s, -1))).sum(-1)
    torch.testing.assert_close(got.double(), kd[valid].mean(), rtol=1e-5, atol=1e-6)


def test_output_without_logits(training_args):
    rows = examples("plain", 4)
    trainer = DistillationTrainer(
        model=PlainClassifier(key="scores"),
        teacher_model=PlainClassifier(),
        args=training_args(max_steps=1),
        train_dataset=Dataset.from_list(rows),
        data_collator=collate,
    )
    with pytest.raises(ValueError, match=r"student's forward returned no `logits` \(got \['scores'\]\)"):
        trainer.train()


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("kd_loss", "kl", "kd_loss='kl' is not a known divergence; use one of: forward_kl, reverse_kl, jsd, tvd"),
        ("jsd_beta", 1.5, r"jsd_beta=1.5 must lie in \[0, 1\]"),
        ("jsd_beta", -0.1, r"jsd_beta=-0.1 must lie in \[0, 1\]"),
        ("kd_temperature", 0.0, "kd_temperature=0.0 must be > 0"),
        ("kd_temperature", -1.0, "kd_temperature=-1.0 must be > 0"),
        ("kd_weight", -0.5, "kd_weight=-0.5 must be >= 0"),
        ("ce_weight", -1.0, "ce_weight=-1.0 must be >= 0"),
    ],
)
def test_invalid_config_fields(field, value, message, training_args):
    with pytest.raises(ValueError, match=message):
        training_args(**{field: value})


def test_both_weights_zero(training_args):
    with pytest.raises(ValueError, match="kd_weight and ce_weight are both 0"):
        training_args(kd_weight=0.0, ce_weight=0.0)


def test_ce_weight_without_labels_in_the_batch(training_args):
    rows = [{k: v for k, v in r.items() if k != "labels"} for r in examples("causal_lm", 4)]
    trainer = DistillationTrainer(
        model=llama(),
        teacher_model=llama(64, 2),
        args=training_args(max_steps=1, ce_weight=0.5),
        train_dataset=Dataset.from_list(rows),
        data_collator=collate,
    )
    with pytest.raises(ValueError, match="ce_weight=0.5 needs labels, but this batch has no `labels`"):
        trainer.train()


def test_teacher_dispatched_to_another_device(training_args):
    teacher = llama(64, 2)
    teacher.hf_device_map = {"model": "cuda:1", "lm_head": "cuda:1"}
    with pytest.raises(ValueError, match=r"teacher_model is dispatched over \['cuda:1'\].*student trains on cpu"):
        DistillationTrainer(model=llama(), teacher_model=teacher, args=training_args())


def test_teacher_without_weights(training_args):
    with torch.device("meta"):
        teacher = llama(64, 2)
    with pytest.raises(ValueError, match="teacher_model has parameters on the 'meta' device"):
        DistillationTrainer(model=llama(), teacher_model=teacher, args=training_args())


def test_compute_loss_func_is_refused(training_args):
    with pytest.raises(ValueError, match="compute_loss_func is not supported"):
        DistillationTrainer(model=llama(), teacher_model=llama(64, 2), args=training_args(), compute_loss_func=print)


def test_classifiers_with_different_label_counts(training_args):
    rows = examples("plain", 4)
    teacher = PlainClassifier()
    teacher.net[-1] = torch.nn.Linear(16, 5)
    trainer = DistillationTrainer(
        model=PlainClassifier(),
        teacher_model=teacher,
        args=training_args(max_steps=1),
        train_dataset=Dataset.from_list(rows),
        data_collator=collate,
    )
    with pytest.raises(ValueError, match="student logits have 3 classes and teacher logits 5"):
        trainer.train()


def test_columns_the_loss_needs_survive_remove_unused_columns(training_args):
    """A plain module's forward names no labels; Trainer alone would drop the column and train on nothing."""
    rows = examples("plain", 8)
    trainer = DistillationTrainer(
        model=PlainClassifier(),
        teacher_model=PlainClassifier(),
        args=training_args(max_steps=1, logging_steps=1, ce_weight=1.0, remove_unused_columns=True),
        train_dataset=Dataset.from_list([{**r, "unused": 1} for r in rows]),
        data_collator=collate,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    assert set(batch) == {"features", "labels"}
    trainer.train()
    assert "ce_loss" in trainer.state.log_history[0]
