"""The lineage record built during training: pinned teacher, student initialisation, objective, data, versions, the
teacher-vs-student comparison, and clear errors for malformed records."""

import copy
import hashlib
import math
import os
from importlib import metadata

import pytest
import torch
from datasets import Dataset
from test_model_card import RECORD
from tiny_models import bert_sequence, llama

from hf_distill import DistillationTrainer, Lineage, LineageError, read_lineage
from hf_distill.hub.lineage import LINEAGE_FILE
from hf_distill.modeling.student_init import student_from_teacher_layers
from hf_distill.provenance import UNRESOLVED, resolve_revision

# What these runs set beyond the `training_args` fixture's defaults.
RUN = dict(
    per_device_train_batch_size=2,
    per_device_eval_batch_size=2,
    max_steps=2,
    learning_rate=1e-3,
    save_strategy="no",
    preflight="off",
)


def _blocks(n=6, length=8, vocab=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, length), generator=g).tolist()
    return Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * length] * n, "labels": ids})


@pytest.fixture
def teacher_folder(tmp_path):
    folder = tmp_path / "my-teacher"
    llama(64, 3).save_pretrained(folder)
    (folder / "README.md").write_text("---\nlicense: mit\n---\n\n# my teacher\n")
    return str(folder)


def test_local_teacher_is_pinned_by_its_weights_hash_and_its_card_license(tmp_path, teacher_folder, training_args):
    teacher = DistillationTrainer(
        model=llama(64, 1), teacher_model=teacher_folder, args=training_args(**RUN)
    ).teacher_model
    student = student_from_teacher_layers(teacher, [0, 2])
    trainer = DistillationTrainer(model=student, teacher_model=teacher_folder, args=training_args(**RUN))
    record = trainer.lineage()
    weights = os.path.join(teacher_folder, "model.safetensors")
    expected = hashlib.sha256(b"model.safetensors\0" + open(weights, "rb").read()).hexdigest()
    assert record.teacher["name"] == "my-teacher" and record.teacher["source"] == "local"
    assert record.teacher["weights_sha256"] == expected and record.teacher["weights_bytes"] == os.path.getsize(weights)
    assert record.teacher["license"] == {"id": "mit"} and "revision" not in record.teacher
    assert record.student["init"] == {"kind": "teacher_layers", "layers": [0, 2]}
    assert record.weights_derive_from_teacher
    assert str(tmp_path) not in str(record.to_dict())


def _model_record(trainer):
    return trainer.lineage().teacher


def test_a_teacher_changed_in_memory_after_loading_is_not_pinned_to_its_checkpoint(teacher_folder, training_args):
    from transformers import AutoModelForCausalLM

    from hf_distill.hub.card import _revision_text

    # Loaded as it is, or cast to another dtype: still the checkpoint, pinned by its hash (no false alarm).
    for dtype in (torch.float32, torch.bfloat16):
        teacher = AutoModelForCausalLM.from_pretrained(teacher_folder, dtype=dtype)
        record = _model_record(
            DistillationTrainer(model=llama(64, 1), teacher_model=teacher, args=training_args(**RUN))
        )
        assert record["weights_sha256"] and "modified_after_loading" not in record, dtype
    # Fine-tuned in memory (here: one norm weight nudged): the record must not claim the checkpoint's hash.
    teacher = AutoModelForCausalLM.from_pretrained(teacher_folder)
    with torch.no_grad():
        teacher.model.norm.weight[0] += 1e-3
    with pytest.warns(UserWarning, match="'my-teacher' in memory differ from the checkpoint"):
        trainer = DistillationTrainer(model=llama(64, 1), teacher_model=teacher, args=training_args(**RUN))
    record = _model_record(trainer)
    # The same when a student is cut from it first (the first hand-over is where it is checked).
    teacher = AutoModelForCausalLM.from_pretrained(teacher_folder)
    with torch.no_grad():
        teacher.lm_head.weight[0, 0] += 1e-3
    with pytest.warns(UserWarning, match="differ from the checkpoint"):
        student = student_from_teacher_layers(teacher, [0])
    cut = _model_record(DistillationTrainer(model=student, teacher_model=teacher, args=training_args(**RUN)))
    assert cut["modified_after_loading"] is True and cut["weights_sha256"] is None
    assert record["modified_after_loading"] is True and record["weights_sha256"] is None
    assert record["name"] == "my-teacher" and record["license"] == {"id": "mit"}  # still derived from it
    assert "not pinned" in _revision_text(record)


def test_unresolvable_hub_revision_is_recorded_as_unresolved_never_invented(training_args):
    # Offline (the suite's default) and not in the cache: nothing can say which commit this is.
    with pytest.warns(UserWarning, match="Could not resolve revision 'main' of 'acme/never-downloaded'"):
        assert resolve_revision("acme/never-downloaded") == UNRESOLVED
    sha = "0123456789abcdef0123456789abcdef01234567"
    assert resolve_revision("acme/never-downloaded", sha) == sha  # a sha is already pinned
    teacher = llama(64, 2)
    teacher.config._name_or_path = "acme/never-downloaded"
    with pytest.warns(UserWarning, match="unresolved"):
        record = DistillationTrainer(model=llama(64, 1), teacher_model=teacher, args=training_args(**RUN)).lineage()
    assert (record.teacher["source"], record.teacher["revision"]) == ("hub", UNRESOLVED)
    assert record.teacher["license"] is None  # unknown: a push will ask for an acknowledgement


def test_objective_datasets_versions_and_a_random_student(training_args):
    train, evaluation = _blocks(), _blocks(4, seed=1)
    train.info.dataset_name = "my-corpus"
    args = training_args(**RUN, kd_loss="jsd", jsd_beta=0.3, kd_temperature=2.0, ce_weight=0.5, kd_chunk_size=8)
    trainer = DistillationTrainer(
        model=llama(64, 1), teacher_model=llama(64, 2), args=args, train_dataset=train, eval_dataset=evaluation
    )
    record = trainer.lineage()
    assert record.student["init"] == {"kind": "random"}
    assert record.teacher["name"] is None and record.teacher["source"] == "unknown"
    objective = record.objective
    assert (objective["kd_loss"], objective["jsd_beta"], objective["kd_temperature"], objective["ce_weight"]) == (
        "jsd",
        0.3,
        2.0,
        0.5,
    )
    assert objective["kd_chunk_size"] == trainer.kd_chunk_size == 8
    assert [d["id"] for d in record.datasets] == ["my-corpus", None]
    assert [d["fingerprint"] for d in record.datasets] == [train._fingerprint, evaluation._fingerprint]
    assert record.versions["torch"] == metadata.version("torch")
    assert record.versions["transformers"] == metadata.version("transformers")


def test_a_dataset_downloaded_from_the_hub_is_recorded_at_its_commit(training_args):
    sha = "aa13bc287fa6fcab6daf52f0dfb9994269ffea28"
    data = _blocks()
    data.info.dataset_name = "acme/corpus"
    data.info.download_checksums = {f"hf://datasets/acme/corpus@{sha}/default/train/0000.parquet": {"num_bytes": 1}}
    (record,) = (
        DistillationTrainer(
            model=llama(64, 1), teacher_model=llama(64, 2), args=training_args(**RUN), train_dataset=data
        )
        .lineage()
        .datasets
    )
    assert (record["id"], record["revision"], record["fingerprint"]) == ("acme/corpus", sha, data._fingerprint)


def _teacher_perplexity(teacher, dataset):
    # Independent of the trainer: the teacher's own mean token cross-entropy over the whole set.
    total, count = 0.0, 0
    with torch.no_grad():
        for row in dataset:
            ids = torch.tensor([row["input_ids"]])
            logits = teacher(input_ids=ids).logits[0, :-1]
            total += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
            count += ids.shape[1] - 1
    return math.exp(total / count)


def test_compare_with_teacher_scores_both_models_by_the_same_path_and_is_saved(training_args):
    teacher = llama(64, 2)
    evaluation = _blocks(4, seed=1)
    trainer = DistillationTrainer(
        model=llama(64, 1),
        teacher_model=teacher,
        args=training_args(**RUN),
        train_dataset=_blocks(),
        eval_dataset=evaluation,
    )
    trainer.train()
    comparison = trainer.compare_with_teacher()
    metric = comparison["metric"]
    assert metric["name"] == "perplexity" and metric["higher_is_better"] is False
    assert metric["teacher"] == pytest.approx(_teacher_perplexity(teacher, evaluation), rel=1e-5)
    assert metric["student"] == pytest.approx(math.exp(comparison["ce_loss"]["student"]), rel=1e-9)
    assert 0 <= comparison["agreement"] <= 1 and comparison["kd_loss"] > 0 and comparison["examples"] == 4
    assert comparison["parameters"] == {
        "teacher": sum(p.numel() for p in teacher.parameters()),
        "student": sum(p.numel() for p in trainer.model.parameters()),
    }
    assert trainer.model is not teacher and trainer.model_wrapped is not teacher  # the student is back in place
    assert trainer.lineage().evaluation == comparison
    trainer.save_model()
    saved = Lineage.load(trainer.args.output_dir)
    assert saved.evaluation["size_on_disk"]["student"] == os.path.getsize(
        os.path.join(trainer.args.output_dir, "model.safetensors")
    )
    assert read_lineage(trainer.args.output_dir).record.evaluation == saved.evaluation  # a folder reads back too


def test_compare_with_teacher_uses_compute_metrics_for_classification(training_args):
    def accuracy(prediction):
        return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}

    g = torch.Generator().manual_seed(0)
    rows = {"input_ids": torch.randint(1, 64, (8, 6), generator=g).tolist(), "labels": [0, 1, 2, 0] * 2}
    data = Dataset.from_dict(rows)
    teacher = bert_sequence(64, 2)
    trainer = DistillationTrainer(
        model=bert_sequence(64, 1),
        teacher_model=teacher,
        args=training_args(**RUN),
        eval_dataset=data,
        compute_metrics=accuracy,
    )
    comparison = trainer.compare_with_teacher(dataset_name="tiny-sentiment")
    with torch.no_grad():
        predicted = teacher(input_ids=torch.tensor(rows["input_ids"])).logits.argmax(-1)
    expected = (predicted == torch.tensor(rows["labels"])).float().mean().item()
    assert comparison["metric"] == {
        "name": "accuracy",
        "teacher": expected,
        "student": comparison["metric"]["student"],
        "higher_is_better": True,
    }
    assert comparison["dataset"] == "tiny-sentiment"


@pytest.mark.parametrize(
    "path, value, field",
    [
        (("teacher", "revision"), "main", "teacher.revision"),
        (("teacher", "revision"), "abc123", "teacher.revision"),
        (("teacher", "source"), "ftp", "teacher.source"),
        (("teacher", "weights_sha256"), "not-hex", "teacher.weights_sha256"),
        (("teacher",), "acme/teacher", "teacher"),
        (("student", "init"), {"kind": "magic"}, "student.init"),
        (("schema",), 99, "schema"),
        (("datasets",), "acme/corpus", "datasets"),
    ],
)
def test_malformed_records_name_the_field_and_keep_the_rest(path, value, field):
    data = copy.deepcopy(RECORD)
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(LineageError) as raised:
        Lineage.from_dict(data)
    assert raised.value.field == field and f"`{field}`" in str(raised.value)
    rest = raised.value.lineage
    assert rest.objective == RECORD["objective"]  # what is well-formed is still readable
    if path[0] != "student":
        assert rest.student == RECORD["student"]


def test_saved_record_is_the_json_next_to_the_weights(teacher_folder, training_args):
    trainer = DistillationTrainer(model=llama(64, 1), teacher_model=teacher_folder, args=training_args(**RUN))
    trainer.save_model()
    on_disk = Lineage.load(trainer.args.output_dir)
    assert on_disk.to_dict() == trainer.lineage().to_dict()
    assert os.path.isfile(os.path.join(trainer.args.output_dir, LINEAGE_FILE))


@pytest.mark.parametrize(
    "front, why",
    [
        ("a: &a [x, x, x]\nb: &b [*a, *a, *a]\nlicense: *b\n", "aliases"),  # a "billion laughs" card, in miniature
        ("license: [apache-2.0, mit]\n", "not a string"),
        ("license: other\nlicense_name: {a: 1}\n", "not a string"),
        ("license: mit\nx: '" + "y" * (1 << 20) + "'\n", "limit"),
    ],
)
def test_a_teachers_card_is_read_without_aliases_and_its_license_must_be_a_string(tmp_path, front, why):
    from hf_distill.provenance import source_of

    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "README.md").write_text(f"---\n{front}---\n# teacher\n")
    with pytest.warns(UserWarning, match=why):
        record = source_of(str(tmp_path / "teacher"))
    assert record["license"] is None  # recorded unknown: a push asks for acknowledgement
