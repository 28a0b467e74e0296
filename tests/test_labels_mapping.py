"""Classification teachers whose labels differ from the student's: the same names in another order are permuted to
the student's order; other names and other class counts are refused when the trainer is built; a teacher tokenizer
that differs from the student's is refused for every task."""

import copy

import pytest
import torch
from tiny_models import bert_sequence, bert_token, collate, examples, t5
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from hf_distill import DistillationConfig, DistillationTrainer

NAMES = ["negative", "neutral", "positive"]


def _named(model, names):
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {name: i for i, name in enumerate(names)}
    return model


def _reordered(teacher, order):
    """The same teacher with its classes stored in `order` (head rows and label names moved together)."""
    moved = copy.deepcopy(teacher)
    with torch.no_grad():
        moved.classifier.weight.copy_(teacher.classifier.weight[order])
        moved.classifier.bias.copy_(teacher.classifier.bias[order])
    names = [teacher.config.id2label[i] for i in order]
    return _named(moved, names)


def _trainer(tmp_path, student, teacher, **kw):
    args = DistillationConfig(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True, kd_temperature=2.0)
    return DistillationTrainer(model=student, teacher_model=teacher, args=args, data_collator=collate, **kw)


def _kd_loss(trainer, student, task):
    student.eval()  # no dropout: the two runs must see the same student
    with torch.no_grad():
        return trainer.compute_loss(student, collate(examples(task, 6)))


@pytest.mark.parametrize(
    ("task", "make"),
    [("sequence_classification", bert_sequence), ("token_classification", bert_token)],
)
def test_same_labels_in_another_order_are_permuted_to_the_students_order(tmp_path, task, make, caplog):
    torch.manual_seed(0)
    student = _named(make(32, 1), NAMES)
    teacher = _named(make(48, 2), NAMES)
    moved = _reordered(teacher, [2, 0, 1])  # ["positive", "negative", "neutral"]
    assert moved.config.id2label == {0: "positive", 1: "negative", 2: "neutral"}
    reference = _kd_loss(_trainer(tmp_path / "a", student, teacher), student, task)
    permuted_trainer = _trainer(tmp_path / "b", student, moved)
    permuted = _kd_loss(permuted_trainer, student, task)
    torch.testing.assert_close(permuted, reference, rtol=1e-6, atol=1e-7)
    # without the permutation the teacher's classes would be read under the wrong names: a different loss
    unnamed = _named(copy.deepcopy(moved), [f"LABEL_{i}" for i in range(3)])
    wrong = _kd_loss(_trainer(tmp_path / "c", student, unnamed), student, task)
    assert not torch.allclose(wrong, reference, rtol=1e-3)


def test_the_permutation_is_logged_once_at_setup(tmp_path):
    import logging

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("hf_distill").addHandler(handler)
    try:
        student = _named(bert_sequence(32, 1), NAMES)
        _trainer(tmp_path, student, _reordered(_named(bert_sequence(48, 2), NAMES), [1, 2, 0]))
    finally:
        logging.getLogger("hf_distill").removeHandler(handler)
    lines = [r.getMessage() for r in records if "permuted" in r.getMessage()]
    assert len(lines) == 1 and "'neutral', 'positive', 'negative'" in lines[0]


def test_different_label_names_are_refused_at_construction(tmp_path):
    student = _named(bert_sequence(32, 1), NAMES)
    teacher = _named(bert_sequence(48, 2), ["negative", "neutral", "mixed"])
    with pytest.raises(ValueError, match=r"only the student has \['positive'\], only the teacher has \['mixed'\]"):
        _trainer(tmp_path, student, teacher)


def test_different_class_counts_are_refused_at_construction(tmp_path):
    from transformers import BertForSequenceClassification

    config = copy.deepcopy(bert_sequence(48, 2).config)
    config.num_labels = 5
    teacher = BertForSequenceClassification(config)  # default names LABEL_0..LABEL_4: still refused
    with pytest.raises(ValueError, match="The student classifies into 3 labels .* and the teacher into 5"):
        _trainer(tmp_path, bert_sequence(32, 1), teacher)


def test_unnamed_labels_on_one_side_are_used_as_they_are(tmp_path):
    student = _named(bert_sequence(32, 1), NAMES)
    teacher = bert_sequence(48, 2)  # LABEL_0, LABEL_1, LABEL_2: nothing to map by
    trainer = _trainer(tmp_path, student, teacher)
    assert trainer.teacher.label_permutation is None


def _tokenizer(prefix):
    words = ["<unk>"] + [f"{prefix}{i}" for i in range(1, 97)]
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    )


@pytest.mark.parametrize(
    ("make_student", "make_teacher"),
    [
        (lambda: bert_sequence(32, 1), lambda: bert_sequence(48, 2)),
        (lambda: bert_token(32, 1), lambda: bert_token(48, 2)),
        (lambda: t5(32, 1), lambda: t5(48, 2)),
    ],
    ids=["sequence_classification", "token_classification", "seq2seq"],
)
def test_a_different_teacher_tokenizer_is_refused_for_every_task(tmp_path, make_student, make_teacher):
    with pytest.raises(ValueError, match="token id 1 is 'w1' for the student but 'v1' for the teacher"):
        _trainer(
            tmp_path,
            make_student(),
            make_teacher(),
            processing_class=_tokenizer("w"),
            teacher_processing_class=_tokenizer("v"),
        )
    trainer = _trainer(  # the same tokenizer passes, and is recorded as checked
        tmp_path,
        make_student(),
        make_teacher(),
        processing_class=_tokenizer("w"),
        teacher_processing_class=_tokenizer("w"),
    )
    assert trainer.lineage().to_dict()["teacher"]["tokenizer_checked"] is True


def test_compare_with_teacher_scores_a_reordered_teacher_in_the_students_label_order(tmp_path):
    from datasets import Dataset

    torch.manual_seed(0)
    student = _named(bert_sequence(32, 1), NAMES)
    teacher = _named(bert_sequence(48, 2), NAMES)
    moved = _reordered(teacher, [2, 0, 1])
    evaluation = Dataset.from_list(examples("sequence_classification", 8))

    def accuracy(prediction):
        return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}

    results = []
    for name, candidate in (("same", teacher), ("moved", moved)):
        trainer = _trainer(tmp_path / name, student, candidate, compute_metrics=accuracy)
        results.append(trainer.compare_with_teacher(evaluation))
    same, moved_result = results
    assert moved_result["metric"]["teacher"] == same["metric"]["teacher"]
    assert moved_result["ce_loss"]["teacher"] == pytest.approx(same["ce_loss"]["teacher"], rel=1e-6)
    assert moved_result["kd_loss"] == pytest.approx(same["kd_loss"], rel=1e-6)


def _problem(model, problem_type, num_labels):
    from transformers import BertForSequenceClassification

    config = copy.deepcopy(model.config)
    config.num_labels, config.problem_type = num_labels, problem_type
    return BertForSequenceClassification(config)


@pytest.mark.parametrize(
    ("problem_type", "num_labels", "named"),
    [("regression", 1, "regression"), (None, 1, "regression"), ("multi_label_classification", 3, "multi_label")],
    ids=["regression", "num_labels_1", "multi_label"],
)
@pytest.mark.parametrize("who", ["student", "teacher"])
def test_regression_and_multi_label_models_are_refused_at_construction(tmp_path, problem_type, num_labels, named, who):
    odd = _problem(bert_sequence(32, 1), problem_type, num_labels)
    student, teacher = (odd, bert_sequence(48, 1)) if who == "student" else (bert_sequence(32, 1), odd)
    if who == "teacher":  # same class count, so the label check does not speak first
        student = _problem(student, None, num_labels) if num_labels > 1 else student
    with pytest.raises(ValueError) as info:
        _trainer(tmp_path, student, teacher)
    message = str(info.value)
    assert f"The {who} (BertForSequenceClassification)" in message
    assert f"problem_type='{named}" in message and "single-label classification" in message
    assert "ce_weight=0" not in message


def test_floating_point_labels_are_refused_with_the_problem_type(tmp_path):
    trainer = _trainer(tmp_path, bert_sequence(32, 1), bert_sequence(48, 1))
    batch = collate(examples("sequence_classification", 4))
    batch["labels"] = torch.rand(4, 3).round()  # multi-hot rows from a multi-label dataset
    with pytest.raises(ValueError, match=r"problem_type='multi_label_classification'.*single-label classification"):
        trainer.compute_loss(trainer.model, batch)


def test_a_one_label_count_mismatch_is_grammatical(tmp_path):
    from transformers import BertForTokenClassification

    config = copy.deepcopy(bert_token(32, 1).config)
    config.num_labels = 1
    with pytest.raises(ValueError, match="The student classifies into 1 label \\("):
        _trainer(tmp_path, BertForTokenClassification(config), bert_token(48, 1))
