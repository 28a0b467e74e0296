"""Offline teachers: a cache of the teacher's top-k distributions, written once (resumably), verified when read, and
trained from with no teacher loaded."""

import json
import os

import pyarrow.parquet as pq
import pytest
import torch
from datasets import Dataset
from tiny_models import PARITY_ARGS, VOCAB, llama

import hf_distill.offline.writer as cache_writer
from hf_distill import DistillationTrainer
from hf_distill.offline.cache import CACHE_INFO_FILE, IDS, LOGPROBS, TAIL, CacheInfo, load_teacher_cache
from hf_distill.offline.writer import cache_teacher


def _data(n=6, length=8, seed=0):
    ids = torch.randint(1, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed)).tolist()
    return Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * length] * n, "labels": ids})


def _ragged(seed=0):
    # Examples of different lengths: each is cached at its own length and padded back at training time.
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(1, VOCAB, (n,), generator=g).tolist() for n in (5, 8, 3, 7)]
    return Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows], "labels": rows})


def _pad(examples):
    length = max(len(e["input_ids"]) for e in examples)

    def padded(key, value):
        return torch.tensor([e[key] + [value] * (length - len(e[key])) for e in examples])

    return {
        "input_ids": padded("input_ids", 0),
        "attention_mask": padded("attention_mask", 0),
        "labels": padded("labels", -100),
    }


@pytest.fixture
def teacher():
    torch.manual_seed(1)
    return llama(32, 2)


# What these runs set beyond the `training_args` fixture's defaults.
RUN = {**PARITY_ARGS, "per_device_train_batch_size": 2, "preflight": "off"}


def test_cache_holds_the_teachers_top_k_at_each_examples_own_length(tmp_path, teacher):
    data = _ragged()
    info = cache_teacher(
        teacher,
        data,
        str(tmp_path / "cache"),
        k=5,
        temperature=2.0,
        logprob_dtype="float32",
        collator=_pad,
        shard_size=3,
        progress=False,
    )
    assert (info.total_rows, info.tokens, len(info.shards)) == (4, 5 + 8 + 3 + 7, 2)
    cache = load_teacher_cache(str(tmp_path / "cache"))
    for row, example in zip(cache.dataset, data):
        with torch.no_grad():
            logits = teacher(input_ids=torch.tensor([example["input_ids"]])).logits[0]
        top, ids = torch.log_softmax(logits / 2.0, -1).topk(5, -1)
        assert row["input_ids"] == example["input_ids"] and len(row[IDS]) == len(example["input_ids"])
        assert torch.equal(torch.tensor(row[IDS]), ids)
        torch.testing.assert_close(torch.tensor(row[LOGPROBS]), top, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(torch.tensor(row[TAIL]), 1 - top.exp().sum(-1), rtol=1e-5, atol=1e-6)


def test_training_from_a_full_cache_equals_online_distillation(tmp_path, teacher, training_args):
    # k = V with float32 log-probs and no tail: the sparse objective is the dense one, step for step.
    data = _data()
    cache_teacher(teacher, data, str(tmp_path / "cache"), k=VOCAB, logprob_dtype="float32", progress=False)
    torch.manual_seed(0)
    online = DistillationTrainer(
        model=llama(32, 1), teacher_model=teacher, args=training_args(**RUN, kd_chunk_size=0), train_dataset=data
    )
    online.train()
    torch.manual_seed(0)
    offline = DistillationTrainer(
        model=llama(32, 1), teacher_cache=str(tmp_path / "cache"), args=training_args(tmp_path / "b", **RUN)
    )
    offline.train()
    assert offline.teacher_placement.kind == "cache" and not list(offline.teacher_model.parameters())
    losses = [[log["loss"] for log in t.state.log_history if "loss" in log] for t in (online, offline)]
    assert len(losses[0]) == 2 and losses[0] == pytest.approx(losses[1], rel=1e-5)
    for (name, a), b in zip(online.model.named_parameters(), offline.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_ragged_rows_train_with_padding_and_the_student_lineage_names_the_cache(tmp_path, teacher, training_args):
    folder = str(tmp_path / "my-cache")
    cache_teacher(teacher, _ragged(), folder, k=4, collator=_pad, progress=False)
    trainer = DistillationTrainer(
        model=llama(32, 1), teacher_cache=folder, args=training_args(**RUN, ce_weight=0.5), data_collator=_pad
    )
    trainer.train()
    assert all(torch.isfinite(torch.tensor(log["loss"])) for log in trainer.state.log_history if "loss" in log)
    record = trainer.lineage().teacher
    info = CacheInfo.load(folder)
    assert record["kind"] == "cache" and record["architecture"] == "LlamaForCausalLM"
    assert record["cache"] == {"name": "my-cache", "source": "local", "fingerprint": info.fingerprint.digest(), "k": 4}


def test_interrupted_cache_resumes_without_recomputing_finished_shards(tmp_path, teacher, monkeypatch):
    data, folder = _data(n=6), str(tmp_path / "cache")
    original, calls = cache_writer._shard_rows, []

    def interrupted(*args, **kwargs):
        calls.append(len(args[1]))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(cache_writer, "_shard_rows", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cache_teacher(teacher, data, folder, k=3, shard_size=2, progress=False)
    assert [s["file"] for s in CacheInfo.load(folder).shards] == ["shard-00000.parquet"]
    with pytest.raises(ValueError, match="incomplete \\(2 of 6 rows\\)"):
        load_teacher_cache(folder)
    calls.clear()
    monkeypatch.setattr(cache_writer, "_shard_rows", original)
    monkeypatch.setattr(cache_writer, "_shard_rows", lambda *a, **k: (calls.append(len(a[1])), original(*a, **k))[1])
    info = cache_teacher(teacher, data, folder, k=3, shard_size=2, progress=False)
    assert calls == [2, 2]  # only the two missing shards were computed
    fresh = cache_teacher(teacher, data, str(tmp_path / "fresh"), k=3, shard_size=2, progress=False)
    assert [s["sha256"] for s in info.shards] == [s["sha256"] for s in fresh.shards]
    with pytest.raises(ValueError, match="other settings \\(k differ"):
        cache_teacher(teacher, data, folder, k=4, shard_size=2, progress=False)


@pytest.mark.parametrize("damage", ["bytes changed", "shard deleted", "rows dropped"])
def test_a_damaged_shard_is_detected_never_skipped(tmp_path, teacher, damage, training_args):
    folder = str(tmp_path / "cache")
    cache_teacher(teacher, _data(), folder, k=3, shard_size=3, progress=False)
    shard = os.path.join(folder, "shard-00001.parquet")
    if damage == "bytes changed":
        with open(shard, "r+b") as f:
            f.seek(100)
            f.write(b"\x00\x01\x02")
        expected = "shard-00001.parquet is corrupted"
    elif damage == "shard deleted":
        os.remove(shard)
        expected = "shard-00001.parquet is missing"
    else:  # a consistent file (its hash recorded) that lost rows: the row count catches it
        pq.write_table(pq.read_table(shard).slice(0, 2), shard)
        manifest = json.load(open(os.path.join(folder, CACHE_INFO_FILE)))
        from hf_distill.offline.cache import file_sha256

        manifest["shards"][1]["sha256"] = file_sha256(shard)
        json.dump(manifest, open(os.path.join(folder, CACHE_INFO_FILE), "w"))
        expected = "shard-00001.parquet holds 2 rows; 3 were written"
    with pytest.raises((ValueError, FileNotFoundError), match=expected):
        DistillationTrainer(model=llama(32, 1), teacher_cache=folder, args=training_args(**RUN))


def test_storage_per_token_shrinks_with_the_logprob_dtype(tmp_path, teacher):
    sizes = {}
    for dtype in ("float32", "float16", "uint8"):
        folder = str(tmp_path / dtype)
        info = cache_teacher(teacher, _data(), folder, k=16, logprob_dtype=dtype, progress=False)
        sizes[dtype] = info.bytes_on_disk(folder) / info.tokens
    assert sizes["float32"] > sizes["float16"] > sizes["uint8"]
    stored = load_teacher_cache(str(tmp_path / "uint8")).dataset[0][LOGPROBS]
    exact = load_teacher_cache(str(tmp_path / "float32")).dataset[0][LOGPROBS]
    decoded = torch.tensor(stored, dtype=torch.float32) * -0.05
    torch.testing.assert_close(decoded.clamp_min(-12.75), torch.tensor(exact).clamp_min(-12.75), rtol=0, atol=0.026)


def test_mismatched_caches_are_refused_naming_the_field(tmp_path, teacher, training_args):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    def tokenizer(offset):
        vocab = {f"w{i}": (i + offset) % VOCAB for i in range(VOCAB)}
        return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="w0")))

    data, folder = _data(), str(tmp_path / "cache")
    cache_teacher(teacher, data, folder, k=3, tokenizer=tokenizer(0), collator=_pad, progress=False)

    def build(**kwargs):
        args = {k: kwargs.pop(k) for k in ("kd_temperature", "teacher_model_name_or_path") if k in kwargs}
        return DistillationTrainer(
            model=llama(32, 1), teacher_cache=folder, args=training_args(**RUN, **args), **kwargs
        )

    build(processing_class=tokenizer(0), train_dataset=data)  # the same tokenizer and dataset: accepted
    with pytest.raises(ValueError, match="tokenizer_sha256 differs"):
        build(processing_class=tokenizer(1))
    with pytest.raises(ValueError, match="dataset_fingerprint .* differs from train_dataset"):
        build(train_dataset=_data(seed=5))
    with pytest.raises(ValueError, match="temperature 1.0 differs from kd_temperature=2.0"):
        build(kd_temperature=2.0)
    # A cache pins its teacher: another checkpoint under the same folder name is another teacher.
    from transformers import AutoModelForCausalLM

    teacher.save_pretrained(tmp_path / "a" / "teacher")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "a" / "teacher")
    folder = str(tmp_path / "pinned")
    cache_teacher(loaded, data, folder, k=3, progress=False)
    build(teacher_model_name_or_path=str(tmp_path / "a" / "teacher"))
    llama(32, 2).save_pretrained(tmp_path / "b" / "teacher")
    with pytest.raises(ValueError, match="teacher.weights_sha256 '[0-9a-f]{64}' differs from the expected"):
        build(teacher_model_name_or_path=str(tmp_path / "b" / "teacher"))
    with pytest.raises(ValueError, match="teacher_model or teacher_cache, not both"):
        DistillationTrainer(model=llama(32, 1), teacher_model=teacher, teacher_cache=folder, args=training_args(**RUN))


def test_bad_cache_requests(tmp_path, teacher):
    with pytest.raises(ValueError, match=f"k={VOCAB + 1} must be between 1 and the teacher's vocabulary size"):
        cache_teacher(teacher, _data(), str(tmp_path / "a"), k=VOCAB + 1, progress=False)
    with pytest.raises(ValueError, match="no `input_ids` column"):
        cache_teacher(teacher, Dataset.from_dict({"text": ["a b"]}), str(tmp_path / "b"), progress=False)
    with pytest.raises(ValueError, match="logprob_dtype='int4'"):
        cache_teacher(teacher, _data(), str(tmp_path / "c"), logprob_dtype="int4", progress=False)
    with pytest.raises(FileNotFoundError, match="is not a teacher cache"):
        load_teacher_cache(str(tmp_path))


def test_evaluating_on_rows_without_the_cache_columns_says_what_to_do(tmp_path, teacher, training_args):
    cache_teacher(teacher, _data(), str(tmp_path / "cache"), k=3, progress=False)
    trainer = DistillationTrainer(
        model=llama(32, 1), teacher_cache=str(tmp_path / "cache"), args=training_args(**RUN), eval_dataset=_data(2)
    )
    with pytest.raises(ValueError, match="every dataset \\(eval_dataset too\\) must be rows of a cache"):
        trainer.evaluate()
    cache_teacher(teacher, _data(2), str(tmp_path / "eval-cache"), k=3, progress=False)
    metrics = trainer.evaluate(load_teacher_cache(str(tmp_path / "eval-cache")).dataset)
    assert metrics["eval_kd_loss"] > 0 and 0 <= metrics["eval_agreement"] <= 1


@pytest.mark.parametrize("tail", ["bucket", "renormalize"])
@pytest.mark.parametrize("chunk", [3, 16])
def test_chunked_sparse_loss_equals_the_logits_path(tail, chunk):
    # From hidden states and the head, a chunk at a time: the same sums and gradients as from the full logits.
    from hf_distill.losses import HeadInput, KDObjective, Positions, TopK
    from hf_distill.losses.chunked import LinearHead, chunked_sparse_objective_sums
    from hf_distill.losses.sparse import sparse_objective_sums

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 7, 16, generator=g, requires_grad=True)
    weight = torch.randn(VOCAB, 16, generator=g, requires_grad=True)
    teacher = torch.log_softmax(torch.randn(2, 7, VOCAB, generator=g) / 2.0, -1)
    logprobs, ids = teacher.topk(5, -1)
    tail_mass = 1 - logprobs.exp().sum(-1)
    labels = torch.randint(0, VOCAB, (2, 7), generator=g)
    labels[0, :2] = -100
    objective = KDObjective(kd_loss="jsd", kd_temperature=2.0, ce_weight=0.3)
    top_k, positions = TopK(ids, logprobs, tail_mass, tail), Positions(labels, shift_labels=True)
    dense = sparse_objective_sums(objective, hidden @ weight.t(), top_k, positions)
    dense_grads = torch.autograd.grad(dense.total, (hidden, weight))
    chunked = chunked_sparse_objective_sums(objective, HeadInput(hidden, LinearHead(weight)), top_k, positions, chunk)
    chunked_grads = torch.autograd.grad(chunked.total, (hidden, weight))
    for name in ("total", "kd", "ce", "num_targets", "agreement"):
        torch.testing.assert_close(
            getattr(chunked, name).float(), getattr(dense, name).float(), rtol=1e-5, atol=1e-5, msg=name
        )
    for a, b in zip(chunked_grads, dense_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_cache_training_never_builds_the_students_logits(tmp_path, teacher, monkeypatch, training_args):
    import hf_distill.losses.distillation as cached_loss

    cache_teacher(teacher, _data(), str(tmp_path / "cache"), k=4, progress=False)
    used = []
    original = cached_loss.chunked_sparse_objective_sums
    monkeypatch.setattr(
        cached_loss,
        "chunked_sparse_objective_sums",
        lambda *a, **k: (used.append(a[1].hidden.shape), original(*a, **k))[1],
    )
    trainer = DistillationTrainer(model=llama(32, 1), teacher_cache=str(tmp_path / "cache"), args=training_args(**RUN))
    trainer.train()
    assert trainer.kd_chunk_size > 0 and used and all(shape[-1] == 32 for shape in used)  # hidden states, not logits
