"""`hf-distill train` across tokenizers: a pretrained student cut to some of its own layers, data tokenized by the
student's tokenizer, and bits per byte (not perplexity) in the report."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import yaml
from tokenizer_pairs import CORPUS, byte_level_bpe, sentencepiece_bpe, tiny_causal_lm
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_distill.cli.recipe import RecipeError, load_recipe
from hf_distill.cli.recipe_files import check_recipe_files
from hf_distill.cli.train import BITS_PER_BYTE, load_student
from hf_distill.hub.lineage import Lineage
from hf_distill.provenance import model_source

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(REPO, "trainer_configs", "cross_tokenizer.yaml")


def _write(tmp_path, recipe):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


BASE = {
    "teacher": {"model_name_or_path": "t"},
    "student": {"init": "pretrained", "model_name_or_path": "s", "layers": [0, 2]},
    "data": {"text_file": "x.txt"},
    "args": {"output_dir": "out", "cross_tokenizer": "auto"},
}


def test_shipped_recipe_distils_a_smollm2_cut_from_gemma_across_tokenizers():
    with open(SHIPPED) as f:
        assert f.readline().strip() == "# hf-distill train trainer_configs/cross_tokenizer.yaml"
    recipe = load_recipe(SHIPPED)
    args = recipe.training_arguments()
    assert recipe.teacher.model_name_or_path == "packaged:gemma3-270m"
    assert (recipe.student.init, recipe.student.model_name_or_path) == ("pretrained", "packaged:smollm2-135m-instruct")
    assert recipe.student.layers == [0, 6, 12, 18, 24, 29]
    assert (recipe.data.text_file, recipe.data.block_size) == ("packaged:hamlet", 128)
    assert (args.cross_tokenizer, args.kd_loss, args.seed) == ("auto", "forward_kl", 0)
    assert args.ce_weight in (0.0, 0.5)


def test_pretrained_student_takes_layers_of_its_own_model(tmp_path):
    recipe = load_recipe(_write(tmp_path, BASE))
    assert (recipe.student.init, recipe.student.layers) == ("pretrained", [0, 2])
    same_tokenizer = {**BASE, "args": {"output_dir": "out"}}  # a cut of a pretrained model needs no cross_tokenizer
    assert load_recipe(_write(tmp_path, same_tokenizer)).student.layers == [0, 2]


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"student": {"init": "pretrained", "model_name_or_path": "s", "layers": [0, 1], "quantization": "4bit"}},
            "student.layers=\\[0, 1\\] cuts a full-precision model and student.quantization=4bit loads a 4/8-bit one",
        ),
        (
            {"peft": {"peft_type": "LORA", "r": 2}},
            "a `peft` student built from student.layers of its model .* set `args.merge_adapter_on_save: true`",
        ),
        (
            {"student": {"init": "pretrained", "model_name_or_path": "s", "layers": [0, 2, 2]}},
            "student.layers=\\[0, 2, 2\\] repeats a layer",
        ),
        (
            {"student": {"init": "pretrained", "model_name_or_path": "s", "layers": [0, -1]}},
            "student.layers=\\[0, -1\\]; use a layer index >= 0",
        ),
        (
            {"student": {"init": "pretrained", "model_name_or_path": "s", "layers": [0, "one"]}},
            "student.layers\\[1\\]='one' is not an integer",
        ),
        (
            {"student": {"init": "teacher_layers", "layers": [0, 2]}},
            "args.cross_tokenizer=auto distils into a student with its own tokenizer, but "
            "student.init=teacher_layers copies the teacher",
        ),
        (
            {"task": "sequence_classification"},
            "args.cross_tokenizer=auto distils causal language models; task=sequence_classification",
        ),
        (
            {"args": {"output_dir": "out", "cross_tokenizer": "auto", "teacher_cache": "cache"}},
            "args.teacher_cache is not supported with args.cross_tokenizer=auto",
        ),
        ({"args": {"output_dir": "out", "cross_tokenizer": "byte"}}, "args.cross_tokenizer='byte'; use one of auto"),
    ],
)
def test_bad_cross_tokenizer_recipes_name_the_field(tmp_path, change, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(_write(tmp_path, {**BASE, **change}))


def test_student_layers_beyond_the_pretrained_students_layers_are_refused_before_loading(tmp_path, monkeypatch):
    (tmp_path / "student").mkdir()
    (tmp_path / "student" / "config.json").write_text(json.dumps({"num_hidden_layers": 3}))
    (tmp_path / "x.txt").write_text("text")
    recipe = {**BASE, "student": {"init": "pretrained", "model_name_or_path": str(tmp_path / "student")}}
    recipe["student"]["layers"] = [0, 3]
    path = _write(tmp_path, {**recipe, "teacher": {"model_name_or_path": "acme/t"}, "data": {"text_file": "x.txt"}})
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        RecipeError, match="student.layers=\\[0, 3\\]: the student model .* has 3 layers .* \\[0, 2\\]"
    ):
        check_recipe_files(path, load_recipe(path))


def test_a_cut_of_a_pretrained_student_keeps_its_layers_and_names_its_source(tmp_path):
    torch.manual_seed(0)
    full = tiny_causal_lm(50, layers=3)
    full.save_pretrained(tmp_path / "smol")
    recipe = load_recipe(
        _write(tmp_path, {**BASE, "student": {**BASE["student"], "model_name_or_path": str(tmp_path / "smol")}})
    )
    student = load_student(recipe, teacher=None, auto=AutoModelForCausalLM, load_kwargs={})
    assert student.config.num_hidden_layers == 2
    kept = student.model.layers[1].self_attn.q_proj.weight
    assert torch.equal(kept, full.model.layers[2].self_attn.q_proj.weight)
    source = model_source(student)
    # Its weights are SmolLM-like model's, not the teacher's: a pretrained init naming that model and the layers kept.
    assert "init" not in source and source["layers"] == [0, 2]
    assert (source["name"], source["source"]) == ("smol", "local") and len(source["weights_sha256"]) == 64


def _tiny_pair(tmp_path):
    """A 3-layer student with a byte-level BPE and a teacher with a SentencePiece-style BPE, saved as checkpoints,
    and a text both can tokenize."""
    torch.manual_seed(0)
    student_tokenizer, teacher_tokenizer = byte_level_bpe(), sentencepiece_bpe()
    student = tiny_causal_lm(len(student_tokenizer), layers=3, pad_token_id=student_tokenizer.pad_token_id)
    teacher = tiny_causal_lm(len(teacher_tokenizer), hidden=64, layers=2, pad_token_id=teacher_tokenizer.pad_token_id)
    for folder, model, tokenizer in (
        ("student_in", student, student_tokenizer),
        ("teacher", teacher, teacher_tokenizer),
    ):
        model.save_pretrained(tmp_path / folder)
        tokenizer.save_pretrained(tmp_path / folder)
    (tmp_path / "corpus.txt").write_text("\n".join(CORPUS))
    return student_tokenizer


@pytest.mark.slow
def test_cli_trains_a_tiny_cross_tokenizer_pair_and_reports_bits_per_byte(tmp_path):
    student_tokenizer = _tiny_pair(tmp_path)
    recipe = {
        "task": "causal_lm",
        "teacher": {"model_name_or_path": str(tmp_path / "teacher")},
        "student": {"init": "pretrained", "model_name_or_path": str(tmp_path / "student_in"), "layers": [0, 2]},
        "data": {"text_file": str(tmp_path / "corpus.txt"), "block_size": 16},
        "args": {
            "output_dir": str(tmp_path / "student"),
            "cross_tokenizer": "auto",
            "ce_weight": 0.5,
            "max_steps": 2,
            "per_device_train_batch_size": 4,
            "report_to": [],
            "use_cpu": True,
            "save_strategy": "no",
            "disable_tqdm": True,
        },
    }
    result = subprocess.run(
        [sys.executable, "-m", "hf_distill", "train", _write(tmp_path, recipe)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "bits per byte (held out)" in result.stdout and "perplexity" not in result.stdout

    out = tmp_path / "student"
    results = json.loads((out / "distillation_results.json").read_text())
    assert results["metric"] == BITS_PER_BYTE and "not comparable" in results["metric_note"]
    assert (results["cross_tokenizer"], results["train_steps"], results["world_size"]) == ("chunk", 2, 1)
    teacher_row, before, after = results["models"]
    assert teacher_row["name"] == "teacher teacher"
    for row in (teacher_row, before, after):  # untrained tiny models: about 8 bits per byte, never 0 or inf
        assert math.isfinite(row["metric"]) and 1.0 < row["metric"] < 64.0
    assert after["metric"] != before["metric"]  # two steps moved the student
    assert after["parameters"] == before["parameters"] < teacher_row["parameters"]

    # The saved student is the 2-layer cut with the student's tokenizer (its rows were in the student's tokens).
    saved = AutoModelForCausalLM.from_pretrained(out)
    assert saved.config.num_hidden_layers == 2 and saved.config.vocab_size == len(student_tokenizer)
    saved_tokenizer = AutoTokenizer.from_pretrained(out)
    assert saved_tokenizer.get_vocab() == student_tokenizer.get_vocab()
    lineage = Lineage.load(str(out))
    init = lineage.student["init"]
    assert (init["kind"], init["name"], init["layers"]) == ("pretrained", "student_in", [0, 2])
    assert not lineage.weights_derive_from_teacher
    assert lineage.teacher["name"] == "teacher"


def test_the_card_says_a_pretrained_student_was_cut_to_some_of_its_layers():
    from types import SimpleNamespace

    from hf_distill.hub.card import _init_text

    init = {"kind": "pretrained", "name": "smollm2-135m-instruct", "source": "local", "layers": [0, 29]}
    text = _init_text(SimpleNamespace(student={"init": init}))
    assert text.startswith("layers [0, 29] of ") and "smollm2-135m-instruct" in text
    del init["layers"]
    assert not _init_text(SimpleNamespace(student={"init": init})).startswith("layers")


@pytest.mark.slow
def test_cache_teacher_writes_a_cache_in_the_teachers_own_tokens_that_trains_another_tokenizer(tmp_path):
    from datasets import Dataset

    from hf_distill import DistillationConfig, DistillationTrainer
    from hf_distill.cli.main import main
    from hf_distill.offline.cache import CacheInfo, load_teacher_cache

    student_tokenizer = _tiny_pair(tmp_path)
    recipe = {
        "task": "causal_lm",
        "teacher": {"model_name_or_path": str(tmp_path / "teacher")},
        "data": {"text_file": str(tmp_path / "corpus.txt"), "block_size": 16},
        "cache": {"output_dir": str(tmp_path / "cache"), "k": 8, "teacher_tokenized": True},
    }
    assert main(["cache-teacher", _write(tmp_path, recipe)]) == 0
    info = CacheInfo.load(str(tmp_path / "cache" / "train"))
    assert info.fingerprint.teacher_tokenizer_hash.startswith("sha256:")
    assert "teacher_offsets" in load_teacher_cache(str(tmp_path / "cache" / "train")).dataset.column_names
    args = DistillationConfig(
        output_dir=str(tmp_path / "student"), cross_tokenizer="chunk", max_steps=2, per_device_train_batch_size=4,
        report_to=[], use_cpu=True, disable_tqdm=True, save_strategy="no",
    )  # fmt: skip
    from tokenizer_pairs import PadCollator, tiny_causal_lm

    trainer = DistillationTrainer(
        model=tiny_causal_lm(len(student_tokenizer)), args=args, teacher_cache=str(tmp_path / "cache" / "train"),
        data_collator=PadCollator(student_tokenizer), processing_class=student_tokenizer,
    )  # fmt: skip
    trainer.train()
    assert isinstance(trainer.train_dataset, Dataset) and trainer.state.global_step == 2
