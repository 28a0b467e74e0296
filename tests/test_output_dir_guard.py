"""`output_dir` may not be (or be inside) the teacher's folder, the student's source folder or a teacher cache folder:
refused when the trainer is built, naming both paths. Relative paths and symlinks are resolved; Hub ids are not
folders."""

import os

import pytest
from tiny_models import collate, llama
from transformers import AutoModelForCausalLM

from hf_distill import DistillationTrainer


@pytest.fixture
def folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    llama(64, 2).save_pretrained(tmp_path / "teacher")
    llama(32, 1).save_pretrained(tmp_path / "student")
    return tmp_path


def _build(training_args, student, teacher=None, output_dir="out", **kw):
    return DistillationTrainer(
        model=student, teacher_model=teacher, args=training_args(output_dir, **kw), data_collator=collate
    )


@pytest.mark.parametrize(
    "output_dir",
    ["teacher", "./teacher/", "teacher/run-1", "student/../teacher"],
    ids=["same", "trailing_slash", "inside", "dotdot"],
)
def test_output_dir_in_the_teacher_folder_given_by_path_is_refused(folders, output_dir, training_args):
    teacher = os.path.realpath(folders / "teacher")
    with pytest.raises(ValueError) as info:
        _build(training_args, llama(32, 1), "teacher", output_dir)
    message = str(info.value)
    assert f"output_dir={output_dir!r}" in message and f"the teacher's folder {teacher!r}" in message
    assert ("is inside" in message) == (output_dir == "teacher/run-1")
    assert "Choose an output_dir outside it" in message


def test_teacher_folder_from_the_config_field_is_refused(folders, training_args):
    with pytest.raises(ValueError, match="is the teacher's folder"):
        _build(training_args, llama(32, 1), None, "teacher", teacher_model_name_or_path="teacher")


def test_teacher_model_object_loaded_from_a_folder_is_refused(folders, training_args):
    teacher = AutoModelForCausalLM.from_pretrained(str(folders / "teacher"))
    with pytest.raises(ValueError, match="is the teacher's folder"):
        _build(training_args, llama(32, 1), teacher, str(folders / "teacher"))


def test_student_source_folder_is_refused(folders, training_args):
    student = AutoModelForCausalLM.from_pretrained("student")  # relative: resolved against the current directory
    with pytest.raises(ValueError, match=r"is the student's source folder .*student'"):
        _build(training_args, student, llama(64, 2), "student")


def test_symlink_to_the_teacher_folder_is_refused(folders, training_args):
    os.symlink(folders / "teacher", folders / "link")
    with pytest.raises(ValueError, match="output_dir='link/ckpt' is inside the teacher's folder"):
        _build(training_args, llama(32, 1), "teacher", "link/ckpt")


@pytest.mark.parametrize("how", ["argument", "config_field"])
def test_teacher_cache_folder_is_refused_before_it_is_opened(folders, how, training_args):
    os.makedirs("cache")  # not even a valid cache: the refusal comes first
    kw = {"teacher_cache": "cache"} if how == "config_field" else {}
    with pytest.raises(ValueError, match="is inside the teacher cache folder"):
        DistillationTrainer(
            model=llama(32, 1),
            args=training_args("cache/out", **kw),
            data_collator=collate,
            **({"teacher_cache": "cache"} if how == "argument" else {}),
        )


def test_neighbouring_folders_and_hub_ids_are_accepted(folders, training_args):
    teacher = AutoModelForCausalLM.from_pretrained("teacher")
    # a sibling sharing the prefix: not inside
    trainer = _build(training_args, llama(32, 1), teacher, "teacher-distilled")
    assert trainer.args.output_dir == "teacher-distilled"
    hub_teacher = llama(64, 2)
    hub_teacher.config._name_or_path = "someorg/teacher"  # a Hub id, no such folder here
    _build(training_args, llama(32, 1), hub_teacher, "someorg/teacher")


@pytest.mark.parametrize("what", ["teacher", "teacher_by_config", "student", "nested"])
def test_a_folder_in_a_checkpoint_of_output_dir_is_refused(folders, what, training_args):
    # The user fine-tuned the teacher into runs/ and distils from runs/checkpoint-2 into runs/: the student's
    # checkpoint-2 would overwrite it, and rotation (save_total_limit=1) delete it.
    source = "runs/checkpoint-2/teacher" if what == "nested" else "runs/checkpoint-2"
    llama(64, 2).save_pretrained(source)
    before = sorted(os.listdir(source))
    student, teacher, kw = llama(32, 1), source, {"save_total_limit": 1}
    if what == "student":
        student, teacher = AutoModelForCausalLM.from_pretrained(source), llama(64, 2)
    elif what == "teacher_by_config":
        teacher, kw = None, {**kw, "teacher_model_name_or_path": source}
    with pytest.raises(ValueError) as info:
        _build(training_args, student, teacher, "runs", **kw)
    message = str(info.value)
    assert "output_dir='runs'" in message and "checkpoint folder" in message and "save_total_limit" in message
    assert os.path.realpath("runs/checkpoint-2") in message
    assert sorted(os.listdir(source)) == before


def test_an_unrelated_subfolder_of_output_dir_is_accepted(folders, training_args):
    llama(64, 2).save_pretrained("out/teacher_model")  # Trainer neither saves into nor rotates this folder
    trainer = _build(training_args, llama(32, 1), "out/teacher_model", "out")
    assert trainer.args.output_dir == "out"


USER_SCRIPT = '''
"""A user's training script in the shape of transformers' examples, with the documented two-line change."""
from dataclasses import dataclass, field

from transformers import AutoModelForCausalLM, HfArgumentParser

from hf_distill import DistillationConfig, DistillationTrainer


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "The student checkpoint."})


def main():
    parser = HfArgumentParser((ModelArguments, DistillationConfig))
    model_args, training_args = parser.parse_args_into_dataclasses()
    model = AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path)
    trainer = DistillationTrainer(model=model, args=training_args)
    trainer.train()


if __name__ == "__main__":
    main()
'''


@pytest.mark.slow
def test_a_users_script_pointing_output_dir_at_the_teacher_stops_before_touching_it(folders):
    import subprocess
    import sys

    (folders / "train.py").write_text(USER_SCRIPT)
    before = {p.name: p.stat().st_mtime_ns for p in (folders / "teacher").iterdir()}
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "train.py", "--model_name_or_path", "student", "--teacher_model_name_or_path"]
    command += ["teacher", "--output_dir", "teacher", "--use_cpu", "--max_steps", "1", "--report_to", "none"]
    result = subprocess.run(command, cwd=folders, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "ValueError: output_dir='teacher' is the teacher's folder" in result.stderr
    assert {p.name: p.stat().st_mtime_ns for p in (folders / "teacher").iterdir()} == before
