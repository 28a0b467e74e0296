"""A bad recipe is one clear line (`hf-distill: FILE: ...`, exit status 2) before anything is loaded."""

import os
import subprocess
import sys

import pytest
import yaml
from tiny_models import save_tiny_teacher, tiny_recipe
from transformers import AutoTokenizer, PreTrainedModel
from transformers.models.auto.auto_factory import _BaseAutoModelClass

from hf_distill.cli.main import main
from hf_distill.cli.recipe import RecipeError, load_recipe

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def teacher(tmp_path):
    save_tiny_teacher(tmp_path / "teacher", tmp_path / "corpus.txt")
    return tmp_path / "teacher"


@pytest.fixture
def no_loading(monkeypatch):
    """Any model or tokenizer load fails the test: the refusals below must come before one."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model or tokenizer was loaded before the recipe was refused")

    for owner in (PreTrainedModel, _BaseAutoModelClass, AutoTokenizer):
        monkeypatch.setattr(owner, "from_pretrained", classmethod(refuse))


def _write(tmp_path, recipe):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def _patched(recipe, section, **values):
    return {**recipe, section: {**recipe.get(section, {}), **values}}


# (section, values, what the one line must say)
BAD_VALUES = [
    ("args", {"learning_rate": "fast"}, "args.learning_rate='fast' is not a number"),
    ("args", {"max_steps": "two"}, "args.max_steps='two' is not an integer"),
    ("args", {"max_steps": 1.5}, "args.max_steps=1.5 is not an integer"),
    ("args", {"kd_temperature": "hot"}, "args.kd_temperature='hot' is not a number"),
    ("args", {"kd_weight": float("inf")}, "args.kd_weight=inf is not a number"),
    ("args", {"kd_temperature_scaling": "maybe"}, "args.kd_temperature_scaling='maybe' is not a boolean"),
    ("args", {"kd_loss": "kl"}, "args.kd_loss='kl'; use one of forward_kl, reverse_kl"),
    ("args", {"kd_chunk_size": -1}, "kd_chunk_size=-1 must be >= 0"),
    ("args", {"kd_temperature": 0}, "kd_temperature=0.0 must be > 0"),
    ("args", {"per_device_train_batch_size": 0}, "args.per_device_train_batch_size=0; use an integer >= 1"),
    ("args", {"gradient_accumulation_steps": -2}, "args.gradient_accumulation_steps=-2; use an integer >= 1"),
    ("args", {"learning_rate": -1e-4}, "args.learning_rate=-0.0001; use a number >= 0.0"),
    ("args", {"report_to": "wandb", "bf16": "sometimes"}, "args.bf16='sometimes' is not a boolean"),
    ("data", {"block_size": "big"}, "data.block_size='big' is not an integer"),
    ("data", {"block_size": 0}, "data.block_size=0; use an integer >= 1"),
    ("data", {"max_train_examples": -3}, "data.max_train_examples=-3; use an integer >= 1"),
    ("data", {"eval_fraction": 1.5}, "data.eval_fraction=1.5 is out of range; use a value in (0, 1)"),
    ("data", {"eval_fraction": 0}, "data.eval_fraction=0.0 is out of range"),
    ("cache", {"output_dir": "c", "k": 0}, "cache.k=0; use an integer >= 1"),
    ("generate", {"output_dir": "g", "top_p": 1.5}, "generate.top_p=1.5 is out of range; use a value in (0, 1]"),
    ("generate", {"output_dir": "g", "logprob_dtype": "int4"}, "generate.logprob_dtype='int4'; use one of float32"),
    ("student", {"layers": "0,2"}, "student.layers='0,2' is not a list; write a YAML list, e.g. [0, 2]"),
    ("student", {"layers": [0, "two"]}, "student.layers[1]='two' is not an integer"),
    ("student", {"layers": [0, -1]}, "student.layers=[0, -1]; use a layer index >= 0"),
    (
        "student",
        {"layers": [0, 7]},
        "has 3 layers (num_hidden_layers in its config.json), so 7 is out of range; use indices in [0, 2].",
    ),
    (
        "args",
        {"teacher_placement": "gpu9"},
        "teacher_placement='gpu9': 'gpu9' is neither a placement nor a device. Use one of auto, replicate, shard, "
        "offload, or a comma-separated list of devices: cpu, cuda, cuda:N, xpu:N or mps",
    ),
    ("args", {"max_steps": -5}, "args.max_steps=-5; use an integer >= 1, or -1 (or leave it out) to train for"),
    ("args", {"max_steps": 0}, "args.max_steps=0; use an integer >= 1, or -1"),
    ("teacher", {"trust_remote_code": "sure"}, "teacher.trust_remote_code='sure' is not a boolean"),
]


@pytest.mark.parametrize("section, values, message", BAD_VALUES, ids=[m.split("=")[0] for _, _, m in BAD_VALUES])
def test_a_bad_value_is_one_line_naming_file_field_and_value(
    tmp_path, teacher, no_loading, capsys, section, values, message
):
    path = _write(tmp_path, _patched(tiny_recipe(tmp_path, teacher), section, **values))
    assert main(["train", path]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"hf-distill: {path}: ")
    assert message in err


def test_a_bad_override_on_the_command_line_is_refused_the_same_way(tmp_path, teacher, no_loading, capsys):
    path = _write(tmp_path, tiny_recipe(tmp_path, teacher))
    assert main(["train", path, "--learning_rate", "fast"]) == 2
    assert (
        capsys.readouterr().err
        == f"hf-distill: {path}: args.learning_rate='fast' is not a number; use a number, e.g. 5.0e-4.\n"
    )


@pytest.mark.parametrize(
    "text, where",
    [
        ("task: causal_lm\nargs:\n  learning_rate: [1e-4\n", "line 4, column 1"),
        ("teacher:\n  model_name_or_path: t\n   trust_remote_code: true\n", "line 3, column 21"),
        ("data: {text_file: 'x}\n", "line 2, column 1"),
    ],
)
def test_yaml_syntax_errors_give_line_and_column(tmp_path, no_loading, capsys, text, where):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hf-distill: {path}: YAML syntax error at {where}: ") and err.count("\n") == 1


def test_a_missing_recipe_file_is_one_line(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().err == f"hf-distill: {tmp_path / 'nope.yaml'}: no such file.\n"


@pytest.mark.parametrize(
    "section, values, message",
    [
        (
            "teacher",
            {"model_name_or_path": "./no-teacher"},
            "teacher.model_name_or_path='./no-teacher': no such folder",
        ),
        ("teacher", {"model_name_or_path": "packaged:gpt5"}, "Unknown packaged asset 'packaged:gpt5'"),
        ("data", {"text_file": "missing.txt"}, "data.text_file='missing.txt': no such file"),
        ("data", {"text_file": None, "dataset": "csv", "data_files": "gone.csv"}, "data.data_files[0]='gone.csv'"),
        ("data", {"text_file": None, "dataset": "./gone"}, "data.dataset='./gone': no such file or folder"),
        ("args", {"teacher_cache": "./no-cache"}, "args.teacher_cache='./no-cache': no such folder"),
        ("args", {"teacher_deepspeed_config": "ds.json"}, "args.teacher_deepspeed_config='ds.json': no such file"),
    ],
)
def test_missing_files_and_folders_are_refused_before_loading(
    tmp_path, teacher, no_loading, capsys, monkeypatch, section, values, message
):
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, _patched(tiny_recipe(tmp_path, teacher), section, **values))
    assert main(["train", path]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hf-distill: {path}: ") and message in err and err.count("\n") == 1


@pytest.mark.parametrize("inside", ["", "sub"])
def test_an_output_dir_in_the_teacher_folder_is_one_line_before_loading(tmp_path, teacher, no_loading, capsys, inside):
    output_dir = str(teacher / inside) if inside else str(teacher)
    path = _write(tmp_path, _patched(tiny_recipe(tmp_path, teacher), "args", output_dir=output_dir))
    assert main(["train", path]) == 2
    err = capsys.readouterr().err
    where = "is inside" if inside else "is"
    assert err.startswith(f"hf-distill: {path}: args.output_dir={output_dir!r} {where} the teacher's folder ")
    assert err.count("\n") == 1 and "Choose an output_dir outside it" in err


@pytest.mark.parametrize("args", [[1, 2], "fast", 3])
def test_args_that_are_not_a_mapping_are_one_line(tmp_path, teacher, no_loading, capsys, args):
    path = _write(tmp_path, {**tiny_recipe(tmp_path, teacher), "args": args})
    assert main(["train", path]) == 2
    assert capsys.readouterr().err == (
        f"hf-distill: {path}: `args` must be a mapping of DistillationConfig fields (e.g. `learning_rate: 5.0e-4`), "
        f"got {type(args).__name__}.\n"
    )
    assert main(["train", path, "--learning_rate", "1e-4"]) == 2  # an override does not reach it first
    assert "`args` must be a mapping" in capsys.readouterr().err


def test_unknown_keys_still_raise(tmp_path, teacher):
    with pytest.raises(RecipeError, match="unknown key\\(s\\) learning_rat in `args`"):
        load_recipe(_write(tmp_path, _patched(tiny_recipe(tmp_path, teacher), "args", learning_rat=1)))


def test_yaml_strings_of_numbers_and_booleans_read_as_on_the_command_line(tmp_path, teacher):
    recipe = tiny_recipe(tmp_path, teacher, learning_rate="1e-4", kd_temperature_scaling="false", max_steps="3")
    recipe["data"]["data_files"] = None
    loaded = load_recipe(_write(tmp_path, recipe))
    args = loaded.training_arguments()
    assert (args.learning_rate, args.kd_temperature_scaling, args.max_steps) == (1e-4, False, 3)


@pytest.mark.slow
def test_the_cli_refuses_in_one_stderr_line_without_traceback_in_a_subprocess(tmp_path, teacher):
    path = _write(tmp_path, _patched(tiny_recipe(tmp_path, teacher), "args", learning_rate="fast"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": REPO}
    result = subprocess.run(
        [sys.executable, "-m", "hf_distill", "train", path], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert [line for line in lines if line.startswith("hf-distill:")] == [
        f"hf-distill: {path}: args.learning_rate='fast' is not a number; use a number, e.g. 5.0e-4."
    ]
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not (tmp_path / "student").exists()
