"""The benchmark scripts keep running (on tiny shapes) and their variants agree with the naive loss.

Timings are printed by the scripts, never asserted here.
"""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script, *args):
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "benchmarks", script), *args], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_bench_kd_loss_runs_and_every_variant_agrees_with_naive():
    out = _run("bench_kd_loss.py", "--shapes", "64,16,300", "--repeats", "1", "--chunk", "7", "--beta", "0.5")
    rows = [line for line in out.splitlines() if line.startswith("| 64,16,300 |")]
    variants = {row.split("|")[2].strip(): row for row in rows}
    assert {"naive", "hf_distill", "trl", "gemm_floor"} <= set(variants)
    for name in ("hf_distill", "trl"):
        error = float(variants[name].rstrip(" |").split("|")[-1])
        assert error < 1e-4, variants[name]


def test_bench_step_runs():
    out = _run("bench_step.py", "--vocab", "512", "--repeats", "1", "--seq-len", "32")
    assert sum(line.startswith("| 512 |") for line in out.splitlines()) == 4


def test_bench_shared_base_runs():
    out = _run("bench_shared_base.py", "--hidden", "64", "--layers", "1", "--vocab", "512", "--seq-len", "16")
    assert "| shared_base |" in out and "| separate_copy |" in out and "Saved by teacher_model='base'" in out


def test_bench_offline_runs_and_the_cache_is_smaller_than_dense_logits():
    out = _run("bench_offline.py", "--vocab", "512", "--k", "8", "--repeats", "1", "--seq-len", "32", "--rows", "4")
    ratios = [float(line.split("|")[4]) for line in out.splitlines() if line.startswith("| 8 |")]
    assert len(ratios) == 3 and all(r < 1 for r in ratios)  # float32, float16, uint8 rows
    assert "| cache_k8 |" in out and "| online |" in out
