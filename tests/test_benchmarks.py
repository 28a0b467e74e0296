"""The benchmark scripts keep running (on tiny shapes) and their variants agree with the naive loss.

Timings are printed by the scripts, never asserted here.
"""

import os
import subprocess
import sys

import yaml

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


def test_rotten_tomatoes_quality_benchmark_runs_and_its_student_card_carries_the_comparison(tmp_path):
    out = _run(
        "quality/rotten_tomatoes_minilm.py", "--seeds", "0", "--labelled", "32", "--transfer", "32", "--test", "64",
        "--epochs", "1", "--card-dir", str(tmp_path),
    )  # fmt: skip
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in out.splitlines() if "| student" in line}
    assert set(rows) == {f"student: layers {{0, 5}}, {k}" for k in ("hard labels", "teacher argmax", "distilled")}
    assert all(0 <= float(value) <= 100 for value in rows.values()), rows
    (card,) = tmp_path.iterdir()
    text = card.read_text()
    metadata = yaml.safe_load(text.split("---\n")[1])
    (result,) = metadata["model-index"][0]["results"]
    accuracy = next(m["value"] for m in result["metrics"] if m["name"] == "student accuracy")
    assert abs(100 * accuracy - float(rows["student: layers {0, 5}, distilled"])) <= 0.051  # the table's figure
    assert "| accuracy (higher is better) |" in text
    assert "kind: teacher_layers" in text and "name: minilm-l6-rotten-tomatoes" in text
    assert str(tmp_path) not in text and "/tmp" not in text
