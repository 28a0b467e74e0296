"""A small Hub-compatible HTTP server for tests: the real `huggingface_hub` client talks to it on 127.0.0.1.

Why this exists: push/pull code must be tested against the real client (its request sequence, its error mapping,
its cache layout), but nothing in the suite may reach the real Hub. `responses`/`respx` do not intercept
huggingface_hub 2.4.0's own httpx client, and no Hub-compatible server can be installed here, so this module
implements the part of the HTTP contract the client uses (see /work/shared/HUB.md, "Endpoint reference").

Scope and deliberate choices:
- Standard library + pyyaml only, one `ThreadingHTTPServer` in a daemon thread, an in-memory store behind a lock.
- Repos (model/dataset) with branches, tags and an ordered commit list; each commit keeps a full snapshot of
  its file tree, so any revision (branch, tag, full 40-hex sha) can be served exactly.
- Large/binary files go through the git-LFS batch API (basic transfer only, never multipart); Xet is not served,
  so the client must run with `HF_HUB_DISABLE_XET=1`.
- `/api/validate-yaml` is strict (licenses, `base_model`, `base_model_relation`, `model-index`), so a card the real
  Hub would refuse is refused here too, before anything is uploaded.
- Only the endpoints the suite's client calls are served (found from a request log of every Hub-using test): repo
  create, whoami, validate-yaml, repo info at a revision, tree, paths-info, refs, commits, preupload, commit (file and
  LFS additions), branch and tag creation, LFS batch/upload/verify, resolve (with ranges). Anything else (deletes,
  pull requests, Xet, spaces, pagination) answers with an error the client raises.
- A socket server, not an in-process `httpx.MockTransport`: the usage-pattern tests push from subprocesses (user
  scripts run as users run them), which only a real endpoint on 127.0.0.1 can serve.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

__all__ = ["LocalHub", "RecordedRequest", "validate_card_metadata", "HUB_LICENSE_IDS", "DEFAULT_USER", "DUMMY_TOKEN"]

DEFAULT_USER = "local-user"
"""Namespace used when `create_repo` gets a bare name (the real Hub uses the token owner's name)."""
DUMMY_TOKEN = "hf_dummy_test_token"
"""The token the `hub` fixture exposes as HF_TOKEN; the server accepts any Bearer token and records it."""

# License ids the Hub accepts in card metadata (docs/hub/repositories-licenses.md, plus the newer Llama ids).
HUB_LICENSE_IDS = frozenset(
    {
        "apache-2.0", "mit", "openrail", "bigscience-openrail-m", "creativeml-openrail-m",
        "bigscience-bloom-rail-1.0", "bigcode-openrail-m", "afl-3.0", "artistic-2.0", "bsl-1.0", "bsd",
        "bsd-2-clause", "bsd-3-clause", "bsd-3-clause-clear", "c-uda", "cc", "cc0-1.0", "cc-by-2.0", "cc-by-2.5",
        "cc-by-3.0", "cc-by-4.0", "cc-by-sa-3.0", "cc-by-sa-4.0", "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0",
        "cc-by-nd-4.0", "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0",
        "cc-by-nc-sa-4.0", "cdla-sharing-1.0", "cdla-permissive-1.0", "cdla-permissive-2.0", "wtfpl", "ecl-2.0",
        "epl-1.0", "epl-2.0", "etalab-2.0", "eupl-1.1", "eupl-1.2", "agpl-3.0", "gfdl", "gpl", "gpl-2.0",
        "gpl-3.0", "lgpl", "lgpl-2.1", "lgpl-3.0", "isc", "lppl-1.3c", "ms-pl", "mpl-2.0", "odc-by", "odbl",
        "openrail++", "osl-3.0", "postgresql", "ofl-1.1", "ncsa", "unlicense", "zlib", "pddl", "lgpl-lr",
        "deepfloyd-if-license", "llama2", "llama3", "llama3.1", "llama3.2", "llama3.3", "llama4", "gemma",
        "apple-ascl", "apple-amlr", "unknown", "other",
    }
)  # fmt: skip
BASE_MODEL_RELATIONS = ("adapter", "merge", "quantized", "finetune")

# Patterns of the Hub's default .gitattributes (plus GGUF): these always go through LFS.
_LFS_SUFFIXES = (
    ".7z", ".arrow", ".bin", ".bz2", ".ckpt", ".ftz", ".gguf", ".gz", ".h5", ".joblib", ".mlmodel", ".model",
    ".msgpack", ".npy", ".npz", ".onnx", ".ot", ".parquet", ".pb", ".pickle", ".pkl", ".pt", ".pth", ".rar",
    ".safetensors", ".tar", ".tflite", ".tgz", ".wasm", ".xz", ".zip", ".zst",
)  # fmt: skip
LFS_SIZE_THRESHOLD = 1024 * 1024
"""Files at least this large are sent to LFS (the brief's 1 MB rule; keeps test payloads small)."""
REGULAR_MAX_SIZE = 10 * 1024 * 1024
"""The real Hub rejects regular (non-LFS) files above 10 MiB."""

_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NAME_PART = re.compile(r"^[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9_])?$")
# Same front-matter regex as huggingface_hub.repocard.REGEX_YAML_BLOCK, so both sides agree on what the YAML is.
_YAML_BLOCK = re.compile(r"^(\s*---(?:\r\n|\r|\n))([\S\s]*?)((?:\r\n|\r|\n)---[ \t]*(\r\n|\n|$))")
_LICENSE_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]*$")

_TYPE_FROM_PLURAL = {"models": "model", "datasets": "dataset"}
_URL_PREFIX = {"model": "", "dataset": "datasets/"}
_REPO_ACTIONS = frozenset(
    {"revision", "tree", "paths-info", "preupload", "commit", "commits", "refs", "branch", "tag"}
)

_API_REPO = re.compile(r"^/api/(?P<plural>models|datasets)/(?P<rest>.+)$")
_LFS_BATCH = re.compile(r"^/(?:(?P<prefix>datasets)/)?(?P<repo>[^/]+(?:/[^/]+)?)\.git/info/lfs/objects/batch$")
_LFS_OBJECT = re.compile(
    r"^/__lfs/(?P<type>model|dataset)/(?P<repo>[^/]+/[^/]+)/(?P<oid>[0-9a-f]{64})(?P<verify>/verify)?$"
)
_RESOLVE = re.compile(r"^/(?:(?P<prefix>datasets)/)?(?P<repo>(?:[^/]+/)?[^/]+?)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def git_blob_sha1(data: bytes) -> str:
    """Git's blob id: what the Hub reports as the oid/ETag of a regular file (and the client compares against)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    """Timestamp in the one format `huggingface_hub.utils.parse_datetime` accepts."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _wants_lfs(path: str, size: int, sample: bytes) -> bool:
    """The preupload decision: weight-like suffix, large, or binary-looking sample (the Hub refuses binary blobs)."""
    name = path.rsplit("/", 1)[-1].lower()
    return (
        name.endswith(_LFS_SUFFIXES)
        or ".tar." in name
        or "tfevents" in name
        or size >= LFS_SIZE_THRESHOLD
        or b"\0" in sample[:512]
    )


# ---------------------------------------------------------------------------------------------------------------------
# Card metadata validation (/api/validate-yaml)
# ---------------------------------------------------------------------------------------------------------------------


def _is_model_id(value: Any) -> bool:
    """`name` or `namespace/name` as the Hub spells repo ids: no paths, spaces, `None`, `..` or `--`."""
    if not isinstance(value, str) or value.strip().lower() in ("none", "null", ""):
        return False
    parts = value.split("/")
    if len(parts) > 2:
        return False
    return all(_NAME_PART.match(part) and "--" not in part and ".." not in part for part in parts)


def _validate_model_index(model_index: Any) -> list[str]:
    """Shape check of `model-index`: [{name, results: [{task: {type}, dataset?: {type, name}, metrics: [...]}]}]."""
    if not isinstance(model_index, list) or not model_index:
        return ['"model-index" must be a non-empty array']
    errors: list[str] = []
    for i, entry in enumerate(model_index):
        where = f'"model-index[{i}]"'
        if not isinstance(entry, dict):
            errors.append(f"{where} must be an object")
            continue
        if not isinstance(entry.get("name"), str) or not entry["name"]:
            errors.append(f"{where}.name must be a non-empty string")
        results = entry.get("results")
        if not isinstance(results, list):
            errors.append(f"{where}.results must be an array")
            continue
        for j, result in enumerate(results):
            rwhere = f"{where}.results[{j}]"
            if not isinstance(result, dict):
                errors.append(f"{rwhere} must be an object")
                continue
            task = result.get("task")
            if not isinstance(task, dict) or not isinstance(task.get("type"), str):
                errors.append(f"{rwhere}.task.type is required and must be a string")
            dataset = result.get("dataset")
            if dataset is not None and (
                not isinstance(dataset, dict)
                or not isinstance(dataset.get("type"), str)
                or not isinstance(dataset.get("name"), str)
            ):
                errors.append(f"{rwhere}.dataset must be an object with string `type` and `name`")
            metrics = result.get("metrics")
            if not isinstance(metrics, list) or not metrics:
                errors.append(f"{rwhere}.metrics must be a non-empty array")
                continue
            for k, metric in enumerate(metrics):
                if not isinstance(metric, dict) or not isinstance(metric.get("type"), str) or "value" not in metric:
                    errors.append(f"{rwhere}.metrics[{k}] must be an object with a string `type` and a `value`")
    return errors


def parse_front_matter(content: str) -> tuple[dict[str, Any], str | None]:
    """Return (metadata, error) for a README's YAML front matter; no front matter is an empty mapping."""
    match = _YAML_BLOCK.search(content)
    if match is None:
        return {}, None
    try:
        data = yaml.safe_load(match.group(2))
    except yaml.YAMLError as exc:
        return {}, f"Invalid YAML in the metadata block: {exc}"
    if data is None:
        return {}, None
    if not isinstance(data, dict):
        return {}, f"The metadata block must be a YAML mapping, got {type(data).__name__}"
    return data, None


def validate_card_metadata(content: str, repo_type: str = "model") -> tuple[list[str], list[str]]:
    """Validate a README like a strict Hub: returns (errors, warnings); any error makes the push fail with a 400."""
    metadata, error = parse_front_matter(content)
    if error is not None:
        return [error], []
    errors: list[str] = []
    warnings: list[str] = []

    license_ = metadata.get("license")
    licenses = license_ if repo_type == "dataset" and isinstance(license_, list) else [license_]
    if "license" in metadata:
        for lic in licenses:
            if not isinstance(lic, str) or lic not in HUB_LICENSE_IDS:
                errors.append(
                    f'"license" must be one of the Hub license ids (got {lic!r}); '
                    "see https://huggingface.co/docs/hub/repositories-licenses"
                )
    if "other" in licenses:
        name = metadata.get("license_name")
        if name is None:
            errors.append('"license_name" is required when "license" is "other"')
        elif not isinstance(name, str) or not _LICENSE_NAME.match(name):
            errors.append(f'"license_name" must be a lowercase id (letters, digits, "-" and "."), got {name!r}')
    if "license_link" in metadata:
        link = metadata["license_link"]
        if not isinstance(link, str):
            errors.append(f'"license_link" must be a string, got {link!r}')
        elif not re.match(r"^(https?://\S+|[\w./-]+)$", link):
            warnings.append(f'"license_link" should be a URL or a path in the repo, got {link!r}')

    if "base_model" in metadata:
        base = metadata["base_model"]
        bases = base if isinstance(base, list) else [base]
        if not bases:
            errors.append('"base_model" must not be an empty array')
        for item in bases:
            if not _is_model_id(item):
                errors.append(
                    f'"base_model" must be a Hub model id ("name" or "namespace/name"), not a local path, '
                    f"a phrase or None: got {item!r}"
                )
    if "base_model_relation" in metadata and metadata["base_model_relation"] not in BASE_MODEL_RELATIONS:
        errors.append(
            f'"base_model_relation" must be one of {list(BASE_MODEL_RELATIONS)}, got {metadata["base_model_relation"]!r}'
        )
    if "model-index" in metadata:
        errors.extend(_validate_model_index(metadata["model-index"]))

    tags = metadata.get("tags")
    if tags is not None and not (
        isinstance(tags, str) or (isinstance(tags, list) and all(isinstance(t, str) for t in tags))
    ):
        errors.append(f'"tags" must be a string or an array of strings, got {tags!r}')
    for key in ("library_name", "pipeline_tag"):
        if key in metadata and not isinstance(metadata[key], str):
            errors.append(f'"{key}" must be a string, got {metadata[key]!r}')
    return errors, warnings


# ---------------------------------------------------------------------------------------------------------------------
# Store
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it; `authorization` is the raw header (None when no token was sent)."""

    method: str
    path: str
    query: str
    authorization: str | None


@dataclass(frozen=True)
class _Blob:
    """File content plus how it is stored; ids are computed once because every listing needs them."""

    data: bytes
    lfs: bool
    sha1: str = field(init=False)
    sha256: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha1", git_blob_sha1(self.data))
        object.__setattr__(self, "sha256", hashlib.sha256(self.data).hexdigest())

    @property
    def pointer(self) -> bytes:
        """The git-LFS pointer file git would store for this blob."""
        return (
            f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {len(self.data)}\n".encode()
        )

    @property
    def etag(self) -> str:
        """Hub ETag: sha256 for LFS files, git blob sha1 for regular ones."""
        return self.sha256 if self.lfs else self.sha1

    @property
    def tree_oid(self) -> str:
        """Git oid in tree listings: the pointer's blob sha1 for LFS files (what git actually stores)."""
        return git_blob_sha1(self.pointer) if self.lfs else self.sha1

    def entry(self, path: str) -> dict[str, Any]:
        """A `{"type": "file", ...}` tree / paths-info entry."""
        out: dict[str, Any] = {"type": "file", "path": path, "size": len(self.data), "oid": self.tree_oid}
        if self.lfs:
            out["lfs"] = {"oid": self.sha256, "size": len(self.data), "pointerSize": len(self.pointer)}
        return out


@dataclass
class _Commit:
    oid: str
    parent: str | None
    title: str
    message: str
    date: str
    author: str
    files: dict[str, _Blob]


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    branches: dict[str, str | None] = field(default_factory=lambda: {"main": None})
    tags: dict[str, str] = field(default_factory=dict)
    commits: list[_Commit] = field(default_factory=list)
    by_oid: dict[str, _Commit] = field(default_factory=dict)
    lfs_objects: dict[str, bytes] = field(default_factory=dict)

    @property
    def url_path(self) -> str:
        return f"{_URL_PREFIX[self.repo_type]}{self.repo_id}"


class HubError(Exception):
    """An error answer: status plus the `X-Error-Code` the client maps to an exception class."""

    def __init__(self, status: int, message: str, code: str | None = None, repo_commit: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.repo_commit = repo_commit


class LocalHub:
    """A Hub-compatible server on 127.0.0.1 with an inspectable in-memory store.

    Attributes tests use: `endpoint`, `requests` ((method, path) pairs in order), `log` (`RecordedRequest`s with
    query and Authorization), `authorizations`, `validated_cards` (README texts sent to validate-yaml),
    `server_errors` (tracebacks of 500s: a server bug, never expected), `reject_yaml_with` (set to a message to make
    every validate-yaml call fail with it), `require_token` (writes without a token get a 401, as on the Hub).
    """

    def __init__(
        self, sock: socket.socket | None = None, *, host: str = "127.0.0.1", port: int = 0, user: str = DEFAULT_USER
    ) -> None:
        """Use `sock` (already bound, not listening) when the endpoint had to be known before the server starts."""
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, port))
        self._sock = sock
        host, port = sock.getsockname()[:2]
        self.endpoint = f"http://{host}:{port}"
        self.user = user
        self.require_token = True
        self.reject_yaml_with: str | None = None
        self._lock = threading.RLock()
        self._repos: dict[tuple[str, str], _Repo] = {}
        self.log: list[RecordedRequest] = []
        self.validated_cards: list[str] = []
        self.server_errors: list[str] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------------------------

    def start(self) -> LocalHub:
        """Start listening and serving in a daemon thread (idempotent)."""
        if self._server is not None:
            return self
        server = _Server(self._sock.getsockname()[:2], _Handler, bind_and_activate=False)
        server.socket.close()
        server.socket = self._sock
        server.server_address = self._sock.getsockname()[:2]
        server.server_activate()
        server.hub = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="LocalHub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        else:
            self._sock.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset(self) -> None:
        """Forget every repo, request and setting, so each test starts from an empty Hub."""
        with self._lock:
            self._repos.clear()
            self.log.clear()
            self.validated_cards.clear()
            self.server_errors.clear()
            self.reject_yaml_with = None
            self.require_token = True

    # -- inspection ------------------------------------------------------------------------------------------------

    @property
    def requests(self) -> list[tuple[str, str]]:
        """(method, raw path without query) of every request, in arrival order."""
        with self._lock:
            return [(r.method, r.path) for r in self.log]

    @property
    def authorizations(self) -> list[str | None]:
        """The Authorization header of every request, in arrival order."""
        with self._lock:
            return [r.authorization for r in self.log]

    def calls(self, method: str | None = None, contains: str = "") -> list[tuple[str, str]]:
        """The (method, path) pairs matching `method` (if given) whose path contains `contains`."""
        return [(m, p) for m, p in self.requests if (method is None or m == method) and contains in p]

    def repo_exists(self, repo_id: str, repo_type: str = "model") -> bool:
        with self._lock:
            return (repo_type, repo_id) in self._repos

    def commits(self, repo_id: str, repo_type: str = "model") -> list[dict[str, Any]]:
        """Every commit of the repo (all branches), oldest first, as plain dicts with the full file snapshot."""
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            return [
                {
                    "oid": c.oid,
                    "parent": c.parent,
                    "title": c.title,
                    "message": c.message,
                    "date": c.date,
                    "author": c.author,
                    "files": {p: b.data for p, b in c.files.items()},
                    "lfs": sorted(p for p, b in c.files.items() if b.lfs),
                }
                for c in repo.commits
            ]

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """path -> content at `revision` (branch, tag or sha); empty for a repo without commits."""
        with self._lock:
            commit = self._resolve(self._get_repo(repo_type, repo_id), revision)
            return {} if commit is None else {p: b.data for p, b in commit.files.items()}

    def head(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> str | None:
        """The commit sha `revision` points at (None for an empty repo)."""
        with self._lock:
            commit = self._resolve(self._get_repo(repo_type, repo_id), revision)
            return None if commit is None else commit.oid

    # -- seeding (server side, no HTTP) ------------------------------------------------------------------------------

    def create_repo(self, repo_id: str, repo_type: str = "model", private: bool = False) -> None:
        """Create an empty repo directly, e.g. to stand in for a teacher that lives on the Hub."""
        with self._lock:
            if (repo_type, repo_id) in self._repos:
                raise ValueError(f"{repo_type} {repo_id} already exists")
            self._repos[(repo_type, repo_id)] = _Repo(repo_type, repo_id, private, _now())

    def add_commit(
        self,
        repo_id: str,
        files: Mapping[str, bytes | str | None],
        message: str = "Seed commit",
        repo_type: str = "model",
        branch: str = "main",
    ) -> str:
        """Commit `files` (None deletes a path) straight into the store, creating the repo if needed; returns the sha.

        Storage mode follows the preupload rule, so seeded repos look like pushed ones.
        """
        with self._lock:
            if (repo_type, repo_id) not in self._repos:
                self.create_repo(repo_id, repo_type)
            repo = self._repos[(repo_type, repo_id)]
            parent = self._resolve(repo, branch)
            snapshot = dict(parent.files) if parent is not None else {}
            for path, data in files.items():
                if data is None:
                    snapshot.pop(path, None)
                    continue
                raw = data.encode() if isinstance(data, str) else data
                blob = _Blob(raw, lfs=_wants_lfs(path, len(raw), raw[:512]) and len(raw) > 0)
                if blob.lfs:
                    repo.lfs_objects[blob.sha256] = raw
                snapshot[path] = blob
            return self._append_commit(repo, branch, message, "", snapshot).oid

    # -- store internals (call with the lock held) -------------------------------------------------------------------

    def _get_repo(self, repo_type: str, repo_id: str) -> _Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, f"Repository Not Found: {repo_type} {repo_id}", "RepoNotFound")
        return repo

    def _resolve(self, repo: _Repo, revision: str) -> _Commit | None:
        """Branch, tag (also as refs/heads/..., refs/tags/...) or full sha -> commit; None for an empty branch."""
        for prefix, table in (("refs/heads/", repo.branches), ("refs/tags/", repo.tags)):
            if revision.startswith(prefix) and revision[len(prefix) :] in table:
                revision = revision[len(prefix) :]
        if revision in repo.branches:
            oid = repo.branches[revision]
            return None if oid is None else repo.by_oid[oid]
        if revision in repo.tags:
            return repo.by_oid[repo.tags[revision]]
        if _HEX40.match(revision) and revision in repo.by_oid:
            return repo.by_oid[revision]
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _append_commit(
        self, repo: _Repo, branch: str, title: str, message: str, files: dict[str, _Blob], author: str | None = None
    ) -> _Commit:
        parent = repo.branches.get(branch)
        # Random salt: two commits with identical content must still get distinct ids, as on a real Hub.
        seed = f"{repo.repo_type}/{repo.repo_id}\0{parent}\0{title}\0{uuid.uuid4()}".encode()
        commit = _Commit(
            oid=hashlib.sha1(seed).hexdigest(),
            parent=parent,
            title=title,
            message=message,
            date=_now(),
            author=author or self.user,
            files=files,
        )
        repo.commits.append(commit)
        repo.by_oid[commit.oid] = commit
        repo.branches[branch] = commit.oid
        return commit

    def _history(self, repo: _Repo, commit: _Commit | None) -> list[_Commit]:
        """Commits reachable from `commit`, newest first."""
        out = []
        while commit is not None:
            out.append(commit)
            commit = repo.by_oid[commit.parent] if commit.parent else None
        return out

    def _tree_entries(self, commit: _Commit | None, prefix: str, recursive: bool) -> list:
        """Tree listing under `prefix` (folders and files), as the /tree endpoint returns it."""
        files = commit.files if commit is not None else {}
        base = prefix.strip("/")
        if base and base not in files and not any(p.startswith(base + "/") for p in files):
            raise HubError(
                404, f"Entry not found: {base}", "EntryNotFound", repo_commit=commit.oid if commit else None
            )
        if base in files:
            raise HubError(404, f"{base} is a file, not a folder", "EntryNotFound", repo_commit=commit.oid)
        start = base + "/" if base else ""
        entries: dict[str, dict[str, Any]] = {}
        for path in sorted(files):
            if not path.startswith(start):
                continue
            rest = path[len(start) :].split("/")
            depth = len(rest) if recursive else 1
            for i in range(1, min(depth, len(rest) - 1) + 1):
                folder = start + "/".join(rest[:i])
                entries.setdefault(folder, self._folder_entry(files, folder))
            if recursive or len(rest) == 1:
                entries[path] = files[path].entry(path)
        return sorted(entries.values(), key=lambda e: (e["type"] != "directory", e["path"]))

    @staticmethod
    def _folder_entry(files: Mapping[str, _Blob], folder: str) -> dict[str, Any]:
        listing = "\n".join(f"{p}:{b.sha1}" for p, b in sorted(files.items()) if p.startswith(folder + "/"))
        return {"type": "directory", "path": folder, "oid": hashlib.sha1(listing.encode()).hexdigest()}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    hub: LocalHub


# ---------------------------------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    """Routes a request to the store; every error becomes a JSON body plus X-Error-Code / X-Error-Message headers."""

    protocol_version = "HTTP/1.1"  # keep-alive: the client reuses one connection for the whole test
    server: _Server
    _body: bytes = b""
    _query: dict[str, list[str]] = {}

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr line; `LocalHub.log` records requests instead."""

    # -- plumbing -------------------------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    @property
    def hub(self) -> LocalHub:
        return self.server.hub

    def _read_body(self) -> bytes:
        """Read the whole body, Content-Length or chunked (httpx streams file uploads chunked)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _json_body(self) -> Any:
        try:
            return json.loads(self._body or b"{}")
        except json.JSONDecodeError as exc:
            raise HubError(400, f"Request body is not JSON: {exc}") from exc

    def _send(
        self,
        status: int,
        body: bytes = b"",
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
        content_length: int | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if content_length is None else content_length))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _send_json(self, data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> None:
        self._send(status, json.dumps(data, default=str).encode(), headers=headers)

    def _send_error(self, err: HubError) -> None:
        headers = {"X-Error-Message": err.message.replace("\n", " ").encode("ascii", "replace").decode()}
        if err.code:
            headers["X-Error-Code"] = err.code
        if err.repo_commit:
            headers["X-Repo-Commit"] = err.repo_commit
        self._send_json({"error": err.message}, status=err.status, headers=headers)

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        self._body = self._read_body()
        self._query = parse_qs(url.query)
        auth = self.headers.get("Authorization")
        hub = self.hub
        with hub._lock:
            hub.log.append(RecordedRequest(method, url.path, url.query, auth))
        try:
            self._route(method, url.path)
        except HubError as err:
            self._send_error(err)
        except Exception:  # a server bug: answer 500 and keep the traceback for the test to see
            import traceback

            trace = traceback.format_exc()
            with hub._lock:
                hub.server_errors.append(f"{method} {self.path}\n{trace}")
            self._send_error(HubError(500, f"LocalHub internal error: {trace.splitlines()[-1]}"))

    def _require_token(self) -> None:
        if self.hub.require_token and not (self.headers.get("Authorization") or "").startswith("Bearer "):
            raise HubError(401, "You must be authenticated to write to the Hub (no Authorization header)")

    def _can_read(self, repo: _Repo) -> None:
        """Private repos look missing without a token, as on the Hub."""
        if repo.private and not self.headers.get("Authorization"):
            raise HubError(404, f"Repository Not Found: {repo.repo_id}", "RepoNotFound")

    def _flag(self, name: str) -> bool:
        return (self._query.get(name) or ["false"])[0].lower() in ("1", "true")

    # -- routing ----------------------------------------------------------------------------------------------------

    def _route(self, method: str, path: str) -> None:
        hub = self.hub
        simple = {
            ("POST", "/api/repos/create"): self._create_repo,
            ("GET", "/api/whoami-v2"): self._whoami,
            ("POST", "/api/validate-yaml"): self._validate_yaml,
            # huggingface_hub fetches this registry (once a day) when it runs under an AI agent.
            ("GET", "/api/agent-harnesses"): lambda: self._send_json({"standardEnvVars": [], "harnesses": {}}),
        }
        if (method, path) in simple:
            simple[(method, path)]()
            return
        if m := _API_REPO.match(path):
            repo_type = _TYPE_FROM_PLURAL[m["plural"]]
            parts = [unquote(p) for p in m["rest"].split("/")]
            raw_args = m["rest"].split("/")
            if len(parts) >= 3 and parts[2] in _REPO_ACTIONS:
                repo_id, action, raw_args = f"{parts[0]}/{parts[1]}", parts[2], raw_args[3:]
            elif len(parts) <= 2:
                repo_id, action, raw_args = "/".join(parts), None, []
            else:
                raise HubError(404, f"LocalHub has no route for {method} {path}")
            with hub._lock:
                self._repo_api(method, repo_type, repo_id, action, raw_args)
            return
        if (m := _LFS_BATCH.match(path)) and method == "POST":
            repo_type = _TYPE_FROM_PLURAL[m["prefix"]] if m["prefix"] else "model"
            with hub._lock:
                self._lfs_batch(repo_type, unquote(m["repo"]))
            return
        if m := _LFS_OBJECT.match(path):
            with hub._lock:
                repo = hub._get_repo(m["type"], m["repo"])
                if m["verify"] and method == "POST":
                    self._lfs_verify(repo, m["oid"])
                    return
                if not m["verify"] and method == "PUT":
                    self._lfs_put(repo, m["oid"])
                    return
        if (m := _RESOLVE.match(path)) and method in ("GET", "HEAD"):
            repo_type = _TYPE_FROM_PLURAL[m["prefix"]] if m["prefix"] else "model"
            with hub._lock:
                self._resolve_file(repo_type, unquote(m["repo"]), unquote(m["rev"]), unquote(m["path"]))
            return
        raise HubError(404, f"LocalHub has no route for {method} {path}")

    def _repo_api(self, method: str, repo_type: str, repo_id: str, action: str | None, raw_args: list[str]) -> None:
        hub = self.hub
        repo = hub._get_repo(repo_type, repo_id)
        self._can_read(repo)
        rev = unquote("/".join(raw_args)) if raw_args else "main"
        if action is None and method == "GET":
            self._repo_info(repo, "main")
        elif action == "revision" and method == "GET":
            self._repo_info(repo, rev)
        elif action == "tree" and method == "GET":
            commit = hub._resolve(repo, unquote(raw_args[0]) if raw_args else "main")
            prefix = unquote("/".join(raw_args[1:]))
            entries = hub._tree_entries(commit, prefix, self._flag("recursive"))
            self._send_json(entries)
        elif action == "paths-info" and method == "POST":
            self._paths_info(repo, rev)
        elif action == "refs" and method == "GET":
            self._refs(repo)
        elif action == "commits" and method == "GET":
            self._list_commits(repo, rev)
        elif action == "preupload" and method == "POST":
            self._require_token()
            self._preupload(repo, rev)
        elif action == "commit" and method == "POST":
            self._require_token()
            self._commit(repo, rev)
        elif action == "branch" and method == "POST":
            self._require_token()
            self._branch(repo, rev)
        elif action == "tag" and method == "POST":
            self._require_token()
            self._tag(repo, rev)
        else:
            raise HubError(400, f"LocalHub does not implement {method} {self.path}")

    # -- repo management ---------------------------------------------------------------------------------------------

    def _create_repo(self) -> None:
        self._require_token()
        body = self._json_body()
        hub = self.hub
        name, org = body.get("name"), body.get("organization")
        repo_type = body.get("type") or "model"
        if repo_type not in _URL_PREFIX:
            raise HubError(400, f"Invalid repo type {repo_type!r}")
        repo_id = f"{org or hub.user}/{name}"
        if not isinstance(name, str) or not all(
            _NAME_PART.match(p) and "--" not in p and ".." not in p for p in repo_id.split("/")
        ):
            raise HubError(400, f"Invalid repo name {repo_id!r}")
        url = f"{hub.endpoint}/{_URL_PREFIX[repo_type]}{repo_id}"
        with hub._lock:
            if (repo_type, repo_id) in hub._repos:
                self._send_json({"error": "You already created this repo", "url": url}, status=409)
                return
            private = body.get("visibility") == "private" or bool(body.get("private"))
            hub._repos[(repo_type, repo_id)] = _Repo(repo_type, repo_id, private, _now())
        self._send_json({"url": url, "name": repo_id, "id": repo_id})

    def _whoami(self) -> None:
        if not self.headers.get("Authorization"):
            raise HubError(401, "Invalid credentials in Authorization header")
        user = self.hub.user
        self._send_json(
            {
                "type": "user",
                "id": hashlib.sha1(user.encode()).hexdigest()[:24],
                "name": user,
                "fullname": user,
                "email": f"{user}@localhost",
                "emailVerified": True,
                "isPro": False,
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "local", "role": "write"}},
            }
        )

    def _validate_yaml(self) -> None:
        body = self._json_body()
        content = body.get("content")
        if not isinstance(content, str):
            self._send_json({"errors": [{"message": '"content" must be a string'}], "warnings": []}, status=400)
            return
        hub = self.hub
        with hub._lock:
            hub.validated_cards.append(content)
            forced = hub.reject_yaml_with
        errors, warnings = validate_card_metadata(content, body.get("repoType") or "model")
        if forced is not None:
            errors = [forced, *errors]
        payload = {"errors": [{"message": e} for e in errors], "warnings": [{"message": w} for w in warnings]}
        self._send_json(payload, status=400 if errors else 200)

    # -- read path ---------------------------------------------------------------------------------------------------

    def _repo_info(self, repo: _Repo, revision: str) -> None:
        commit = self.hub._resolve(repo, revision)
        files = commit.files if commit is not None else {}
        card: dict[str, Any] | None = None
        if "README.md" in files:
            card, _ = parse_front_matter(files["README.md"].data.decode("utf-8", "replace"))
        card = card or None
        tags: list[str] = []
        if card:
            raw_tags = card.get("tags") or []
            tags.extend([raw_tags] if isinstance(raw_tags, str) else [t for t in raw_tags if isinstance(t, str)])
            if isinstance(card.get("library_name"), str):
                tags.append(card["library_name"])
        siblings = []
        for path, blob in sorted(files.items()):
            sibling: dict[str, Any] = {"rfilename": path, "size": len(blob.data), "blobId": blob.tree_oid}
            if blob.lfs:
                sibling["lfs"] = {"size": len(blob.data), "sha256": blob.sha256, "pointerSize": len(blob.pointer)}
            siblings.append(sibling)
        info: dict[str, Any] = {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0] if "/" in repo.repo_id else None,
            "sha": commit.oid if commit is not None else None,
            "lastModified": commit.date if commit is not None else repo.created_at,
            "createdAt": repo.created_at,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": list(dict.fromkeys(tags)),
            "siblings": siblings,
        }
        if card is not None:
            info["cardData"] = card
        if repo.repo_type == "model":
            info["library_name"] = card.get("library_name") if card else None
            info["pipeline_tag"] = card.get("pipeline_tag") if card else None
        self._send_json(info)

    def _paths_info(self, repo: _Repo, revision: str) -> None:
        hub = self.hub
        commit = hub._resolve(repo, revision)
        form = parse_qs(self._body.decode())
        files = commit.files if commit is not None else {}
        out = []
        for path in form.get("paths", []):
            path = path.strip("/")
            if path in files:
                entry = files[path].entry(path)
            elif any(p.startswith(path + "/") for p in files):
                entry = hub._folder_entry(files, path)
            else:
                continue  # the Hub silently skips missing paths
            out.append(entry)
        self._send_json(out)

    def _refs(self, repo: _Repo) -> None:
        refs: dict[str, Any] = {
            "branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": o} for b, o in repo.branches.items()],
            "tags": [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": o} for t, o in repo.tags.items()],
            "converts": [],
        }
        self._send_json(refs)

    def _list_commits(self, repo: _Repo, revision: str) -> None:
        history = self.hub._history(repo, self.hub._resolve(repo, revision))
        self._send_json(
            [
                {"id": c.oid, "title": c.title, "message": c.message, "date": c.date, "authors": [{"user": c.author}]}
                for c in history
            ]
        )

    def _resolve_file(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        hub = self.hub
        repo = hub._get_repo(repo_type, repo_id)
        self._can_read(repo)
        commit = hub._resolve(repo, revision)
        blob = commit.files.get(path) if commit is not None else None
        if blob is None:
            raise HubError(
                404, f"Entry not found: {path}", "EntryNotFound", repo_commit=commit.oid if commit else None
            )
        size = len(blob.data)
        headers = {"ETag": f'"{blob.etag}"', "X-Repo-Commit": commit.oid, "Accept-Ranges": "bytes"}
        range_header = self.headers.get("Range")
        if range_header and self.command == "GET" and (m := _RANGE.match(range_header.strip())):
            first, last = m.groups()
            if first == "":  # suffix range: the last N bytes
                start, end = max(size - int(last or 0), 0), size - 1
            else:
                start, end = int(first), min(int(last) if last else size - 1, size - 1)
            if start >= size or start > end:
                self._send(416, headers={**headers, "Content-Range": f"bytes */{size}"})
                return
            part = blob.data[start : end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            self._send(206, part, "application/octet-stream", headers)
            return
        self._send(200, blob.data, "application/octet-stream", headers, content_length=size)

    # -- write path ---------------------------------------------------------------------------------------------------

    def _preupload(self, repo: _Repo, revision: str) -> None:
        if self._flag("create_pr"):
            raise HubError(400, "LocalHub does not implement pull requests (create_pr)")
        commit = self.hub._resolve(repo, revision)
        current = commit.files if commit is not None else {}
        out = []
        for item in self._json_body().get("files", []):
            path, size = item["path"], int(item["size"])
            sample = base64.b64decode(item.get("sample") or "")
            mode = "lfs" if _wants_lfs(path, size, sample) else "regular"
            existing = current.get(path)
            oid = None if existing is None else (existing.sha256 if existing.lfs else existing.sha1)
            out.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        self._send_json({"files": out})

    def _lfs_batch(self, repo_type: str, repo_id: str) -> None:
        self._require_token()
        hub = self.hub
        repo = hub._get_repo(repo_type, repo_id)
        body = self._json_body()
        if body.get("operation") != "upload":
            raise HubError(400, "LocalHub's LFS batch API only supports the upload operation")
        objects = []
        base = f"{hub.endpoint}/__lfs/{repo_type}/{repo_id}"
        for obj in body.get("objects", []):
            oid, size = obj.get("oid"), obj.get("size")
            if not isinstance(oid, str) or not _HEX64.match(oid) or not isinstance(size, int):
                objects.append({"oid": str(oid), "size": 0, "error": {"code": 422, "message": "Invalid oid or size"}})
            elif oid in repo.lfs_objects:
                objects.append({"oid": oid, "size": size})  # already stored: no actions, the client skips it
            else:
                objects.append(
                    {
                        "oid": oid,
                        "size": size,
                        "authenticated": True,
                        "actions": {"upload": {"href": f"{base}/{oid}"}, "verify": {"href": f"{base}/{oid}/verify"}},
                    }
                )
        self._send(
            200,
            json.dumps({"transfer": "basic", "objects": objects, "hash_algo": "sha256"}).encode(),
            "application/vnd.git-lfs+json",
        )

    def _lfs_put(self, repo: _Repo, oid: str) -> None:
        data = self._body
        if hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, f"Uploaded content does not match sha256 {oid}")
        repo.lfs_objects[oid] = data
        self._send(200)

    def _lfs_verify(self, repo: _Repo, oid: str) -> None:
        self._require_token()
        body = self._json_body()
        data = repo.lfs_objects.get(oid)
        if data is None or body.get("oid") != oid or body.get("size") != len(data):
            raise HubError(422, f"LFS object {oid} was not uploaded (or its size differs)")
        self._send_json({})

    def _commit(self, repo: _Repo, revision: str) -> None:
        hub = self.hub
        if self._flag("create_pr"):
            raise HubError(400, "LocalHub does not implement pull requests (create_pr)")
        branch = revision[len("refs/heads/") :] if revision.startswith("refs/heads/") else revision
        if branch not in repo.branches:
            hub._resolve(repo, revision)  # raises RevisionNotFound when it is nothing at all
            raise HubError(400, f"Can only commit to a branch, not to {revision!r}")
        lines = [json.loads(line) for line in self._body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The first NDJSON line of a commit must be the header")
        header = lines[0]["value"]
        title = header.get("summary") or ""
        if not title.strip():
            raise HubError(400, "Commit summary must not be empty")
        head = repo.branches[branch]
        if header.get("parentCommit") and header["parentCommit"] != head:
            raise HubError(412, f"A commit has happened since {header['parentCommit']}; parent is now {head}")
        snapshot = dict(repo.by_oid[head].files) if head else {}
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value") or {}
            path = _clean_path(value.get("path"))
            if key == "file":
                raw = value.get("content", "")
                data = base64.b64decode(raw) if value.get("encoding", "base64") == "base64" else raw.encode()
                if len(data) > REGULAR_MAX_SIZE:
                    raise HubError(400, f"{path}: files larger than 10 MiB must be uploaded with LFS")
                if b"\0" in data[:512]:
                    raise HubError(400, f"{path}: binary files must be uploaded with LFS")
                snapshot[path] = _Blob(data, lfs=False)
            elif key == "lfsFile":
                oid = value.get("oid")
                data = repo.lfs_objects.get(oid)
                if data is None:
                    raise HubError(400, f"{path}: LFS object {oid} was never uploaded")
                if value.get("size") is not None and value["size"] != len(data):
                    raise HubError(400, f"{path}: LFS size {value['size']} does not match the stored object")
                snapshot[path] = _Blob(data, lfs=True)
            else:  # deletions and copies: no test makes one
                raise HubError(400, f"Unknown commit operation {key!r}")
        commit = hub._append_commit(repo, branch, title, header.get("description") or "", snapshot)
        self._send_json(
            {
                "commitUrl": f"{hub.endpoint}/{repo.url_path}/commit/{commit.oid}",
                "commitOid": commit.oid,
                "pullRequestUrl": None,
                "success": True,
            }
        )

    def _branch(self, repo: _Repo, branch: str) -> None:
        if branch in repo.branches:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        start = self._json_body().get("startingPoint") or "main"
        commit = self.hub._resolve(repo, start)
        repo.branches[branch] = commit.oid if commit is not None else None
        self._send_json({})

    def _tag(self, repo: _Repo, name_or_rev: str) -> None:
        tag = self._json_body().get("tag")
        if not isinstance(tag, str) or not tag:
            raise HubError(400, '"tag" is required')
        if tag in repo.tags:
            raise HubError(409, f"Reference already exists: refs/tags/{tag}")
        commit = self.hub._resolve(repo, name_or_rev)
        if commit is None:
            raise HubError(400, "Cannot tag an empty branch")
        repo.tags[tag] = commit.oid
        self._send_json({})


def _clean_path(path: Any) -> str:
    """Reject paths git or the Hub would refuse (absolute, `..`, `.git/`), so a bad client call fails loudly."""
    if not isinstance(path, str) or not path or path.startswith("/") or "\\" in path:
        raise HubError(400, f"Invalid path in commit: {path!r}")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts[:-1]) or parts[-1] in ("", ".", "..") or parts[0] == ".git":
        raise HubError(400, f"Invalid path in commit: {path!r}")
    return path
