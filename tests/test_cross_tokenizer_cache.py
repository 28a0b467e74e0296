"""Teacher caches across tokenizers (issue 18): a cache of the teacher's own tokens and top-k trains students of other
tokenizers; with k = V it gives the live cross-tokenizer loss; refusals name the field."""

import copy
import os

import pytest
import torch
from datasets import Dataset
from tiny_models import PARITY_ARGS
from tokenizer_pairs import (
    CORPUS,
    PadCollator,
    byte_level_bpe,
    permuted,
    sentencepiece_bpe,
    text_rows,
    tiny_causal_lm,
)

from hf_distill import DistillationTrainer
from hf_distill.cross_tokenizer.alignment import TokenAligner
from hf_distill.cross_tokenizer.vocabulary import token_bytes, tokenizer_hash
from hf_distill.losses.cross_tokenizer import ChunkSelection, topk_teacher_targets
from hf_distill.offline.cache import (
    CACHE_INFO_FILE,
    IDS,
    NEXT_LOGPROB,
    OFFSETS,
    TEACHER_INPUT_IDS,
    TEACHER_TOKENIZER_DIR,
    CacheInfo,
    load_teacher_cache,
)
from hf_distill.offline.writer import cache_teacher

TEXTS = [CORPUS[0], CORPUS[1] + " " + CORPUS[2], CORPUS[3], CORPUS[7], "héllo wörld 🙂 日本"]
RUN = {**PARITY_ARGS, "per_device_train_batch_size": 5, "preflight": "off"}


@pytest.fixture(scope="module")
def byte_level():
    return byte_level_bpe()


@pytest.fixture(scope="module")
def sentencepiece():
    return sentencepiece_bpe()


def _write(folder, teacher, tokenizer, k, temperature=2.0, labels=True, dtype="float32"):
    rows = text_rows(tokenizer, TEXTS)
    if not labels:
        rows = [{key: v for key, v in row.items() if key != "labels"} for row in rows]
    return cache_teacher(
        teacher, Dataset.from_list(rows), str(folder), k=k, temperature=temperature, logprob_dtype=dtype,
        collator=PadCollator(tokenizer), tokenizer=tokenizer, teacher_tokenized=True, progress=False,
    )  # fmt: skip


def _cache_trainer(training_args, folder, student, student_tok, out="out", **fields):
    args = training_args(output_dir=out, **{**RUN, "kd_temperature": 2.0, **fields})
    return DistillationTrainer(
        model=student, teacher_cache=str(folder), args=args, data_collator=PadCollator(student_tok),
        processing_class=student_tok,
    )  # fmt: skip


def _loss(trainer, batch):
    trainer.model.zero_grad()
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


# ---- the format ----


def test_the_cache_holds_the_teachers_own_tokens_offsets_and_next_token_logprobs(tmp_path, sentencepiece):
    torch.manual_seed(0)
    teacher = tiny_causal_lm(len(sentencepiece))
    info = _write(tmp_path / "c", teacher, sentencepiece, k=4)
    assert info.format_version == 2 and info.fingerprint.teacher_tokenizer_hash == tokenizer_hash(sentencepiece)
    assert os.path.isdir(tmp_path / "c" / TEACHER_TOKENIZER_DIR)
    cache = load_teacher_cache(str(tmp_path / "c"))
    assert "input_ids" not in cache.dataset.column_names and "attention_mask" not in cache.dataset.column_names
    table = token_bytes(sentencepiece)
    for row, text in zip(cache.dataset, TEXTS):
        ids = row[TEACHER_INPUT_IDS]
        assert ids == sentencepiece(text).input_ids and len(row[IDS]) == len(ids)
        assert b"".join(table[i] or b"" for i in ids) == text.encode()
        assert row[OFFSETS][-1] == len(text.encode()) and row[OFFSETS][0] == 0  # <bos> holds no bytes
        with torch.no_grad():
            log_probs = torch.log_softmax(teacher(input_ids=torch.tensor([ids])).logits[0], -1)
        expected = log_probs[:-1].gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)
        torch.testing.assert_close(torch.tensor(row[NEXT_LOGPROB][:-1]), expected, rtol=1e-5, atol=1e-5)
        assert row[NEXT_LOGPROB][-1] == 0.0


def test_a_same_tokenizer_cache_keeps_its_format_and_digest(tmp_path, byte_level):
    teacher = tiny_causal_lm(len(byte_level))
    info = cache_teacher(
        teacher, Dataset.from_list(text_rows(byte_level, TEXTS[:2])), str(tmp_path / "c"), k=4,
        collator=PadCollator(byte_level), tokenizer=byte_level, progress=False,
    )  # fmt: skip
    assert info.format_version == 1 and info.fingerprint.teacher_tokenizer_hash is None
    with open(tmp_path / "c" / CACHE_INFO_FILE) as f:
        assert '"teacher_tokenizer_hash": null' in f.read()
    fields = {k: v for k, v in vars(info.fingerprint).items() if k != "teacher_tokenizer_hash"}
    import dataclasses
    import hashlib
    import json

    assert dataclasses.is_dataclass(info.fingerprint)
    assert info.fingerprint.digest() == hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


# ---- the pure top-k targets ----


def test_topk_targets_put_the_tail_in_the_rest_bucket_or_renormalise():
    # one chunk, first teacher position 0; teacher vocabulary 4 -> buckets [0, 0, 1, rest=2]; top-2 = ids 0, 2
    selection = ChunkSelection(
        student_first=torch.tensor([0]), teacher_first=torch.tensor([0]), student_member=torch.tensor([0]),
        student_slot=torch.tensor([0]), teacher_member=torch.tensor([0, 1]), teacher_slot=torch.tensor([0, 0]),
        multi=torch.tensor([True]), bytes=torch.tensor([3]), student_next=torch.tensor([1]),
    )  # fmt: skip
    ids = torch.tensor([[[0, 2], [1, 0]]])
    logprobs = torch.tensor([[[0.5, 0.3], [0.6, 0.1]]]).log()
    tail = torch.tensor([[0.2, 0.3]])
    next_logprob = torch.tensor([[-1.0, -2.0]])
    to_shared = torch.tensor([0, 0, 1, 2])
    rows, _, chunk = topk_teacher_targets(
        "exact", ids, logprobs, tail, next_logprob, selection, to_shared, 3, 5, rest_bucket=2
    )
    torch.testing.assert_close(rows.exp(), torch.tensor([[0.5, 0.3, 0.2]]))
    torch.testing.assert_close(chunk, torch.tensor([-3.0]))
    rows, _, _ = topk_teacher_targets("chunk", ids, logprobs, tail, next_logprob, selection, to_shared, 3, 5, None)
    torch.testing.assert_close(rows.exp(), torch.tensor([[0.625, 0.375, 0.0]]))
    ordered, cut, _ = topk_teacher_targets("uld", ids, logprobs, tail, next_logprob, selection, None, 0, 1, None)
    torch.testing.assert_close(ordered, torch.tensor([[0.5]]))
    torch.testing.assert_close(cut, torch.tensor([0.5]))  # the cached tail 0.2 plus the truncated 0.3


# ---- training through the cache ----


@pytest.mark.slow
@pytest.mark.parametrize("method", ["exact", "chunk", "uld"])
def test_a_cache_of_one_tokenizer_trains_a_student_of_another(
    tmp_path, training_args, byte_level, sentencepiece, method
):
    torch.manual_seed(0)
    dtype = {"exact": "float32", "chunk": "float16", "uld": "uint8"}[method]
    teacher = tiny_causal_lm(len(sentencepiece), hidden=48)
    with torch.no_grad():  # a peaked teacher: near-uniform models give ULD no gradient (every sorted sign alike)
        teacher.lm_head.weight.mul_(100)
    _write(tmp_path / "c", teacher, sentencepiece, k=8, dtype=dtype)
    trainer = _cache_trainer(
        training_args, tmp_path / "c", tiny_causal_lm(len(byte_level)), byte_level, cross_tokenizer=method,
        max_steps=6, learning_rate=1.0,
    )  # fmt: skip
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    record = trainer.lineage()
    assert record.teacher["kind"] == "cache"
    assert record.objective["cross_tokenizer"]["teacher_tokenizer_sha256"] == tokenizer_hash(sentencepiece)


@pytest.mark.slow
@pytest.mark.parametrize("chunk", [0, 8], ids=["logits", "chunked"])
@pytest.mark.parametrize("method", ["exact", "chunk", "uld"])
@pytest.mark.parametrize("direction", ["sp_to_bl", "bl_to_sp"])
def test_a_full_cache_gives_the_live_cross_tokenizer_loss(
    tmp_path, training_args, byte_level, sentencepiece, method, chunk, direction
):
    teacher_tok, student_tok = (sentencepiece, byte_level) if direction == "sp_to_bl" else (byte_level, sentencepiece)
    torch.manual_seed(0)
    teacher = tiny_causal_lm(len(teacher_tok), hidden=48, layers=2)
    student = tiny_causal_lm(len(student_tok))
    _write(tmp_path / "c", teacher, teacher_tok, k=len(teacher_tok))
    fields = {"cross_tokenizer": method, "kd_chunk_size": chunk, "ce_weight": 0.5, "kd_loss": "forward_kl"}
    cached = _cache_trainer(training_args, tmp_path / "c", copy.deepcopy(student), student_tok, "a", **fields)
    live = DistillationTrainer(
        model=copy.deepcopy(student), teacher_model=teacher,
        args=training_args(output_dir="b", **{**RUN, "kd_temperature": 2.0, **fields}),
        train_dataset=Dataset.from_list(text_rows(student_tok, TEXTS)), data_collator=PadCollator(student_tok),
        processing_class=student_tok, teacher_processing_class=teacher_tok,
    )  # fmt: skip
    assert cached.kd_chunk_size == live.kd_chunk_size == chunk
    assert type(cached.teacher_model).__name__ == "CrossTokenizerCachedTeacher"
    cached_rows = [cached.train_dataset[i] for i in range(len(TEXTS))]
    cached_batch = cached.data_collator(cached_rows)
    live_batch = live.data_collator(text_rows(student_tok, TEXTS))
    assert torch.equal(cached_batch["input_ids"], live_batch["input_ids"])
    for name in ("teacher_input_ids", "student_chunk", "teacher_chunk", "chunk_bytes"):
        assert torch.equal(cached_batch[name], live_batch[name]), name
    loss, grads = _loss(cached, cached_batch)
    live_loss, live_grads = _loss(live, live_batch)
    kd, live_kd = cached._train_metrics.summarize()["kd_loss"], live._train_metrics.summarize()["kd_loss"]
    assert live_kd > 0.01 and kd == pytest.approx(live_kd, rel=1e-5)
    assert loss.item() == pytest.approx(live_loss.item(), rel=1e-5)
    for name, grad in live_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow
def test_one_cache_serves_students_of_two_tokenizers(tmp_path, training_args, byte_level, sentencepiece):
    torch.manual_seed(0)
    third = byte_level_bpe(vocab_size=280)  # the teacher's: a third tokenizer
    assert tokenizer_hash(third) != tokenizer_hash(byte_level)
    _write(tmp_path / "c", tiny_causal_lm(len(third), hidden=48), third, k=6)
    for tokenizer, out in ((byte_level, "s1"), (sentencepiece, "s2")):
        trainer = _cache_trainer(
            training_args, tmp_path / "c", tiny_causal_lm(len(tokenizer)), tokenizer, out, cross_tokenizer="chunk",
            max_steps=3,
        )  # fmt: skip
        rows = trainer.train_dataset
        assert rows[0]["input_ids"] == tokenizer(TEXTS[0]).input_ids
        trainer.train()
        losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
        assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))


def test_cache_rows_as_eval_dataset_become_the_students_and_report_bits_per_byte(
    tmp_path, training_args, byte_level, sentencepiece
):
    torch.manual_seed(0)
    _write(tmp_path / "c", tiny_causal_lm(len(sentencepiece), hidden=48), sentencepiece, k=8)
    trainer = _cache_trainer(
        training_args, tmp_path / "c", tiny_causal_lm(len(byte_level)), byte_level, cross_tokenizer="exact"
    )
    trainer.eval_dataset = trainer.teacher.prepare_eval_data(load_teacher_cache(str(tmp_path / "c")).dataset)
    assert trainer.eval_dataset[0]["input_ids"] == byte_level(TEXTS[0]).input_ids
    metrics = trainer.evaluate()
    for who in ("student", "teacher"):
        assert 0.5 < metrics[f"eval_{who}_bits_per_byte"] < 12, metrics


# ---- refusals ----


def test_a_teacher_tokenized_cache_without_cross_tokenizer_is_refused_naming_it(
    tmp_path, training_args, byte_level, sentencepiece
):
    _write(tmp_path / "c", tiny_causal_lm(len(sentencepiece)), sentencepiece, k=4)
    with pytest.raises(ValueError, match=r"teacher's own tokens.*set cross_tokenizer"):
        _cache_trainer(training_args, tmp_path / "c", tiny_causal_lm(len(byte_level)), byte_level)


def test_a_same_tokenizer_cache_with_a_student_of_another_tokenizer_is_refused_naming_the_field(
    tmp_path, training_args, byte_level, sentencepiece
):
    cache_teacher(
        tiny_causal_lm(len(sentencepiece)), Dataset.from_list(text_rows(sentencepiece, TEXTS)), str(tmp_path / "c"),
        k=4, temperature=2.0, collator=PadCollator(sentencepiece), tokenizer=sentencepiece, progress=False,
    )  # fmt: skip
    for fields in ({}, {"cross_tokenizer": "auto"}):
        with pytest.raises(ValueError, match=r"tokenizer_sha256 differs.*teacher_tokenized=True"):
            _cache_trainer(training_args, tmp_path / "c", tiny_causal_lm(len(byte_level)), byte_level, **fields)


def test_a_changed_teacher_tokenizer_in_the_cache_is_refused(tmp_path, training_args, byte_level, sentencepiece):
    _write(tmp_path / "c", tiny_causal_lm(len(sentencepiece)), sentencepiece, k=4)
    byte_level_bpe(vocab_size=280).save_pretrained(str(tmp_path / "c" / TEACHER_TOKENIZER_DIR))
    with pytest.raises(ValueError, match=r"teacher_tokenizer_hash"):
        _cache_trainer(
            training_args, tmp_path / "c", tiny_causal_lm(len(byte_level)), byte_level, cross_tokenizer="exact"
        )


def test_align_pair_equals_align_on_the_teachers_own_tokenization(byte_level, sentencepiece):
    for student, teacher in ((byte_level, sentencepiece), (sentencepiece, byte_level)):
        aligner = TokenAligner(student, teacher)
        for text in TEXTS:
            ids = student(text).input_ids + [student.eos_token_id]
            expected = aligner.align(ids)
            assert aligner.align_pair(ids, expected.teacher_ids) == expected
            teacher_ids = teacher(text).input_ids + [teacher.eos_token_id]
            rebuilt, labels = aligner.student_row(teacher_ids, [-100, -100] + teacher_ids[2:])
            assert rebuilt == ids and len(labels) == len(ids)
        with pytest.raises(ValueError, match=r"do not hold the same text"):
            aligner.align_pair(student(TEXTS[0]).input_ids, teacher(TEXTS[1]).input_ids)


def test_the_cache_info_records_the_teacher_tokenizer(tmp_path, sentencepiece):
    _write(tmp_path / "c", tiny_causal_lm(len(sentencepiece)), sentencepiece, k=4, labels=False)
    info = CacheInfo.load(str(tmp_path / "c"))
    assert info.fingerprint.teacher_tokenized and info.fingerprint.vocab_size == len(sentencepiece)


@pytest.mark.slow
def test_without_a_rest_bucket_the_top_k_is_renormalised(tmp_path, training_args, byte_level):
    # A permuted copy shares every token: no rest bucket for the tail, so the teacher's top-k is renormalised.
    shuffled, permutation = permuted(byte_level, seed=3)
    _write(tmp_path / "c", tiny_causal_lm(len(byte_level)), byte_level, k=5)
    trainer = _cache_trainer(
        training_args, tmp_path / "c", tiny_causal_lm(len(shuffled)), shuffled, cross_tokenizer="exact"
    )
    assert not trainer.teacher_model.vocabulary.has_rest and trainer.teacher_model.rest_bucket is None
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(TEXTS))])
    targets = trainer.teacher_model.targets({k: v for k, v in batch.items() if k != "labels"}, batch["labels"])
    torch.testing.assert_close(targets.first_rows.exp().sum(-1), torch.ones(targets.first_rows.shape[0]))
    assert int((targets.first_rows > -80).sum(-1).max()) <= 5  # only the top-k's buckets hold mass
    trainer.train()
    assert all(torch.isfinite(torch.tensor(log["loss"])) for log in trainer.state.log_history if "loss" in log)
