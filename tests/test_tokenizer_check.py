"""The tokenizer check is never skipped silently: a teacher whose tokenizer cannot be loaded (no tokenizer files,
custom code not trusted) is refused when the vocabulary sizes differ, and otherwise trains with one warning naming why;
the lineage records `tokenizer_checked`."""

import json
import logging

import pytest
from tiny_models import collate, llama
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from hf_distill import DistillationConfig, DistillationTrainer


def _tokenizer():
    words = ["<unk>"] + [f"w{i}" for i in range(1, 97)]
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    )


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def records():
    handler = _Records()
    logging.getLogger("hf_distill").addHandler(handler)
    yield handler.records
    logging.getLogger("hf_distill").removeHandler(handler)


def _build(tmp_path, teacher, **kw):
    args = DistillationConfig(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True)
    return DistillationTrainer(
        model=llama(32, 1),
        teacher_model=teacher,
        args=args,
        data_collator=collate,
        processing_class=_tokenizer(),
        **kw,
    )


def _warnings(records, text):
    return [r for r in records if r.levelno == logging.WARNING and text in r.getMessage()]


def test_teacher_folder_without_tokenizer_files_warns_and_records_unchecked(tmp_path, records):
    llama(64, 2).save_pretrained(tmp_path / "teacher")  # weights and config only
    trainer = _build(tmp_path, str(tmp_path / "teacher"))
    lines = _warnings(records, "The tokenizer check was skipped")
    assert len(lines) == 1
    assert "has no tokenizer files" in lines[0].getMessage() and "tokenizer_checked: false" in lines[0].getMessage()
    assert trainer.lineage().to_dict()["teacher"]["tokenizer_checked"] is False


def test_teacher_folder_without_tokenizer_and_another_vocabulary_size_is_refused(tmp_path):
    llama(64, 2, vocab=128).save_pretrained(tmp_path / "teacher")
    with pytest.raises(ValueError) as info:
        _build(tmp_path, str(tmp_path / "teacher"))
    message = str(info.value)
    assert "The student predicts over 97 tokens and the teacher over 128" in message
    assert "The teacher's tokenizer could not be loaded" in message and "has no tokenizer files" in message


def test_teacher_tokenizer_with_untrusted_custom_code_is_named_in_the_warning(tmp_path, records):
    folder = tmp_path / "teacher"
    llama(64, 2).save_pretrained(folder)
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {"tokenizer_class": "MyTokenizer", "auto_map": {"AutoTokenizer": ["my_tokenizer.MyTokenizer", None]}}
        )
    )
    (folder / "my_tokenizer.py").write_text("raise RuntimeError('custom tokenizer code ran')\n")
    trainer = _build(tmp_path, str(folder))
    lines = _warnings(records, "The tokenizer check was skipped")
    assert len(lines) == 1 and "teacher_trust_remote_code=True" in lines[0].getMessage()
    assert trainer.lineage().to_dict()["teacher"]["tokenizer_checked"] is False


def test_teacher_folder_with_its_tokenizer_is_checked(tmp_path, records):
    llama(64, 2).save_pretrained(tmp_path / "teacher")
    _tokenizer().save_pretrained(tmp_path / "teacher")
    trainer = _build(tmp_path, str(tmp_path / "teacher"))
    assert trainer.lineage().to_dict()["teacher"]["tokenizer_checked"] is True
    assert not _warnings(records, "tokenizer")


def test_teacher_object_without_its_tokenizer_is_recorded_unchecked_with_an_info_line(tmp_path, records):
    trainer = _build(tmp_path, llama(64, 2))
    assert trainer.lineage().to_dict()["teacher"]["tokenizer_checked"] is False
    lines = [r for r in records if "The tokenizer check was skipped" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO and "teacher_processing_class" in lines[0].getMessage()
    checked = _build(tmp_path, llama(64, 2), teacher_processing_class=_tokenizer())
    assert checked.lineage().to_dict()["teacher"]["tokenizer_checked"] is True


def test_models_without_token_ids_record_no_tokenizer_check(tmp_path):
    from tiny_models import vit

    args = DistillationConfig(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True)
    trainer = DistillationTrainer(model=vit(32, 1), teacher_model=vit(48, 2), args=args, data_collator=collate)
    assert trainer.lineage().to_dict()["teacher"]["tokenizer_checked"] is None
