"""Pushing students with their lineage to a local Hub-compatible server and reading it back, with the real
`huggingface_hub` client: full and adapter students, a two-level chain, license refusals, nothing uploaded when a
check fails."""

import json
import os

import pytest
import torch
import yaml
from conftest import HUB_TOKEN
from datasets import Dataset
from peft import AutoPeftModelForCausalLM, LoraConfig
from tiny_models import llama
from transformers import AutoModelForCausalLM

from hf_distill import DistillationConfig, DistillationTrainer, LicensePolicyError, LineageError, read_lineage
from hf_distill.cli.main import main
from hf_distill.hub.push import PushRefusedError
from hf_distill.modeling.student_init import student_from_teacher_layers

LICENSE_TEXT = b"The teacher's license text.\n"


def _seed_model(hub, repo_id, model, license_id=None, extra=None) -> str:
    """Put a model on the local Hub (server side) with a card declaring `license_id`; returns the commit sha."""
    folder = {}
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        for name in os.listdir(tmp):
            with open(os.path.join(tmp, name), "rb") as f:
                folder[name] = f.read()
    if license_id is not None:
        front = {"license": license_id} if isinstance(license_id, str) else license_id
        folder["README.md"] = f"---\n{yaml.safe_dump(front)}---\n\n# {repo_id}\n"
    return hub.add_commit(repo_id, {**folder, **(extra or {})})


def _data(n=4, length=8, vocab=97):
    ids = torch.randint(1, vocab, (n, length), generator=torch.Generator().manual_seed(0)).tolist()
    return Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * length] * n, "labels": ids})


def _trainer(tmp_path, student, teacher, name="out", **kwargs):
    args = dict(
        output_dir=str(tmp_path / name),
        per_device_train_batch_size=2,
        max_steps=1,
        learning_rate=1e-2,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        preflight="off",
    )
    peft_config = kwargs.pop("peft_config", None)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=DistillationConfig(**{**args, **kwargs}),
        train_dataset=_data(),
        eval_dataset=_data(2),
        peft_config=peft_config,
    )
    trainer.train()
    return trainer


def _logits(model, ids=None):
    ids = torch.arange(1, 9)[None] if ids is None else ids
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def _text_files(files: dict[str, bytes]) -> dict[str, str]:
    return {p: d.decode("utf-8", "replace") for p, d in files.items() if p.endswith((".json", ".md")) or "NOTICE" in p}


def _distilled_from_hub_teacher(hub, tmp_path, repo="me/tiny-student", name="a"):
    teacher_sha = _seed_model(hub, "acme/teacher", llama(64, 3), "apache-2.0", {"LICENSE": LICENSE_TEXT})
    student = student_from_teacher_layers(AutoModelForCausalLM.from_pretrained("acme/teacher"), [0, 2])
    trainer = _trainer(tmp_path, student, "acme/teacher", name=name, hub_model_id=repo, hub_token=HUB_TOKEN)
    trainer.compare_with_teacher()
    return trainer, teacher_sha


@pytest.mark.slow
def test_full_student_push_pins_the_teacher_and_pulls_back_with_transformers_alone(hub, tmp_path):
    trainer, teacher_sha = _distilled_from_hub_teacher(hub, tmp_path)
    hub.add_commit("acme/teacher", {"README.md": "---\nlicense: apache-2.0\n---\nchanged after training\n"})
    trainer.push_to_hub(commit_message="Distilled")

    (commit,) = hub.commits("me/tiny-student")  # weights, card, lineage and license in one commit
    assert commit["title"] == "Distilled"
    assert set(commit["files"]) == {
        "README.md", "config.json", "generation_config.json", "model.safetensors", "distillation_lineage.json",
        "LICENSE",
    }  # fmt: skip
    assert (
        commit["files"]["LICENSE"] == LICENSE_TEXT
    )  # the student's weights derive from the teacher: its license text
    for path, text in _text_files(commit["files"]).items():  # no local path, no token in anything pushed
        assert str(tmp_path) not in text and HUB_TOKEN not in text, path
    assert f"Bearer {HUB_TOKEN}" in hub.authorizations

    from huggingface_hub import HfApi

    card = HfApi().model_info("me/tiny-student").card_data.to_dict()
    assert (card["base_model"], card["base_model_relation"], card["license"]) == (
        "acme/teacher",
        "finetune",
        "apache-2.0",
    )
    assert {"distillation", "hf-distill"} <= set(card["tags"]) and "licence" not in card
    block = card["distillation"]
    assert block["teacher"]["revision"] == teacher_sha != hub.head("acme/teacher")  # pinned, not today's main
    assert block["teacher"]["license"] == {"id": "apache-2.0"}
    assert block["evaluation"]["metric"]["name"] == "perplexity"
    assert block["evaluation"]["size_on_disk"]["student"] == len(commit["files"]["model.safetensors"])
    assert card["model-index"][0]["results"][0]["metrics"][0]["value"] == block["evaluation"]["metric"]["student"]

    pulled = AutoModelForCausalLM.from_pretrained("me/tiny-student")
    torch.testing.assert_close(_logits(pulled), _logits(trainer.model), rtol=0, atol=0)
    lineage = read_lineage("me/tiny-student", revision=commit["oid"])
    assert lineage.revision == commit["oid"] and lineage.record.teacher["revision"] == teacher_sha
    assert lineage.teacher is None and lineage.teacher_note == "not a distilled model"
    assert lineage.record.student["init"] == {"kind": "teacher_layers", "layers": [0, 2]}


@pytest.mark.slow
def test_adapter_student_push_loads_with_peft_over_its_hub_base(hub, tmp_path):
    base_sha = _seed_model(hub, "acme/base", llama(64, 1), "mit")
    _seed_model(hub, "acme/teacher", llama(64, 2), "apache-2.0")
    student = AutoModelForCausalLM.from_pretrained("acme/base")
    trainer = _trainer(
        tmp_path, student, "acme/teacher", peft_config=LoraConfig(r=2, target_modules=["q_proj", "v_proj"]),
        hub_model_id="me/lora-student", hub_token=HUB_TOKEN,
    )  # fmt: skip
    trainer.push_to_hub()

    files = hub.files("me/lora-student")
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(files)
    assert "model.safetensors" not in files
    assert json.loads(files["adapter_config.json"])["base_model_name_or_path"] == "acme/base"  # not a local path
    meta = yaml.safe_load(files["README.md"].decode().split("---\n")[1])
    assert (meta["base_model"], meta["base_model_relation"], meta["library_name"]) == ("acme/base", "adapter", "peft")
    init = meta["distillation"]["student"]["init"]
    assert (init["kind"], init["name"], init["revision"]) == ("pretrained", "acme/base", base_sha)
    assert meta["distillation"]["student"]["adapter"]["method"] == "LORA"

    pulled = AutoPeftModelForCausalLM.from_pretrained("me/lora-student")
    torch.testing.assert_close(_logits(pulled), _logits(trainer.model), rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_two_level_chain_reads_back_up_to_the_first_teacher(hub, tmp_path, capsys):
    first, teacher_sha = _distilled_from_hub_teacher(hub, tmp_path, repo="me/student-a")
    first.push_to_hub()
    first_sha = hub.head("me/student-a")
    second = _trainer(tmp_path, llama(32, 1), "me/student-a", name="b", hub_model_id="me/student-b", ce_weight=0.5)
    second.push_to_hub(license="apache-2.0")
    first.push_to_hub(commit_message="a later version")  # the chain must still follow the pinned commit

    chain = read_lineage("me/student-b").chain()
    assert [(n.repo, n.revision) for n in chain] == [
        ("me/student-b", hub.head("me/student-b")),
        ("me/student-a", first_sha),
    ]
    assert chain[1].record.teacher["revision"] == teacher_sha and chain[1].teacher_note == "not a distilled model"
    assert chain[0].record.objective["ce_weight"] == 0.5
    assert main(["lineage", "me/student-b"]) == 0
    tree = capsys.readouterr().out
    assert tree.index("me/student-b") < tree.index("me/student-a") < tree.index("acme/teacher")
    assert f"acme/teacher @ {teacher_sha[:12]} (not a distilled model)" in tree


@pytest.mark.parametrize("repo", ["me/tiny-student", "me/Llama-tiny-student"])
def test_llama_teacher_name_prefix_and_duties(hub, tmp_path, repo):
    _seed_model(hub, "meta/llama-teacher", llama(64, 2), "llama3.1", {"LICENSE": LICENSE_TEXT})
    trainer = _trainer(tmp_path, llama(32, 1), "meta/llama-teacher", hub_model_id=repo)
    if not repo.split("/")[1].startswith("Llama"):
        with pytest.raises(LicensePolicyError, match="begin with “Llama”"):
            trainer.push_to_hub()
        assert not hub.repo_exists(repo)  # refused before the repository was even created
        trainer.push_to_hub(override_name_prefix=True)
    else:
        trainer.push_to_hub()
    files = hub.files(repo)
    notice = files["NOTICE"].decode()
    assert "Built with Llama" in notice and "Llama 3.1 is licensed under the Llama 3.1 Community License" in notice
    assert files["LICENSE"] == LICENSE_TEXT
    meta = yaml.safe_load(files["README.md"].decode().split("---\n")[1])
    assert meta["license"] == "llama3.1" and "**Built with Llama**" in files["README.md"].decode()
    policy = meta["distillation"]["license_policy"]
    assert policy["terms"] == "llama3.1" and bool(policy["overridden"]) == (not repo.split("/")[1].startswith("Llama"))


def test_unknown_teacher_license_needs_acknowledgement(hub, tmp_path):
    _seed_model(hub, "lab/teacher", llama(64, 2))  # no card, so no license
    trainer = _trainer(tmp_path, llama(32, 1), "lab/teacher", hub_model_id="me/student")
    with pytest.raises(LicensePolicyError, match="unknown"):
        trainer.push_to_hub()
    assert not hub.repo_exists("me/student")
    trainer.push_to_hub(acknowledge_teacher_license=True, license="apache-2.0")
    meta = yaml.safe_load(hub.files("me/student")["README.md"].decode().split("---\n")[1])
    assert meta["license"] == "apache-2.0"
    assert meta["distillation"]["license_policy"]["acknowledged"] == ["unknown teacher license (none given)"]


def test_push_to_hub_takes_license_and_finetuned_from_and_refuses_unknown_arguments(hub, tmp_path):
    _seed_model(hub, "acme/teacher", llama(64, 2), "apache-2.0")
    trainer = _trainer(tmp_path, llama(32, 1), "acme/teacher", hub_model_id="me/student")
    with pytest.raises(TypeError, match=r"unknown arguments \['colour'\]"):
        trainer.push_to_hub(colour="blue")
    trainer.push_to_hub(license="mit", finetuned_from="acme/small-base", tags=["tiny"], dataset="acme/corpus")
    meta = yaml.safe_load(hub.files("me/student")["README.md"].decode().split("---\n")[1])
    assert (meta["license"], meta["base_model"], meta["datasets"]) == ("mit", "acme/small-base", ["acme/corpus"])
    assert meta["tags"] == ["distillation", "hf-distill", "tiny"]


@pytest.mark.parametrize("failure", ["server rejects the card", "local path in a file", "token in a file"])
def test_a_failed_check_uploads_nothing(hub, tmp_path, failure):
    _seed_model(hub, "acme/teacher", llama(64, 2), "apache-2.0")
    trainer = _trainer(tmp_path, llama(32, 1), "acme/teacher", hub_model_id="me/student")
    output = trainer.args.output_dir
    if failure == "server rejects the card":
        hub.reject_yaml_with = "model-index: results[0] is malformed"
        expected = (ValueError, "model-index: results\\[0\\] is malformed")
    elif failure == "local path in a file":
        os.makedirs(output, exist_ok=True)
        with open(os.path.join(output, "notes.json"), "w") as f:
            json.dump({"data": os.path.join(os.path.abspath(output), "cache")}, f)
        expected = (PushRefusedError, "notes.json contains a local path")
    else:
        os.makedirs(output, exist_ok=True)
        with open(os.path.join(output, "notes.md"), "w") as f:
            f.write(f"my token is {HUB_TOKEN}\n")
        expected = (PushRefusedError, "notes.md contains the Hub token")
    with pytest.raises(expected[0], match=expected[1]):
        trainer.push_to_hub()
    assert not hub.repo_exists("me/student")
    assert not [r for r in hub.requests if "/preupload/" in r[1] or "/commit/" in r[1]]


def test_checkpoint_pushes_carry_the_card_and_lineage_in_each_commit(hub, tmp_path):
    _seed_model(hub, "acme/teacher", llama(64, 2), "apache-2.0")
    trainer = _trainer(
        tmp_path, llama(32, 1), "acme/teacher", max_steps=2, save_strategy="steps", save_steps=1, push_to_hub=True,
        hub_model_id="me/ckpt-student", hub_strategy="checkpoint", hub_token=HUB_TOKEN, hub_always_push=True,
    )  # fmt: skip
    trainer._finish_current_push()
    commits = hub.commits("me/ckpt-student")
    assert [c["title"] for c in commits] == ["Training in progress, step 1", "Training in progress, step 2"]
    for commit in commits:
        files = commit["files"]
        assert {
            "README.md",
            "distillation_lineage.json",
            "model.safetensors",
            "last-checkpoint/trainer_state.json",
        } <= set(files)
        assert "optimizer.pt" not in files and not [p for p in files if p.endswith("training_args.bin")]
        for path, text in _text_files(files).items():
            assert str(tmp_path) not in text and HUB_TOKEN not in text, path


@pytest.mark.slow
def test_malformed_lineage_in_a_pulled_card_names_the_field(hub, tmp_path, capsys):
    trainer, _ = _distilled_from_hub_teacher(hub, tmp_path)
    trainer.push_to_hub()
    readme = hub.files("me/tiny-student")["README.md"].decode()
    meta, body = readme.split("---\n")[1], readme.split("---\n", 2)[2]
    data = yaml.safe_load(meta)
    data["distillation"]["teacher"]["revision"] = "main"  # a branch is not a pin
    hub.add_commit("me/tiny-student", {"README.md": f"---\n{yaml.safe_dump(data)}---\n{body}"})
    with pytest.raises(LineageError) as raised:
        read_lineage("me/tiny-student")
    assert raised.value.field == "teacher.revision" and "'main' is neither a 40-hex commit sha" in str(raised.value)
    assert raised.value.lineage.objective["kd_loss"] == "forward_kl"  # the rest is still readable
    assert main(["lineage", "me/tiny-student"]) == 1
    captured = capsys.readouterr()
    assert "teacher.revision" in captured.err and '"kd_loss": "forward_kl"' in captured.out


@pytest.mark.slow
def test_a_teacher_cache_on_the_hub_is_pinned_and_named_in_the_students_lineage(hub, tmp_path):
    from huggingface_hub import HfApi

    from hf_distill.offline.writer import cache_teacher

    _seed_model(hub, "acme/teacher", llama(64, 2), "apache-2.0")
    teacher = AutoModelForCausalLM.from_pretrained("acme/teacher")
    cache_teacher(teacher, _data(), str(tmp_path / "cache"), k=8, progress=False)
    api = HfApi()
    api.create_repo("me/teacher-cache", repo_type="dataset")
    api.upload_folder(repo_id="me/teacher-cache", repo_type="dataset", folder_path=str(tmp_path / "cache"))
    sha = hub.head("me/teacher-cache", repo_type="dataset")
    trainer = DistillationTrainer(
        model=llama(32, 1),
        teacher_cache="me/teacher-cache",
        args=DistillationConfig(
            output_dir=str(tmp_path / "out"), max_steps=1, report_to=[], use_cpu=True, preflight="off"
        ),
    )
    trainer.train()
    record = trainer.lineage().teacher
    assert (record["name"], record["revision"]) == ("acme/teacher", hub.head("acme/teacher"))
    assert (record["cache"]["name"], record["cache"]["revision"]) == ("me/teacher-cache", sha)
    trainer.push_to_hub()  # the teacher's license came with the cache's fingerprint
    meta = yaml.safe_load(hub.files("local-user/out")["README.md"].decode().split("---\n")[1])
    assert meta["distillation"]["teacher"]["cache"]["fingerprint"] == record["cache"]["fingerprint"]
