"""Filling a teacher cache from a served teacher (`cache_teacher("openai-compatible:...")`, `hf-distill
cache-teacher`): the same rows as the model in process, resumable, fingerprinted by the served model's name and
reported revision, in the student's or (for another tokenizer) the teacher's own tokenization."""

from __future__ import annotations

import pytest
import torch
import yaml
from datasets import Dataset
from served_server import start_server
from tiny_models import PARITY_ARGS, save_tiny_teacher
from tokenizer_pairs import CORPUS, PadCollator, byte_level_bpe, sentencepiece_bpe, text_rows, tiny_causal_lm
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_distill import DistillationTrainer, cache_teacher, load_teacher_cache
from hf_distill.offline.cache import IDS, LOGPROBS, NEXT_LOGPROB, OFFSETS, TAIL, TEACHER_INPUT_IDS
from hf_distill.served.client import ServedTeacherError

NAME = "tiny-teacher"


@pytest.fixture(scope="module")
def teacher_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teacher")
    save_tiny_teacher(folder, folder / "corpus.txt")
    return folder


@pytest.fixture(scope="module")
def tokenizer(teacher_folder):
    return AutoTokenizer.from_pretrained(teacher_folder)


def rows(tokenizer, teacher_folder, n=10):
    lines = (teacher_folder / "corpus.txt").read_text().splitlines()[:n]
    encoded = [tokenizer(" ".join(line.split()[: 5 + (i % 4) * 3])) for i, line in enumerate(lines)]
    return Dataset.from_list([{"input_ids": e["input_ids"], "attention_mask": e["attention_mask"]} for e in encoded])


def spec(handle) -> str:
    return f"openai-compatible:{handle.url}#{NAME}"


def write(teacher, dataset, folder, tokenizer, **kwargs):
    return cache_teacher(
        teacher, dataset, str(folder), k=kwargs.pop("k", 8), logprob_dtype="float32", batch_size=3, shard_size=4,
        collator=PadCollator(tokenizer), tokenizer=tokenizer, progress=False, **kwargs,
    )  # fmt: skip


def assert_same_rows(a, b, columns=(IDS, LOGPROBS, TAIL)):
    """Equal rows, but for each row's last position: it predicts beyond the row (never trained on), and a server
    scores the prompt only, so a served cache holds zeros there."""
    assert len(a.dataset) == len(b.dataset)
    for row_a, row_b in zip(a.dataset, b.dataset):
        for column in columns:
            got, expected = torch.tensor(row_a[column]), torch.tensor(row_b[column])
            if column in (IDS, LOGPROBS, TAIL):
                assert not got[-1].any()
                got, expected = got[:-1], expected[:-1]
            torch.testing.assert_close(got, expected, atol=2e-5, rtol=0, msg=column)


def test_a_cache_filled_from_the_server_holds_the_rows_the_model_in_process_writes(
    teacher_folder, tokenizer, tmp_path
):
    handle = start_server(teacher_folder, NAME, revision="rev-1")
    try:
        dataset = rows(tokenizer, teacher_folder)
        info = write(spec(handle), dataset, tmp_path / "served", tokenizer)
    finally:
        handle.stop()
    model = AutoModelForCausalLM.from_pretrained(teacher_folder)
    write(model, dataset, tmp_path / "local", tokenizer)
    assert_same_rows(load_teacher_cache(str(tmp_path / "served")), load_teacher_cache(str(tmp_path / "local")))
    teacher = info.fingerprint.teacher
    assert teacher["name"] == NAME and teacher["revision"] == "rev-1" and teacher["kind"] == "served"
    assert "127.0.0.1" not in (tmp_path / "served" / "teacher_cache.json").read_text()
    assert info.total_rows == len(dataset) and len(info.shards) == 3


def test_filling_resumes_after_the_server_died_and_another_revision_is_refused(teacher_folder, tokenizer, tmp_path):
    dataset = rows(tokenizer, teacher_folder)
    folder = tmp_path / "cache"
    # The probe is request 1; shard 0 is 2 batches of 3 and 1 rows: the server dies during shard 1.
    dying = start_server(teacher_folder, NAME, revision="rev-1", die_after=4)
    try:
        with pytest.raises(ServedTeacherError):
            write(spec(dying), dataset, folder, tokenizer, served_settings=_quick())
    finally:
        dying.stop()
    kept = load_shards(folder)
    assert kept == ["shard-00000.parquet"]
    handle = start_server(teacher_folder, NAME, revision="rev-1")
    try:
        info = write(spec(handle), dataset, folder, tokenizer)
        assert handle.state.scored == 1 + 2 + 1  # the probe, then shards 1 (2 batches) and 2 (1 batch) only
        assert info.total_rows == len(dataset) and len(info.shards) == 3
    finally:
        handle.stop()
    other = start_server(teacher_folder, NAME, revision="rev-2")
    try:
        with pytest.raises(ValueError, match="other settings \\(teacher"):
            write(spec(other), dataset, folder, tokenizer)
    finally:
        other.stop()


def _quick():
    from hf_distill.served.endpoint import ServedSettings

    return ServedSettings(retries=0, timeout=5.0)


def load_shards(folder):
    import json

    return [s["file"] for s in json.loads((folder / "teacher_cache.json").read_text())["shards"]]


def test_a_temperature_other_than_one_needs_the_whole_distribution(teacher_folder, tokenizer, tmp_path):
    handle = start_server(teacher_folder, NAME)
    try:
        dataset = rows(tokenizer, teacher_folder, n=3)
        with pytest.raises(ValueError, match="temperature=2.0 with a served teacher"):
            write(spec(handle), dataset, tmp_path / "a", tokenizer, temperature=2.0)
        vocab = len(tokenizer)
        write(spec(handle), dataset, tmp_path / "served", tokenizer, temperature=2.0, k=vocab)
    finally:
        handle.stop()
    model = AutoModelForCausalLM.from_pretrained(teacher_folder)
    write(model, dataset, tmp_path / "local", tokenizer, temperature=2.0, k=vocab)
    assert_same_rows(load_teacher_cache(str(tmp_path / "served")), load_teacher_cache(str(tmp_path / "local")))


def test_a_teacher_tokenized_cache_from_the_server_trains_a_student_of_another_tokenizer(tmp_path, training_args):
    """The served teacher tokenizes like sentencepiece_bpe; the student is byte-level: the server fills a cache of
    the teacher's own tokens (byte offsets, next-token log-probs), equal to the in-process one, and the student
    trains from it across tokenizers exactly as from the in-process cache."""
    teacher_tok, student_tok = sentencepiece_bpe(), byte_level_bpe()
    torch.manual_seed(0)
    teacher = tiny_causal_lm(len(teacher_tok))
    folder = tmp_path / "teacher"
    teacher.save_pretrained(folder)
    teacher_tok.save_pretrained(folder)
    texts = [CORPUS[0], CORPUS[1], CORPUS[3], "héllo wörld 🙂"]
    dataset = Dataset.from_list(text_rows(teacher_tok, texts))
    handle = start_server(folder, NAME)
    try:
        write(spec(handle), dataset, tmp_path / "served", teacher_tok, teacher_tokenized=True, k=16)
    finally:
        handle.stop()
    write(teacher, dataset, tmp_path / "local", teacher_tok, teacher_tokenized=True, k=16)
    served, local = load_teacher_cache(str(tmp_path / "served")), load_teacher_cache(str(tmp_path / "local"))
    assert_same_rows(served, local, (IDS, LOGPROBS, TAIL, NEXT_LOGPROB, OFFSETS, TEACHER_INPUT_IDS))

    def trained(cache):
        torch.manual_seed(1)
        args = training_args(
            output_dir=tmp_path / cache.name["name"], **{**PARITY_ARGS, "per_device_train_batch_size": 4},
            cross_tokenizer="auto", preflight="off",
        )  # fmt: skip
        trainer = DistillationTrainer(
            model=tiny_causal_lm(len(student_tok)), teacher_cache=cache, args=args,
            data_collator=PadCollator(student_tok), processing_class=student_tok,
        )  # fmt: skip
        trainer.train()
        return {n: p.detach() for n, p in trainer.model.named_parameters()}

    a, b = trained(served), trained(local)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4, msg=name)


def test_hf_distill_cache_teacher_fills_a_cache_from_a_served_teacher(teacher_folder, tmp_path, capsys):
    from hf_distill.cli import main

    handle = start_server(teacher_folder, NAME)
    recipe = {
        "task": "causal_lm",
        "teacher": {"model_name_or_path": spec(handle), "tokenizer": str(teacher_folder)},
        "student": {"init": "pretrained", "model_name_or_path": str(teacher_folder)},
        "data": {"text_file": str(teacher_folder / "corpus.txt"), "block_size": 16},
        "cache": {"output_dir": str(tmp_path / "cache"), "k": 8},
        "args": {
            "output_dir": str(tmp_path / "student"),
            "report_to": [],
            "use_cpu": True,
            "teacher_request_concurrency": 3,
        },
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    try:
        code = main(["cache-teacher", str(path)])
    finally:
        handle.stop()
    out, err = capsys.readouterr()
    assert code in (None, 0), err[-2000:]
    assert "train:" in out and "top-8" in out
    cache = load_teacher_cache(str(tmp_path / "cache" / "train"))
    assert cache.info.fingerprint.teacher["kind"] == "served" and len(cache.dataset) > 0


def test_hf_distill_train_refuses_a_served_teacher_naming_the_ways_on(teacher_folder, tmp_path):
    from hf_distill.cli import main

    recipe = {
        "task": "causal_lm",
        "teacher": {
            "model_name_or_path": "openai-compatible:http://127.0.0.1:9/v1#m",
            "tokenizer": str(teacher_folder),
        },
        "student": {"init": "pretrained", "model_name_or_path": str(teacher_folder)},
        "data": {"text_file": str(teacher_folder / "corpus.txt"), "block_size": 16},
        "args": {"output_dir": str(tmp_path / "student"), "report_to": [], "use_cpu": True},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ValueError, match="cache-teacher"):
        main(["train", str(path)])
