"""`Seq2SeqDistillationTrainer` / `Seq2SeqDistillationConfig`: the swap for `Seq2SeqTrainer` keeps generation
evaluation (`predict_with_generate`, `generation_max_length`, `generation_num_beams`): `compute_metrics` gets the
student's generated ids exactly as from `Seq2SeqTrainer`, and the distillation metrics are still reported."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import user_assets
from datasets import Dataset
from tiny_models import examples, t5
from transformers import (
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    HfArgumentParser,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    T5Config,
    T5ForConditionalGeneration,
)

from hf_distill import DistillationConfig, Seq2SeqDistillationConfig, Seq2SeqDistillationTrainer

_GENERATION = dict(predict_with_generate=True, generation_max_length=8, generation_num_beams=2)
_COMMON = dict(per_device_eval_batch_size=3, report_to=[], use_cpu=True, disable_tqdm=True, save_strategy="no")


def _overlap_f1(predictions, labels):
    """A ROUGE-1-like score over token ids: unigram-overlap F1, pad (0) and -100 left out."""
    scores = []
    for p, r in zip(predictions, labels):
        p, r = [t for t in p.tolist() if t > 0], [t for t in r.tolist() if t > 0]
        overlap = sum(min(p.count(t), r.count(t)) for t in set(p))
        scores.append(0.0 if not overlap else 2 * overlap / (len(p) + len(r)))
    return float(np.mean(scores))


def test_overlap_f1_scores_what_it_should():
    assert _overlap_f1(np.array([[5, 6, 0, 0]]), np.array([[5, 7, -100, -100]])) == 0.5
    assert _overlap_f1(np.array([[5, 6]]), np.array([[6, 5]])) == 1.0


def _recording_metrics(seen):
    def compute_metrics(prediction):
        seen.append((prediction.predictions, prediction.label_ids))
        predictions = prediction.predictions
        return {
            "rouge1": _overlap_f1(predictions, prediction.label_ids),
            "gen_len": float((predictions > 0).sum(-1).mean()),
        }

    return compute_metrics


def _trainers(tmp_path, rows, **args):
    torch.manual_seed(0)
    student, teacher = t5(32, 1), t5(48, 2)
    seen_distil, seen_plain = [], []
    distil = Seq2SeqDistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=Seq2SeqDistillationConfig(output_dir=str(tmp_path / "d"), ce_weight=0.5, **_COMMON, **args),
        eval_dataset=Dataset.from_list(rows),
        compute_metrics=_recording_metrics(seen_distil),
    )
    plain = Seq2SeqTrainer(
        model=copy.deepcopy(student),
        args=Seq2SeqTrainingArguments(output_dir=str(tmp_path / "p"), **_COMMON, **args),
        eval_dataset=Dataset.from_list(rows),
        compute_metrics=_recording_metrics(seen_plain),
    )
    return distil, plain, seen_distil, seen_plain


def test_generated_ids_reach_compute_metrics_as_from_seq2seq_trainer(tmp_path):
    rows = examples("seq2seq", 7, seed=1)
    distil, plain, seen_distil, seen_plain = _trainers(tmp_path, rows, **_GENERATION)
    metrics, expected = distil.evaluate(), plain.evaluate()
    (predictions, labels), (want_predictions, want_labels) = seen_distil[0], seen_plain[0]
    np.testing.assert_array_equal(predictions, want_predictions)
    np.testing.assert_array_equal(labels, want_labels)
    # Generated ids, not logits: integer tokens, one row per example, from the student's own beam search.
    assert predictions.dtype.kind == "i" and predictions.shape[0] == 7
    inputs = {k: torch.tensor([r[k] for r in rows]) for k in ("input_ids", "attention_mask")}
    direct = distil.model.generate(**inputs, max_length=8, num_beams=2)
    np.testing.assert_array_equal(predictions[:, : direct.shape[1]], direct.numpy())
    assert metrics["eval_rouge1"] == expected["eval_rouge1"]
    assert metrics["eval_gen_len"] == expected["eval_gen_len"] > 0
    assert metrics["eval_loss"] == pytest.approx(expected["eval_loss"], rel=1e-6)
    # The distillation metrics are those of teacher-forced scoring, whether or not the evaluation generates.
    distil.args.predict_with_generate, distil.compute_metrics = False, None
    forced = distil.evaluate()
    for key in ("eval_kd_loss", "eval_ce_loss", "eval_distillation_loss", "eval_agreement"):
        assert metrics[key] == pytest.approx(forced[key], rel=1e-6), key


def test_evaluate_and_predict_keyword_arguments_override_the_config(tmp_path):
    rows = examples("seq2seq", 4, seed=2)
    distil, plain, seen_distil, seen_plain = _trainers(tmp_path, rows, predict_with_generate=True)
    output = distil.predict(Dataset.from_list(rows), max_length=5, num_beams=1)
    want = plain.predict(Dataset.from_list(rows), max_length=5, num_beams=1)
    np.testing.assert_array_equal(output.predictions, want.predictions)
    assert {"test_rouge1", "test_loss", "test_kd_loss", "test_distillation_loss"} <= set(output.metrics)
    assert output.metrics["test_loss"] == pytest.approx(want.metrics["test_loss"], rel=1e-6)
    assert (output.predictions[:, 5:] == 0).all()  # generated to at most 5 tokens, padded as Seq2SeqTrainer pads


def test_predict_on_sources_alone_only_generates(tmp_path):
    rows = [{k: v for k, v in row.items() if k != "labels"} for row in examples("seq2seq", 4, seed=3)]
    distil, plain, _, _ = _trainers(tmp_path, rows, **_GENERATION)
    output = distil.predict(Dataset.from_list(rows))
    np.testing.assert_array_equal(output.predictions, plain.predict(Dataset.from_list(rows)).predictions)
    assert output.label_ids is None and "test_loss" not in output.metrics and "test_kd_loss" not in output.metrics


def test_plain_training_arguments_are_refused_with_the_fix(tmp_path):
    with pytest.raises(TypeError, match="got args of type DistillationConfig.*pass a Seq2SeqDistillationConfig"):
        Seq2SeqDistillationTrainer(
            model=t5(), teacher_model=t5(48), args=DistillationConfig(output_dir=str(tmp_path), report_to=[])
        )


def test_config_parses_generation_and_distillation_flags():
    (args,) = HfArgumentParser(Seq2SeqDistillationConfig).parse_args_into_dataclasses(
        ["--output_dir", "out", "--predict_with_generate", "--generation_max_length", "8",
         "--generation_num_beams", "2", "--kd_loss", "jsd", "--kd_temperature", "2", "--label_smoothing_factor", "0.1"]
    )  # fmt: skip
    assert (args.predict_with_generate, args.generation_max_length, args.generation_num_beams) == (True, 8, 2)
    assert args.kd_objective().kd_loss == "jsd" and args.kd_objective().label_smoothing_factor == 0.1
    assert json.loads(args.to_json_string())["generation_num_beams"] == 2


def _t5_folders(root: Path) -> None:
    """A T5 student and teacher sharing a word-level tokenizer, and run_summarization's JSON files."""
    tokenizer = user_assets.word_tokenizer(
        ["<pad>", "</s>", "<unk>"], wrap=("", "</s>"), pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    for name, d_model, layers in (("student", 32, 1), ("teacher", 48, 2)):
        torch.manual_seed(len(name))
        config = T5Config(
            vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=layers, num_heads=2,
            pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        )  # fmt: skip
        T5ForConditionalGeneration(config).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    for split, n, seed in (("train", 16, 0), ("validation", 5, 1)):
        with open(root / f"{split}.json", "w") as f:
            for text in user_assets.sentences(n, 12, seed):
                f.write(json.dumps({"text": text, "summary": " ".join(text.split()[:3])}) + "\n")


@pytest.mark.slow
def test_run_summarization_shape_with_t5_generates_with_the_flags(tmp_path):
    """The user-shaped script (tests/user_scripts/distill_summarization.py) as a subprocess, with a T5 student."""
    _t5_folders(tmp_path)
    script = Path(__file__).parent / "user_scripts" / "distill_summarization.py"
    args = [
        "--model_name_or_path", "student", "--teacher_model_name_or_path", "teacher",
        "--train_file", "train.json", "--validation_file", "validation.json", "--do_train", "--do_eval",
        "--do_predict", "--max_steps", "2", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "2",
        "--output_dir", "out", "--save_strategy", "no", "--report_to", "none", "--use_cpu", "--seed", "0",
        "--disable_tqdm", "true", "--predict_with_generate", "--generation_max_length", "8",
        "--generation_num_beams", "2",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, str(script), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-4000:]
    metrics = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert {"eval_rouge1", "eval_loss", "eval_kd_loss", "eval_distillation_loss", "eval_agreement"} <= set(metrics)
    assert 0 < metrics["eval_gen_len"] <= 8 and 0.0 <= metrics["eval_rouge1"] <= 100.0
    # The predictions written are the trained student's own beam search with the flags' length and beams.
    student = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "out").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    texts = [json.loads(line)["text"] for line in (tmp_path / "validation.json").read_text().splitlines()]
    batch = tokenizer(texts, max_length=24, truncation=True, padding=True, return_tensors="pt")
    with torch.no_grad():
        generated = student.generate(**batch, max_length=8, num_beams=2)
    expected = [t.strip() for t in tokenizer.batch_decode(generated, skip_special_tokens=True)]
    assert (tmp_path / "out" / "generated_predictions.txt").read_text().split("\n") == expected
