"""A teacher behind a real HTTP server (tests/served_server.py, vLLM's completions schema) trains the student exactly
like the same model loaded in-process (sparse loss at k = V equals the dense one), reads batches ahead in order, and
stops clearly when the server fails or answers for other tokens."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset
from served_server import start_server
from tiny_models import PARITY_ARGS, llama, save_tiny_teacher
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling

from hf_distill import DistillationTrainer
from hf_distill.served.client import ServedTeacherError
from hf_distill.served.protocol import ServedResponseError

NAME = "tiny-teacher"
VOCAB = 97


@pytest.fixture(scope="module")
def teacher_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teacher")
    save_tiny_teacher(folder, folder / "corpus.txt")
    return folder


@pytest.fixture(scope="module")
def tokenizer(teacher_folder):
    tok = AutoTokenizer.from_pretrained(teacher_folder)
    tok.padding_side = "right"
    return tok


@pytest.fixture(scope="module")
def server(teacher_folder):
    handle = start_server(teacher_folder, NAME, revision="abc123")
    yield handle
    handle.stop()


def spec(handle) -> str:
    return f"openai-compatible:{handle.url}#{NAME}"


def dataset(tokenizer, teacher_folder, n=12):
    lines = (teacher_folder / "corpus.txt").read_text().splitlines()[:n]
    # Rows of different lengths, so that batches are padded.
    rows = [tokenizer(" ".join(line.split()[: 6 + (i % 5) * 3])) for i, line in enumerate(lines)]
    return Dataset.from_list([{"input_ids": r["input_ids"], "attention_mask": r["attention_mask"]} for r in rows])


def student():
    torch.manual_seed(1)
    return llama(32, 1, vocab=VOCAB)


def train(teacher, training_args, tokenizer, teacher_folder, output_dir=None, **fields):
    args = training_args(
        output_dir=output_dir, **{**PARITY_ARGS, "per_device_train_batch_size": 4, "ce_weight": 0.5, **fields}
    )
    trainer = DistillationTrainer(
        model=student(),
        teacher_model=teacher,
        args=args,
        train_dataset=dataset(tokenizer, teacher_folder),
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        processing_class=tokenizer,
    )
    trainer.train()
    return trainer


def params(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


def assert_same(a, b, atol=1e-5):
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=atol, msg=name)


def test_served_teacher_at_k_equal_vocab_trains_like_the_model_in_process(
    server, training_args, tokenizer, teacher_folder, tmp_path
):
    in_process = AutoModelForCausalLM.from_pretrained(teacher_folder)
    local = train(in_process, training_args, tokenizer, teacher_folder, tmp_path / "local")
    served = train(spec(server), training_args, tokenizer, teacher_folder, tmp_path / "served", teacher_top_k=VOCAB)
    assert_same(params(local), params(served))
    for a, b in zip(local.state.log_history, served.state.log_history):
        if "kd_loss" in a:
            assert b["kd_loss"] == pytest.approx(a["kd_loss"], rel=1e-4, abs=1e-6)
    queue = served.teacher.queue
    assert queue.hits == 2 and queue.misses == 0  # each training batch's scores were requested ahead


@pytest.mark.slow
def test_reading_ahead_keeps_the_batch_order(server, training_args, tokenizer, teacher_folder, tmp_path):
    """Two epochs with gradient accumulation: reading 3 batches ahead (across the epoch boundary) trains exactly like
    reading none."""
    fields = {
        "teacher_top_k": 8,
        "max_steps": -1,
        "num_train_epochs": 2,
        "gradient_accumulation_steps": 2,
        "per_device_train_batch_size": 2,
    }
    none = train(spec(server), training_args, tokenizer, teacher_folder, tmp_path / "a", teacher_prefetch=0, **fields)
    ahead = train(spec(server), training_args, tokenizer, teacher_folder, tmp_path / "b", teacher_prefetch=3, **fields)
    assert none.state.global_step == ahead.state.global_step == 6
    assert_same(params(none), params(ahead), atol=1e-6)
    assert ahead.teacher.queue.misses == 0 and ahead.teacher.queue.hits == 12  # every batch was sent ahead
    assert none.teacher.queue.hits == 0 and none.teacher.queue.misses == 12  # every batch scored in the loss


def test_echoed_ids_that_differ_stop_training_before_any_step(teacher_folder, training_args, tokenizer, tmp_path):
    handle = start_server(teacher_folder, NAME)
    try:
        args = training_args(
            output_dir=tmp_path / "o",
            **{**PARITY_ARGS, "per_device_train_batch_size": 4, "teacher_top_k": 4, "teacher_prefetch": 0},
        )
        trainer = DistillationTrainer(
            model=student(),
            teacher_model=spec(handle),
            args=args,
            train_dataset=dataset(tokenizer, teacher_folder),
            data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
            processing_class=tokenizer,
        )
        handle.state.wrong_ids = True  # the probe at setup passed; now the server answers for other tokens
        before = params(trainer)
        with pytest.raises(ServedResponseError, match="prompt_token_ids|echo"):
            trainer.train()
        assert trainer.state.global_step == 0
        assert_same(before, params(trainer), atol=0)
    finally:
        handle.stop()


def test_a_server_that_dies_mid_run_stops_training_and_the_last_checkpoint_is_intact(
    teacher_folder, training_args, tokenizer, tmp_path
):
    handle = start_server(teacher_folder, NAME, die_after=4)  # setup probes once; then batches
    try:
        out = tmp_path / "run"
        with pytest.raises(ServedTeacherError) as error:
            train(
                spec(handle),
                training_args,
                tokenizer,
                teacher_folder,
                out,
                teacher_top_k=4,
                teacher_prefetch=0,
                teacher_request_retries=1,
                max_steps=6,
                save_strategy="steps",
                save_steps=1,
                per_device_train_batch_size=2,
            )
        assert "127.0.0.1" in str(error.value) and NAME in str(error.value)
    finally:
        handle.stop()
    checkpoints = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert checkpoints, "no checkpoint was written before the server died"
    last = checkpoints[-1]
    state = json.loads((last / "trainer_state.json").read_text())
    assert state["global_step"] == int(last.name.split("-")[1]) < 6
    reloaded = AutoModelForCausalLM.from_pretrained(last)
    assert all(torch.isfinite(p).all() for p in reloaded.parameters())


def test_a_different_server_tokenizer_is_refused_at_setup(server, training_args, teacher_folder, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<pad>"] + [f"w{i}" for i in reversed(range(95))]  # the same words, other ids
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    other = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>")
    with pytest.raises(ValueError, match="server's tokenizer .* differs from the student's"):
        DistillationTrainer(
            model=student(),
            teacher_model=spec(server),
            args=training_args(**PARITY_ARGS),
            train_dataset=dataset(other, teacher_folder),
            processing_class=other,
        )


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"kd_temperature": 2.0, "teacher_top_k": 20}, "kd_temperature=2.0 with a served teacher"),
        ({"cross_tokenizer": "auto"}, "cross_tokenizer='auto' with the served teacher"),
        ({"teacher_top_k": 500}, "teacher_top_k=500 is larger than the student's vocabulary"),
        (
            {"kd_temperature": 2.0, "teacher_top_k": 97, "on_policy_fraction": 0.5, "kd_loss": "reverse_kl"},
            "eval_on_policy",
        ),
    ],
)
def test_settings_a_served_teacher_cannot_honour_are_refused(
    server, training_args, tokenizer, teacher_folder, fields, match
):
    with pytest.raises(ValueError, match=match):
        DistillationTrainer(
            model=student(),
            teacher_model=spec(server),
            args=training_args(**PARITY_ARGS, **fields),
            train_dataset=dataset(tokenizer, teacher_folder),
            processing_class=tokenizer,
        )


@pytest.mark.parametrize(
    "teacher, match",
    [
        ("openai-compatible:http://127.0.0.1:9/v1", "names no model"),
        ("openai-compatible:127.0.0.1:9/v1#m", "not an http"),
        ("openai-compatible:http://user:sk-secret@127.0.0.1:9/v1#m", "carries credentials"),
    ],
)
def test_a_malformed_spec_is_refused_naming_it(training_args, tokenizer, teacher_folder, teacher, match):
    with pytest.raises(ValueError, match=match) as error:
        DistillationTrainer(
            model=student(),
            teacher_model=teacher,
            args=training_args(**PARITY_ARGS),
            train_dataset=dataset(tokenizer, teacher_folder),
            processing_class=tokenizer,
        )
    assert "sk-secret" not in str(error.value)


def test_nothing_listening_is_a_clear_error(training_args, tokenizer, teacher_folder):
    with pytest.raises(ServedTeacherError, match="127.0.0.1:9"):
        DistillationTrainer(
            model=student(),
            teacher_model="openai-compatible:http://127.0.0.1:9/v1#m",
            args=training_args(**PARITY_ARGS, teacher_request_retries=0),
            train_dataset=dataset(tokenizer, teacher_folder),
            processing_class=tokenizer,
        )


def test_a_named_but_unset_api_key_variable_is_refused(server, training_args, tokenizer, teacher_folder, monkeypatch):
    monkeypatch.delenv("HF_DISTILL_TEST_KEY", raising=False)
    with pytest.raises(ValueError, match="teacher_api_key_env='HF_DISTILL_TEST_KEY'"):
        DistillationTrainer(
            model=student(),
            teacher_model=spec(server),
            args=training_args(**PARITY_ARGS, teacher_api_key_env="HF_DISTILL_TEST_KEY"),
            train_dataset=dataset(tokenizer, teacher_folder),
            processing_class=tokenizer,
        )


def test_lineage_names_the_served_model_and_never_its_url_or_key(
    server, training_args, tokenizer, teacher_folder, tmp_path, monkeypatch
):
    monkeypatch.setenv("HF_DISTILL_TEST_KEY", "sk-test-secret-value")
    trainer = train(
        spec(server),
        training_args,
        tokenizer,
        teacher_folder,
        tmp_path / "o",
        teacher_top_k=8,
        max_steps=1,
        teacher_api_key_env="HF_DISTILL_TEST_KEY",
    )
    assert server.state.authorization[-1] == "Bearer sk-test-secret-value"
    teacher = trainer.lineage().teacher
    assert teacher["name"] == NAME and teacher["kind"] == "served" and teacher["revision"] == "abc123"
    assert teacher["served"]["k"] == 8 and teacher["served"]["provider"] == "self-hosted"
    trainer.save_model()
    saved = "".join(p.read_text(errors="ignore") for p in (tmp_path / "o").rglob("*") if p.suffix in (".json", ".md"))
    for secret in ("sk-test-secret-value", "127.0.0.1", str(server.port)):
        assert secret not in saved


def test_on_policy_completions_are_sent_for_scoring(server, training_args, tokenizer, teacher_folder, tmp_path):
    rows = dataset(tokenizer, teacher_folder)
    rows = rows.map(lambda r: {"labels": [-100] * 4 + r["input_ids"][4:]})
    args = training_args(
        output_dir=tmp_path / "o",
        **{**PARITY_ARGS, "per_device_train_batch_size": 4, "teacher_top_k": 8},
        on_policy_fraction=1.0,
        max_new_tokens=4,
        kd_loss="reverse_kl",
        eval_on_policy=False,
    )
    trainer = DistillationTrainer(
        model=student(),
        teacher_model=spec(server),
        args=args,
        train_dataset=rows,
        data_collator=_PadCollator(tokenizer),
        processing_class=tokenizer,
    )
    trainer.train()
    assert trainer.state.global_step == 2
    assert trainer.teacher.queue.misses >= 2  # the generated batches, scored on the spot
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in trainer.state.log_history if "loss" in h)


class _PadCollator:
    """Right-pads prompt-completion rows (input_ids, attention_mask, labels)."""

    def __init__(self, tokenizer):
        self.pad = tokenizer.pad_token_id

    def __call__(self, rows):
        length = max(len(r["input_ids"]) for r in rows)
        out = {"input_ids": [], "attention_mask": [], "labels": []}
        for r in rows:
            extra = length - len(r["input_ids"])
            out["input_ids"].append(r["input_ids"] + [self.pad] * extra)
            out["attention_mask"].append([1] * len(r["input_ids"]) + [0] * extra)
            out["labels"].append(r["labels"] + [-100] * extra)
        return {k: torch.tensor(v) for k, v in out.items()}


def _pushed_text(hub, repo_id):
    return "".join(v.decode(errors="ignore") for v in hub.files(repo_id).values())


def test_a_providers_terms_need_acknowledging_to_push_and_the_card_says_so(
    hub, server, training_args, tokenizer, teacher_folder, tmp_path
):
    import yaml

    from hf_distill import LicensePolicyError

    trainer = train(
        spec(server), training_args, tokenizer, teacher_folder, tmp_path / "o", teacher_top_k=8, max_steps=1,
        teacher_provider="openai", hub_model_id="me/student", preflight="off",
    )  # fmt: skip
    with pytest.raises(LicensePolicyError, match="OpenAI Terms of Use.*compete with OpenAI"):
        trainer.push_to_hub()
    assert not hub.repo_exists("me/student")  # a failed check uploads nothing
    trainer.push_to_hub(acknowledge_teacher_license=True)
    card = hub.files("me/student")["README.md"].decode()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["distillation"]["teacher"]["kind"] == "served"
    assert any("compete with OpenAI" in a for a in meta["distillation"]["license_policy"]["acknowledged"])
    assert f"`{NAME}` (served by the provider openai" in card
    pushed = _pushed_text(hub, "me/student")
    assert "127.0.0.1" not in pushed and str(tmp_path) not in pushed


def test_a_self_hosted_teacher_with_a_declared_license_pushes_under_it(
    hub, server, training_args, tokenizer, teacher_folder, tmp_path
):
    trainer = train(
        spec(server), training_args, tokenizer, teacher_folder, tmp_path / "o", teacher_top_k=8, max_steps=1,
        teacher_license="apache-2.0", hub_model_id="me/student2", preflight="off",
    )  # fmt: skip
    trainer.push_to_hub()
    card = hub.files("me/student2")["README.md"].decode()
    assert "Teacher license | `apache-2.0`" in card
    assert "served by a server of the trainer's own" in card and "abc123" in card


def test_batches_made_in_dataloader_workers_are_scored_in_the_loss(server, training_args, tokenizer, teacher_folder):
    trainer = train(spec(server), training_args, tokenizer, teacher_folder, teacher_top_k=8, dataloader_num_workers=1)
    assert trainer.state.global_step == 2
    assert trainer.teacher.queue.hits == 0 and trainer.teacher.queue.misses == 2


def test_after_a_failed_run_nothing_in_flight_keeps_retrying():
    """Requests sent ahead to a server that is gone would retry for 1 + 2 + 4 + 8 s; once the run has failed, they
    give up at once (`ScoringQueue.drop_waiting(failed=True)`, which `DistillationTrainer.train` calls on error)."""
    from concurrent.futures import wait

    from hf_distill.served.client import ServedClient
    from hf_distill.served.pipeline import ScoringQueue

    client = ServedClient("http://127.0.0.1:9/v1", NAME, max_retries=4, backoff=1.0)  # nothing listens on port 9
    queue = ScoringQueue(client, k=4, concurrency=2, capacity=8)
    futures = [queue._pool.submit(queue._score, [[1, 2, 3]], queue._stop) for _ in range(2)]
    queue.drop_waiting(failed=True)
    done, _ = wait(futures, timeout=5)
    assert len(done) == 2
    assert all(isinstance(f.exception(), ServedTeacherError) for f in futures)
