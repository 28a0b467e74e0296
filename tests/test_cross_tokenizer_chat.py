"""Conversational rows rendered for a cross-tokenizer teacher by its *own* chat template (issue 18, part 2): the
teacher columns `tokenize_for_distillation(..., teacher_tokenizer=...)` adds, the alignment of two different renderings
on the message contents (`TokenAligner.align_rendered`, hand-written chunks; the same text gives exactly `align`'s),
the collator, a training run, and the fallback for a teacher without a chat template."""

import logging
import math

import pytest
import torch
from datasets import Dataset
from tiny_models import PARITY_ARGS
from tokenizer_pairs import CORPUS, byte_level_bpe, sentencepiece_bpe, tiny_causal_lm
from transformers import DataCollatorForSeq2Seq

from hf_distill import DistillationTrainer
from hf_distill.cross_tokenizer.alignment import TEACHER_ROW_COLUMNS, AlignedExample, TokenAligner
from hf_distill.cross_tokenizer.teacher import AligningCollator
from hf_distill.data import tokenize_for_distillation

# The student speaks ChatML (markers are special tokens, the role is text); the teacher a Gemma-like template (its own
# `<bos>`, other markers, `model` for the assistant, contents trimmed).
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
GEMMA = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
X = -100


@pytest.fixture(scope="module")
def student_tok():
    tokenizer = byte_level_bpe()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHATML
    return tokenizer


@pytest.fixture(scope="module")
def teacher_tok():
    tokenizer = sentencepiece_bpe()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    tokenizer.chat_template = GEMMA
    return tokenizer


def chat(user, answer):
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def pieces(tokenizer, ids):
    return tokenizer.convert_ids_to_tokens(list(ids))


# ---- the teacher's own rendering, stored per row ----


def test_rows_carry_the_teachers_own_rendering_with_labels_and_content_masks(student_tok, teacher_tok):
    rows = tokenize_for_distillation(
        Dataset.from_list([chat("To be, or not", "The quick fox.")]), student_tok, teacher_tokenizer=teacher_tok
    )
    assert rows.column_names == ["input_ids", "attention_mask", "labels", *TEACHER_ROW_COLUMNS]
    row = rows[0]
    # fmt: off
    assert pieces(student_tok, row["input_ids"]) == [
        "<|im_start|>", "u", "s", "er", "Ċ", "To", "Ġbe", ",", "Ġo", "r", "Ġno", "t", "<|im_end|>", "Ċ",
        "<|im_start|>", "a", "s", "s", "is", "t", "a", "n", "t", "Ċ",
        "The", "Ġqu", "i", "c", "k", "Ġfo", "x", ".", "<|im_end|>", "Ċ",
    ]
    assert row["labels"] == [X] * 24 + row["input_ids"][24:]
    assert row["content_mask"] == [0] * 5 + [1] * 7 + [0] * 12 + [1] * 8 + [0, 0]
    assert pieces(teacher_tok, row["teacher_input_ids"]) == [
        "<bos>", "<start_of_turn>", "us", "er", "\n", "To", "▁be,", "▁or", "▁not", "<end_of_turn>", "\n",
        "<start_of_turn>", "m", "o", "d", "e", "l", "\n",
        "The", "▁quick", "▁fox", ".", "<end_of_turn>", "\n",
    ]
    # fmt: on
    assert row["teacher_labels"] == [X] * 18 + row["teacher_input_ids"][18:]
    assert row["teacher_content_mask"] == [0] * 5 + [1] * 4 + [0] * 9 + [1] * 4 + [0, 0]


def test_prompt_completion_messages_are_rendered_for_the_teacher_too(student_tok, teacher_tok):
    row = chat("To be", "The fox")["messages"]
    rows = tokenize_for_distillation(
        Dataset.from_list([{"prompt": row[:1], "completion": row[1:]}]), student_tok, teacher_tokenizer=teacher_tok
    )
    conversational = tokenize_for_distillation(
        Dataset.from_list([chat("To be", "The fox")]), student_tok, teacher_tokenizer=teacher_tok
    )
    assert rows[0] == conversational[0]


def test_max_length_cuts_the_teacher_row_at_the_same_place_of_the_content(student_tok, teacher_tok):
    rows = tokenize_for_distillation(
        Dataset.from_list([chat("To be, or not", "The quick fox.")]),
        student_tok,
        max_length=27,  # the student keeps "The", " qu", "i" of its answer
        teacher_tokenizer=teacher_tok,
    )
    row = rows[0]
    assert student_tok.decode(row["input_ids"][24:]) == "The qui"
    # "The quick" straddles the cut: the teacher keeps "The" (its tokens lying wholly within the kept text)
    assert pieces(teacher_tok, row["teacher_input_ids"][18:]) == ["The"]
    assert len(row["teacher_labels"]) == len(row["teacher_content_mask"]) == 19
    assert len(row["content_mask"]) == 27


def test_a_teacher_without_chat_template_falls_back_with_one_info_line(student_tok):
    teacher = sentencepiece_bpe()  # no chat template
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    root = logging.getLogger("hf_distill")
    root.addHandler(handler)
    try:
        rows = tokenize_for_distillation(
            Dataset.from_list([chat("To be", "The fox")] * 3), student_tok, teacher_tokenizer=teacher
        )
    finally:
        root.removeHandler(handler)
    assert rows.column_names == ["input_ids", "attention_mask", "labels"]
    assert rows[0] == tokenize_for_distillation(Dataset.from_list([chat("To be", "The fox")]), student_tok)[0]
    lines = [r.getMessage() for r in records if "no chat template" in r.getMessage()]
    assert len(lines) == 1 and records[0].levelno == logging.INFO
    assert "the student's chat template renders them" in lines[0]


def test_plain_text_rows_get_no_teacher_columns(student_tok, teacher_tok):
    rows = tokenize_for_distillation(
        Dataset.from_list([{"text": "To be"}]), student_tok, teacher_tokenizer=teacher_tok
    )
    assert rows.column_names == ["input_ids", "attention_mask", "labels"]


# ---- alignment of the two renderings ----


def test_chunks_cover_the_message_contents_only_hand_written(student_tok, teacher_tok):
    row = tokenize_for_distillation(
        Dataset.from_list([chat("To be, or not", "The quick fox.")]), student_tok, teacher_tokenizer=teacher_tok
    )[0]
    aligner = TokenAligner(student_tok, teacher_tok)
    example = aligner.align_rendered(
        row["input_ids"], row["teacher_input_ids"], row["content_mask"], row["teacher_content_mask"]
    )
    # Chunks (student tokens | teacher tokens): To | To; " be" "," | "▁be,"; " o" "r" | "▁or"; " no" "t" | "▁not";
    # The | The; " qu" "i" "c" "k" | "▁quick"; " fo" "x" | "▁fox"; "." | ".". No chunk over "user\n", the roles,
    # the newlines after the turn markers, nor the markers themselves. Position t holds the chunk of token t+1.
    n = -1
    # fmt: off
    assert example.student_chunk == [
        n, n, n, n, 0, 1, 1, 2, 2, 3, 3, n, n, n,
        n, n, n, n, n, n, n, n, n, 4, 5, 5, 5, 5, 6, 6, 7, n, n, n,
    ]
    assert example.teacher_chunk == [n, n, n, n, 0, 1, 2, 3, n, n, n, n, n, n, n, n, n, 4, 5, 6, 7, n, n, n]
    # fmt: on
    assert example.chunk_bytes == [2, 4, 3, 4, 3, 6, 4, 1]
    ids = row["input_ids"]
    assert example.student_next == [ids[t + 1] if c >= 0 else -1 for t, c in enumerate(example.student_chunk)]
    assert example.teacher_ids == row["teacher_input_ids"]
    # Without the content masks the byte match alone also pairs markup both templates spell alike ("user", newlines)
    bare = aligner.align_rendered(row["input_ids"], row["teacher_input_ids"])
    assert len(bare.chunk_bytes) == 14 and bare.student_chunk[0] == 0  # "us" (student "u" "s") is chunk 0
    assert all(c == -1 for c in bare.student_chunk[14:22])  # "assistant" vs "model": nothing matched


TEXTS = [
    CORPUS[0],
    CORPUS[1] + " " + CORPUS[2],
    CORPUS[7],
    "héllo 😀 wörld 中文 12345\n\n  x",
    "  leading spaces, digits 0042 and a\ttab",
]


@pytest.mark.parametrize("direction", ["byte_to_sentencepiece", "sentencepiece_to_byte"])
def test_the_same_text_gives_exactly_what_align_gives(direction):
    student, teacher = byte_level_bpe(), sentencepiece_bpe()
    if direction == "sentencepiece_to_byte":
        student, teacher = teacher, student
    aligner = TokenAligner(student, teacher)
    rows = [student(text).input_ids + [student.eos_token_id] for text in TEXTS]
    # a special token inside the row (the teacher reads its text) and text after EOS
    rows.append(
        student("To be", add_special_tokens=False).input_ids
        + [student.eos_token_id, student.pad_token_id]
        + student(" or not", add_special_tokens=False).input_ids
    )
    for ids in rows:
        expected = aligner.align(ids)
        assert expected.chunk_bytes  # something to compare
        assert aligner.align_rendered(ids, expected.teacher_ids) == expected
    # and through the collators, left padding included
    batch = torch.full((len(rows), max(map(len, rows))), student.pad_token_id)
    mask = torch.zeros_like(batch)
    for b, ids in enumerate(rows):
        batch[b, batch.shape[1] - len(ids) :] = torch.tensor(ids)
        mask[b, batch.shape[1] - len(ids) :] = 1
    expected = aligner.collate(batch, mask)
    teacher_rows = [aligner.align(ids).teacher_ids for ids in rows]
    got = aligner.collate_rendered(batch, mask, teacher_rows)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name


def test_a_token_straddling_a_block_edge_is_in_no_chunk(student_tok, teacher_tok):
    aligner = TokenAligner(student_tok, teacher_tok)
    # the student reads "To be, or not", the teacher "xbe, or not": the texts share "be, or not"
    student_ids = student_tok("To be, or not", add_special_tokens=False).input_ids
    teacher_ids = [teacher_tok.bos_token_id] + teacher_tok("xbe, or not", add_special_tokens=False).input_ids
    assert pieces(student_tok, student_ids) == ["To", "Ġbe", ",", "Ġo", "r", "Ġno", "t"]
    assert pieces(teacher_tok, teacher_ids) == ["<bos>", "x", "b", "e,", "▁or", "▁not"]
    # the student's " be" straddles the shared text's start, so "be," has no boundary both sides start at: the chunks
    # are " or" and " not" only
    example = aligner.align_rendered(student_ids, teacher_ids)
    o, r, no, t = student_ids[3:]
    assert example == AlignedExample(
        teacher_ids, [-1, -1, 0, 0, 1, 1, -1], [-1, -1, -1, 0, 1, -1], [-1, -1, o, r, no, t, -1], [3, 4]
    )


def test_the_collator_pops_the_teacher_rows_and_aligns_them(student_tok, teacher_tok):
    rows = tokenize_for_distillation(
        Dataset.from_list([chat("To be, or not", "The quick fox."), chat("Hi", "No more")]),
        student_tok,
        teacher_tokenizer=teacher_tok,
    )
    aligner = TokenAligner(student_tok, teacher_tok)
    seen = []

    def user_collator(features):
        seen.append(sorted(features[0]))
        return DataCollatorForSeq2Seq(student_tok, padding=True)(features)

    batch = AligningCollator(user_collator, aligner)(list(rows))
    assert seen == [["attention_mask", "input_ids", "labels"]]
    for b, row in enumerate(rows):
        n_t, n_s = len(row["teacher_input_ids"]), len(row["input_ids"])
        assert batch["teacher_input_ids"][b, :n_t].tolist() == row["teacher_input_ids"]
        assert batch["teacher_attention_mask"][b].tolist() == [1] * n_t + [0] * (
            batch["teacher_input_ids"].shape[1] - n_t
        )
        example = aligner.align_rendered(
            row["input_ids"], row["teacher_input_ids"], row["content_mask"], row["teacher_content_mask"]
        )
        assert batch["student_chunk"][b, :n_s].tolist() == example.student_chunk
        assert batch["teacher_chunk"][b, :n_t].tolist() == example.teacher_chunk


# ---- training ----


def test_a_trainer_distils_through_the_teachers_own_template(training_args, student_tok, teacher_tok):
    conversations = [
        chat("To be, or not", "The quick fox."),
        chat("Whether 'tis nobler", "in the mind to suffer"),
        chat("The slings", "and arrows of outrageous fortune,"),
        chat("No more", "and by a sleep to say we end"),
    ]
    rows = tokenize_for_distillation(Dataset.from_list(conversations), student_tok, teacher_tokenizer=teacher_tok)
    torch.manual_seed(0)
    trainer = DistillationTrainer(
        model=tiny_causal_lm(len(student_tok)),
        teacher_model=tiny_causal_lm(len(teacher_tok)),
        args=training_args(**{**PARITY_ARGS, "per_device_train_batch_size": 4}, cross_tokenizer="chunk"),
        train_dataset=rows,
        data_collator=DataCollatorForSeq2Seq(student_tok, padding=True),
        processing_class=student_tok,
        teacher_processing_class=teacher_tok,
    )
    batch = next(iter(trainer.get_train_dataloader()))  # remove_unused_columns kept the teacher rows
    columns = trainer.teacher.aligned_features(batch)
    order = {tuple(row["input_ids"]): row for row in rows}
    for b in range(4):
        real = batch["input_ids"][b][batch["attention_mask"][b].bool()].tolist()
        teacher_row = order[tuple(real)]["teacher_input_ids"]
        assert columns["teacher_input_ids"][b, : len(teacher_row)].tolist() == teacher_row
        assert teacher_tok.convert_ids_to_tokens(teacher_row[:2]) == ["<bos>", "<start_of_turn>"]
    assert (columns["chunk_bytes"] > 0).sum() > 0
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
