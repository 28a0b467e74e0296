"""`push_to_hub=True` in the arguments, the way every tutorial pushes: `trainer.push_to_hub()` and `save_model()` make
exactly one commit (no recursion through `Trainer.save_model`), every `hub_strategy` pushes what the Trainer pushes,
and the repository is created by the first push, after the license check, never by the trainer's construction."""

import os

import pytest
import yaml
from conftest import HUB_TOKEN
from datasets import Dataset
from tiny_models import llama

from hf_distill import DistillationConfig, DistillationTrainer, LicensePolicyError

MODEL_FILES = {"README.md", "config.json", "generation_config.json", "model.safetensors", "distillation_lineage.json"}
STATE_FILES = {"trainer_state.json", "optimizer.pt", "scheduler.pt", "rng_state.pth"}


def _data(n=4, length=8, vocab=97):
    import torch

    ids = torch.randint(1, vocab, (n, length), generator=torch.Generator().manual_seed(0)).tolist()
    return Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * length] * n, "labels": ids})


def _seed_teacher(hub, tmp_path, repo_id="acme/teacher", license_id="apache-2.0"):
    folder = tmp_path / "seed"
    llama(64, 2).save_pretrained(folder)
    files = {name: (folder / name).read_bytes() for name in os.listdir(folder)}
    if license_id:
        files["README.md"] = f"---\nlicense: {license_id}\n---\n\n# {repo_id}\n"
    hub.add_commit(repo_id, files)


def _trainer(tmp_path, teacher="acme/teacher", **kwargs):
    args = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=2,
        max_steps=2,
        learning_rate=1e-2,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        preflight="off",
        push_to_hub=True,
        hub_model_id="me/student",
        hub_token=HUB_TOKEN,
    )
    return DistillationTrainer(
        model=llama(32, 1), teacher_model=teacher, args=DistillationConfig(**{**args, **kwargs}), train_dataset=_data()
    )


def _commit_titles(repo_id):
    from huggingface_hub import HfApi

    return [c.title for c in reversed(HfApi().list_repo_commits(repo_id))]  # the client lists newest first


@pytest.mark.slow
@pytest.mark.parametrize(
    "strategy, titles, checkpoint_files",
    [
        # Trainer: the model files on each save, then the final push
        ("every_save", ["Training in progress, step 1", "Training in progress, step 2", "End of training"], False),
        # Trainer: the model files and the resumable state under last-checkpoint/ (here in the same commit)
        ("checkpoint", ["Training in progress, step 1", "Training in progress, step 2", "End of training"], True),
        # Trainer: nothing during training
        ("end", ["End of training"], False),
    ],
)
def test_hub_strategies_with_push_to_hub_true(hub, tmp_path, strategy, titles, checkpoint_files):
    _seed_teacher(hub, tmp_path)
    trainer = _trainer(
        tmp_path, hub_strategy=strategy, save_strategy="steps", save_steps=1, hub_always_push=True
    )  # hub_always_push: every save pushes, so the count does not depend on upload speed
    assert not hub.repo_exists("me/student")  # the trainer's construction names the repository, creates nothing
    trainer.train()
    trainer.push_to_hub(tags=["final"])  # a card that differs from the last checkpoint push's

    assert _commit_titles("me/student") == titles
    commits = hub.commits("me/student")
    assert len(commits) == len(titles)
    for commit in commits[:-1]:  # checkpoint pushes: the model, its card and lineage, never the optimizer at the root
        files = set(commit["files"])
        assert MODEL_FILES <= files and not files & STATE_FILES
        assert bool({f"last-checkpoint/{name}" for name in STATE_FILES} <= files) == checkpoint_files
    final = commits[-1]["files"]
    assert MODEL_FILES <= set(final) and not set(final) & STATE_FILES
    assert not [p for p in final if p.endswith("training_args.bin") or p.startswith("checkpoint-")]
    assert bool([p for p in final if p.startswith("last-checkpoint/")]) == checkpoint_files  # kept from before
    assert final["model.safetensors"] == (tmp_path / "out" / "model.safetensors").read_bytes()
    meta = yaml.safe_load(final["README.md"].decode().split("---\n")[1])
    assert meta["distillation"]["teacher"]["name"] == "acme/teacher" and "final" in meta["tags"]
    # Pushing the very same files again adds no commit (huggingface_hub skips files the Hub already holds).
    head = hub.head("me/student")
    assert trainer.push_to_hub(tags=["final"]).oid == head and len(hub.commits("me/student")) == len(titles)


@pytest.mark.slow
def test_save_model_with_push_to_hub_true_makes_one_commit(hub, tmp_path):
    _seed_teacher(hub, tmp_path)
    trainer = _trainer(tmp_path)
    trainer.train()
    assert not hub.repo_exists("me/student")  # save_strategy="no", hub_strategy="every_save": nothing pushed yet
    trainer.save_model()  # Trainer.save_model pushes "Model save" when args.push_to_hub; it must not recurse
    assert _commit_titles("me/student") == ["Model save"]
    assert MODEL_FILES <= set(hub.files("me/student"))
    trainer.push_to_hub(commit_message="Final", language="en")
    assert _commit_titles("me/student") == ["Model save", "Final"]


def test_save_model_to_another_folder_pushes_the_output_dir_once(hub, tmp_path):
    # As the Trainer does: save_model(other) saves there and pushes args.output_dir, saved afresh, in one commit.
    _seed_teacher(hub, tmp_path)
    trainer = _trainer(tmp_path)
    trainer.train()
    trainer.save_model(str(tmp_path / "elsewhere"))
    assert (tmp_path / "elsewhere" / "model.safetensors").is_file()
    assert _commit_titles("me/student") == ["Model save"]


def test_a_license_refusal_stops_training_before_anything_is_created(hub, tmp_path):
    _seed_teacher(hub, tmp_path, license_id=None)  # no card: unknown license
    trainer = _trainer(tmp_path, save_strategy="steps", save_steps=1)
    with pytest.raises(LicensePolicyError, match="unknown"):
        trainer.train()
    assert trainer.state.global_step == 0 and not os.path.isdir(tmp_path / "out" / "checkpoint-1")
    assert not hub.repo_exists("me/student")
    assert not hub.calls("POST", "/api/repos/create")


@pytest.mark.slow
def test_the_repository_gets_the_users_namespace_and_the_asked_visibility(hub, tmp_path):
    _seed_teacher(hub, tmp_path)
    from huggingface_hub import HfApi

    trainer = _trainer(tmp_path, hub_model_id=None, hub_private_repo=True)
    assert trainer.hub_model_id == f"{hub.user}/out" and not hub.repo_exists(trainer.hub_model_id)
    trainer.train()
    trainer.push_to_hub()
    assert _commit_titles(f"{hub.user}/out") == ["End of training"]
    assert HfApi().model_info(f"{hub.user}/out").private is True  # created by the push, as the arguments asked


def test_the_users_readme_license_and_base_model_are_kept_and_checked(hub, tmp_path):
    # The user's README states the student's license and base model, which hf_distill has no value for (an Apache
    # teacher's terms do not carry over; the student starts from a config): both stay, in the local and pushed card.
    _seed_teacher(hub, tmp_path)
    trainer = _trainer(tmp_path, hub_strategy="end", max_steps=1)
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    (out / "README.md").write_text("---\nlicense: mit\nbase_model: acme/my-base\n---\n\n# Mine\n\nkeep me\n")
    (out / ".model.safetensors.0123456789ab.tmp").write_bytes(b"half a write")  # an interrupted atomic write
    assert trainer.push_license_decision().student_license == {"id": "mit"}
    trainer.train()
    trainer.create_model_card()
    trainer.push_to_hub()
    local = (out / "README.md").read_text()
    pushed = hub.files("me/student")["README.md"].decode()
    for card in (local, pushed):
        meta = yaml.safe_load(card.split("---\n")[1])
        assert (meta["license"], meta["base_model"]) == ("mit", "acme/my-base")
        assert "distributed under `mit`" in card and "did not state a license" not in card and "keep me" in card
    assert not [p for p in hub.files("me/student") if p.endswith(".tmp")]


def test_a_readme_license_is_checked_like_license_argument(hub, tmp_path):
    _seed_teacher(hub, tmp_path, license_id="llama3.1")  # its terms carry over to the student
    trainer = _trainer(tmp_path, hub_model_id="me/Llama-student")
    (tmp_path / "out").mkdir(exist_ok=True)
    (tmp_path / "out" / "README.md").write_text("---\nlicense: mit\n---\n\n# Mine\n")
    with pytest.raises(LicensePolicyError, match="license='mit'"):
        trainer.train()
    assert not hub.repo_exists("me/Llama-student")
    assert trainer.push_license_decision(license="llama3.1").student_license["id"] == "llama3.1"  # license= wins


def test_a_license_copy_the_terms_need_is_checked_before_training_and_found_in_output_dir(hub, tmp_path):
    from hf_distill.hub.push import PushRefusedError

    _seed_teacher(hub, tmp_path, license_id="llama3.1")  # no LICENSE file in the teacher's repo
    trainer = _trainer(
        tmp_path, hub_model_id="me/Llama-student", hub_strategy="every_save", save_strategy="steps", save_steps=1
    )
    with pytest.raises(PushRefusedError, match="LICENSE in the output folder"):
        trainer.train()
    assert trainer.state.global_step == 0 and not hub.repo_exists("me/Llama-student")
    os.makedirs(tmp_path / "out", exist_ok=True)
    (tmp_path / "out" / "LICENSE").write_bytes(b"Llama 3.1 license text\n")
    trainer.train()  # the checkpoint pushes take the LICENSE from the output folder
    trainer.push_in_progress.wait_until_done()
    commits = hub.commits("me/Llama-student")
    assert commits and all(c["files"].get("LICENSE") == b"Llama 3.1 license text\n" for c in commits)
