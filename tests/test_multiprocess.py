"""Two real processes (gloo) give the same step as one process on the same global batch."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from tiny_models import save_tiny_teacher, tiny_recipe
from transformers import AutoModelForCausalLM

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "ddp_parity.py")
SHARDED_SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "sharded_parity.py")
DDP_CHECKS_SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "ddp_checks.py")
ON_POLICY_SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "on_policy_parity.py")
CROSS_TOKENIZER_SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "cross_tokenizer_parity.py")
SERVED_SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "served_parity.py")
ZERO3_CONFIG = os.path.join(os.path.dirname(__file__), "scripts", "ds_zero3.json")
ACCELERATE = os.path.join(os.path.dirname(sys.executable), "accelerate")

pytestmark = pytest.mark.slow  # each test launches real processes (tens of seconds)


LAUNCH_TWO = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
LAUNCH_TWO += ["--mixed_precision", "no", "--dynamo_backend", "no"]


def _run(command, env_extra=None):
    # ACCELERATE_USE_CPU=1: without it `--multi_gpu` on a CPU machine starts two independent trainings.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", **(env_extra or {})}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The single-process run every launch below is compared with: the same script, seed and global batch of 4 each
    time, so it runs once for the module."""
    single = str(tmp_path_factory.mktemp("one") / "out.pt")
    _run([sys.executable, SCRIPT, single, "4", "1"])
    return torch.load(single)


def _assert_same_training(one, two):
    """Final student parameters to 1e-5 and every logged loss term to 1e-5 relative (1e-6 absolute: a KD term near
    0.02 summed over shards in another order differs by a few float32 ulps on some CPUs, 2.2e-5 relative here)."""
    for name, value in one["params"].items():
        torch.testing.assert_close(two["params"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert len(one["logs"]) == len(two["logs"]) > 0
    for a, b in zip(one["logs"], two["logs"]):
        for key in ("loss", "kd_loss", "ce_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key


@pytest.mark.multiprocess
def test_two_processes_match_one_process(tmp_path, one_process):
    double = str(tmp_path / "two" / "out.pt")
    _run([*LAUNCH_TWO, SCRIPT, double, "2", "2"])
    one, two = one_process, torch.load(double)
    assert (one["world_size"], two["world_size"]) == (1, 2)
    _assert_same_training(one, two)


@pytest.mark.multiprocess
def test_two_processes_match_one_process_across_tokenizers(tmp_path):
    """Each process aligns its own batches; the KD term over aligned chunks normalises over the global batch."""
    one, two = str(tmp_path / "one" / "out.pt"), str(tmp_path / "two" / "out.pt")
    _run([sys.executable, CROSS_TOKENIZER_SCRIPT, one, "4", "1", "chunk"])
    _run([*LAUNCH_TWO, CROSS_TOKENIZER_SCRIPT, two, "2", "2", "chunk"])
    one, two = torch.load(one), torch.load(two)
    assert (one["world_size"], two["world_size"]) == (1, 2)
    _assert_same_training(one, two)


@pytest.mark.multiprocess
def test_a_served_teacher_under_two_processes_trains_like_the_model_in_one(tmp_path):
    """Each rank sends its own batches to one server (on 127.0.0.1, in this test's process); at k = V the result is
    the single-process run with the same model loaded in process."""
    from served_server import start_server
    from tiny_models import save_tiny_teacher

    folder = tmp_path / "teacher"
    save_tiny_teacher(folder, folder / "corpus.txt")
    one, two = str(tmp_path / "one" / "out.pt"), str(tmp_path / "two" / "out.pt")
    _run([sys.executable, SERVED_SCRIPT, one, "4", "1", str(folder)])
    handle = start_server(folder, "tiny-teacher")
    try:
        _run([*LAUNCH_TWO, SERVED_SCRIPT, two, "2", "2", f"openai-compatible:{handle.url}#tiny-teacher"])
    finally:
        handle.stop()
    one, two = torch.load(one), torch.load(two)
    assert (one["world_size"], two["world_size"]) == (1, 2)
    _assert_same_training(one, two)


@pytest.mark.multiprocess
def test_ddp_ranks_agree_teacher_stays_frozen_and_unsaved_and_resume_is_exact(tmp_path):
    _run([*LAUNCH_TWO, DDP_CHECKS_SCRIPT, str(tmp_path)])  # the script asserts world size 2 and MULTI_CPU
    checks = json.loads((tmp_path / "checks.json").read_text())
    assert checks["identical_across_ranks"] and checks["teacher_unchanged"] and checks["teacher_frozen"]
    assert checks["checkpoint_holds_student_only"], checks["checkpoint_files"]
    full, resumed = checks["losses"]["full"], checks["losses"]["resumed"]
    # JSON keys; steps 1-2 come back with the checkpoint's trainer state, 3-4 are trained again after resuming
    assert set(resumed) == set(full) == {"1", "2", "3", "4"}
    for step in ("3", "4"):
        assert resumed[step] == pytest.approx(full[step], rel=1e-6), step


@pytest.fixture(scope="module")
def on_policy_one_process(tmp_path_factory):
    """The single-process greedy on-policy run (every other step generated, ragged completions) the launches below
    are compared with."""
    single = str(tmp_path_factory.mktemp("on_policy_one") / "out.pt")
    _run([sys.executable, ON_POLICY_SCRIPT, single, "4", "1"])
    one = torch.load(single)
    assert one["world_size"] == 1 and [e["on_policy_steps"] for e in one["logs"]] == [0, 1, 0, 1]
    assert any(0 < e.get("hit_max_new_tokens", 0) < 1 for e in one["logs"])  # the completions were ragged
    return one


def _assert_same_on_policy_training(one, two):
    assert two["world_size"] == 2
    for name, value in one["params"].items():
        torch.testing.assert_close(two["params"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    for a, b in zip(one["logs"], two["logs"], strict=True):
        for key in ("loss", "kd_loss", "ce_loss", "generated_length", "hit_max_new_tokens", "on_policy_steps"):
            assert (key in a) == (key in b), key
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key


@pytest.mark.multiprocess
def test_on_policy_two_processes_match_one_process(tmp_path, on_policy_one_process):
    """Each rank generates for its own prompts; the step is normalised over the generated tokens of both."""
    double = str(tmp_path / "two" / "out.pt")
    _run([*LAUNCH_TWO, ON_POLICY_SCRIPT, double, "2", "2"])
    _assert_same_on_policy_training(on_policy_one_process, torch.load(double))


LAUNCH_FSDP2 = [ACCELERATE, "launch", "--use_fsdp", "--fsdp_version", "2", "--num_processes", "2"]
LAUNCH_FSDP2 += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
LAUNCH_FSDP2 += ["--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP", "--fsdp_transformer_layer_cls_to_wrap"]
LAUNCH_FSDP2 += ["LlamaDecoderLayer", "--fsdp_state_dict_type", "FULL_STATE_DICT", "--fsdp_reshard_after_forward"]
LAUNCH_FSDP2 += ["true", "--fsdp_cpu_ram_efficient_loading", "false"]


def _sharded_matches_one_process(tmp_path, one, launch, mode):
    double = str(tmp_path / "two" / "out.pt")
    # the launched script asserts world size 2, the intended strategy, and the teacher's placement "shard"
    _run([*launch, SHARDED_SCRIPT, mode, double], env_extra={"ACCELERATE_USE_CPU": "0"})
    two = torch.load(double)
    assert two["world_size"] == 2
    assert two["shares"]["teacher"] == pytest.approx(0.5, abs=0.02)  # half of the teacher's elements per rank
    assert two["shares"]["student"] == pytest.approx(0.5, abs=0.02)
    _assert_same_training(one, two)


@pytest.mark.multiprocess
def test_fsdp2_shards_student_and_teacher_and_matches_one_process(tmp_path, one_process):
    _sharded_matches_one_process(tmp_path, one_process, LAUNCH_FSDP2, "fsdp2")


LAUNCH_ZERO3 = [ACCELERATE, "launch", "--use_deepspeed", "--deepspeed_config_file", ZERO3_CONFIG]
LAUNCH_ZERO3 += ["--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


@pytest.mark.multiprocess
@pytest.mark.deepspeed
@pytest.mark.parametrize("mode", ["zero3", "zero3_teacher_config"])
def test_zero3_shards_student_and_teacher_and_matches_one_process(tmp_path, one_process, mode):
    pytest.importorskip("deepspeed", reason="the ZeRO-3 tier needs deepspeed (.ci/run installs it)")
    _sharded_matches_one_process(tmp_path, one_process, LAUNCH_ZERO3, mode)


@pytest.mark.multiprocess
@pytest.mark.parametrize("mode", ["fsdp2", pytest.param("zero3", marks=pytest.mark.deepspeed)])
def test_on_policy_sharded_two_processes_match_one_process(tmp_path, on_policy_one_process, mode):
    """The sharded student generates (FSDP2: its forward gathers, ranks kept in step by `synced_gpus`; ZeRO-3: TRL's
    `unwrap_model_for_generation` gathers its parameters) and trains as one process does."""
    if mode == "zero3":
        pytest.importorskip("deepspeed", reason="the ZeRO-3 tier needs deepspeed (.ci/run installs it)")
    double = str(tmp_path / "two" / "out.pt")
    launch = LAUNCH_FSDP2 if mode == "fsdp2" else LAUNCH_ZERO3
    _run([*launch, ON_POLICY_SCRIPT, double, "2", "2", mode], env_extra={"ACCELERATE_USE_CPU": "0"})
    _assert_same_on_policy_training(on_policy_one_process, torch.load(double))


@pytest.mark.multiprocess
def test_cli_under_accelerate_launch_with_two_processes(tmp_path):
    save_tiny_teacher(tmp_path / "teacher", tmp_path / "corpus.txt")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(tiny_recipe(tmp_path, tmp_path / "teacher", per_device_train_batch_size=2, num_train_epochs=1))
    )
    result = _run([*LAUNCH_TWO, "-m", "hf_distill", "train", str(recipe)])
    assert result.stdout.count("student after distillation") == 1  # one report, from the main process
    results = json.loads((tmp_path / "student" / "distillation_results.json").read_text())
    # 45 training blocks of 16 tokens, a global batch of 2 processes × 2: 12 steps in one epoch (23 with 1 process).
    assert (results["world_size"], results["train_steps"]) == (2, 12)
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "student").config.num_hidden_layers == 2
