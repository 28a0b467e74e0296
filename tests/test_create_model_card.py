"""`create_model_card(**kwargs)` as the official example scripts call it at the end of a run that does not push: it
takes every argument `Trainer.create_model_card` takes, never refuses what only a push refuses (an unknown teacher
license is said in the card, with one warning), and records a local `finetuned_from` by folder name only."""

import inspect
import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml
from datasets import Dataset
from tiny_models import llama
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

from hf_distill import DistillationTrainer, LicensePolicyError
from hf_distill.hub.licenses import decide

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _data(n=4, length=8, vocab=97):
    ids = torch.randint(1, vocab, (n, length), generator=torch.Generator().manual_seed(0)).tolist()
    return Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * length] * n, "labels": ids})


# What these runs set beyond the `training_args` fixture's defaults.
RUN = dict(per_device_train_batch_size=2, max_steps=1, save_strategy="no")


class _Warnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def warnings_logged():
    handler, root = _Warnings(), logging.getLogger("hf_distill")
    root.addHandler(handler)
    yield handler.messages
    root.removeHandler(handler)


def _meta_and_body(path):
    text = open(path, encoding="utf-8").read()
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), body, text


SCRIPT_KWARGS = {  # what run_clm.py & co. pass (finetuned_from is model_args.model_name_or_path: here a folder)
    "tasks": "text-generation",
    "dataset_tags": "acme/corpus",
    "dataset_args": "default",
    "dataset": "acme/corpus default",
    "language": "en",
    "model_name": "my-student",
    "tags": "tiny",
}


def test_it_takes_every_argument_trainer_create_model_card_takes():
    ours = inspect.signature(DistillationTrainer.create_model_card).parameters
    theirs = inspect.signature(Trainer.create_model_card).parameters
    assert [n for n in theirs if n != "self"] == [n for n in ours if n not in ("self", "kwargs")]
    for name, parameter in theirs.items():
        assert ours[name].default == parameter.default, name


def test_a_teacher_without_a_license_gets_a_card_that_says_so_with_one_warning(
    tmp_path, warnings_logged, training_args
):
    llama(64, 2).save_pretrained(tmp_path / "teacher")  # a folder without README.md: no license anywhere
    llama(32, 1).save_pretrained(tmp_path / "student-init")
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "student-init")
    trainer = DistillationTrainer(
        model=student,
        teacher_model=str(tmp_path / "teacher"),
        args=training_args(**RUN, preflight="off"),
        train_dataset=_data(),
    )
    trainer.train()
    trainer.save_model()
    warnings_logged.clear()
    trainer.create_model_card(finetuned_from=str(tmp_path / "student-init"), **SCRIPT_KWARGS)

    card_warnings = [m for m in warnings_logged if "push would still need" in m]
    assert len(card_warnings) == 1 and "The teacher's license is unknown" in card_warnings[0]
    assert not [m for m in warnings_logged if m not in card_warnings]
    meta, body, text = _meta_and_body(tmp_path / "out" / "README.md")
    assert str(tmp_path) not in text and "/student-init" not in text  # folder names only, never a path
    assert "license" not in meta and "base_model" not in meta  # a local folder is no Hub id
    assert meta["language"] == "en" and "tiny" in meta["tags"] and "acme/corpus" in meta["datasets"]
    assert "The teacher's license is unknown." in body
    assert "**Not yet cleared for publishing.**" in body and "acknowledge_teacher_license=True" in body
    assert "| Fine-tuned from | `student-init` (a local checkpoint: not a Hub id, so not in `base_model`) |" in body
    assert meta["distillation"]["license_policy"]["terms"] == "unknown"
    assert len(meta["distillation"]["license_policy"]["pending"]) == 1

    # Acknowledged, the same card is cleared: no warning, nothing pending.
    warnings_logged.clear()
    trainer.create_model_card(acknowledge_teacher_license=True, license="apache-2.0")
    meta, body, _ = _meta_and_body(tmp_path / "out" / "README.md")
    assert not warnings_logged and "Not yet cleared" not in body and meta["license"] == "apache-2.0"
    assert "pending" not in meta["distillation"]["license_policy"]
    with pytest.raises(TypeError, match=r"unknown arguments \['colour'\]"):  # as Trainer: a typo is an error
        trainer.create_model_card(colour="blue")


def test_a_teacher_fine_tuned_by_plain_trainer_then_saved(tmp_path, warnings_logged, training_args):
    # The common path: fine-tune a teacher with Trainer, save it with its card, distil from that folder.
    teacher = Trainer(
        model=llama(64, 2),
        args=training_args(tmp_path / "teacher", config_class=TrainingArguments, **RUN),
        train_dataset=_data(),
    )
    teacher.train()
    teacher.save_model()
    teacher.create_model_card(finetuned_from="acme/base-model", tasks="text-generation")
    assert "license" not in _meta_and_body(tmp_path / "teacher" / "README.md")[0]  # Trainer's card: no license

    trainer = DistillationTrainer(
        model=llama(32, 1),
        teacher_model=str(tmp_path / "teacher"),
        # the one-line swap keeps the user's TrainingArguments
        args=training_args(config_class=TrainingArguments, **RUN),
        train_dataset=_data(),
    )
    trainer.train()
    warnings_logged.clear()
    trainer.create_model_card(finetuned_from="acme/base-model", **SCRIPT_KWARGS)
    assert len([m for m in warnings_logged if "push would still need" in m]) == 1
    meta, body, text = _meta_and_body(tmp_path / "out" / "README.md")
    assert meta["base_model"] == "acme/base-model" and meta["base_model_relation"] == "finetune"  # a Hub id: linked
    assert "The teacher's license is unknown." in body and str(tmp_path) not in text
    assert meta["distillation"]["teacher"] == {**meta["distillation"]["teacher"], "name": "teacher", "source": "local"}


def test_a_readme_the_user_wrote_keeps_its_text(tmp_path, training_args):
    llama(64, 2).save_pretrained(tmp_path / "teacher")
    trainer = DistillationTrainer(
        model=llama(32, 1),
        teacher_model=str(tmp_path / "teacher"),
        args=training_args(config_class=TrainingArguments, **RUN),
    )
    os.makedirs(tmp_path / "out", exist_ok=True)
    (tmp_path / "out" / "README.md").write_text("---\nlanguage: fr\n---\n\n# Mine\n\nMy own words.\n")
    trainer.create_model_card()
    trainer.create_model_card(tags=["again"])
    meta, body, _ = _meta_and_body(tmp_path / "out" / "README.md")
    assert body.startswith("\n# Mine\n\nMy own words.\n") and body.count("hf_distill:lineage:start") == 1
    assert meta["language"] == "fr" and "again" in meta["tags"]


@pytest.mark.parametrize(
    "teacher_license, repo, options, pending",
    [
        (None, "me/student", {}, "license is unknown"),
        ({"id": "llama3.1"}, "me/student", {}, "begin with “Llama”"),
        ({"id": "llama2"}, "me/Llama-2-student", {}, "improve any other large language model"),
        ({"id": "gemma"}, "me/student", {"student_license": "mit"}, "license='mit', but the student carries"),
    ],
)
def test_a_non_strict_decision_records_what_a_push_refuses(teacher_license, repo, options, pending):
    with pytest.raises(LicensePolicyError, match=pending):
        decide(teacher_license, repo, **options)
    decision = decide(teacher_license, repo, **options, strict=False)
    assert len(decision.pending) == 1 and pending in decision.pending[0]
    assert decision.to_dict()["pending"] == decision.pending
    assert "pending" not in decide({"id": "mit"}, repo).to_dict()  # pushed records keep their layout


@pytest.mark.slow
def test_a_script_in_the_shape_of_run_clm_writes_its_card(tmp_path):
    llama(64, 2).save_pretrained(tmp_path / "teacher")
    llama(32, 1).save_pretrained(tmp_path / "student-init")
    script = tmp_path / "distill_clm.py"
    script.write_text(
        textwrap.dedent(
            """
            from dataclasses import dataclass, field

            import torch
            from datasets import Dataset
            from transformers import AutoModelForCausalLM, HfArgumentParser, TrainingArguments

            from hf_distill import DistillationTrainer


            @dataclass
            class ModelArguments:
                model_name_or_path: str = field(metadata={"help": "student checkpoint"})
                teacher_model_name_or_path: str = field(metadata={"help": "teacher checkpoint"})


            @dataclass
            class DataTrainingArguments:
                dataset_name: str = field(default=None, metadata={"help": "dataset id"})
                dataset_config_name: str = field(default=None, metadata={"help": "dataset config"})


            def main():
                parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments))
                model_args, data_args, training_args = parser.parse_args_into_dataclasses()
                ids = torch.randint(1, 97, (4, 8), generator=torch.Generator().manual_seed(0)).tolist()
                train = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * 8] * 4, "labels": ids})
                model = AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path)
                trainer = DistillationTrainer(
                    model=model,
                    teacher_model=model_args.teacher_model_name_or_path,
                    args=training_args,
                    train_dataset=train if training_args.do_train else None,
                )
                if training_args.do_train:
                    trainer.train()
                    trainer.save_model()
                kwargs = {"finetuned_from": model_args.model_name_or_path, "tasks": "text-generation"}
                if data_args.dataset_name is not None:
                    kwargs["dataset_tags"] = data_args.dataset_name
                    if data_args.dataset_config_name is not None:
                        kwargs["dataset_args"] = data_args.dataset_config_name
                        kwargs["dataset"] = f"{data_args.dataset_name} {data_args.dataset_config_name}"
                    else:
                        kwargs["dataset"] = data_args.dataset_name
                if training_args.push_to_hub:
                    trainer.push_to_hub(**kwargs)
                else:
                    trainer.create_model_card(**kwargs)


            if __name__ == "__main__":
                main()
            """
        )
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": REPO, "HF_DISTILL_VERBOSITY": "warning"}
    result = subprocess.run(
        [
            sys.executable, str(script), "--model_name_or_path", str(tmp_path / "student-init"),
            "--teacher_model_name_or_path", str(tmp_path / "teacher"), "--dataset_name", "acme/corpus",
            "--dataset_config_name", "default", "--output_dir", str(tmp_path / "out"), "--do_train", "--max_steps", "1",
            "--per_device_train_batch_size", "2", "--report_to", "none", "--use_cpu", "--save_strategy", "no",
        ],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("push would still need") == 1
    meta, body, text = _meta_and_body(tmp_path / "out" / "README.md")
    assert str(tmp_path) not in text and "The teacher's license is unknown." in body
    assert "| Fine-tuned from | `student-init`" in body and "base_model" not in meta
    assert meta["datasets"] == ["acme/corpus"]  # the Hub id (dataset_tags), not the display name


def test_a_push_leaves_a_local_finetuned_from_out_of_base_model_with_a_warning(
    hub, tmp_path, warnings_logged, training_args
):
    llama(64, 2).save_pretrained(tmp_path / "teacher")
    (tmp_path / "teacher" / "README.md").write_text("---\nlicense: mit\n---\n")
    llama(32, 1).save_pretrained(tmp_path / "student-init")
    trainer = DistillationTrainer(
        model=AutoModelForCausalLM.from_pretrained(tmp_path / "student-init"),
        teacher_model=str(tmp_path / "teacher"),
        args=training_args(**RUN, preflight="off", hub_model_id="me/student"),
        train_dataset=_data(),
    )
    trainer.train()
    warnings_logged.clear()
    trainer.push_to_hub(finetuned_from=str(tmp_path / "student-init"), **SCRIPT_KWARGS)
    named = [m for m in warnings_logged if "finetuned_from=" in m]
    assert len(named) == 1 and "leaves it out of base_model" in named[0]
    card = hub.files("me/student")["README.md"].decode()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert "base_model" not in meta and str(tmp_path) not in card
    assert meta["distillation"]["teacher"]["license"] == {"id": "mit"}
    assert "| Fine-tuned from | `student-init` (a local checkpoint" in card


def test_a_local_card_words_the_files_only_a_push_adds_as_such(tmp_path, training_args):
    llama(64, 2).save_pretrained(tmp_path / "teacher")
    (tmp_path / "teacher" / "README.md").write_text("---\nlicense: llama3.1\n---\n# teacher\n")
    trainer = DistillationTrainer(
        model=llama(32, 1),
        teacher_model=str(tmp_path / "teacher"),
        args=training_args(config_class=TrainingArguments, **RUN),
    )
    trainer.create_model_card()
    _, body, _ = _meta_and_body(tmp_path / "out" / "README.md")
    duties = [line for line in body.splitlines() if "NOTICE" in line or "copy of the teacher's license" in line]
    assert len(duties) == 2 and all(line.endswith("(added by a push with hf_distill)") for line in duties), duties
    assert not os.path.exists(tmp_path / "out" / "NOTICE")
