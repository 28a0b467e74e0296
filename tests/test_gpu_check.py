"""The prepared GPU check (benchmarks/gpu) keeps working: its CPU dry run, through run_all.sh, runs every check's code
path at tiny sizes, computes the float64 comparisons for real, and says why it skipped what needs CUDA.

Figures are asserted only where they are correctness figures (errors against references); timings never are.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPU = os.path.join(REPO, "benchmarks", "gpu")
sys.path.insert(0, GPU)

import gpu_check  # noqa: E402

ALL_DIVERGENCES = {"forward_kl", "reverse_kl", "jsd", "tvd", "skew_forward_kl", "skew_reverse_kl"}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    env = {
        **os.environ,
        "OUT": str(out),
        "PYTHON": sys.executable,
        "GPU_CHECK_CARRY": str(out / "nothing-carried"),  # no wheels to install: this environment has the packages
        "HF_HUB_OFFLINE": "1",
    }
    # budgets far above what the tiny sizes need: what runs must not depend on how loaded this machine is
    budgets = [arg for key in "abcdef" for arg in ("--budget", f"{key}=600")] + ["--total-budget", "3600"]
    command = ["bash", os.path.join(GPU, "run_all.sh"), "--dry-run", *budgets]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads((out / "figures.json").read_text())
    return out, figures, (out / "report.md").read_text()


def _finite(*values):
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


@pytest.mark.slow
def test_dry_run_writes_every_section_and_says_it_is_no_gpu_figure(dry_run):
    out, figures, report = dry_run
    assert figures["meta"]["dry_run"] is True and figures["meta"]["device"].startswith("CPU")
    assert list(figures["checks"]) == ["a", "b", "c", "d", "e", "f"]
    for key, check in figures["checks"].items():
        assert check["status"] in ("ok", "partial"), (key, check["status"], check["error"])
        assert check["error"] is None and check["item_errors"] == [] and check["budget_s"] == 600
        assert f"## {gpu_check.TITLES[key]}" in report
    assert "dry run on CPU at tiny sizes (no figure here is a GPU figure)" in report
    assert (out / "log.txt").read_text().count("GPU check summary:") == 1  # run_all.sh tees the whole output


@pytest.mark.slow
def test_float64_reference_comparisons_are_computed_and_within_tolerance(dry_run):
    _, figures, report = dry_run
    rows = figures["checks"]["a"]["divergences"]
    assert {(r["what"], r["loss"], r["dtype"]) for r in rows} == {
        (what, loss, dtype)
        for what in ("per_token_divergence", "chunked loss")
        for loss in ALL_DIVERGENCES
        for dtype in ("float32", "bfloat16")
    }
    for row in rows:
        assert _finite(row["rel_err_loss"], row["rel_err_grad"]) and row["pass"] is True, row
        if row["dtype"] == "float32":  # float32 arithmetic against float64: far under the README's 1e-5
            assert row["rel_err_loss"] <= 1e-5 and row["rel_err_grad"] <= 1e-5, row
        else:  # bf16 inputs are exact in float64, so only the bf16 head output and gradients can differ
            assert 0 < row["rel_err_grad"] < 0.1, row
    (step,) = figures["checks"]["a"]["training_step"]
    assert step["chunk_size"] > 0 and step["pass"] is True
    assert step["rel_err_loss"] <= 1e-3 and step["rel_err_grad"] <= 2e-2
    assert _finite(step["loss_chunked"], step["loss_logits"]) and step["loss_chunked"] > 0
    assert "| chunked loss | tvd | bfloat16 |" in report


@pytest.mark.slow
def test_loss_kernel_benchmark_runs_every_available_variant_and_says_why_others_are_skipped(dry_run):
    _, figures, _ = dry_run
    check = figures["checks"]["b"]
    variants = {row["variant"]: row for row in check["rows"]}
    assert {"naive", "trl", "gemm_floor"} <= set(variants)
    assert sum(name.startswith("hf_distill (chunk") for name in variants) == 2
    for name, row in variants.items():
        assert _finite(row["seconds"]) and row["seconds"] > 0, row
        assert row["peak_mb"] is None  # not measured on CPU, and not pretended
        if name not in ("naive", "gemm_floor"):  # bf16 gradients against the bf16 naive loss: rounding only
            assert row["max_rel_err"] < 2e-2, row
    skipped = {s["item"]: s["why"] for s in check["skipped"]}
    if importlib.util.find_spec("liger_kernel") is None:
        assert "liger_kernel.chunked_loss` is not importable here" in skipped["liger"]
    assert any("TRL's `ChunkedDivergenceFunction` runs its torch" in note for note in check["notes"])


@pytest.mark.slow
def test_step_plan_placements_and_quickstart_run_on_cpu_and_name_what_needs_cuda(dry_run):
    _, figures, _ = dry_run
    checks = figures["checks"]
    steps = checks["c"]["rows"]
    assert len(steps) == 8 and all(_finite(r["seconds"], r["time_vs_reference"]) for r in steps)

    plans = checks["d"]["rows"]
    assert len(plans) == 4 and all(_finite(r["estimate_mb"]) and r["estimate_mb"] > 0 for r in plans)
    assert all(r["measured_mb"] is None for r in plans)
    assert [s["why"] for s in checks["d"]["skipped"]] == [
        "needs CUDA (torch.cuda.max_memory_allocated); the plan was computed"
    ] * 4
    # batch 16 holds 4 times batch 4's activations, and half as many bytes of them in bf16
    batch4, batch16, bf16 = (plans[i]["plan_rows_mb"] for i in (0, 1, 3))
    assert batch16["activations (estimate)"] == pytest.approx(4 * batch4["activations (estimate)"])
    assert bf16["activations (estimate)"] == pytest.approx(batch16["activations (estimate)"] / 2)

    placements = {r["placement"]: r for r in checks["e"]["rows"]}
    assert set(placements) == {"replicate", "offload", "teacher on cpu"}
    assert [placements[p]["resolved"] for p in ("replicate", "offload", "teacher on cpu")] == [
        "replicate",
        "offload",
        "devices",
    ]
    assert all(r["pass"] and r["rel_diff_vs_replicate"] <= 1e-4 for r in placements.values())
    assert {s["item"]: s["why"] for s in checks["e"]["skipped"]} == {
        "teacher on cuda:0, student on CPU": "needs a CUDA device",
        "student on cuda:0, teacher on CPU": "needs a CUDA device",
    }

    (quickstart,) = checks["f"]["rows"]
    assert quickstart["exit_status"] == 0 and len(quickstart["models"]) == 3
    assert all(_finite(m["metric"]) for m in quickstart["models"])


@pytest.mark.slow
def test_a_spent_budget_skips_the_rest_of_its_check_and_says_so(tmp_path):
    calls = []

    def check(ctx, section):
        for item in ("first", "second", "third"):
            if ctx.spent(item):
                continue
            calls.append(item)
            time.sleep(0.2)  # longer than check a's whole budget

    budgets = {**gpu_check.BUDGETS, "a": 0.1, "c": 0.0}
    ctx = gpu_check.Context(str(tmp_path), True, None, budgets, total=100.0)
    for key in "abc":
        ctx.run(key, check)
    assert calls == ["first", "first", "second", "third"]  # a: its first item only; b: all; c: none
    figures = json.loads((tmp_path / "figures.json").read_text())["checks"]
    assert [figures[k]["status"] for k in "abc"] == ["partial", "ok", "skipped"]
    assert [s["item"] for s in figures["a"]["skipped"]] == ["second", "third"]
    assert "the check's time budget (0 s) or the run's (100 s) is spent" in figures["a"]["skipped"][0]["why"]
    assert figures["c"]["skipped"] == [{"item": "the whole check", "why": "its time budget (0 s) is spent"}]
    assert "- second: the check's time budget" in (tmp_path / "report.md").read_text()


@pytest.mark.slow
def test_a_failing_check_or_item_records_its_error_and_the_rest_still_runs(tmp_path):
    ran = []

    def broken(ctx, section):
        raise RuntimeError("kernel exploded")

    def one_item_breaks(ctx, section):
        for item in ("first", "second"):
            with ctx.item(item):
                if item == "first":
                    raise ValueError("refused placement")
                ran.append(item)

    ctx = gpu_check.Context(str(tmp_path), True, None, dict(gpu_check.BUDGETS), total=100.0)
    ctx.run("a", broken)
    ctx.run("b", lambda ctx, section: section.figures.update(rows=[{"pass": False}]))
    ctx.run("c", one_item_breaks)
    figures = json.loads((tmp_path / "figures.json").read_text())["checks"]
    assert figures["a"]["status"] == "error" and "RuntimeError: kernel exploded" in figures["a"]["error"]
    assert figures["b"]["status"] == "FAILED (a figure is out of tolerance)"
    assert ran == ["second"] and figures["c"]["status"] == "FAILED (1 item(s) raised)"
    (failure,) = figures["c"]["item_errors"]
    assert failure["item"] == "first" and failure["error"] == "ValueError: refused placement"
    assert "Failed: first" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dry-run", "--checks", "axz"], "--checks 'axz' names ['x', 'z']; use letters from abcdef"),
        (["--dry-run", "--budget", "q=3"], "--budget 'q=3': use CHECK=SECONDS with CHECK one of a, b, c, d, e, f"),
        (["--dry-run", "--budget", "a=soon"], "--budget 'a=soon': 'soon' is not a number of seconds"),
    ],
)
def test_bad_arguments_are_refused_naming_them(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as error:
        gpu_check.main([*argv, "--out", str(tmp_path)])
    assert message in capsys.readouterr().err + str(error.value.code)
    assert not (tmp_path / "figures.json").exists()  # refused before anything ran


@pytest.mark.skipif(gpu_check.torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_the_gpu_run_is_refused_pointing_at_the_dry_run(capsys, tmp_path):
    with pytest.raises(SystemExit):
        gpu_check.main(["--out", str(tmp_path)])
    assert "no CUDA device is visible to torch; run with --dry-run" in capsys.readouterr().err


def test_when_hf_distill_does_not_import_every_check_says_why_and_the_run_fails(tmp_path, monkeypatch):
    why = "`hf_distill` is not importable here (ModuleNotFoundError: No module named 'datasets')"
    monkeypatch.setattr(gpu_check, "importable", lambda module: why if module == "hf_distill" else None)
    assert gpu_check.main(["--dry-run", "--checks", "ab", "--out", str(tmp_path)]) == 1
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert figures["meta"]["hf_distill"] == why
    for key in "ab":
        assert figures["checks"][key]["status"] == "skipped"
        assert figures["checks"][key]["skipped"] == [{"item": "the whole check", "why": why}]
