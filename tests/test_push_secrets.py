"""A push reads the user's files and never writes them; every file it would upload is searched for the Hub token and
for local paths, whatever its extension, binaries included; a refused push creates and uploads nothing."""

import hashlib
import json
import os

import pytest
import torch
import yaml
from conftest import HUB_TOKEN
from datasets import Dataset
from safetensors.torch import save_file
from tiny_models import llama

from hf_distill import DistillationConfig, DistillationTrainer
from hf_distill.hub.secrets import _SCAN_BLOCK, PushRefusedError, check_no_secrets

LICENSE_TEXT = b"The teacher's license text.\n"
MY_NOTICE = b"This student was made by me.\nCopyright me.\n"
MY_README = b"---\nlanguage: fr\n---\n\n# My student\n\nWritten by me, kept by every push.\n"


def _data(n=4, length=8, vocab=97):
    ids = torch.randint(1, vocab, (n, length), generator=torch.Generator().manual_seed(0)).tolist()
    return Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * length] * n, "labels": ids})


def _trained(hub, tmp_path, license_id="apache-2.0", repo="me/student"):
    folder = tmp_path / "seed"
    llama(64, 2).save_pretrained(folder)
    files = {name: (folder / name).read_bytes() for name in os.listdir(folder)}
    files["README.md"] = f"---\nlicense: {license_id}\n---\n\n# teacher\n"
    hub.add_commit("acme/teacher", {**files, "LICENSE": LICENSE_TEXT})
    args = DistillationConfig(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, max_steps=1, report_to=[], use_cpu=True,
        save_strategy="no", disable_tqdm=True, preflight="off", hub_model_id=repo, hub_token=HUB_TOKEN,
    )  # fmt: skip
    trainer = DistillationTrainer(model=llama(32, 1), teacher_model="acme/teacher", args=args, train_dataset=_data())
    trainer.train()
    return trainer


def _snapshot(folder):
    found = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return found


def _nothing_pushed(hub, repo="me/student"):
    assert not hub.repo_exists(repo)
    assert not [r for r in hub.requests if "/repos/create" in r[1] or "/preupload/" in r[1] or "/commit/" in r[1]]


@pytest.mark.slow
def test_the_users_notice_and_readme_are_never_written_and_are_merged_into_the_push(hub, tmp_path):
    trainer = _trained(hub, tmp_path, license_id="llama3.1", repo="me/Llama-student")
    output = tmp_path / "out"
    trainer.save_model()
    (output / "NOTICE").write_bytes(MY_NOTICE)
    (output / "README.md").write_bytes(MY_README)
    (output / "notes.cfg").write_bytes(b"lr = 0.01\n")  # any clean file of the folder goes, as with Trainer
    (output / ".git").mkdir()
    (output / ".git" / "HEAD").write_bytes(b"ref: refs/heads/main\n")  # never: as huggingface_hub's upload_folder
    before = _snapshot(output)
    trainer.push_to_hub()
    trainer.push_to_hub(commit_message="again", tags=["second"])  # a second push merges the same user files again

    assert _snapshot(output) == before  # no file written, added or changed by the pushes (save_model re-saves alike)
    assert (output / "NOTICE").read_bytes() == MY_NOTICE and (output / "README.md").read_bytes() == MY_README
    files = hub.files("me/Llama-student")
    assert files["notes.cfg"] == b"lr = 0.01\n" and not [p for p in files if ".git" in p]
    notice = files["NOTICE"].decode()
    assert notice.startswith(MY_NOTICE.decode())  # the user's NOTICE, with the teacher's attribution appended
    assert "Built with Llama" in notice and "Llama 3.1 is licensed under the Llama 3.1 Community License" in notice
    assert notice.count("Built with Llama") == 1
    assert files["LICENSE"] == LICENSE_TEXT
    card = files["README.md"].decode()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["language"] == "fr" and meta["license"] == "llama3.1" and "second" in meta["tags"]
    assert "# My student\n\nWritten by me, kept by every push." in card and card.count("hf_distill:lineage:start") == 1


def test_a_notice_that_already_carries_the_attribution_is_pushed_as_it_is(hub, tmp_path):
    trainer = _trained(hub, tmp_path, license_id="llama3.1", repo="me/Llama-student")
    trainer.save_model()
    own = (
        b"Built with Llama\nLlama 3.1 is licensed under the Llama 3.1 Community License, Copyright \xc2\xa9 Meta "
        b"Platforms, Inc. All Rights Reserved.\nAnd my own line.\n"
    )
    (tmp_path / "out" / "NOTICE").write_bytes(own)
    trainer.push_to_hub()
    assert hub.files("me/Llama-student")["NOTICE"] == own


@pytest.mark.parametrize(
    "name, content, what",
    [
        ("notes.cfg", lambda out: f"token = {HUB_TOKEN}\n".encode(), "the Hub token"),
        ("run.log", lambda out: f"saved to {out}/model.safetensors\n".encode(), "a local path"),
        ("extra/settings.toml", lambda out: f'cache = "{out}"\n'.encode(), "a local path"),
        ("paths.json", lambda out: json.dumps({"p": str(out) + "/x"}, ensure_ascii=True).encode(), "a local path"),
        # binary: the token at the end of the first 1 MiB read block, split across two blocks
        ("blob.bin", lambda out: bytes(_SCAN_BLOCK - 5) + HUB_TOKEN.encode() + bytes(100), "the Hub token"),
    ],
)
def test_a_secret_in_any_file_refuses_the_push(hub, tmp_path, name, content, what):
    trainer = _trained(hub, tmp_path)
    output = tmp_path / "out"
    (output / name).parent.mkdir(parents=True, exist_ok=True)
    (output / name).write_bytes(content(output))
    with pytest.raises(PushRefusedError, match=f"{name} contains {what}"):
        trainer.push_to_hub()
    _nothing_pushed(hub)


def test_a_token_in_safetensors_metadata_refuses_the_push(hub, tmp_path):
    trainer = _trained(hub, tmp_path)
    save_file({"w": torch.zeros(4)}, str(tmp_path / "out" / "extra.safetensors"), metadata={"note": HUB_TOKEN})
    with pytest.raises(PushRefusedError, match="extra.safetensors contains the Hub token") as refused:
        trainer.push_to_hub()
    assert HUB_TOKEN not in str(refused.value)  # the message never shows the token itself
    _nothing_pushed(hub)


def test_a_local_path_in_the_users_readme_refuses_the_push(hub, tmp_path):
    trainer = _trained(hub, tmp_path)
    (tmp_path / "out" / "README.md").write_text(f"# Mine\n\nTrained in {tmp_path / 'out'}.\n")
    with pytest.raises(PushRefusedError, match="README.md contains a local path"):
        trainer.push_to_hub()
    _nothing_pushed(hub)


@pytest.mark.parametrize("offset", [0, _SCAN_BLOCK - 7, _SCAN_BLOCK - 1, _SCAN_BLOCK, 3 * _SCAN_BLOCK + 11])
def test_the_byte_search_finds_a_token_at_any_offset_and_reports_clean_files(tmp_path, offset):
    token = "hf_" + "x" * 34
    path = tmp_path / "weights.bin"
    path.write_bytes(bytes(offset) + token.encode() + bytes(17))
    with pytest.raises(PushRefusedError, match="weights.bin contains the Hub token"):
        check_no_secrets({"weights.bin": str(path)}, [], token)
    path.write_bytes(bytes(offset) + token[:-1].encode() + bytes(17))  # one character short: not the token
    check_no_secrets({"weights.bin": str(path)}, [str(tmp_path / "out")], token)
    with pytest.raises(PushRefusedError, match="card.md contains the Hub token"):  # generated bytes are searched too
        check_no_secrets({"card.md": bytes(offset) + token.encode()}, [], token)


def test_every_token_known_on_this_machine_is_searched(hub, tmp_path, monkeypatch):
    # The push uses args.hub_token; other tokens this machine knows must not leave in a file either.
    trainer = _trained(hub, tmp_path)
    notes = tmp_path / "out" / "notes.txt"
    for name, token in [
        ("HF_TOKEN", "hf_env_token_0123456789"),
        ("HUGGING_FACE_HUB_TOKEN", "hf_legacy_env_token_0123456789"),
        ("saved", "hf_saved_token_0123456789"),
        ("args", "hf_args_token_0123456789"),
    ]:
        if name == "saved":
            monkeypatch.setattr("hf_distill.hub.secrets.get_token", lambda token=token: token)
        elif name == "args":
            monkeypatch.setattr(trainer.args, "hub_token", token)
        else:
            monkeypatch.setenv(name, token)
        notes.write_text(f"token = {token}\n")
        with pytest.raises(PushRefusedError, match="notes.txt contains the Hub token"):
            trainer.push_to_hub(token=HUB_TOKEN)  # another token given to the push
        _nothing_pushed(hub)


def test_a_local_path_written_with_escaped_slashes_is_found(tmp_path):
    out = str(tmp_path / "out")
    with pytest.raises(PushRefusedError, match="a local path"):
        check_no_secrets({"state.json": json.dumps({"p": out}).replace("/", "\\/").encode()}, [out], None)
