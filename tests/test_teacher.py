"""Loading a teacher by name: the student's head type and dtype, its tokenizer, and remote code off by default."""

import pytest
import torch
from tiny_models import bert_sequence, llama
from tokenizers import Tokenizer, models
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from hf_distill import DistillationTrainer


@pytest.fixture
def teacher_folder(tmp_path):
    words = ["<unk>"] + [f"w{i}" for i in range(1, 97)]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    )
    llama(64, 2).save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    return str(tmp_path / "teacher"), tokenizer


def test_teacher_by_path_gets_the_students_head_and_dtype(teacher_folder, monkeypatch, training_args):
    path, tokenizer = teacher_folder
    calls = []
    original = AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    student = llama(32, 1).to(torch.bfloat16)
    trainer = DistillationTrainer(model=student, teacher_model=path, args=training_args(), processing_class=tokenizer)
    teacher = trainer.teacher_model
    assert type(teacher).__name__ == "LlamaForCausalLM" and teacher.dtype == torch.bfloat16
    assert calls == [
        {"dtype": torch.bfloat16, "trust_remote_code": False, "revision": None}
    ]  # a local folder: no revision
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_teacher_from_config_field(teacher_folder, training_args):
    path, _ = teacher_folder
    trainer = DistillationTrainer(model=llama(32, 1), args=training_args(teacher_model_name_or_path=path))
    assert trainer.teacher_model.config.num_hidden_layers == 2


def test_teacher_tokenizer_is_read_from_its_folder_and_checked(teacher_folder, training_args):
    path, _ = teacher_folder
    other_words = ["<unk>"] + [f"v{i}" for i in range(1, 97)]
    other = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({w: i for i, w in enumerate(other_words)}, unk_token="<unk>"))
    )
    with pytest.raises(ValueError, match="token id 1 is 'v1' for the student but 'w1' for the teacher"):
        DistillationTrainer(model=llama(32, 1), teacher_model=path, args=training_args(), processing_class=other)


def test_teacher_by_name_needs_a_transformers_student(teacher_folder, training_args):
    from tiny_models import PlainClassifier

    with pytest.raises(ValueError, match="PlainClassifier\\) has no head that maps to an Auto class"):
        DistillationTrainer(model=PlainClassifier(), teacher_model=teacher_folder[0], args=training_args())


def test_teacher_is_not_the_student(training_args):
    student = bert_sequence()
    with pytest.raises(ValueError, match="teacher_model is the student itself"):
        DistillationTrainer(model=student, teacher_model=student, args=training_args())
