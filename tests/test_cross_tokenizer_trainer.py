"""Cross-tokenizer distillation through the trainer (issue 18): opt-in and refusals, the exact reduction to
same-tokenizer distillation under a permutation of the vocabulary (loss and gradients, both loss paths), gradient
accumulation over aligned chunks, bits per byte and the lineage, and an on-policy step against a hand-written
reference."""

import copy
import math

import pytest
import torch
from datasets import Dataset
from tiny_models import PARITY_ARGS
from tokenizer_pairs import (
    CORPUS,
    PadCollator,
    byte_level_bpe,
    permuted,
    permuted_model,
    sentencepiece_bpe,
    text_rows,
    tiny_causal_lm,
)

from hf_distill import DistillationTrainer
from hf_distill.losses import per_token_divergence

TEXTS = [CORPUS[0], CORPUS[1] + " " + CORPUS[2], CORPUS[3], CORPUS[7]]


@pytest.fixture(scope="module")
def byte_level():
    return byte_level_bpe()


@pytest.fixture(scope="module")
def sentencepiece():
    return sentencepiece_bpe()


def _trainer(training_args, student, teacher, student_tok, teacher_tok=None, rows=None, **fields):
    args = training_args(**{**PARITY_ARGS, "per_device_train_batch_size": 4, **fields})
    return DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=Dataset.from_list(rows or text_rows(student_tok, TEXTS, prompt_tokens=2)),
        data_collator=PadCollator(student_tok),
        processing_class=student_tok,
        teacher_processing_class=teacher_tok,
    )


def _loss_and_grads(trainer, rows):
    batch = trainer.data_collator(rows)
    trainer.model.zero_grad()
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, trainer._train_metrics.summarize()


# ---- opt-in, refusals ----


def test_a_different_tokenizer_is_refused_by_default_naming_cross_tokenizer(training_args, byte_level, sentencepiece):
    student, teacher = tiny_causal_lm(len(byte_level)), tiny_causal_lm(len(sentencepiece))
    with pytest.raises(ValueError, match=r"cross_tokenizer='auto'"):
        _trainer(training_args, student, teacher, byte_level, sentencepiece)


def test_an_unknown_method_is_refused_naming_field_and_choices(training_args):
    with pytest.raises(ValueError, match=r"cross_tokenizer='ulm'.*auto, uld, exact, chunk"):
        training_args(cross_tokenizer="ulm")


def test_missing_tokenizers_are_named(training_args, byte_level, sentencepiece):
    student, teacher = tiny_causal_lm(len(byte_level)), tiny_causal_lm(len(sentencepiece))
    args = training_args(cross_tokenizer="auto")
    rows = Dataset.from_list(text_rows(byte_level, TEXTS))
    with pytest.raises(ValueError, match=r"student's tokenizer.*processing_class="):
        DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=rows)
    with pytest.raises(ValueError, match=r"teacher's tokenizer.*teacher_processing_class="):
        DistillationTrainer(
            model=student, teacher_model=teacher, args=args, train_dataset=rows, processing_class=byte_level
        )


def test_teacher_generated_steps_are_refused_with_another_tokenizer(training_args, byte_level, sentencepiece):
    student, teacher = tiny_causal_lm(len(byte_level)), tiny_causal_lm(len(sentencepiece))
    with pytest.raises(ValueError, match=r"teacher_generation_fraction=0.5 .*re-tokenized"):
        _trainer(
            training_args, student, teacher, byte_level, sentencepiece, cross_tokenizer="auto",
            teacher_generation_fraction=0.5,
        )  # fmt: skip


# ---- the exact reduction: a permuted vocabulary is the same tokenizer ----


@pytest.mark.parametrize("chunk", [0, 8], ids=["logits", "chunked"])
@pytest.mark.parametrize("method", ["exact", "chunk", "auto"])
@pytest.mark.parametrize("family", ["byte_level", "sentencepiece"])
def test_a_permuted_vocabulary_reduces_to_same_tokenizer_distillation(training_args, family, method, chunk, request):
    tokenizer = request.getfixturevalue(family)
    shuffled, permutation = permuted(tokenizer, seed=1)
    torch.manual_seed(0)
    student, teacher = tiny_causal_lm(len(tokenizer)), tiny_causal_lm(len(tokenizer), hidden=48, layers=2)
    rows = text_rows(tokenizer, TEXTS, prompt_tokens=2)
    fields = {"kd_temperature": 2.0, "ce_weight": 0.5, "kd_loss": "forward_kl", "kd_chunk_size": chunk}
    same = _trainer(training_args, copy.deepcopy(student), teacher, tokenizer, tokenizer, **fields)
    cross = _trainer(
        training_args, copy.deepcopy(student), permuted_model(teacher, permutation), tokenizer, shuffled,
        cross_tokenizer=method, **fields,
    )  # fmt: skip
    assert cross.kd_chunk_size == same.kd_chunk_size == chunk
    loss, grads, logs = _loss_and_grads(same, rows)
    cross_loss, cross_grads, cross_logs = _loss_and_grads(cross, rows)
    assert cross_loss.item() == pytest.approx(loss.item(), rel=1e-5)
    assert cross_logs["kd_loss"] == pytest.approx(logs["kd_loss"], rel=1e-5, abs=1e-6)
    assert cross_logs["ce_loss"] == pytest.approx(logs["ce_loss"], rel=1e-5, abs=1e-6)
    assert grads.keys() == cross_grads.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(cross_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("loss", ["reverse_kl", "jsd"])
def test_the_reduction_holds_for_other_divergences(training_args, byte_level, loss):
    shuffled, permutation = permuted(byte_level, seed=2)
    torch.manual_seed(1)
    student, teacher = tiny_causal_lm(len(byte_level)), tiny_causal_lm(len(byte_level), hidden=48)
    rows = text_rows(byte_level, TEXTS)
    same = _trainer(training_args, copy.deepcopy(student), teacher, byte_level, byte_level, kd_loss=loss)
    cross = _trainer(
        training_args, copy.deepcopy(student), permuted_model(teacher, permutation), byte_level, shuffled,
        kd_loss=loss, cross_tokenizer="exact",
    )  # fmt: skip
    (loss_same, grads, _), (loss_cross, cross_grads, _) = _loss_and_grads(same, rows), _loss_and_grads(cross, rows)
    assert loss_cross.item() == pytest.approx(loss_same.item(), rel=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(cross_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_uld_under_a_permutation_equals_its_own_same_tokenizer_value(training_args, byte_level):
    shuffled, permutation = permuted(byte_level, seed=3)
    torch.manual_seed(2)
    student, teacher = tiny_causal_lm(len(byte_level)), tiny_causal_lm(len(byte_level), hidden=48)
    rows = text_rows(byte_level, TEXTS)
    # Sorting forgets which id is which: two different permutations of the teacher's ids give one ULD value.
    plain = _trainer(
        training_args, copy.deepcopy(student), permuted_model(teacher, permutation), byte_level, shuffled,
        cross_tokenizer="uld",
    )  # fmt: skip
    twice, permutation2 = permuted(byte_level, seed=4)
    other = _trainer(
        training_args, copy.deepcopy(student), permuted_model(teacher, permutation2), byte_level, twice,
        cross_tokenizer="uld",
    )  # fmt: skip
    (a, grads_a, _), (b, grads_b, _) = _loss_and_grads(plain, rows), _loss_and_grads(other, rows)
    assert a.item() > 0
    assert b.item() == pytest.approx(a.item(), rel=1e-5)
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, rtol=1e-5, atol=1e-6, msg=name)


# ---- a real cross pair of tiny tokenizers ----


@pytest.mark.slow
@pytest.mark.parametrize("method", ["exact", "chunk", "uld"])
def test_gradient_accumulation_is_exact_over_aligned_chunks(training_args, byte_level, sentencepiece, method):
    torch.manual_seed(0)
    student, teacher = tiny_causal_lm(len(byte_level)), tiny_causal_lm(len(sentencepiece), hidden=48)
    rows = text_rows(byte_level, TEXTS, prompt_tokens=3)
    results = []
    for batch, accumulation in ((4, 1), (2, 2), (1, 4)):
        trainer = _trainer(
            training_args, copy.deepcopy(student), teacher, byte_level, sentencepiece, rows=rows,
            cross_tokenizer=method, per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
            ce_weight=0.3, kd_temperature=2.0, max_steps=1,
        )  # fmt: skip
        trainer.train()
        log = next(e for e in trainer.state.log_history if "loss" in e)
        results.append((dict(trainer.model.named_parameters()), log))
    (params, log), others = results[0], results[1:]
    for other_params, other_log in others:
        assert other_log["loss"] == pytest.approx(log["loss"], rel=1e-5)
        assert other_log["student_bits_per_byte"] == pytest.approx(log["student_bits_per_byte"], rel=1e-5)
        for name, value in params.items():
            torch.testing.assert_close(other_params[name].detach(), value.detach(), rtol=1e-5, atol=1e-6, msg=name)


def test_training_logs_bits_per_byte_and_the_lineage_records_the_alignment(training_args, byte_level, sentencepiece):
    torch.manual_seed(0)
    student, teacher = tiny_causal_lm(len(byte_level)), tiny_causal_lm(len(sentencepiece), hidden=48)
    trainer = _trainer(training_args, student, teacher, byte_level, sentencepiece, cross_tokenizer="auto", max_steps=1)
    trainer.train()
    log = next(e for e in trainer.state.log_history if "loss" in e)
    # an untrained model of V tokens spends about log2(V) bits per token; these tokens hold 1-4 bytes each
    for who, vocab in (("student", len(byte_level)), ("teacher", len(sentencepiece))):
        assert 0.5 < log[f"{who}_bits_per_byte"] < math.log2(vocab) + 1, log
    record = trainer.lineage().objective["cross_tokenizer"]
    assert record["method"] == "chunk"  # auto
    assert record["student_tokenizer_sha256"] != record["teacher_tokenizer_sha256"]
    assert record["student_tokenizer_sha256"].startswith("sha256:")
    assert 0 < record["shared_tokens"] < len(byte_level)
    assert "chunk method" in trainer.lineage().objective["description"]


def test_compare_with_teacher_reports_bits_per_byte(training_args, byte_level, sentencepiece):
    torch.manual_seed(0)
    student, teacher = tiny_causal_lm(len(byte_level)), tiny_causal_lm(len(sentencepiece), hidden=48)
    trainer = _trainer(
        training_args, student, teacher, byte_level, sentencepiece, cross_tokenizer="exact", max_steps=1
    )
    trainer.eval_dataset = Dataset.from_list(text_rows(byte_level, TEXTS[:2]))
    comparison = trainer.compare_with_teacher()
    assert comparison["metric"]["name"] == "bits_per_byte"
    assert comparison["metric"]["higher_is_better"] is False
    for who in ("teacher", "student"):
        assert 0.5 < comparison["metric"][who] < 12
    assert comparison["ce_loss"]["teacher"] is None  # per-token losses of two tokenizers are not comparable
    trainer.save_model()
    trainer.create_model_card(license="apache-2.0")
    card = open(f"{trainer.args.output_dir}/README.md").read()
    assert "| bits_per_byte (lower is better) |" in card
    assert "| Tokenizers | the teacher's differs from the student's" in card and "exact method" in card
    assert "cross_tokenizer:" in card  # the lineage metadata


# ---- on-policy: the student's completions re-tokenized for the teacher ----


def _bytes_of_byte_level(tokenizer, ids):
    """Independent of the library: GPT-2's printable alphabet back to bytes."""
    alphabet = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, extra = alphabet[:], 0
    for b in range(256):
        if b not in alphabet:
            alphabet.append(b)
            chars.append(256 + extra)
            extra += 1
    decode = {chr(c): b for b, c in zip(alphabet, chars)}
    return [bytes(decode[ch] for ch in tokenizer.convert_ids_to_tokens(i)) for i in ids]


def _bytes_of_sentencepiece(tokenizer, ids):
    out = []
    for token in tokenizer.convert_ids_to_tokens(ids):
        if token.startswith("<0x") and token.endswith(">"):
            out.append(bytes([int(token[3:-1], 16)]))
        else:
            out.append(token.replace("▁", " ").encode())
    return out


@pytest.mark.slow
def test_an_on_policy_greedy_step_equals_a_hand_written_reference(training_args, byte_level, sentencepiece):
    torch.manual_seed(0)
    student, teacher = tiny_causal_lm(len(byte_level)), tiny_causal_lm(len(sentencepiece), hidden=48, layers=2)
    ascii_ids = [i for i in range(len(byte_level)) if all(b < 128 for b in _bytes_of_byte_level(byte_level, [i])[0])]
    suppress = sorted(set(range(len(byte_level))) - set(ascii_ids))  # completions stay ASCII: text is well defined
    eos = byte_level.eos_token_id
    prompts = [byte_level(t)["input_ids"][:4] for t in TEXTS]
    rows = [{"input_ids": p + [eos], "attention_mask": [1] * 5, "labels": [-100] * 4 + [eos]} for p in prompts]
    trainer = _trainer(
        training_args, student, teacher, byte_level, sentencepiece, rows=rows, cross_tokenizer="exact",
        kd_loss="reverse_kl", on_policy_fraction=1.0, generation_temperature=0.0, max_new_tokens=6, max_steps=1,
        generation_kwargs={"suppress_tokens": suppress, "eos_token_id": eos}, learning_rate=0.0,
    )  # fmt: skip
    # the reference: greedy completions, the text, the teacher's tokens of it, chunk starts, reverse KL over the
    # buckets of tokens with identical bytes (plus the rest), every chunk start of the completion, per completion token
    student.eval()
    total, count = 0.0, 0
    s_bytes_all = _bytes_of_byte_level(byte_level, range(len(byte_level)))
    t_bytes_all = _bytes_of_sentencepiece(sentencepiece, range(len(sentencepiece)))
    specials = set(sentencepiece.all_special_ids)
    by_bytes = {}
    for i, b in enumerate(t_bytes_all):
        if i not in specials:
            by_bytes.setdefault(b, len(by_bytes))
    t_bucket = [by_bytes.get(b, -1) if i not in specials else -1 for i, b in enumerate(t_bytes_all)]
    s_bucket = [
        by_bytes.get(b, -1) if i not in set(byte_level.all_special_ids) else -1 for i, b in enumerate(s_bytes_all)
    ]
    shared = sorted(set(s_bucket) & set(t_bucket) - {-1})
    remap = {b: k for k, b in enumerate(shared)}
    rest = len(shared)
    s_map = torch.tensor([remap.get(b, rest) for b in s_bucket])
    t_map = torch.tensor([remap.get(b, rest) for b in t_bucket])
    s_map[eos], t_map[sentencepiece.eos_token_id] = rest + 1, rest + 1  # the two EOS share one bucket
    buckets = rest + 2

    def coarse(logits, mapping):
        probs = torch.zeros(buckets, dtype=torch.float64).index_add_(0, mapping, logits.double().softmax(-1))
        return probs.log()

    with torch.no_grad():
        for prompt in prompts:
            out = student.generate(
                input_ids=torch.tensor([prompt]), max_new_tokens=6, do_sample=False, suppress_tokens=suppress,
                eos_token_id=eos, pad_token_id=eos,
            )[0, len(prompt):].tolist()  # fmt: skip
            completion = out[: out.index(eos) + 1] if eos in out else out
            ids = prompt + completion
            text_tokens = [t for t in ids if t != eos]
            pieces = _bytes_of_byte_level(byte_level, text_tokens)
            text = b"".join(pieces).decode()
            t_ids = sentencepiece(text)["input_ids"] + ([sentencepiece.eos_token_id] if completion[-1] == eos else [])
            t_pieces = _bytes_of_sentencepiece(sentencepiece, t_ids[1:])  # after <bos>
            s_ends = {sum(map(len, pieces[: k + 1])): k for k in range(len(pieces))}
            t_ends = {sum(map(len, t_pieces[: k + 1])): k for k in range(len(t_pieces))}
            s_logits = student(input_ids=torch.tensor([ids])).logits[0]
            t_logits = teacher(input_ids=torch.tensor([t_ids])).logits[0]
            starts = sorted(set(s_ends) & set(t_ends))  # chunk starts: boundaries inside the text
            for boundary in starts:
                s_pos, t_pos = s_ends[boundary], t_ends[boundary] + 1  # t_pos counts the <bos>
                if s_pos + 1 < len(prompt) or s_pos + 1 >= len(ids):
                    continue  # predicts a prompt token, or nothing
                ps, pt = coarse(s_logits[s_pos], s_map), coarse(t_logits[t_pos], t_map)
                total += per_token_divergence(ps[None].float(), pt[None].float(), "reverse_kl", 1.0).item()
            count += len(completion)
    trainer.train()
    log = next(e for e in trainer.state.log_history if "loss" in e)
    assert log["kd_loss"] == pytest.approx(total / count, rel=1e-4)


@pytest.mark.slow
def test_a_lora_student_trains_across_tokenizers_on_the_memory_efficient_path(
    training_args, byte_level, sentencepiece
):
    from peft import LoraConfig

    torch.manual_seed(0)
    student, teacher = tiny_causal_lm(len(byte_level)), tiny_causal_lm(len(sentencepiece), hidden=48)
    args = training_args(**{**PARITY_ARGS, "per_device_train_batch_size": 4, "cross_tokenizer": "chunk"})
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=Dataset.from_list(text_rows(byte_level, TEXTS)),
        data_collator=PadCollator(byte_level),
        processing_class=byte_level,
        teacher_processing_class=sentencepiece,
        peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj", "lm_head"], task_type="CAUSAL_LM"),
    )
    assert trainer.kd_chunk_size > 0  # the LoRA head's adapter inputs travel with the hidden states
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logs) == 2 and all(math.isfinite(e["loss"]) for e in logs)
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(after[n], value) for n, value in before.items() if "lora_B" in n)


@pytest.mark.parametrize("method", ["exact", "chunk", "uld"])
def test_long_batches_project_the_teachers_first_rows_per_block_with_the_same_result(
    training_args, byte_level, sentencepiece, method, monkeypatch
):
    """Past a size the teacher's `(chunks, buckets)` targets are not kept for the step but projected per block of the
    loss (memory flat in the sequence length): the loss and every gradient are unchanged."""
    import hf_distill.cross_tokenizer.teacher as cross_teacher

    torch.manual_seed(0)
    student, teacher = tiny_causal_lm(len(byte_level)), tiny_causal_lm(len(sentencepiece), hidden=48)
    rows = text_rows(byte_level, TEXTS, prompt_tokens=2)
    results = []
    for limit in (2**24, 0):  # kept whole, then projected per block
        monkeypatch.setattr(cross_teacher, "_EAGER_FIRST_ROW_ELEMENTS", limit)
        trainer = _trainer(
            training_args, copy.deepcopy(student), teacher, byte_level, sentencepiece, cross_tokenizer=method,
            kd_chunk_size=8, ce_weight=0.5, kd_temperature=2.0,
        )  # fmt: skip
        batch = trainer.data_collator(rows)
        targets = trainer.teacher.targets(
            {k: v for k, v in batch.items() if k != "labels"}, batch["labels"], chunked=True
        )
        assert (targets.first_rows is None) == (limit == 0)
        results.append(_loss_and_grads(trainer, rows))
    (loss, grads, _), (lazy_loss, lazy_grads, _) = results
    assert lazy_loss.item() == pytest.approx(loss.item(), rel=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(lazy_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_uld_reports_the_top1_agreement_of_the_two_models_top_tokens(training_args, byte_level):
    """ULD compares sorted vectors, which forget token identities; the agreement is still the models' own: the
    student's top token and the teacher's in one shared bucket. A teacher that is the student under permuted ids
    agrees everywhere; an unrelated one almost nowhere."""
    shuffled, permutation = permuted(byte_level, seed=5)
    torch.manual_seed(0)
    student = tiny_causal_lm(len(byte_level))
    values = {}
    for name, teacher in (("same", permuted_model(student, permutation)), ("other", tiny_causal_lm(len(byte_level)))):
        trainer = _trainer(training_args, copy.deepcopy(student), teacher, byte_level, shuffled, cross_tokenizer="uld")
        trainer.eval_dataset = Dataset.from_list(text_rows(byte_level, TEXTS))
        values[name] = trainer.evaluate()["eval_agreement"]
    assert values["same"] == pytest.approx(1.0)
    assert values["other"] < 0.5


def test_a_teacher_tokenizer_larger_than_its_head_is_refused(training_args, byte_level, sentencepiece):
    student, teacher = tiny_causal_lm(len(byte_level)), tiny_causal_lm(len(byte_level))  # head of 300 rows
    with pytest.raises(ValueError, match=r"teacher's tokenizer has 456 tokens but the teacher's head has 300 rows"):
        _trainer(training_args, student, teacher, byte_level, sentencepiece, cross_tokenizer="auto")


def test_a_teacher_tokenization_longer_than_its_positions_is_refused(training_args, byte_level, sentencepiece):
    student, teacher = tiny_causal_lm(len(byte_level)), tiny_causal_lm(len(sentencepiece))
    teacher.config.max_position_embeddings = 8
    trainer = _trainer(training_args, student, teacher, byte_level, sentencepiece, cross_tokenizer="auto")
    with pytest.raises(ValueError, match=r"tokens long, more than its max_position_embeddings=8: cut"):
        _loss_and_grads(trainer, text_rows(byte_level, TEXTS))


def _with_normalizer(tokenizer, normalizer):
    changed = copy.deepcopy(tokenizer)
    changed.backend_tokenizer.normalizer = normalizer
    return changed


def test_a_dummy_prefix_teacher_llama2_style_is_aligned(byte_level, sentencepiece):
    from tokenizers import normalizers

    from hf_distill.cross_tokenizer.alignment import TokenAligner

    llama2_like = _with_normalizer(
        sentencepiece, normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    )
    assert llama2_like.convert_ids_to_tokens(llama2_like("To be")["input_ids"])[1] == "▁To"  # the dummy prefix
    plain = TokenAligner(byte_level, sentencepiece).align(byte_level("To be, or not")["input_ids"])
    prefixed = TokenAligner(byte_level, llama2_like).align(byte_level("To be, or not")["input_ids"])
    assert prefixed.chunk_bytes and sum(prefixed.chunk_bytes) == sum(plain.chunk_bytes)
    assert prefixed.student_chunk.count(-1) == plain.student_chunk.count(-1)


def test_text_a_normalizer_changes_is_read_by_the_teacher_not_distilled_and_said_once(byte_level, caplog):
    from tokenizers import normalizers

    from hf_distill.cross_tokenizer.alignment import TokenAligner

    nfc = _with_normalizer(byte_level, normalizers.NFC())
    aligner = TokenAligner(sentencepiece_bpe(), nfc)
    rows = [sentencepiece_bpe()(text)["input_ids"] for text in ("To be or not", "a cafe\u0301 latte")]
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    with caplog.at_level("WARNING", logger="hf_distill"):
        columns = aligner.collate(ids, mask)
        aligner.collate(ids, mask)
    assert aligner.skipped_segments == 2
    assert sum("read by the teacher but not distilled" in r.message for r in caplog.records) == 1
    assert (columns["student_chunk"][0] >= 0).any() and not (columns["student_chunk"][1] >= 0).any()
    with pytest.raises(ValueError, match=r"does not tokenize text byte-exactly.*byte offset"):
        aligner.collate(ids[1:], mask[1:])  # nothing of the batch aligns: this tokenizer, refused
