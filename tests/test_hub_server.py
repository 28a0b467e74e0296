"""The local Hub (tests/hub_server.py) driven by the real huggingface_hub / transformers clients.

These tests pin the contract other Hub tests rely on: the real client's call sequences work against the server, the
server refuses what a strict Hub refuses (before anything is uploaded), errors map to the client's exception
classes, and the suite is isolated (no fixture -> offline; fixture -> only 127.0.0.1).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hub_server import DUMMY_TOKEN, LocalHub, git_blob_sha1
from huggingface_hub import (
    HfApi,
    constants,
    hf_hub_download,
    is_offline_mode,
    snapshot_download,
)
from huggingface_hub.errors import (
    BadRequestError,
    EntryNotFoundError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import get_session, hf_raise_for_status
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

CARD_V1 = "---\nlicense: mit\ntags:\n- distillation\nlibrary_name: transformers\n---\n# Student v1\n"
CARD_V2 = "---\nlicense: apache-2.0\nbase_model: org/init-model\nbase_model_relation: finetune\n---\n# Student v2\n"
WEIGHTS = b"\x00weights\x00" * 64  # small, but a *.safetensors name sends it through LFS


def tiny_llama() -> LlamaForCausalLM:
    """A ~30k-parameter Llama built from a config: no download, fast to save, push and load."""
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
    )
    return LlamaForCausalLM(config).eval()


def write_folder(root: Path, files: dict[str, bytes | str]) -> Path:
    """Materialise `files` under `root` (created), for upload_folder."""
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
    return root


def test_without_the_fixture_hub_calls_are_offline_and_never_reach_a_server(_hub_server: LocalHub) -> None:
    """Every module copied the local endpoint at import, and offline mode stops a stray call before any socket."""
    assert constants.ENDPOINT == _hub_server.endpoint
    assert constants.ENDPOINT.startswith("http://127.0.0.1:")
    assert constants.HUGGINGFACE_CO_URL_TEMPLATE.startswith(_hub_server.endpoint + "/")
    assert constants.HF_HUB_DISABLE_XET and is_offline_mode()
    assert "hf_distill_tests_hf_home_" in constants.HF_HOME  # a temporary HF_HOME: never the user's cache or token
    before = len(_hub_server.log)

    with pytest.raises(OfflineModeIsEnabled):
        HfApi().model_info("someone/model")
    with pytest.raises(OfflineModeIsEnabled):
        HfApi().create_repo("someone/model")
    with pytest.raises(OSError):  # LocalEntryNotFoundError: nothing cached and no network allowed
        hf_hub_download("someone/model", "config.json")
    with pytest.raises(OSError):
        AutoConfig.from_pretrained("someone/model")
    assert len(_hub_server.log) == before


def test_create_repo_namespaces_exist_ok_and_sends_the_token(hub: LocalHub) -> None:
    api = HfApi()
    assert api.whoami()["name"] == hub.user
    url = api.create_repo("tiny")
    assert url.repo_id == f"{hub.user}/tiny" and url.startswith(hub.endpoint)

    with pytest.raises(HfHubHTTPError) as exc:
        api.create_repo("tiny")
    assert exc.value.response.status_code == 409
    assert api.create_repo("tiny", exist_ok=True).repo_id == url.repo_id

    data = api.create_repo("org/data", repo_type="dataset", private=True)
    assert data.repo_id == "org/data" and "/datasets/org/data" in data
    assert hub.repo_exists("org/data", "dataset") and not hub.repo_exists("org/data")
    assert hub.requests[0] == ("GET", "/api/whoami-v2")
    assert hub.authorizations and set(hub.authorizations) == {f"Bearer {DUMMY_TOKEN}"}


def test_writes_without_a_token_are_refused(hub: LocalHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(HfHubHTTPError) as exc:
        HfApi().create_repo("no-token")
    assert exc.value.response.status_code == 401
    assert not hub.repo_exists(f"{hub.user}/no-token")
    assert hub.authorizations == [None]


def test_upload_folder_lfs_batch_then_pinned_reads(hub: LocalHub, tmp_path: Path) -> None:
    """Two commits; every read path must serve the old one by sha and the new one by branch."""
    api = HfApi()
    repo_id = api.create_repo("student").repo_id
    folder = write_folder(
        tmp_path / "out", {"README.md": CARD_V1, "model.safetensors": WEIGHTS, "sub/notes.txt": "hi"}
    )
    first = api.upload_folder(folder_path=folder, repo_id=repo_id, commit_message="v1")

    calls = [method + " " + path for method, path in hub.requests]
    batch = calls.index(f"POST /{repo_id}.git/info/lfs/objects/batch")
    put = next(i for i, c in enumerate(calls) if c.startswith("PUT /__lfs/"))
    verify = next(i for i, c in enumerate(calls) if c.startswith("POST /__lfs/") and c.endswith("/verify"))
    commit = calls.index(f"POST /api/models/{repo_id}/commit/main")
    assert calls.index("POST /api/validate-yaml") < batch < put < verify < commit
    assert hub.commits(repo_id)[0]["lfs"] == ["model.safetensors"]

    (folder / "README.md").write_text(CARD_V2)
    second = api.upload_folder(folder_path=folder, repo_id=repo_id, commit_message="v2")
    assert len(hub.calls("PUT")) == 1, "unchanged weights must not be uploaded again"
    assert [c["title"] for c in hub.commits(repo_id)] == ["v1", "v2"]
    assert hub.commits(repo_id)[1]["parent"] == first.oid

    head, old = api.model_info(repo_id), api.model_info(repo_id, revision=first.oid)
    assert (head.sha, old.sha) == (second.oid, first.oid)
    assert old.card_data.license == "mit" and old.tags == ["distillation", "transformers"]
    assert head.card_data.license == "apache-2.0" and head.card_data.base_model == "org/init-model"
    assert {s.rfilename: s.lfs is not None for s in head.siblings} == {
        "README.md": False,
        "model.safetensors": True,
        "sub/notes.txt": False,
    }
    assert api.list_repo_files(repo_id) == ["README.md", "model.safetensors", "sub/notes.txt"]
    assert api.resolve_revision(repo_id).resolved == second.oid

    assert Path(hf_hub_download(repo_id, "README.md", revision=first.oid)).read_text() == CARD_V1
    assert Path(hf_hub_download(repo_id, "README.md")).read_text() == CARD_V2
    snapshot = Path(snapshot_download(repo_id, revision=first.oid))
    assert snapshot.name == first.oid
    assert (snapshot / "model.safetensors").read_bytes() == WEIGHTS
    assert (snapshot / "sub" / "notes.txt").read_text() == "hi"
    assert hub.files(repo_id, revision=first.oid)["README.md"] == CARD_V1.encode()


def test_reuploading_unchanged_files_makes_no_upload_and_no_commit(hub: LocalHub, tmp_path: Path) -> None:
    api = HfApi()
    repo_id = api.create_repo("same").repo_id
    folder = write_folder(tmp_path / "out", {"README.md": CARD_V1, "model.safetensors": WEIGHTS})
    first = api.upload_folder(folder_path=folder, repo_id=repo_id)
    n_requests = len(hub.requests)

    again = api.upload_folder(folder_path=folder, repo_id=repo_id)
    later = hub.requests[n_requests:]
    assert again.oid == first.oid
    assert len(hub.commits(repo_id)) == 1
    assert not [r for r in later if r[0] == "PUT" or "/commit/" in r[1]], later


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ("license: not-a-license", '"license" must be one of'),
        ("license: other", '"license_name" is required'),
        ("license: other\nlicense_name: Qwen License", '"license_name" must be a lowercase id'),
        ("base_model: /home/me/runs/init", '"base_model" must be a Hub model id'),
        ("base_model: ./outputs/checkpoint-10", '"base_model" must be a Hub model id'),
        ("base_model: None", '"base_model" must be a Hub model id'),
        ("base_model:\n- org/init\n- my teacher", '"base_model" must be a Hub model id'),
        ("base_model: org/init\nbase_model_relation: distillation", '"base_model_relation" must be one of'),
        ("model-index:\n- name: s\n  results:\n  - metrics: []", "task.type is required"),
        ("license: [mit", "Invalid YAML"),
        ("- license\n- mit", "must be a YAML mapping"),
        ("license: mit", "Refused by the test"),  # valid card, refused through the reject_yaml_with hook
    ],
)
def test_refused_cards_fail_in_the_client_before_anything_is_uploaded(
    hub: LocalHub, tmp_path: Path, metadata: str, message: str
) -> None:
    if message == "Refused by the test":
        hub.reject_yaml_with = message
    api = HfApi()
    repo_id = api.create_repo("refused").repo_id
    folder = write_folder(
        tmp_path / "out", {"README.md": f"---\n{metadata}\n---\n# card\n", "model.safetensors": WEIGHTS}
    )

    with pytest.raises(ValueError, match="Invalid metadata in README.md") as exc:
        api.upload_folder(folder_path=folder, repo_id=repo_id)
    assert message in str(exc.value)
    assert hub.commits(repo_id) == [] and hub.files(repo_id) == {}
    assert not [r for r in hub.requests if "/preupload/" in r[1] or "/lfs/" in r[1] or r[0] == "PUT"]


def test_a_complete_valid_card_is_accepted(hub: LocalHub, tmp_path: Path) -> None:
    """The positive control for the refusals above: every checked field, well formed."""
    card = (
        "---\nlicense: other\nlicense_name: qwen\nlicense_link: LICENSE\nbase_model:\n- Qwen/Qwen2.5-0.5B\n"
        "base_model_relation: finetune\nlibrary_name: transformers\npipeline_tag: text-generation\n"
        "distillation:\n  schema: 1\n  teacher: Qwen/Qwen2.5-7B\nmodel-index:\n- name: student\n  results:\n"
        "  - task: {type: text-generation}\n    dataset: {type: wikitext, name: WikiText}\n"
        "    metrics: [{type: perplexity, value: 12.5}]\n---\n# card\n"
    )
    api = HfApi()
    repo_id = api.create_repo("valid").repo_id
    api.upload_folder(folder_path=write_folder(tmp_path / "out", {"README.md": card}), repo_id=repo_id)
    info = api.model_info(repo_id)
    assert info.card_data.license_name == "qwen"
    assert info.card_data.to_dict()["distillation"] == {"schema": 1, "teacher": "Qwen/Qwen2.5-7B"}
    assert info.pipeline_tag == "text-generation" and info.library_name == "transformers"
    assert hub.validated_cards == [card, card]  # upload_folder validates before hashing and again in create_commit


def test_push_to_hub_then_from_pretrained_gives_identical_logits(hub: LocalHub) -> None:
    model = tiny_llama()
    commit = model.push_to_hub("tiny-llama")
    repo_id = f"{hub.user}/tiny-llama"
    assert commit.oid == hub.head(repo_id)
    assert {"config.json", "model.safetensors", "README.md"} <= set(hub.files(repo_id))
    assert "model.safetensors" in hub.commits(repo_id)[-1]["lfs"]

    loaded = AutoModelForCausalLM.from_pretrained(repo_id, revision=commit.oid).eval()
    ids = torch.randint(0, 128, (2, 7))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    assert hub.calls("GET", f"/{repo_id}/resolve/{commit.oid}/model.safetensors")

    # Range requests: the client reads only the safetensors header.
    metadata = HfApi().get_safetensors_metadata(repo_id)
    assert metadata.parameter_count == {"F32": sum(p.numel() for p in model.parameters())}


def test_trainer_push_to_hub_commits_weights_and_card_together(hub: LocalHub, tmp_path: Path) -> None:
    """The path DistillationTrainer inherits: Trainer creates the repo at init and pushes output_dir in one commit."""
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), push_to_hub=True, hub_model_id="trained", report_to="none"
    )
    trainer = Trainer(model=tiny_llama(), args=args)
    commit = trainer.push_to_hub(commit_message="End of training")
    repo_id = f"{hub.user}/trained"
    (only,) = hub.commits(repo_id)
    assert only["oid"] == commit.oid and only["title"] == "End of training"
    assert {"README.md", "config.json", "model.safetensors", "training_args.bin"} <= set(only["files"])
    assert hub.validated_cards and hub.validated_cards[-1].encode() == only["files"]["README.md"]
    assert HfApi().model_info(repo_id).library_name == "transformers"


@pytest.mark.parametrize(
    ("range_header", "status", "body"),
    [(None, 200, b"0123456789"), ("bytes=2-4", 206, b"234"), ("bytes=7-", 206, b"789"), ("bytes=-2", 206, b"89")],
)
def test_resolve_headers_and_ranges(hub: LocalHub, range_header: str | None, status: int, body: bytes) -> None:
    sha = hub.add_commit("org/seeded", {"digits.txt": b"0123456789"})
    url = f"{hub.endpoint}/org/seeded/resolve/main/digits.txt"
    headers = {"Range": range_header} if range_header else {}
    response = get_session().get(url, headers=headers)
    assert (response.status_code, response.content) == (status, body)
    assert response.headers["X-Repo-Commit"] == sha
    assert response.headers["ETag"] == f'"{git_blob_sha1(b"0123456789")}"'
    assert "X-Xet-Hash" not in response.headers


def test_branches_tags_and_quoted_revisions(hub: LocalHub) -> None:
    api = HfApi()
    first = hub.add_commit("org/refs", {"a.txt": "1"})
    api.create_tag("org/refs", tag="v1")
    api.create_branch("org/refs", branch="dev")
    second = hub.add_commit("org/refs", {"a.txt": "2"}, branch="dev")
    with pytest.raises(HfHubHTTPError):
        api.create_branch("org/refs", branch="dev")
    api.create_branch("org/refs", branch="dev", exist_ok=True)

    refs = api.list_repo_refs("org/refs")
    assert {b.name: b.target_commit for b in refs.branches} == {"main": first, "dev": second}
    assert [(t.name, t.target_commit) for t in refs.tags] == [("v1", first)]
    assert api.model_info("org/refs", revision="v1").sha == first
    assert api.model_info("org/refs", revision="refs/heads/dev").sha == second  # sent as refs%2Fheads%2Fdev
    # hf_hub_download quotes the revision (refs%2Fheads%2Fdev): the server must unquote it.
    assert Path(hf_hub_download("org/refs", "a.txt", revision="refs/heads/dev")).read_text() == "2"
    assert any("refs%2Fheads%2Fdev" in path for _, path in hub.requests)
    assert [c.commit_id for c in api.list_repo_commits("org/refs", revision="dev")] == [second, first]


def test_dataset_repos_use_the_datasets_prefix(hub: LocalHub) -> None:
    api = HfApi()
    repo_id = api.create_repo("org/table", repo_type="dataset").repo_id
    api.upload_file(
        path_or_fileobj=b"PAR1 not really", path_in_repo="data.parquet", repo_id=repo_id, repo_type="dataset"
    )
    assert hub.calls("POST", f"/datasets/{repo_id}.git/info/lfs/objects/batch")
    assert hub.files(repo_id, repo_type="dataset") == {"data.parquet": b"PAR1 not really"}
    path = hf_hub_download(repo_id, "data.parquet", repo_type="dataset")
    assert Path(path).read_bytes() == b"PAR1 not really"
    assert hub.calls("GET", f"/datasets/{repo_id}/resolve/main/data.parquet")


def test_a_commit_pointing_at_an_lfs_object_never_uploaded_is_refused(hub: LocalHub) -> None:
    """The client never does this, but a broken upload path would: the commit must fail, not store a ghost file."""
    hub.create_repo("org/ghost")
    lines = [
        {"key": "header", "value": {"summary": "ghost", "description": ""}},
        {"key": "lfsFile", "value": {"path": "model.safetensors", "algo": "sha256", "oid": "a" * 64, "size": 3}},
    ]
    response = get_session().post(
        f"{hub.endpoint}/api/models/org/ghost/commit/main",
        content="\n".join(json.dumps(line) for line in lines).encode(),
        headers={"Content-Type": "application/x-ndjson", "Authorization": f"Bearer {DUMMY_TOKEN}"},
    )
    with pytest.raises(BadRequestError, match="never uploaded"):
        hf_raise_for_status(response)
    assert hub.commits("org/ghost") == []


ErrorCase = Callable[[HfApi, str, str], object]


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda api, repo, sha: api.model_info("org/missing"), RepositoryNotFoundError),
        (lambda api, repo, sha: api.model_info(repo, revision="no-such-branch"), RevisionNotFoundError),
        (lambda api, repo, sha: api.list_repo_files(repo, revision="f" * 40), RevisionNotFoundError),
        (lambda api, repo, sha: hf_hub_download("org/missing", "config.json"), RepositoryNotFoundError),
        (lambda api, repo, sha: hf_hub_download(repo, "config.json", revision="nope"), RevisionNotFoundError),
        (lambda api, repo, sha: hf_hub_download(repo, "missing.json", revision=sha), EntryNotFoundError),
        (lambda api, repo, sha: api.resolve_revision(repo, revision="nope"), RevisionNotFoundError),
    ],
    ids=[
        "info-repo",
        "info-revision",
        "tree-unknown-sha",
        "download-repo",
        "download-revision",
        "download-entry",
        "resolve-revision",
    ],
)
def test_not_found_errors_map_to_the_client_exceptions(hub: LocalHub, call: ErrorCase, error: type) -> None:
    sha = hub.add_commit("org/present", {"config.json": "{}"})
    with pytest.raises(error) as exc:
        call(HfApi(), "org/present", sha)
    response = exc.value.response
    assert response.status_code == 404 and response.headers["X-Error-Message"]
    if error is EntryNotFoundError:
        assert response.headers["X-Repo-Commit"] == sha


def test_offline_mode_and_token_are_restored_after_hub_tests(_hub_server: LocalHub) -> None:
    """Runs after the `hub` tests of this file: the fixture must have put offline mode, token and cache back."""
    assert is_offline_mode() and os.environ["HF_HUB_OFFLINE"] == "1"
    assert "HF_TOKEN" not in os.environ
    assert constants.HF_HUB_CACHE.startswith(constants.HF_HOME)
    before = len(_hub_server.log)
    with pytest.raises(OfflineModeIsEnabled):
        HfApi().model_info("org/present")
    assert len(_hub_server.log) == before
