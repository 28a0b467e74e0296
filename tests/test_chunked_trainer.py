"""The trainer's memory-efficient path: same loss and same gradients on every student parameter as the logits path,
for tied and untied heads, seq2seq, soft-capped logits; logits never built in training; safe fallbacks."""

import pytest
import torch
from datasets import Dataset
from tiny_models import collate, examples, llama, t5
from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaForCausalLM

from hf_distill import DistillationConfig, DistillationTrainer
from hf_distill.losses import DIVERGENCES


def gemma2(hidden=32, layers=1):
    config = Gemma2Config(
        vocab_size=97,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=64,
        final_logit_softcapping=3.0,
        pad_token_id=0,
    )
    return Gemma2ForCausalLM(config)


def tied_llama(hidden, layers):
    model = llama(hidden, layers)
    model.config.tie_word_embeddings = True
    model.tie_weights()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    return model


PAIRS = {
    "llama": (lambda: llama(32, 1), lambda: llama(64, 2), "causal_lm"),
    "llama_tied": (lambda: tied_llama(32, 1), lambda: tied_llama(64, 2), "causal_lm"),
    "t5": (lambda: t5(32, 1, dropout=0.0), lambda: t5(48, 2), "seq2seq"),  # attention dropout is functional
    "gemma2_softcap": (lambda: gemma2(32, 1), lambda: gemma2(48, 2), "causal_lm"),
}


def _trainer(tmp_path, student, teacher, chunk, **kw):
    args = DistillationConfig(
        output_dir=str(tmp_path), report_to=[], use_cpu=True, kd_chunk_size=chunk, disable_tqdm=True, **kw
    )
    return DistillationTrainer(model=student, teacher_model=teacher, args=args, data_collator=collate)


def _loss_and_grads(trainer, student, batch):
    student.zero_grad()
    student.train()
    # dropout off so both paths see identical activations (train mode is what selects the chunked path)
    for module in student.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    loss, outputs = trainer.compute_loss(student, batch, return_outputs=True, num_items_in_batch=None)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}, outputs


@pytest.mark.parametrize("pair", list(PAIRS))
@pytest.mark.parametrize("loss", list(DIVERGENCES))
def test_chunked_equals_logits_path_on_every_parameter(tmp_path, pair, loss):
    make_student, make_teacher, task = PAIRS[pair]
    torch.manual_seed(0)
    student, teacher = make_student(), make_teacher()
    batch = collate(examples(task, 4))
    kw = {"kd_loss": loss, "kd_temperature": 2.0, "ce_weight": 0.3, "jsd_beta": 0.3}
    chunked = _trainer(tmp_path / "c", student, teacher, chunk=5, **kw)  # 5 divides no row count here
    reference = _trainer(tmp_path / "r", student, teacher, chunk=0, **kw)
    loss_c, grads_c, outputs_c = _loss_and_grads(chunked, student, batch)
    loss_r, grads_r, outputs_r = _loss_and_grads(reference, student, batch)
    assert outputs_c["logits"].shape[-1] == 0  # the chunked path really ran: no (B, T, V) logits
    assert outputs_r["logits"].shape[-1] == 97
    torch.testing.assert_close(loss_c, loss_r, rtol=1e-5, atol=1e-7)
    assert grads_c.keys() == grads_r.keys() and len(grads_c) == len(list(student.parameters()))
    for name, grad in grads_r.items():
        torch.testing.assert_close(grads_c[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_training_matches_logits_path_over_steps(tmp_path):
    rows = examples("causal_lm", 8)
    results = []
    for chunk in (3, 0):
        torch.manual_seed(0)
        student, teacher = llama(32, 1), llama(64, 2)
        trainer = _trainer(
            tmp_path / str(chunk),
            student,
            teacher,
            chunk,
            per_device_train_batch_size=2,
            gradient_accumulation_steps=2,
            max_steps=2,
            logging_steps=1,
            save_strategy="no",
            ce_weight=0.5,
        )
        trainer.train_dataset = Dataset.from_list(rows)
        trainer.train()
        results.append((student.state_dict(), [e["loss"] for e in trainer.state.log_history if "loss" in e]))
    (params_c, losses_c), (params_r, losses_r) = results
    assert losses_c == pytest.approx(losses_r, rel=1e-5)
    for name, value in params_r.items():
        torch.testing.assert_close(params_c[name], value, rtol=1e-5, atol=1e-6)


def test_default_chunk_size_follows_the_vocabulary(tmp_path):
    assert _trainer(tmp_path, llama(32, 1), llama(64, 2), None)._chunk_size == 1 << 17  # 2**24 // 97 -> 2**17
    assert _trainer(tmp_path, llama(32, 1, vocab=32768), llama(64, 2, vocab=32768), None)._chunk_size == 512
    assert _trainer(tmp_path, llama(32, 1), llama(64, 2), 0)._chunk_size == 0


def test_classification_heads_keep_the_logits_path(tmp_path):
    from tiny_models import bert_sequence

    assert _trainer(tmp_path, bert_sequence(), bert_sequence(48, 2), None)._chunk_size == 0


class DoubledLogitsForCausalLM(LlamaForCausalLM):
    """A model with a post-head transform the chunked path cannot know about."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 2
        return out


def test_unknown_logit_transform_falls_back_to_the_logits_path(tmp_path):
    torch.manual_seed(0)
    teacher = llama(64, 2)
    student = DoubledLogitsForCausalLM(llama(32, 1).config)
    batch = collate(examples("causal_lm", 4))
    trainer = _trainer(tmp_path / "c", student, teacher, chunk=4)
    loss, _, outputs = _loss_and_grads(trainer, student, batch)
    assert trainer._heads_verified is False and outputs["logits"].shape[-1] == 97
    reference, _, _ = _loss_and_grads(_trainer(tmp_path / "r", student, teacher, chunk=0), student, batch)
    torch.testing.assert_close(loss, reference)


def test_compute_metrics_still_gets_language_model_logits(tmp_path):
    seen = {}

    def compute_metrics(prediction):
        seen["shape"] = prediction.predictions.shape
        return {}

    trainer = _trainer(tmp_path, llama(32, 1), llama(64, 2), 4)
    trainer.compute_metrics = compute_metrics
    metrics = trainer.evaluate(Dataset.from_list(examples("causal_lm", 4)))
    assert seen["shape"] == (4, 10, 97) and "eval_kd_loss" in metrics


def test_negative_chunk_size_is_refused(tmp_path):
    with pytest.raises(ValueError, match="kd_chunk_size=-1 must be >= 0"):
        DistillationConfig(output_dir=str(tmp_path), kd_chunk_size=-1)


def test_linear_head_reads_the_logit_transforms_from_the_config():
    from hf_distill.modeling.lm_head import linear_head

    model = llama(32, 1)
    assert (linear_head(model).logit_scale, linear_head(model).softcap) == (1.0, None)
    model.config.logit_scale = 0.5  # Cohere multiplies the logits
    assert linear_head(model).logit_scale == 0.5
    del model.config.logit_scale
    model.config.logits_scaling = 4.0  # Granite divides them
    assert linear_head(model).logit_scale == 0.25
    assert linear_head(gemma2()).softcap == 3.0
