"""The one-line swap, tried from the outside: scripts in the shape of transformers' official examples (run_clm,
run_glue, run_ner, run_summarization), after the documented change, run as a user runs them (a subprocess with
command-line flags), then fed the mistakes people make. Each asserts what the user relies on afterwards."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import user_assets
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    Trainer,
    TrainingArguments,
)

SCRIPTS = Path(__file__).parent / "user_scripts"
REPO = Path(__file__).parent.parent
COMMON = ["--report_to", "none", "--use_cpu", "--disable_tqdm", "true", "--seed", "0"]

pytestmark = pytest.mark.slow  # every test runs a script in a fresh Python process


def run_script(name: str, args: list[str], cwd: Path, expect_ok: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    result = subprocess.run(
        [sys.executable, str(SCRIPTS / name), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    if expect_ok:
        assert result.returncode == 0, f"{name} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
    return result


def folder_digest(folder: str | Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(folder).rglob("*"))
        if p.is_file()
    }


def assert_card_is_local_and_honest(output_dir: Path, tmp_path: Path) -> str:
    card = (output_dir / "README.md").read_text()
    assert "distillation" in card.lower()
    assert "unknown" in card.lower()  # the teacher's card states no license: said so, not guessed
    assert str(tmp_path) not in card and "/tmp/" not in card  # no local path in what may be published
    return card


def test_run_clm_shape_trains_evaluates_and_writes_its_card(tmp_path):
    files = user_assets.clm_folders(tmp_path)
    args = [
        "--model_name_or_path", "student", "--teacher_name_or_path", "teacher",
        "--train_file", "train.txt", "--validation_file", "validation.txt", "--block_size", "16",
        "--do_train", "--do_eval", "--max_steps", "4", "--per_device_train_batch_size", "2",
        "--gradient_accumulation_steps", "2", "--per_device_eval_batch_size", "4", "--output_dir", "out", "--eval_strategy", "steps", "--eval_steps", "2",
        "--save_steps", "2", "--load_best_model_at_end", "--metric_for_best_model", "eval_loss",
        "--kd_temperature", "2", "--ce_weight", "0.5", "--kd_loss", "jsd", *COMMON,
    ]  # fmt: skip
    run = run_script("distill_clm.py", args, tmp_path)
    objective = json.loads(run.stdout.split("SETTINGS ")[1].splitlines()[0])["objective"]
    assert "jsd at T=2" in objective and "0.5·CE" in objective
    out = tmp_path / "out"
    metrics = json.loads((out / "eval_results.json").read_text())
    # `exp(eval_loss)` is still the student's perplexity: eval_loss is its own label loss, as plain Trainer reports.
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]))
    assert {"eval_distillation_loss", "eval_kd_loss", "eval_ce_loss"} <= set(metrics)
    assert metrics["eval_loss"] == pytest.approx(metrics["eval_ce_loss"], rel=1e-5)
    assert metrics["eval_distillation_loss"] != pytest.approx(metrics["eval_loss"])
    student = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = [t for line in Path(files["validation"]).read_text().splitlines() for t in tokenizer(line)["input_ids"]]
    blocks = torch.tensor([ids[i : i + 16] for i in range(0, len(ids) // 16 * 16, 16)])
    plain = Trainer(
        model=student, args=TrainingArguments(output_dir=str(tmp_path / "plain"), report_to=[], use_cpu=True)
    )
    reference = plain.evaluate([{"input_ids": b, "labels": b} for b in blocks])["eval_loss"]
    assert metrics["eval_loss"] == pytest.approx(reference, rel=1e-5)
    assert_card_is_local_and_honest(out, tmp_path)
    assert (out / "distillation_lineage.json").is_file()
    # The teacher folder the run read from is untouched.
    assert not list(Path(files["teacher"]).glob("checkpoint-*"))


def _fine_tune_teacher_with_plain_trainer(files: dict[str, str], tmp_path: Path, labels: list[str]) -> str:
    """What a user has before distilling: a teacher fine-tuned by plain `Trainer` (its card states no license)."""
    import csv

    tokenizer = AutoTokenizer.from_pretrained(files["teacher_base"])
    model = AutoModelForSequenceClassification.from_pretrained(files["teacher_base"])
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {label: i for i, label in enumerate(labels)}
    with open(files["train"]) as f:
        rows = list(csv.DictReader(f))
    data = [
        {**tokenizer(r["sentence"], padding="max_length", max_length=12), "labels": labels.index(r["label"])}
        for r in rows
    ]
    folder = tmp_path / "teacher"
    args = TrainingArguments(
        output_dir=str(folder), max_steps=6, per_device_train_batch_size=8, learning_rate=1e-3, report_to=[],
        use_cpu=True, save_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    trainer.train()
    trainer.save_model()
    trainer.create_model_card(finetuned_from=os.path.basename(files["teacher_base"]), tasks="text-classification")
    assert "license:" not in (folder / "README.md").read_text()
    return str(folder)


def test_run_glue_shape_with_a_plain_trainer_teacher_label_smoothing_and_predict(tmp_path):
    files = user_assets.glue_files(tmp_path)
    teacher = _fine_tune_teacher_with_plain_trainer(files, tmp_path, user_assets.LABELS)
    before = folder_digest(teacher)
    args = [
        "--model_name_or_path", "student", "--teacher_model_name_or_path", "teacher",
        "--train_file", "train.csv", "--validation_file", "validation.csv", "--test_file", "test.csv",
        "--do_train", "--do_eval", "--do_predict", "--max_steps", "3", "--per_device_train_batch_size", "8",
        "--output_dir", "out", "--label_smoothing_factor", "0.1", "--kd_temperature", "2", "--ce_weight", "0.5",
        "--save_strategy", "no", "--bf16", *COMMON,
    ]  # fmt: skip
    run_script("distill_glue.py", args, tmp_path)
    out = tmp_path / "out"
    metrics = json.loads((out / "eval_results.json").read_text())
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0 and math.isfinite(metrics["eval_loss"])
    assert "eval_kd_loss" in metrics and "eval_distillation_loss" in metrics
    predictions = (out / "predict_results.txt").read_text().splitlines()
    assert len(predictions) == 1 + 8 and all(p.split("\t")[1] in user_assets.LABELS for p in predictions[1:])
    assert_card_is_local_and_honest(out, tmp_path)
    assert folder_digest(teacher) == before


def test_run_ner_shape_trains_evaluates_and_predicts(tmp_path):
    user_assets.ner_files(tmp_path)
    args = [
        "--model_name_or_path", "student", "--teacher_model_name_or_path", "teacher",
        "--train_file", "train.json", "--validation_file", "validation.json",
        "--do_train", "--do_eval", "--do_predict", "--max_steps", "3", "--per_device_train_batch_size", "8",
        "--output_dir", "out", "--save_strategy", "no", *COMMON,
    ]  # fmt: skip
    run = run_script("distill_ner.py", args, tmp_path)
    assert json.loads(run.stdout.split("LABELS ")[1].splitlines()[0]) == user_assets.TAGS
    out = tmp_path / "out"
    metrics = json.loads((out / "eval_results.json").read_text())
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0 and "eval_kd_loss" in metrics
    assert "predict_accuracy" in json.loads((out / "predict_results.json").read_text())
    predictions = (out / "predictions.txt").read_text().splitlines()
    validation = [json.loads(line) for line in Path(tmp_path / "validation.json").read_text().splitlines()]
    assert [len(p.split()) for p in predictions] == [len(v["tokens"]) for v in validation]
    assert_card_is_local_and_honest(out, tmp_path)


def test_run_summarization_shape_generates_for_rouge_on_a_bart_head_with_final_logits_bias(tmp_path):
    user_assets.summarization_files(tmp_path)
    args = [
        "--model_name_or_path", "student", "--teacher_model_name_or_path", "teacher",
        "--train_file", "train.json", "--validation_file", "validation.json",
        "--do_train", "--do_eval", "--do_predict", "--max_steps", "3", "--per_device_train_batch_size", "8",
        "--per_device_eval_batch_size", "4", "--output_dir", "out", "--save_strategy", "no",
        "--predict_with_generate", "--generation_max_length", "6", "--generation_num_beams", "2", *COMMON,
    ]  # fmt: skip
    run = run_script("distill_summarization.py", args, tmp_path)
    out = tmp_path / "out"
    metrics = json.loads((out / "eval_results.json").read_text())
    assert 0.0 <= metrics["eval_rouge1"] <= 100.0 and 0 < metrics["eval_gen_len"] <= 6
    assert {"eval_loss", "eval_kd_loss", "eval_distillation_loss"} <= set(metrics)
    predict = json.loads((out / "predict_results.json").read_text())
    assert "predict_rouge1" in predict and "predict_kd_loss" in predict
    lengths = json.loads(run.stdout.split("GENERATED ")[1].splitlines()[0])
    assert len(lengths) == 8 and max(lengths) <= 6
    assert_card_is_local_and_honest(out, tmp_path)


# ---- the mistakes people make: one clear message, nothing lost ----


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--kd_loss", "jsdd"], "kd_loss"),
        (["--kd_temperature", "hot"], "kd_temperature"),
        (["--kd_weight", "inf"], "kd_weight"),
        (["--output_dir", "teacher"], "output_dir"),
        (["--output_dir", "teacher/run"], "output_dir"),
    ],
)
def test_run_clm_shape_refuses_mistakes_clearly_and_keeps_the_teacher(tmp_path, flags, named):
    files = user_assets.clm_folders(tmp_path)
    before = folder_digest(files["teacher"])
    args = [
        "--model_name_or_path", "student", "--teacher_name_or_path", "teacher", "--train_file", "train.txt",
        "--do_train", "--max_steps", "1", "--output_dir", "out", *COMMON, *flags,
    ]  # fmt: skip
    run = run_script("distill_clm.py", args, tmp_path, expect_ok=False)
    assert run.returncode != 0
    last = (run.stderr.strip().splitlines() or [""])[-1]
    assert named in last, run.stderr[-3000:]
    assert folder_digest(files["teacher"]) == before


def test_run_clm_shape_with_push_to_hub_in_the_arguments_pushes_once_per_call(tmp_path, hub):
    from conftest import HUB_TOKEN

    user_assets.clm_folders(tmp_path)
    args = [
        "--model_name_or_path", "student", "--teacher_name_or_path", "teacher", "--train_file", "train.txt",
        "--do_train", "--max_steps", "4", "--per_device_train_batch_size", "2", "--output_dir", "out",
        "--save_steps", "2", "--push_to_hub", "--hub_model_id", "local-user/tiny-distilled",
        "--hub_strategy", "every_save", "--acknowledge_teacher_license", "true", *COMMON,
    ]  # fmt: skip
    run_script("distill_clm.py", args, tmp_path)
    titles = [c["title"] for c in hub.commits("local-user/tiny-distilled")]
    # As with plain Trainer: checkpoint pushes while training, then one commit per save_model() / push_to_hub() call.
    assert titles.count("Model save") == 1 and titles[-1] == "End of training", titles
    assert len(titles) == len(set(titles)) and set(titles) <= {
        "Training in progress, step 2", "Training in progress, step 4", "Model save", "End of training",
    }  # fmt: skip
    final = hub.commits("local-user/tiny-distilled")[-1]["files"]
    assert {"model.safetensors", "config.json", "README.md", "distillation_lineage.json"} <= set(final)
    assert "training_args.bin" not in final
    for name, content in final.items():
        assert HUB_TOKEN.encode() not in content and str(tmp_path).encode() not in content, name
    assert b"acknowledge" in final["README.md"].lower()


def _on_policy_files(root: Path) -> dict[str, str]:
    files = user_assets.clm_folders(root)  # student and teacher Llamas sharing a word tokenizer
    for name in ("student", "teacher"):  # completions end with EOS: the pad token doubles as EOS, as users often set
        tokenizer = AutoTokenizer.from_pretrained(files[name])
        tokenizer.eos_token = tokenizer.pad_token
        tokenizer.save_pretrained(files[name])
    for split, n, seed in (("train", 16, 0), ("validation", 4, 1)):
        rows = [{"prompt": text[: text.index(" ", 6)], "completion": text[text.index(" ", 6) :]} for text in
                user_assets.sentences(n, 12, seed)]  # fmt: skip
        path = root / f"{split}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        files[f"{split}_jsonl"] = str(path)
    return files


def test_on_policy_script_with_flags_and_gradient_accumulation(tmp_path):
    files = _on_policy_files(tmp_path)
    out = tmp_path / "out"
    args = [
        "--model_name_or_path", files["student"], "--teacher_name_or_path", files["teacher"],
        "--train_file", files["train_jsonl"], "--validation_file", files["validation_jsonl"], "--output_dir", str(out),
        "--kd_loss", "reverse_kl", "--on_policy_fraction", "0.5", "--max_new_tokens", "4",
        "--generation_temperature", "0.7", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2",
        "--max_steps", "4", "--logging_steps", "2", "--save_strategy", "no", *COMMON,
    ]  # fmt: skip
    run_script("distill_on_policy.py", args, tmp_path)
    eval_metrics = json.loads((out / "eval_results.json").read_text())
    assert math.isfinite(eval_metrics["eval_on_policy_reverse_kl"]) and eval_metrics["eval_on_policy_reverse_kl"] >= 0
    logs = [e for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert [e["on_policy_steps"] for e in logs] == [1, 1]  # steps 0-1 then 2-3: one on-policy step in each window
    assert all(math.isfinite(e["loss"]) and 0 < e["generated_length"] <= 4 for e in logs)
    lineage = json.loads((out / "distillation_lineage.json").read_text())
    assert (
        lineage["objective"]["on_policy_fraction"] == 0.5 and lineage["objective"]["generation"]["temperature"] == 0.7
    )


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--on_policy_fraction", "1.5"], "on_policy_fraction"),
        (["--on_policy_fraction", "0.6", "--teacher_generation_fraction", "0.6"], "teacher_generation_fraction"),
        (["--generation_kwargs", '{"bad_key": 1}'], "bad_key"),
        (["--max_new_tokens", "0"], "max_new_tokens"),
    ],
)
def test_on_policy_script_mistakes_end_with_one_line_naming_the_flag(tmp_path, flags, named):
    files = _on_policy_files(tmp_path)
    args = [
        "--model_name_or_path", files["student"], "--teacher_name_or_path", files["teacher"],
        "--train_file", files["train_jsonl"], "--validation_file", files["validation_jsonl"],
        "--output_dir", str(tmp_path / "out"), "--max_steps", "1", *flags, *COMMON,
    ]  # fmt: skip
    run = run_script("distill_on_policy.py", args, tmp_path, expect_ok=False)
    assert run.returncode != 0
    last = (run.stderr.strip().splitlines() or [""])[-1]
    assert named in last, run.stderr[-3000:]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing trained or written


def _cross_tokenizer_folders(root: Path) -> None:
    """A byte-level BPE student and a teacher with a SentencePiece-style tokenizer (its own, in its folder)."""
    from tokenizer_pairs import CORPUS, byte_level_bpe, sentencepiece_bpe, tiny_causal_lm

    torch.manual_seed(0)
    for name, tokenizer, hidden in (("student", byte_level_bpe(), 32), ("teacher", sentencepiece_bpe(), 48)):
        tiny_causal_lm(len(tokenizer), hidden=hidden, pad_token_id=tokenizer.pad_token_id).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    (root / "train.txt").write_text("\n".join(CORPUS) + "\n")
    (root / "validation.txt").write_text("\n".join(CORPUS[:8]) + "\n")


CROSS_ARGS = [
    "--model_name_or_path", "student", "--teacher_name_or_path", "teacher", "--train_file", "train.txt",
    "--validation_file", "validation.txt", "--block_size", "16", "--do_train", "--do_eval", "--max_steps", "2",
    "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2", "--output_dir", "out", *COMMON,
]  # fmt: skip


def test_run_clm_shape_across_tokenizers_with_the_flag_and_without_it(tmp_path):
    _cross_tokenizer_folders(tmp_path)
    run_script("distill_clm.py", [*CROSS_ARGS, "--cross_tokenizer", "auto", "--ce_weight", "0.5"], tmp_path)
    metrics = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    for who in ("student", "teacher"):  # per-token losses of two tokenizers are not comparable; bytes are
        assert 0.5 < metrics[f"eval_{who}_bits_per_byte"] < 12, metrics
    lineage = json.loads((tmp_path / "out" / "distillation_lineage.json").read_text())
    assert lineage["objective"]["cross_tokenizer"]["method"] == "chunk"
    assert AutoTokenizer.from_pretrained(tmp_path / "out").convert_ids_to_tokens([0]) == ["<|endoftext|>"]
    # the mistakes: the flag forgotten, then mistyped; each ends in a message naming the field, nothing written
    forgot = run_script("distill_clm.py", [*CROSS_ARGS, "--output_dir", "out2"], tmp_path, expect_ok=False)
    assert forgot.returncode != 0 and "cross_tokenizer='auto'" in forgot.stderr
    typo = run_script("distill_clm.py", [*CROSS_ARGS, "--cross_tokenizer", "exat"], tmp_path, expect_ok=False)
    assert typo.returncode == 2 and "--cross_tokenizer" in typo.stderr and "invalid choice" in typo.stderr
    assert not (tmp_path / "out2" / "model.safetensors").exists()
