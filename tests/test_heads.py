"""Heads with a bias added after the head (`final_logits_bias`: BART, mBART, Pegasus, Marian, Blenderbot): the
memory-efficient path treats it as the head's bias and equals the logits path; a head check that throws falls back
to the logits path with one info line."""

import logging

import pytest
import torch
from tiny_models import collate, examples, llama
from transformers import BartConfig, BartForConditionalGeneration, MarianConfig, MarianMTModel

from hf_distill import DistillationConfig, DistillationTrainer
from hf_distill.modeling.lm_head import capture_head_input, linear_head

VOCAB = 97


def bart(d_model: int, layers: int) -> BartForConditionalGeneration:
    config = BartConfig(
        vocab_size=VOCAB,
        d_model=d_model,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=2 * d_model,
        decoder_ffn_dim=2 * d_model,
        max_position_embeddings=64,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=2,
        forced_eos_token_id=None,
    )
    return _with_logits_bias(BartForConditionalGeneration(config))


def marian(d_model: int, layers: int) -> MarianMTModel:
    config = MarianConfig(
        vocab_size=VOCAB,
        d_model=d_model,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=2 * d_model,
        decoder_ffn_dim=2 * d_model,
        max_position_embeddings=64,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=0,
    )
    return _with_logits_bias(MarianMTModel(config))


def _with_logits_bias(model):
    # Fresh models start with a zero bias, which would hide a missing term: make it large and position-dependent.
    with torch.no_grad():
        model.final_logits_bias.copy_(torch.linspace(-3.0, 3.0, VOCAB).roll(7).unsqueeze(0))
    return model


PAIRS = {"bart": (lambda: bart(32, 1), lambda: bart(48, 2)), "marian": (lambda: marian(32, 1), lambda: marian(48, 2))}


def _trainer(tmp_path, student, teacher, chunk, **kw):
    args = DistillationConfig(
        output_dir=str(tmp_path), report_to=[], use_cpu=True, kd_chunk_size=chunk, disable_tqdm=True, **kw
    )
    return DistillationTrainer(model=student, teacher_model=teacher, args=args, data_collator=collate)


def _loss_and_grads(trainer, student, batch):
    student.zero_grad()
    student.train()
    loss, outputs = trainer.compute_loss(student, batch, return_outputs=True, num_items_in_batch=None)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}, outputs


@pytest.mark.parametrize("pair", list(PAIRS))
def test_final_logits_bias_is_the_head_bias(pair):
    model = PAIRS[pair][0]()
    batch = collate(examples("seq2seq", 2))
    inputs = {"input_ids": batch["input_ids"], "decoder_input_ids": batch["input_ids"][:, :5]}
    model.eval()
    with torch.no_grad():
        logits = model(**inputs).logits  # (2, 5, V)
        with capture_head_input(model) as captured:
            empty = model(**inputs).logits
        head = linear_head(model)
        projected = head.transform(head.linear(captured.features().reshape(-1, 32))).reshape(logits.shape)
    assert empty.shape == (2, 5, 0)
    assert model.final_logits_bias.shape == (1, VOCAB)  # restored after the capture
    torch.testing.assert_close(projected, logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pair", list(PAIRS))
def test_chunked_path_equals_logits_path_with_final_logits_bias(tmp_path, pair):
    make_student, make_teacher = PAIRS[pair]
    torch.manual_seed(0)
    student, teacher = make_student(), make_teacher()
    with torch.no_grad():  # the teacher's bias differs from the student's, so each model's own must be used
        teacher.final_logits_bias.mul_(-0.5)
    batch = collate(examples("seq2seq", 4))
    kw = {"kd_temperature": 2.0, "ce_weight": 0.3}
    chunked = _trainer(tmp_path / "c", student, teacher, chunk=5, **kw)
    reference = _trainer(tmp_path / "r", student, teacher, chunk=0, **kw)
    loss_c, grads_c, outputs_c = _loss_and_grads(chunked, student, batch)
    loss_r, grads_r, outputs_r = _loss_and_grads(reference, student, batch)
    assert chunked._heads_verified is True and outputs_c["logits"].shape[-1] == 0  # the chunked path really ran
    assert outputs_r["logits"].shape[-1] == VOCAB
    torch.testing.assert_close(loss_c, loss_r, rtol=1e-5, atol=1e-6)
    trainable = [name for name, p in student.named_parameters() if p.requires_grad]  # Marian's positions are fixed
    assert sorted(grads_c) == sorted(grads_r) == sorted(trainable)
    for name in grads_r:
        torch.testing.assert_close(grads_c[name], grads_r[name], rtol=1e-4, atol=1e-5, msg=name)


def test_bart_trains_on_the_chunked_path(tmp_path):
    from datasets import Dataset

    torch.manual_seed(0)
    student, teacher = bart(32, 1), bart(48, 2)
    trainer = _trainer(tmp_path, student, teacher, chunk=8, max_steps=3, logging_steps=1, save_strategy="no")
    trainer.train_dataset = Dataset.from_list(examples("seq2seq", 8))
    trainer.train()
    assert trainer._heads_verified is True
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 3 and all(0 < loss < 100 for loss in losses)


class _ExplodingCapture(torch.nn.Module):
    """A causal LM whose forward fails when its head returns no vocabulary (it indexes the last logit)."""

    def __init__(self, model):
        super().__init__()
        self.inner = model
        self.config = model.config

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def forward(self, input_ids, attention_mask=None):
        logits = self.inner(input_ids=input_ids, attention_mask=attention_mask).logits
        logits[..., -1] += 0.0  # IndexError on the empty (B, T, 0) logits of the capture
        return {"logits": logits}


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_head_check_that_throws_falls_back_with_one_info_line(tmp_path):
    torch.manual_seed(0)
    teacher, student = llama(64, 2), _ExplodingCapture(llama(32, 1))
    batch = collate(examples("causal_lm", 4))
    trainer = _trainer(tmp_path / "c", student, teacher, chunk=4)
    trainer._chunk_size = 4  # a plain module is not known to shift labels; force the memory-efficient path
    trainer._shift_labels = True
    reference = _trainer(tmp_path / "r", student, teacher, chunk=0)
    reference._shift_labels = True
    caplog, root = _Records(), logging.getLogger("hf_distill")
    root.addHandler(caplog)
    try:
        loss, _, outputs = _loss_and_grads(trainer, student, batch)
    finally:
        root.removeHandler(caplog)
    assert trainer._heads_verified is False and outputs["logits"].shape[-1] == VOCAB
    lines = [r for r in caplog.records if "could not check" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO and "IndexError" in lines[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "LM heads" in r.getMessage()]
    expected, _, _ = _loss_and_grads(reference, student, batch)
    torch.testing.assert_close(loss, expected)


def _no_prepare_model(kind: str, d_model: int, layers: int):
    """Seq2seq models that build decoder inputs only inside `forward` (no `prepare_decoder_input_ids_from_labels`)."""
    from transformers import (
        BlenderbotConfig,
        BlenderbotForConditionalGeneration,
        BlenderbotSmallConfig,
        BlenderbotSmallForConditionalGeneration,
        M2M100Config,
        M2M100ForConditionalGeneration,
    )

    config_class, model_class = {
        "m2m100": (M2M100Config, M2M100ForConditionalGeneration),
        "blenderbot": (BlenderbotConfig, BlenderbotForConditionalGeneration),
        "blenderbot_small": (BlenderbotSmallConfig, BlenderbotSmallForConditionalGeneration),
    }[kind]
    config = config_class(
        vocab_size=VOCAB, d_model=d_model, encoder_layers=layers, decoder_layers=layers, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=2 * d_model, decoder_ffn_dim=2 * d_model,
        max_position_embeddings=64, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, pad_token_id=3,
        bos_token_id=1, eos_token_id=2, decoder_start_token_id=5, forced_eos_token_id=None,
    )  # fmt: skip
    return model_class(config)


@pytest.mark.parametrize("kind", ["m2m100", "blenderbot", "blenderbot_small"])
def test_decoder_inputs_without_prepare_method_match_the_models_own(tmp_path, kind):
    from datasets import Dataset

    from hf_distill.modeling.forward import decoder_input_ids_from_labels

    torch.manual_seed(0)
    student, teacher = _no_prepare_model(kind, 32, 1), _no_prepare_model(kind, 48, 2)
    assert not hasattr(student, "prepare_decoder_input_ids_from_labels")
    batch = collate(examples("seq2seq", 2))
    ours = decoder_input_ids_from_labels(student, batch["labels"])
    assert (ours[:, 0] == 5).all() and not (ours == -100).any()
    student.eval()
    with torch.no_grad():
        own = student(input_ids=batch["input_ids"], labels=batch["labels"]).logits
        built = student(input_ids=batch["input_ids"], decoder_input_ids=ours).logits
    torch.testing.assert_close(built, own)
    for chunk in (0, 8):  # the logits path and the memory-efficient path
        trainer = _trainer(tmp_path / str(chunk), student, teacher, chunk=chunk, max_steps=1, save_strategy="no")
        trainer.train_dataset = Dataset.from_list(examples("seq2seq", 4))
        trainer.train()
        assert trainer.state.global_step == 1
