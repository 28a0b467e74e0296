"""A served teacher, tried from the outside: tests/user_scripts/distill_served.py (transformers' run_clm.py after the
documented change, the teacher named `--teacher_model_name_or_path openai-compatible:<url>#<model>`) and
`hf-distill cache-teacher` with a served teacher, each run as a user runs it (a subprocess with flags or a recipe)
against tests/served_server.py, then fed the mistakes people make. Each asserts what the user relies on afterwards:
the exit status, a message naming what to change, and the files left behind (no checkpoint lost, no file of theirs
overwritten, no NaN).

The healthy teacher is served by a subprocess (`python tests/served_server.py ...`), as a user starts a server; the
faulty ones (dying, slow, another tokenizer, a low --max-logprobs) are the same server started in this process with
its fault knobs, which costs no model load of its own.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import user_assets
from served_server import start_server
from test_user_scripts import COMMON, REPO, folder_digest, run_script
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

NAME = "tiny-teacher"
pytestmark = pytest.mark.slow  # every test runs a script (and most a server) in a fresh Python process


def spec(url: str, model: str = NAME) -> str:
    return f"openai-compatible:{url}#{model}"


def train_args(teacher: str, output_dir: str, *extra: str) -> list[str]:
    """The flags people pass to run_clm.py on a CPU box, with the served teacher."""
    return [
        "--model_name_or_path", "student", "--teacher_model_name_or_path", teacher,
        "--train_file", "train.txt", "--validation_file", "validation.txt", "--block_size", "16",
        "--do_train", "--do_eval", "--max_steps", "4", "--per_device_train_batch_size", "2",
        "--gradient_accumulation_steps", "2", "--per_device_eval_batch_size", "4", "--output_dir", output_dir,
        "--eval_strategy", "steps", "--eval_steps", "2", "--save_steps", "2", "--logging_steps", "1",
        "--bf16", "false", *COMMON, *extra,
    ]  # fmt: skip


def error_line(result: subprocess.CompletedProcess) -> str:
    """The exception line the user reads (`SomeError: ...`), wherever other output lands around it."""
    lines = [line for line in result.stderr.splitlines() if re.match(r"^[\w.]*(Error|Exception): ", line)]
    assert lines, f"no error line in:\n{result.stderr[-3000:]}"
    return lines[-1]


def assert_no_nan(result: subprocess.CompletedProcess) -> None:
    logged = result.stdout + result.stderr
    assert not re.search(r"\bnan\b|\binf\b", logged, flags=re.IGNORECASE), "a NaN/inf was logged"


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    """student/, teacher/ (one tokenizer), other/ (the same words in another vocabulary order), train/validation."""
    root = tmp_path_factory.mktemp("served_assets")
    user_assets.clm_folders(root)
    vocab = ["<unk>", "<pad>", *reversed(user_assets.WORDS)]
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=1,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(root / "other")
    tokenizer.save_pretrained(root / "other")
    return root


@pytest.fixture(scope="module")
def server(assets):
    """The teacher served the way a user serves it: `python tests/served_server.py ...` in its own process."""
    command = [sys.executable, str(REPO / "tests" / "served_server.py"), "--model", str(assets / "teacher")]
    command += ["--served-model-name", NAME, "--port", "0"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        first = process.stdout.readline()
        assert first.startswith("PORT "), f"the server did not start: {first!r}"
        yield f"http://127.0.0.1:{int(first.split()[1])}/v1"
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def trained(assets, server) -> Path:
    """One uninterrupted run against the healthy server (what the other runs are compared with)."""
    run = run_script("distill_served.py", train_args(spec(server), "out"), assets)
    settings = json.loads(run.stdout.split("SETTINGS ")[1].splitlines()[0])
    assert settings["teacher"] == f"the served teacher {NAME} at {server} (top-20)"
    assert "forward_kl at T=1" in settings["objective"]
    assert_no_nan(run)
    return assets / "out"


def test_run_clm_shape_with_a_served_teacher_trains_evaluates_and_writes_its_card(assets, server, trained):
    metrics = json.loads((trained / "eval_results.json").read_text())
    assert {"eval_loss", "eval_kd_loss", "eval_ce_loss", "eval_distillation_loss", "perplexity"} <= set(metrics)
    assert all(math.isfinite(v) for v in metrics.values() if isinstance(v, float))
    assert metrics["eval_kd_loss"] > 0  # the teacher's scores reached the loss
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]))
    assert {p.name for p in trained.glob("checkpoint-*")} == {"checkpoint-2", "checkpoint-4"}
    AutoModelForCausalLM.from_pretrained(trained)  # the saved student loads
    lineage = json.loads((trained / "distillation_lineage.json").read_text())["teacher"]
    assert (lineage["name"], lineage["source"], lineage["served"]["k"]) == (NAME, "served", 20)
    assert lineage["tokenizer_checked"] is True
    assert lineage["license"] is None  # a server states no license: recorded as unknown, not guessed
    card = (trained / "README.md").read_text()
    assert NAME in card and "served" in card and "unknown" in card.lower()
    # The server's address names a machine of the user's: it is in neither the card nor the lineage.
    port = server.rsplit(":", 1)[1].split("/")[0]
    for text in (card, (trained / "distillation_lineage.json").read_text()):
        assert "127.0.0.1" not in text and port not in text and str(assets) not in text


def test_a_server_dying_mid_run_keeps_the_checkpoint_and_the_run_resumes_to_the_same_student(assets, server, trained):
    # A slow server that dies during the last evaluation: checkpoint-2 is saved, then every request is refused.
    dying = start_server(assets / "teacher", NAME, delay=0.2, die_after=11)
    try:
        args = train_args(spec(dying.url), "resumed", "--teacher_request_retries", "1")
        broken = run_script("distill_served.py", args, assets, expect_ok=False)
    finally:
        dying.stop()
    assert broken.returncode != 0
    line = error_line(broken)
    assert line.startswith("hf_distill.served.client.ServedTeacherError: ")
    assert dying.url in line and "failed after 2 attempts" in line and "connection refused" in line
    assert len(line) < 500
    assert_no_nan(broken)
    out = assets / "resumed"
    assert (out / "checkpoint-2" / "model.safetensors").is_file()
    assert not (out / "model.safetensors").exists() and not (out / "README.md").exists()  # nothing half-written
    kept = folder_digest(out / "checkpoint-2")

    # The user restarts the server (on another port) and reruns the same command: it resumes from checkpoint-2.
    resumed = run_script("distill_served.py", train_args(spec(server), "resumed"), assets)
    assert "Resuming training from checkpoint" in resumed.stdout + resumed.stderr
    assert folder_digest(out / "checkpoint-2") == kept
    assert (out / "model.safetensors").read_bytes() == (trained / "model.safetensors").read_bytes()
    metrics, reference = (json.loads((d / "eval_results.json").read_text()) for d in (out, trained))
    assert metrics["eval_kd_loss"] == reference["eval_kd_loss"]


def _served_mistakes():
    """(id, how the teacher is given, extra flags, a server to start or None, what the message must say)."""
    wrong_port = "http://127.0.0.1:9/v1"  # the discard port: nothing listens there
    # Each case costs a process (~10 s of imports here): the ones below need the script's own path (argument parsing,
    # loading, the server); temperature, timeout, API-key and model-name mistakes are tested in process
    # (tests/test_served_teacher.py, tests/test_served_client.py).
    return [
        ("spec-without-model", lambda url: f"openai-compatible:{url}", [], None,
         ["names no model", "add `#`", "/models lists them"]),
        ("server-not-started", lambda url: spec(wrong_port), ["--teacher_request_retries", "0"], None,
         [wrong_port, "connection refused", "Check that the server is running", "teacher_request_retries"]),
        ("server-with-another-tokenizer", spec, [], {"model": "other"},
         ["tokenizer for tiny-teacher differs from the student's", "first differ at position", "cross_tokenizer"]),
    ]  # fmt: skip


@pytest.mark.parametrize(
    "teacher, extra, faulty, expected",
    [case[1:] for case in _served_mistakes()],
    ids=[c[0] for c in _served_mistakes()],
)
def test_served_teacher_mistakes_stop_with_a_message_and_leave_the_users_files(
    assets, server, tmp_path, monkeypatch, teacher, extra, faulty, expected
):
    monkeypatch.delenv("HF_DISTILL_TEST_UNSET_KEY", raising=False)
    handle = None
    if faulty is not None:
        knobs = dict(faulty)
        handle = start_server(assets / knobs.pop("model", "teacher"), NAME, **knobs)
    url = handle.url if handle else server
    # The output folder already holds a file of the user's (an `--overwrite_output_dir`-less rerun into it).
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = folder_digest(out)
    try:
        result = run_script("distill_served.py", train_args(teacher(url), str(out), *extra), assets, expect_ok=False)
    finally:
        if handle is not None:
            handle.stop()
    assert result.returncode != 0
    line = error_line(result)
    for words in expected:
        assert words in line, f"{words!r} not in {line!r}"
    assert len(line) < 800  # one screen
    assert_no_nan(result)
    assert folder_digest(out) == before  # no checkpoint, no model, no card: and the user's file untouched
    assert "SETTINGS" not in result.stdout


@pytest.fixture(scope="module")
def max_logprobs_refusal(assets) -> subprocess.CompletedProcess:
    handle = start_server(assets / "teacher", NAME, max_logprobs=5)
    try:
        return run_script("distill_served.py", train_args(spec(handle.url), "refused"), assets, expect_ok=False)
    finally:
        handle.stop()


def test_a_top_k_above_max_logprobs_stops_before_training_naming_teacher_top_k(assets, max_logprobs_refusal):
    result = max_logprobs_refusal
    assert result.returncode != 0
    line = error_line(result)
    assert "HTTP 400" in line and "greater than max allowed: 5" in line and "--max-logprobs" in line
    assert "teacher_top_k" in line  # the argument the user sets
    assert "SETTINGS" not in result.stdout  # refused at setup (the probe asks for k), before any step
    assert_no_nan(result)
    assert not list((assets / "refused").glob("checkpoint-*")) and not (assets / "refused" / "README.md").exists()


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "hf_distill", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def cache_recipe(url: str, output_dir: str, extra: str = "") -> str:
    return (
        "task: causal_lm\n"
        f'teacher:\n  model_name_or_path: "{spec(url)}"\n  tokenizer: student\n'
        "data:\n  text_file: train.txt\n  block_size: 16\n  eval_fraction: 0.2\n"
        f"cache:\n  output_dir: {output_dir}\n  k: 8\n  batch_size: 2\n  shard_size: 4\n{extra}"
        "args:\n  teacher_request_retries: 1\n"
    )


def test_cache_teacher_from_a_served_teacher_resumes_after_the_server_dies(assets, server):
    import pyarrow.parquet as pq

    # The server dies after 6 scoring requests (the probe and 5 batches of 2): two shards of 4 rows are on disk.
    dying = start_server(assets / "teacher", NAME, die_after=6)
    (assets / "cache.yaml").write_text(cache_recipe(dying.url, "served-cache"))
    try:
        broken = run_cli(["cache-teacher", "cache.yaml"], assets)
    finally:
        dying.stop()
    assert broken.returncode != 0
    line = error_line(broken)
    assert "ServedTeacherError" in line and "connection refused" in line and dying.url in line
    train = assets / "served-cache" / "train"
    shards = sorted(p.name for p in train.glob("shard-*.parquet"))
    assert shards == ["shard-00000.parquet", "shard-00001.parquet"]
    assert not list(train.glob("*.tmp*"))  # no half-written shard
    kept = folder_digest(train)
    del kept["teacher_cache.json"]

    # Restarted on another port: the user updates the URL in the recipe and reruns the same command.
    (assets / "cache.yaml").write_text(cache_recipe(server, "served-cache"))
    done = run_cli(["cache-teacher", "cache.yaml"], assets)
    assert done.returncode == 0, done.stderr[-4000:]
    assert (
        "18 examples" in done.stdout and "Train from it with `args.teacher_cache: served-cache/train`" in done.stdout
    )
    assert {name: digest for name, digest in folder_digest(train).items() if name in kept} == kept
    manifest = json.loads((train / "teacher_cache.json").read_text())
    assert manifest["total_rows"] == 18 and len(manifest["shards"]) == 5
    assert manifest["fingerprint"]["teacher"]["name"] == NAME and manifest["fingerprint"]["k"] == 8
    assert "127.0.0.1" not in (train / "teacher_cache.json").read_text()

    # What was cached, before and after the interruption, is the teacher's own top-8 (float16).
    teacher = AutoModelForCausalLM.from_pretrained(assets / "teacher").eval()
    for shard in (train / "shard-00000.parquet", train / "shard-00004.parquet"):
        rows = pq.read_table(shard).to_pylist()
        ids = torch.tensor([r["input_ids"] for r in rows])
        with torch.no_grad():
            logprobs = torch.log_softmax(teacher(ids).logits.float(), dim=-1)
        top, top_ids = logprobs.topk(8, dim=-1)
        cached = torch.tensor([r["teacher_topk_logprobs"] for r in rows], dtype=torch.float32)
        cached_ids = torch.tensor([r["teacher_topk_ids"] for r in rows])
        assert torch.isfinite(cached).all()
        # The last position predicts past the text: the server returns nothing for it.
        torch.testing.assert_close(cached[:, :-1], top[:, :-1], atol=2e-3, rtol=2e-3)
        assert torch.equal(cached_ids[:, :-1], top_ids[:, :-1])
