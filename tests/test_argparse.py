"""Distillation settings from the command line: a script in the shape of transformers' `run_clm.py`
(`HfArgumentParser` over its own dataclasses, with `DistillationConfig` in place of `TrainingArguments`) parses every
distillation field from `--flag value`, shows them in `--help`, and reads them from YAML and JSON files."""

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import fields

import pytest
import torch
import yaml
from tiny_models import llama
from transformers import HfArgumentParser, TrainingArguments

from hf_distill import DistillationConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DISTILLATION_FIELDS = [
    f for f in fields(DistillationConfig) if f.name not in {g.name for g in fields(TrainingArguments)}
]

# The user's script. Against run_clm.py it changes two lines: the import, and DistillationConfig in place of
# TrainingArguments in the parser; then the one-line trainer swap with `teacher_model=`.
SCRIPT = textwrap.dedent(
    """
    import json
    import sys
    from dataclasses import dataclass, field

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, HfArgumentParser

    from hf_distill import DistillationConfig, DistillationTrainer


    @dataclass
    class ModelArguments:
        model_name_or_path: str = field(metadata={"help": "The student checkpoint."})


    @dataclass
    class DataTrainingArguments:
        block_size: int = field(default=8, metadata={"help": "Tokens per block."})


    def main():
        parser = HfArgumentParser((ModelArguments, DataTrainingArguments, DistillationConfig))
        if len(sys.argv) == 2 and sys.argv[1].endswith((".json", ".yaml")):
            reader = parser.parse_json_file if sys.argv[1].endswith(".json") else parser.parse_yaml_file
            model_args, data_args, training_args = reader(sys.argv[1])
        else:
            model_args, data_args, training_args = parser.parse_args_into_dataclasses()
        model = AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path)
        teacher = AutoModelForCausalLM.from_pretrained(training_args.teacher_model_name_or_path)
        ids = torch.randint(2, 90, (4, data_args.block_size), generator=torch.Generator().manual_seed(0)).tolist()
        train = Dataset.from_dict({"input_ids": ids, "labels": ids})
        trainer = DistillationTrainer(model=model, args=training_args, teacher_model=teacher, train_dataset=train)
        trainer.train()
        names = [n for n in DistillationConfig.__dataclass_fields__ if n not in DistillationConfig.__mro__[1].__dataclass_fields__]
        print(json.dumps({
            "describe": trainer.kd_objective.describe(),
            "fields": {n: getattr(trainer.args, n) for n in names},
            "teacher_dtype": str(next(trainer.teacher_model.parameters()).dtype),
            "steps": trainer.state.global_step,
        }))


    if __name__ == "__main__":
        main()
    """
)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("argparse")
    torch.manual_seed(0)
    llama(32, 1).save_pretrained(root / "student")
    llama(32, 2).save_pretrained(root / "teacher")
    (root / "run_distill.py").write_text(SCRIPT)
    return root


def _run(folders, *argv):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": REPO, "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        [sys.executable, str(folders / "run_distill.py"), *map(str, argv)],
        capture_output=True,
        text=True,
        env=env,
        cwd=folders,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_every_distillation_flag_parses_and_reaches_the_trainer(folders):
    # fmt: off
    out = _run(
        folders,
        "--model_name_or_path", folders / "student", "--output_dir", folders / "out",
        "--teacher_model_name_or_path", folders / "teacher", "--teacher_trust_remote_code",
        "--kd_loss", "jsd", "--jsd_beta", "0.25", "--kd_temperature", "2.0", "--kd_temperature_scaling", "false",
        "--kd_weight", "0.5", "--ce_weight", "0.5", "--kd_chunk_size", "0", "--teacher_dtype", "bfloat16",
        "--teacher_placement", "replicate", "--preflight", "off", "--skew_alpha", "0.2",
        "--teacher_cache_tail", "renormalize", "--merge_adapter_on_save", "no", "--acknowledge_teacher_license",
        "--override_name_prefix", "true",
        "--on_policy_fraction", "0.25", "--teacher_generation_fraction", "0.25", "--max_new_tokens", "7",
        "--generation_temperature", "0.5", "--generation_top_p", "0.9", "--generation_top_k", "5",
        "--generation_kwargs", '{"repetition_penalty": 1.1}', "--generation_backend", "transformers",
        "--log_completions", "true", "--eval_on_policy", "false",
        # a served teacher's request settings (this teacher is loaded in process: they are carried, not used)
        "--teacher_top_k", "8", "--teacher_request_concurrency", "3", "--teacher_request_timeout", "30",
        "--teacher_request_retries", "1", "--teacher_prefetch", "0", "--teacher_api_key_env", "MY_TEACHER_KEY",
        "--teacher_provider", "acme", "--teacher_license", "apache-2.0",
        "--max_steps", "1", "--per_device_train_batch_size", "2", "--report_to", "none", "--use_cpu",
        "--save_strategy", "no", "--disable_tqdm", "true",
    )
    # fmt: on
    result = json.loads(out.strip().splitlines()[-1])
    assert result["describe"] == (
        "loss = 0.5·[jsd at T=2, beta=0.25] + 0.5·CE(labels), averaged over valid tokens of each optimizer step"
    )
    assert result["fields"] == {
        "teacher_model_name_or_path": str(folders / "teacher"),
        "teacher_revision": None,
        "teacher_cache": None,
        "teacher_cache_tail": "renormalize",
        "teacher_trust_remote_code": True,
        "teacher_top_k": 8,
        "teacher_request_concurrency": 3,
        "teacher_request_timeout": 30.0,
        "teacher_request_retries": 1,
        "teacher_prefetch": 0,
        "teacher_api_key_env": "MY_TEACHER_KEY",
        "teacher_provider": "acme",
        "teacher_license": "apache-2.0",
        "kd_loss": "jsd",
        "kd_temperature": 2.0,
        "kd_temperature_scaling": False,
        "jsd_beta": 0.25,
        "skew_alpha": 0.2,
        "kd_weight": 0.5,
        "ce_weight": 0.5,
        "kd_chunk_size": 0,
        "teacher_placement": "replicate",
        "teacher_deepspeed_config": None,
        "teacher_dtype": "bfloat16",
        "preflight": "off",
        "merge_adapter_on_save": False,
        "acknowledge_teacher_license": True,
        "override_name_prefix": True,
        "on_policy_fraction": 0.25,  # step 0 of this schedule is off-policy: the rows need no prompts
        "teacher_generation_fraction": 0.25,
        "max_new_tokens": 7,
        "generation_temperature": 0.5,
        "generation_top_p": 0.9,
        "generation_top_k": 5,
        "generation_kwargs": {"repetition_penalty": 1.1},
        "generation_backend": "transformers",
        "log_completions": True,
        "eval_on_policy": False,
        "cross_tokenizer": None,  # needs two tokenizers: parsed in test_cross_tokenizer_flag_parses
    }
    given = {f.name for f in DISTILLATION_FIELDS} - {"cross_tokenizer"}
    assert set(result["fields"]) == given | {"cross_tokenizer"}  # every other field was given above
    assert result["teacher_dtype"] == "torch.bfloat16" and result["steps"] == 1


@pytest.mark.slow
def test_help_lists_every_distillation_field_with_its_help(folders):
    out = _run(folders, "--help")
    squeezed = "".join(out.split())  # argparse wraps lines at spaces and hyphens: compare without whitespace
    for f in DISTILLATION_FIELDS:
        assert f"--{f.name}" in out, f.name
        assert "".join(f.metadata["help"].split()) in squeezed, f.name


@pytest.mark.slow
@pytest.mark.parametrize("suffix", ["yaml", "json"])
def test_the_script_reads_the_same_settings_from_a_yaml_or_json_file(folders, suffix):
    settings = {
        "model_name_or_path": str(folders / "student"),
        "output_dir": str(folders / f"out-{suffix}"),
        "teacher_model_name_or_path": str(folders / "teacher"),
        "kd_loss": "reverse_kl",
        "kd_temperature": 1.5,
        "kd_temperature_scaling": False,
        "kd_chunk_size": 0,
        "max_steps": 1,
        "per_device_train_batch_size": 2,
        "report_to": "none",
        "use_cpu": True,
        "save_strategy": "no",
    }
    path = folders / f"settings.{suffix}"
    path.write_text(yaml.safe_dump(settings) if suffix == "yaml" else json.dumps(settings))
    result = json.loads(_run(folders, path).strip().splitlines()[-1])
    assert result["describe"].startswith("loss = 1·[reverse_kl at T=1.5]")
    assert result["fields"]["kd_chunk_size"] == 0 and result["fields"]["kd_temperature_scaling"] is False


def test_parse_dict_and_files_refuse_bad_types_naming_the_field(tmp_path):
    parser = HfArgumentParser(DistillationConfig)
    with pytest.raises(TypeError, match="kd_temperature='hot' is not a number"):
        parser.parse_dict({"output_dir": str(tmp_path), "kd_temperature": "hot"})
    path = tmp_path / "bad.yaml"
    path.write_text("output_dir: out\nkd_temperature_scaling: 'no'\n")
    with pytest.raises(TypeError, match="kd_temperature_scaling='no' is not a boolean"):
        parser.parse_yaml_file(path)
    (tmp_path / "ok.yaml").write_text("output_dir: out\nkd_temperature: 2e0\n")  # YAML 1.1 reads 2e0 as a string
    assert parser.parse_yaml_file(tmp_path / "ok.yaml")[0].kd_temperature == 2.0


@pytest.mark.parametrize(
    "values, error, message",
    [
        ({"kd_temperature": "hot"}, TypeError, "kd_temperature='hot' is not a number; use a finite float"),
        ({"kd_weight": float("inf")}, ValueError, "kd_weight=inf is not finite"),
        ({"ce_weight": float("nan")}, ValueError, "ce_weight=nan is not finite"),
        ({"jsd_beta": True}, TypeError, "jsd_beta=True is not a number"),
        ({"kd_chunk_size": 1.5}, TypeError, "kd_chunk_size=1.5 is not an integer"),
        ({"teacher_placement": 5}, TypeError, "teacher_placement=5 is not a string; use auto, replicate, shard"),
        ({"kd_temperature_scaling": "no"}, TypeError, "kd_temperature_scaling='no' is not a boolean; use true or"),
        ({"teacher_trust_remote_code": 1}, TypeError, "teacher_trust_remote_code=1 is not a boolean"),
        ({"teacher_model_name_or_path": 3}, TypeError, "teacher_model_name_or_path=3 is not a string"),
        ({"teacher_placement": "gpu9"}, ValueError, "teacher_placement='gpu9': 'gpu9' is neither a placement nor a"),
        (
            {"teacher_placement": "cuda:1,tpu"},
            ValueError,
            "'tpu' is neither a placement nor a device. Use one of auto",
        ),
        ({"teacher_placement": ""}, ValueError, "teacher_placement='': '' is neither a placement nor a device"),
    ],
)
def test_distillation_config_checks_types_and_finiteness(tmp_path, values, error, message):
    with pytest.raises(error, match=message.replace("(", "\\(")):
        DistillationConfig(output_dir=str(tmp_path), **values)


@pytest.mark.parametrize(
    "placement", ["auto", "replicate", "shard", "offload", "cpu", "cuda:3", "cuda:0,cuda:1", "mps"]
)
def test_every_placement_form_resolve_placement_takes_is_accepted_by_the_config(tmp_path, placement):
    # Whether the devices exist is checked when the trainer resolves the placement, on the machine that trains.
    assert DistillationConfig(output_dir=str(tmp_path), teacher_placement=placement).teacher_placement == placement


def test_the_seq2seq_config_parses_distillation_and_generation_flags_alike(tmp_path):
    from hf_distill import Seq2SeqDistillationConfig

    parser = HfArgumentParser(Seq2SeqDistillationConfig)
    # fmt: off
    (args,) = parser.parse_args_into_dataclasses([
        "--output_dir", str(tmp_path), "--kd_loss", "jsd", "--kd_temperature_scaling", "false", "--kd_chunk_size", "0",
        "--teacher_trust_remote_code", "--predict_with_generate", "--generation_num_beams", "2",
    ])
    # fmt: on
    assert (args.kd_loss, args.kd_temperature_scaling, args.kd_chunk_size, args.teacher_trust_remote_code) == (
        "jsd",
        False,
        0,
        True,
    )
    assert (args.predict_with_generate, args.generation_num_beams) == (True, 2)
    squeezed = "".join(parser.format_help().split())
    for f in DISTILLATION_FIELDS:
        assert "".join(f.metadata["help"].split()) in squeezed, f.name
    with pytest.raises(TypeError, match="kd_chunk_size=1.5 is not an integer"):
        Seq2SeqDistillationConfig(output_dir=str(tmp_path), kd_chunk_size=1.5)


def test_cross_tokenizer_flag_parses_and_refuses_an_unknown_method():
    from transformers import HfArgumentParser

    from hf_distill import DistillationConfig

    parser = HfArgumentParser(DistillationConfig)
    (args,) = parser.parse_args_into_dataclasses(["--output_dir", "o", "--cross_tokenizer", "auto", "--use_cpu"])
    assert args.cross_tokenizer == "auto"
    with pytest.raises(SystemExit):  # argparse: "invalid choice: 'exat' (choose from auto, uld, exact, chunk)"
        parser.parse_args_into_dataclasses(["--output_dir", "o", "--cross_tokenizer", "exat"])
