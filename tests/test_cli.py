"""The `hf-distill` command line and its YAML recipes."""

import glob
import json
import os
import subprocess
import sys

import pytest
import yaml
from tiny_models import save_tiny_teacher, tiny_recipe
from transformers import AutoModelForCausalLM

from hf_distill.cli.main import main
from hf_distill.cli.recipe import load_recipe
from hf_distill.cli.train import run_recipe

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL_YAML = sorted(glob.glob(os.path.join(REPO, "trainer_configs", "**", "*.yaml"), recursive=True))
ACCELERATE_CONFIGS = [p for p in ALL_YAML if os.sep + "accelerate" + os.sep in p]
CONFIGS = [p for p in ALL_YAML if p not in ACCELERATE_CONFIGS]


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.relpath(p, REPO) for p in CONFIGS])
def test_every_shipped_recipe_loads_and_opens_with_its_command(path):
    relative = os.path.relpath(path, REPO)
    with open(path) as f:
        first_line = f.readline().strip()
    recipe = load_recipe(path)
    command = "cache-teacher" if recipe.cache else "generate" if recipe.generate else "train"
    assert first_line == f"# hf-distill {command} {relative}"
    recipe.training_arguments()  # every `args` value is a valid DistillationConfig field value


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=[os.path.relpath(p, REPO) for p in ACCELERATE_CONFIGS])
def test_every_accelerate_config_loads_with_accelerate_and_opens_with_its_launch_line(path):
    from accelerate.commands.config.config_args import ClusterConfig

    with open(path) as f:
        first_line = f.readline().strip()
    assert first_line.startswith(
        f"# accelerate launch --config_file {os.path.relpath(path, REPO)} -m hf_distill train"
    )
    config = ClusterConfig.from_yaml_file(path)  # unknown keys raise
    assert config.num_machines == 1
    json_file = (config.deepspeed_config or {}).get("deepspeed_config_file")
    if json_file:  # the DeepSpeed JSON it names exists, parses, and leaves precision to it alone
        with open(os.path.join(REPO, json_file)) as f:
            assert json.load(f)["zero_optimization"]["stage"] == 3
        assert config.mixed_precision in (None, "no")


def test_shipped_recipes_were_found():
    names = {os.path.basename(p) for p in ACCELERATE_CONFIGS}
    assert names == {"single_gpu.yaml", "multi_gpu_ddp.yaml", "fsdp2.yaml", "zero3.yaml"}
    assert any(p.endswith("quickstart.yaml") for p in CONFIGS)


def _write(tmp_path, content):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(content))
    return str(path)


BASE = {
    "teacher": {"model_name_or_path": "t"},
    "student": {"init": "teacher_layers", "layers": [0]},
    "data": {"text_file": "x.txt"},
    "args": {"output_dir": "out"},
}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"extra": 1}, "unknown top-level key\\(s\\) extra"),
        ({"teacher": {"model_name_or_path": "t", "revison": "main"}}, "Unknown key\\(s\\) revison in `teacher`"),
        ({"data": {"text_file": "x", "blok_size": 3}}, "Unknown key\\(s\\) blok_size in `data`"),
        ({"args": {"output_dir": "o", "learning_rat": 1}}, "unknown key\\(s\\) learning_rat in `args`"),
        ({"task": "image_generation"}, "task='image_generation' is not supported"),
        ({"student": {"init": "teacher_layers"}}, "needs `student.layers`"),
        ({"teacher": {}}, "`teacher.model_name_or_path` is required"),
        ({"peft": {"peft_type": "LORA", "rank": 4}}, "Unknown key\\(s\\) rank in `peft` for LoraConfig"),
        ({"peft": {"peft_type": "LOWRANK"}}, "peft.peft_type='LOWRANK'; use one of"),
        ({"peft": {"peft_type": "LORA"}}, "set `args.merge_adapter_on_save: true`"),
        (
            {"student": {"init": "pretrained", "model_name_or_path": "s", "quantization": "4bit"}},
            "add a `peft` section",
        ),
        ({"student": {"init": "pretrained", "model_name_or_path": "s", "quantization": "3bit"}}, "use 4bit, 8bit"),
    ],
)
def test_bad_recipes_name_the_key(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        load_recipe(_write(tmp_path, {**BASE, **change}))


def test_overrides_reach_args_and_sections(tmp_path):
    from hf_distill.cli.recipe import parse_overrides

    recipe = load_recipe(_write(tmp_path, BASE), parse_overrides(["--learning_rate", "1e-3", "--data.block_size=7"]))
    assert recipe.args["learning_rate"] == 1e-3 and recipe.data.block_size == 7
    assert recipe.training_arguments().learning_rate == 1e-3


def test_train_help_lists_every_distillation_config_field(capsys):
    import dataclasses

    from hf_distill import DistillationConfig

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    listed = capsys.readouterr().out
    missing = [f.name for f in dataclasses.fields(DistillationConfig) if f.init and f"--{f.name}" not in listed]
    assert not missing, missing
    assert "Softmax temperature of the KD term" in listed  # with the field's help


def test_hyphenated_overrides_reach_args_as_the_help_spells_them(tmp_path):
    from hf_distill.cli.recipe import parse_overrides

    recipe = load_recipe(_write(tmp_path, BASE), parse_overrides(["--learning-rate", "2e-3", "--kd-temperature=3"]))
    assert recipe.training_arguments().learning_rate == 2e-3
    assert recipe.training_arguments().kd_temperature == 3.0


def test_teacher_revision_reaches_the_librarys_loader(tmp_path, monkeypatch):
    import hf_distill.cli.train as train

    seen = {}
    monkeypatch.setattr(train, "load_teacher", lambda name, **kwargs: seen.update(name=name, **kwargs) or "teacher")
    recipe = load_recipe(_write(tmp_path, {**BASE, "teacher": {"model_name_or_path": "acme/t", "revision": "v1"}}))
    assert train.load_teacher_model(recipe) == "teacher"
    assert seen["name"] == "acme/t" and seen["revision"] == "v1" and seen["task"] == "causal_lm"


def test_cli_reports_a_bad_recipe_without_a_traceback(tmp_path, capsys):
    assert main(["train", _write(tmp_path, {**BASE, "args": {"kd_los": "jsd"}})]) == 2
    assert "unknown key(s) kd_los in `args`" in capsys.readouterr().err


@pytest.fixture
def tiny_teacher_folder(tmp_path):
    save_tiny_teacher(tmp_path / "teacher", tmp_path / "corpus.txt")
    return tmp_path / "teacher"


def test_cli_train_end_to_end_saves_a_loadable_student(tmp_path, tiny_teacher_folder, capsys):
    recipe = tiny_recipe(tmp_path, tiny_teacher_folder, max_steps=3)
    assert main(["train", _write(tmp_path, recipe), "--learning_rate", "1e-3"]) == 0
    out = capsys.readouterr().out
    assert "| teacher teacher" in out and "student after distillation" in out and "perplexity" in out
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    assert student.config.num_hidden_layers == 2
    results = json.loads((tmp_path / "student" / "distillation_results.json").read_text())
    teacher_row, _, after = results["models"]
    assert after["parameters"] < teacher_row["parameters"] and after["metric"] > 0
    assert (results["train_steps"], results["world_size"]) == (3, 1)


def test_cli_run_writes_a_card_with_the_teacher_vs_student_comparison(tmp_path, tiny_teacher_folder, caplog):
    recipe = tiny_recipe(tmp_path, tiny_teacher_folder, max_steps=2)
    without_license = run_recipe(load_recipe(_write(tmp_path, recipe)))
    assert not (tmp_path / "student" / "README.md").exists()  # unknown teacher license: no card that misstates it
    assert "No model card written: The teacher's license is unknown" in caplog.text

    (tiny_teacher_folder / "README.md").write_text("---\nlicense: mit\n---\n")
    results = run_recipe(load_recipe(_write(tmp_path, recipe)))
    card = (tmp_path / "student" / "README.md").read_text()
    meta = yaml.safe_load(card.split("---\n")[1])
    lineage = meta["distillation"]
    assert meta["license"] == "mit" and lineage["student"]["init"] == {"kind": "teacher_layers", "layers": [0, 2]}
    assert lineage["teacher"]["name"] == "teacher" and lineage["teacher"]["source"] == "local"
    assert lineage["datasets"][0]["id"] == "corpus.txt" and str(tmp_path) not in card
    # The card's comparison and the printed report measure the same models by two code paths: they agree.
    teacher_row, _, after = results["models"]
    metric = lineage["evaluation"]["metric"]
    assert metric["name"] == "perplexity"
    assert metric["teacher"] == pytest.approx(teacher_row["metric"], rel=1e-4)
    assert metric["student"] == pytest.approx(after["metric"], rel=1e-4)
    assert without_license["models"][0]["metric"] == pytest.approx(teacher_row["metric"], rel=1e-6)


def test_lora_recipe_trains_adapters_and_saves_a_merged_student(tmp_path, tiny_teacher_folder, capsys):
    from hf_distill.hub.lineage import Lineage

    shipped = load_recipe(os.path.join(REPO, "trainer_configs", "lora_student.yaml"))
    assert "lm_head" in shipped.peft_config().target_modules and shipped.training_arguments().merge_adapter_on_save
    recipe = tiny_recipe(tmp_path, tiny_teacher_folder, max_steps=2, merge_adapter_on_save=True)
    recipe["peft"] = {"peft_type": "LORA", "r": 2, "target_modules": ["q_proj", "lm_head"]}
    assert main(["train", _write(tmp_path, recipe)]) == 0
    assert "load it with transformers' from_pretrained" in capsys.readouterr().out
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "student")  # merged: no peft needed
    assert not any("lora" in name for name, _ in student.named_parameters())
    assert Lineage.load(str(tmp_path / "student")).student["adapter"]["method"] == "LORA"


def test_qlora_recipe_without_bitsandbytes_is_refused_before_loading(tmp_path, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a)
    )
    recipe = {
        **BASE,
        "student": {"init": "pretrained", "model_name_or_path": "does-not-exist", "quantization": "4bit"},
        "peft": {"peft_type": "LORA", "r": 2, "target_modules": ["q_proj"]},
    }
    recipe["data"] = {"text_file": str(tmp_path / "missing.txt")}
    with pytest.raises(
        ImportError, match="student.quantization=4bit asks for a 4/8-bit \\(QLoRA\\) student.*bitsandbytes"
    ):
        run_recipe(load_recipe(_write(tmp_path, recipe)))


@pytest.mark.slow
def test_module_entry_point_runs_the_cli():
    result = subprocess.run([sys.executable, "-m", "hf_distill", "train", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--field value" in result.stdout
