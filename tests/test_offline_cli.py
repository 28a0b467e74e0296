"""`hf-distill cache-teacher` and `hf-distill generate` end to end on the tiny teacher, then training from what they
wrote with no teacher loaded."""

import json
import os

import pytest
import yaml
from tiny_models import save_tiny_teacher, tiny_recipe
from transformers import AutoTokenizer

from hf_distill.cli.main import main
from hf_distill.cli.recipe import load_recipe
from hf_distill.cli.train import run_recipe
from hf_distill.hub.lineage import Lineage
from hf_distill.offline.cache import CACHE_INFO_FILE, IDS, CacheInfo, load_teacher_cache


@pytest.fixture
def tiny_teacher_folder(tmp_path):
    save_tiny_teacher(tmp_path / "teacher", tmp_path / "corpus.txt")
    return tmp_path / "teacher"


def _write(tmp_path, content, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(content))
    return str(path)


@pytest.mark.slow
def test_cache_teacher_then_train_from_the_cache(tmp_path, tiny_teacher_folder, capsys):
    recipe = tiny_recipe(tmp_path, tiny_teacher_folder, max_steps=2, kd_temperature=2.0)
    cache_recipe = {k: v for k, v in recipe.items() if k not in ("student", "args")}
    cache_recipe["cache"] = {"output_dir": str(tmp_path / "cache"), "k": 8, "temperature": 2.0, "shard_size": 2}
    assert main(["cache-teacher", _write(tmp_path, cache_recipe, "cache.yaml")]) == 0
    out = capsys.readouterr().out
    assert "bytes per position (top-8, float16)" in out and "args.teacher_cache" in out
    train_info = CacheInfo.load(str(tmp_path / "cache" / "train"))
    assert train_info.complete and train_info.fingerprint.temperature == 2.0 and len(train_info.shards) > 1
    assert os.path.isfile(tmp_path / "cache" / "eval" / CACHE_INFO_FILE)

    recipe["args"]["teacher_cache"] = str(tmp_path / "cache" / "train")
    results = run_recipe(load_recipe(_write(tmp_path, recipe)))
    assert results["train_steps"] == 2
    lineage = Lineage.load(str(tmp_path / "student"))
    assert lineage.teacher["kind"] == "cache" and lineage.teacher["name"] == "teacher"
    assert lineage.teacher["cache"]["fingerprint"] == train_info.fingerprint.digest()

    recipe["args"]["kd_temperature"] = 1.0  # not the cache's temperature
    with pytest.raises(ValueError, match="temperature 2.0 differs from kd_temperature=1.0"):
        run_recipe(load_recipe(_write(tmp_path, recipe)))


def _prompts(tmp_path, column="prompt"):
    path = tmp_path / "prompts.csv"
    path.write_text(f"{column}\n" + "\n".join(f"w{i} w{i + 1} w{i + 2}" for i in range(6)) + "\n")
    return str(path)


def _generate_recipe(tmp_path, teacher_folder, **generate):
    return {
        "task": "causal_lm",
        "teacher": {"model_name_or_path": str(teacher_folder)},
        "data": {"dataset": "csv", "data_files": _prompts(tmp_path)},
        "generate": {"output_dir": str(tmp_path / "generated"), "max_new_tokens": 5, "batch_size": 4, **generate},
    }


def test_generate_responses_with_top_k_then_train_on_them_without_the_teacher(tmp_path, tiny_teacher_folder):
    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher_folder)
    tokenizer.chat_template = "{% for m in messages %}w90 {{ m['content'] }} {% endfor %}w91"
    tokenizer.save_pretrained(tiny_teacher_folder)
    recipe = _generate_recipe(tmp_path, tiny_teacher_folder, cache_top_k=6, do_sample=True, temperature=0.7, seed=3)
    assert main(["generate", _write(tmp_path, recipe, "generate.yaml")]) == 0

    cache = load_teacher_cache(str(tmp_path / "generated"))
    generation = cache.info.fingerprint.generation
    assert (generation["do_sample"], generation["temperature"], generation["seed"], generation["prompts"]) == (
        True,
        0.7,
        3,
        6,
    )
    row = cache.dataset[0]
    prompt_ids = tokenizer(
        tokenizer.apply_chat_template(
            [{"role": "user", "content": row["prompt"]}], tokenize=False, add_generation_prompt=True
        ),
        add_special_tokens=False,
    )["input_ids"]
    assert row["input_ids"][: len(prompt_ids)] == prompt_ids and prompt_ids[0] == tokenizer.convert_tokens_to_ids(
        "w90"
    )
    response = row["input_ids"][len(prompt_ids) :]
    assert 1 <= len(response) <= 5 and row["labels"] == [-100] * len(prompt_ids) + response
    # The position before each response token holds the distribution it was sampled from: the token is in its top-k
    # unless sampling picked it outside (possible, so check the teacher's top-1 is a real id and k entries exist).
    assert all(len(row[IDS][len(prompt_ids) - 1 + j]) == 6 for j in range(len(response)))

    train = tiny_recipe(tmp_path, tiny_teacher_folder, max_steps=2, teacher_cache=str(tmp_path / "generated"))
    train["data"] = {
        "dataset": "parquet",
        "data_files": str(tmp_path / "generated" / "shard-*.parquet"),
        "eval_fraction": 0.34,
    }
    results = run_recipe(load_recipe(_write(tmp_path, train)))
    assert results["train_steps"] == 2
    record = Lineage.load(str(tmp_path / "student")).teacher["cache"]
    assert record["name"] == "generated" and record["generation"]["do_sample"] is True


def test_generate_without_top_k_writes_responses_only(tmp_path, tiny_teacher_folder):
    assert main(["generate", _write(tmp_path, _generate_recipe(tmp_path, tiny_teacher_folder), "generate.yaml")]) == 0
    folder = tmp_path / "generated"
    manifest = json.loads((folder / "generation.json").read_text())
    assert manifest["fingerprint"]["generation"]["do_sample"] is False and manifest["total_rows"] == 6
    assert not (folder / CACHE_INFO_FILE).exists()  # not a teacher cache: it has no distributions
    with pytest.raises(FileNotFoundError, match="is not a teacher cache"):
        load_teacher_cache(str(folder))


def test_bad_offline_recipes(tmp_path, tiny_teacher_folder, capsys):
    recipe = _generate_recipe(tmp_path, tiny_teacher_folder, prompt_column="question")
    with pytest.raises(
        ValueError,
        match="generate.prompt_column='question' is not a column of the prompts dataset \\(columns: prompt\\)",
    ):
        main(["generate", _write(tmp_path, recipe, "generate.yaml")])
    recipe = _generate_recipe(tmp_path, tiny_teacher_folder, cache_top_k=10_000)
    with pytest.raises(ValueError, match="cache_top_k=10000 must be between 1 and the vocabulary size"):
        main(["generate", _write(tmp_path, recipe, "generate.yaml")])
    assert main(["cache-teacher", _write(tmp_path, _generate_recipe(tmp_path, tiny_teacher_folder), "g.yaml")]) == 2
    assert "has no `cache:` section" in capsys.readouterr().err
    bad = _generate_recipe(tmp_path, tiny_teacher_folder)
    bad["generate"]["beams"] = 4
    assert main(["generate", _write(tmp_path, bad, "bad.yaml")]) == 2
    assert "Unknown key(s) beams in `generate`" in capsys.readouterr().err
