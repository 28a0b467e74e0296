"""Pushing a student to the Hub with its lineage: weights, card, lineage record, NOTICE and the teacher's license
files, in one commit. Everything is checked before anything is uploaded: the teacher's license terms, the card
(against the Hub's own metadata validation), and that no local path or token is in any file that would leave.

A push writes nothing on disk: the model files are uploaded from where they are, and what hf_distill generates (card,
lineage record, NOTICE, license copies, copies of JSON files without local paths) goes into the commit as bytes.
"""

from __future__ import annotations

import io
import json
import os
import threading
from dataclasses import dataclass, replace
from typing import Any

from huggingface_hub import CommitOperationAdd, HfApi, ModelCard, snapshot_download
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

from .._logging import get_logger
from ..provenance import hub_card_facts, is_commit_sha, is_local, weights_bytes
from ..utils.safe_yaml import card_metadata_of
from .card import render_card
from .licenses import LicenseDecision, decide, needs_license_file
from .lineage import LINEAGE_FILE, Lineage
from .secrets import PushRefusedError, check_no_secrets, known_tokens

logger = get_logger(__name__)

# What huggingface_hub's `upload_folder` (so `Trainer.push_to_hub`) never uploads: git metadata, the Hub client's cache.
_CLIENT_IGNORED = tuple(DEFAULT_IGNORE_PATTERNS)
# Left by a write `hf_distill.utils.atomic` did not finish (killed, disk full): `.<name>.<random hex>.tmp`.
_TEMPORARY = ".*." + "[0-9a-f]" * 12 + ".tmp"  # secrets.token_hex(6), as atomic.py names them
_INTERRUPTED_WRITES = (_TEMPORARY, f"*/{_TEMPORARY}")
# Never pushed: the pickled TrainingArguments (local paths, possibly the hub token), logs, other checkpoints, and the
# README on disk (the pushed card is generated, merged with it).
NEVER_PUSHED = (
    *_CLIENT_IGNORED,
    *_INTERRUPTED_WRITES,
    "training_args.bin",
    "runs",
    "runs/*",
    "_*",
    "checkpoint-*",
    "checkpoint-*/*",
    "README.md",
)
# A checkpoint's training state: it goes under last-checkpoint/ (for resuming), not beside the model at the root.
TRAINING_STATE = (*NEVER_PUSHED, "optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state*.pth", "trainer_state.json")
_USER_LICENSE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md")
_TEACHER_LICENSE_FILES = (
    "LICENSE",
    "LICENSE.txt",
    "LICENSE.md",
    "USE_POLICY.md",
    "NOTICE",
    "NOTICE.txt",
    "GEMMA_TERMS.html",  # the Gemma terms, as the packaged Gemma checkpoint ships them
)


@dataclass
class PushOptions:
    """What a push adds to the card and how it treats the teacher's license (see `DistillationTrainer.push_to_hub`)."""

    license: str | None = None
    finetuned_from: str | None = None
    tags: list[str] | None = None
    language: str | list[str] | None = None
    datasets: list[str] | None = None
    acknowledge_teacher_license: bool = False
    override_name_prefix: bool = False


def license_decision(lineage: Lineage, repo_id: str, options: PushOptions, strict: bool = True) -> LicenseDecision:
    """The teacher's license terms applied to `repo_id`; with `strict=False` (a local card) what a push would refuse
    is recorded in `LicenseDecision.pending` instead of raised."""
    return decide(
        lineage.teacher.get("license"),
        repo_id,
        student_license=options.license,
        weights_derive_from_teacher=lineage.weights_derive_from_teacher,
        acknowledge_teacher_license=options.acknowledge_teacher_license,
        override_name_prefix=options.override_name_prefix,
        strict=strict,
    )


def readme_license(folder: str | None) -> str | None:
    """The `license:` of the README.md in `folder` (the user's own card), when it states one as a string."""
    path = os.path.join(folder, "README.md") if folder else None
    if path is None or not os.path.isfile(path):
        return None
    try:
        value = card_metadata_of(path).get("license")
    except ValueError as error:
        logger.warning(f"{path}: {error}; its license is not used.")
        return None
    return value.strip() if isinstance(value, str) and value.strip() else None


def with_readme_license(options: PushOptions, folder: str | None) -> PushOptions:
    """`options`, with the license stated in `folder`'s README.md as the student's license when `license=` was not
    passed: the user's own card speaks for the student, and the teacher's license terms check it like `license=`."""
    if options.license:
        return options
    stated = readme_license(folder)
    return replace(options, license=stated) if stated else options


# The name `publishing` imports; the rule (and the one table of permissive licenses) is in `licenses`.
needs_license_copy = needs_license_file


def user_license_copy(
    policy: LicenseDecision, teacher_files: dict[str, bytes], folders: list[str | None]
) -> dict[str, str]:
    """The user's own LICENSE to push when the teacher's terms need a copy of its license and none could be read
    from the teacher: `{name: local path}`, from the first of `folders` holding one (the pushed folder, then the
    output folder for a checkpoint push); `{}` when nothing needs adding (or the pushed folder already holds it).

    Raises:
        `PushRefusedError`: a copy is needed and none of `folders` holds a LICENSE file.
    """
    if teacher_files or not needs_license_copy(policy):
        return {}
    for index, folder in enumerate(f for f in folders if f):
        for name in _USER_LICENSE_FILES:
            if os.path.isfile(os.path.join(folder, name)):
                policy.duties.append("the teacher's license text, provided by the uploader as LICENSE")
                return {} if index == 0 else {name: os.path.abspath(os.path.join(folder, name))}
    raise PushRefusedError(
        f"The teacher's license ({policy.terms}) requires a copy of it to travel with the student, but no LICENSE "
        "file could be read from the teacher. Save the teacher's license text as LICENSE in the output folder "
        f"({next((f for f in reversed(folders) if f), '')}) and push again."
    )


def local_finetuned_from(options: PushOptions) -> str | None:
    """The folder name of `options.finetuned_from` when it is a local folder (never its path), else `None`."""
    name = options.finetuned_from
    if name and is_local(name):
        return os.path.basename(os.path.normpath(os.path.expanduser(name))) or name
    return None


def folder_card(
    lineage: Lineage,
    policy: LicenseDecision,
    repo_id: str,
    options: PushOptions,
    folder: str,
    adapter_push: bool,
    pushed: bool = True,
) -> str:
    """The student's card, merged into `folder`'s README.md when there is one. A local `finetuned_from` is shown by
    its folder name in the lineage table and left out of `base_model` (a local path is no Hub id). `pushed=False`: a
    card written locally (see `render_body`)."""
    path = os.path.join(folder, "README.md")
    existing = None
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            existing = f.read()
    local = local_finetuned_from(options)
    return render_card(
        lineage,
        policy,
        repo_id,
        existing,
        local_finetuned_from=local,
        pushed=pushed,
        adapter_push=adapter_push,
        finetuned_from=None if local else options.finetuned_from,
        tags=options.tags,
        language=options.language,
        datasets=options.datasets,
    )


def _listing(source: str, skip: tuple[str, ...]) -> dict[str, str]:
    """`{path in the repo: absolute local path}` of the files under `source`, leaving out paths matching `skip` (as
    `upload_folder` matches its `ignore_patterns`: `filter_repo_objects`, `*` spanning folders)."""
    found = {}
    for root, _, files in os.walk(source):
        for name in files:
            path = os.path.join(root, name)
            found[os.path.relpath(path, source).replace(os.sep, "/")] = os.path.abspath(path)
    return {relative: found[relative] for relative in sorted(filter_repo_objects(found, ignore_patterns=list(skip)))}


def _json_bytes(data: Any) -> bytes:
    return json.dumps(data, indent=2).encode("utf-8")


def _sanitized(contents: dict[str, str | bytes], public_base: str | None) -> None:
    """Replace, in the commit only, the files known to hold local paths: PEFT's base model, the Trainer state's best
    checkpoint. The files on disk are read, never written."""
    for path_in_repo, source in list(contents.items()):
        name = path_in_repo.rsplit("/", 1)[-1]
        if isinstance(source, bytes) or name not in ("adapter_config.json", "trainer_state.json"):
            continue
        with open(source, encoding="utf-8") as f:
            data = json.load(f)
        if name == "adapter_config.json":
            data["base_model_name_or_path"] = public_base
        elif data.get("best_model_checkpoint"):
            data["best_model_checkpoint"] = os.path.basename(os.path.normpath(data["best_model_checkpoint"]))
        contents[path_in_repo] = _json_bytes(data)


def push_contents(
    folder: str,
    lineage: Lineage,
    policy: LicenseDecision,
    repo_id: str,
    options: PushOptions,
    license_files: dict[str, bytes],
    skip: tuple[str, ...] = NEVER_PUSHED,
    checkpoint_folder: str | None = None,
    checkpoint_name: str = "last-checkpoint",
    card_folder: str | None = None,
) -> dict[str, str | bytes]:
    """Exactly what the commit will contain, without writing anything anywhere.

    Returns:
        `dict[str, str | bytes]`: path in the repository -> the local file uploaded as it is (every file of `folder`
        not matching `skip`, and of `checkpoint_folder` under `checkpoint_name/`), or generated bytes: the card (merged
        into `card_folder`'s README.md, default `folder`), the lineage record, NOTICE (the user's own NOTICE with the
        teacher's attribution appended when missing), the teacher's license files (as `TEACHER_<name>` when the
        folder has its own), and copies of adapter_config.json / trainer_state.json without local paths.
    """
    contents: dict[str, str | bytes] = dict(_listing(folder, skip))
    if checkpoint_folder is not None:  # what resuming needs, under last-checkpoint/ as the Trainer pushes it
        for relative, path in _listing(
            checkpoint_folder, (*_CLIENT_IGNORED, *_INTERRUPTED_WRITES, "training_args.bin", "README.md")
        ).items():
            contents[f"{checkpoint_name}/{relative}"] = path
    adapter_push = "adapter_config.json" in contents
    if adapter_push and lineage.student["init"]["kind"] == "teacher_layers":
        raise PushRefusedError(
            "The student is an adapter over a model cut from the teacher's layers, which exists nowhere else, so "
            "the adapter alone cannot be loaded by anyone. Set merge_adapter_on_save=True to push a full model."
        )
    record = Lineage(**{**lineage.__dict__, "license_policy": policy.to_dict()})
    if record.evaluation is not None:
        sizes = {**record.evaluation["size_on_disk"], "student": weights_bytes(folder)}
        record.evaluation = {**record.evaluation, "size_on_disk": sizes}
    contents["README.md"] = folder_card(record, policy, repo_id, options, card_folder or folder, adapter_push).encode()
    contents[LINEAGE_FILE] = _json_bytes(record.to_dict())
    lines = [line for line in (policy.built_with, policy.notice) if line]
    if lines:
        own = contents.get("NOTICE")
        if isinstance(own, str):  # the user's NOTICE: kept, with the teacher's lines it lacks appended
            with open(own, encoding="utf-8", errors="replace") as f:
                text = f.read()
            missing = [line for line in lines if line not in text]
            if missing:
                contents["NOTICE"] = (text.rstrip("\n") + "\n\n" + "\n".join(missing) + "\n").encode("utf-8")
        else:
            contents["NOTICE"] = ("\n".join(lines) + "\n").encode("utf-8")
    for name, content in license_files.items():
        contents[name if name not in contents else f"TEACHER_{name}"] = content
    base = record.student["init"] if record.student["init"]["kind"] == "pretrained" else record.teacher
    _sanitized(contents, base.get("name") if base.get("source") == "hub" else None)
    return contents


def _license_files_in(folder: str) -> dict[str, bytes]:
    found = {}
    for name in _TEACHER_LICENSE_FILES:
        if os.path.isfile(os.path.join(folder, name)):
            with open(os.path.join(folder, name), "rb") as f:
                found[name] = f.read()
    return found


def teacher_license_files(teacher_source: dict[str, Any], local_folder: str | None) -> dict[str, bytes]:
    """The teacher's LICENSE / USE_POLICY / NOTICE files: from its local folder, or from its repo at the pinned
    commit (only those files are downloaded, into the Hub cache). Empty, with a warning, when the Hub cannot be read."""
    if local_folder and os.path.isdir(local_folder):
        return _license_files_in(local_folder)
    if teacher_source.get("source") != "hub" or teacher_source.get("revision") in (None, "unresolved"):
        return {}
    try:
        snapshot = snapshot_download(
            teacher_source["name"], revision=teacher_source["revision"], allow_patterns=list(_TEACHER_LICENSE_FILES)
        )
    except (OSError, ValueError) as error:
        logger.warning(f"Could not read the teacher's license files from the Hub ({error}).")
        return {}
    return _license_files_in(snapshot)


class _OpenFile(io.BufferedIOBase):
    """A file opened once, read with a position per thread (`os.pread`).

    The commit reads its files through these, so that what was checked is what is uploaded even if a checkpoint
    folder is rotated away (deleted) while a non-blocking push is still uploading it: the open descriptor keeps the
    data. The position is per thread because huggingface_hub uploads one operation from several threads at once when
    two paths of the commit hold the same bytes (e.g. `model.safetensors` and `last-checkpoint/model.safetensors`).
    """

    def __init__(self, path: str) -> None:
        super().__init__()
        self._fd = os.open(path, os.O_RDONLY)
        self._size = os.fstat(self._fd).st_size
        self._local = threading.local()

    def _position(self) -> int:
        return getattr(self._local, "position", 0)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def tell(self) -> int:
        return self._position()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position(), io.SEEK_END: self._size}[whence]
        self._local.position = max(0, base + offset)
        return self._local.position

    def read(self, size: int | None = -1) -> bytes:
        position = self._position()
        size = self._size - position if size is None or size < 0 else size
        data = os.pread(self._fd, max(0, size), position)
        self._local.position = position + len(data)
        return data

    read1 = read

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


def push_folder(
    folder: str,
    repo_id: str,
    lineage: Lineage,
    options: PushOptions,
    *,
    teacher_folder: str | None = None,
    local_paths: list[str] | None = None,
    skip: tuple[str, ...] = NEVER_PUSHED,
    checkpoint_folder: str | None = None,
    checkpoint_name: str = "last-checkpoint",
    card_folder: str | None = None,
    commit_message: str = "Upload distilled student",
    token: str | None = None,
    revision: str | None = None,
    private: bool | None = None,
    blocking: bool = True,
    api: HfApi | None = None,
    extra_tokens: tuple[str | None, ...] = (),
) -> Any:
    """Push `folder` (a saved student) to `repo_id` with its card, lineage, NOTICE and license files in one commit
    (`HfApi.create_commit`), writing nothing on disk.

    Args:
        api (`HfApi`, *optional*): the client to use; one client runs its non-blocking commits one after another,
            in order.
        extra_tokens (`tuple[str]`): tokens to look for besides `token` and those `known_tokens` finds (e.g.
            `args.hub_token` when the push was given another).

    Returns:
        `CommitInfo`, or a `Future` of it when `blocking=False`.

    Raises:
        `LicensePolicyError` / `PushRefusedError` / `ValueError` (the Hub's card validation): before anything is
        uploaded, and before the repository is created.
    """
    teacher = lineage.teacher
    if teacher.get("source") == "hub" and teacher.get("license") is None and is_commit_sha(teacher.get("revision")):
        # Loaded offline from the cache: the card can be read now that the Hub is reachable.
        lineage = Lineage(
            **{**lineage.__dict__, "teacher": {**teacher, **hub_card_facts(teacher["name"], teacher["revision"])}}
        )
    options = with_readme_license(options, card_folder or folder)
    policy = license_decision(lineage, repo_id, options)
    license_files = teacher_license_files(lineage.teacher, teacher_folder)
    user_license = user_license_copy(policy, license_files, [folder, card_folder])
    if local_finetuned_from(options):
        logger.warning(
            f"finetuned_from={options.finetuned_from!r} is a local folder, not a Hub id: the pushed card names it in "
            "its lineage table by folder name and leaves it out of base_model. Pass the Hub id of that checkpoint "
            "to link it."
        )
    contents = push_contents(
        folder, lineage, policy, repo_id, options, license_files, skip, checkpoint_folder, checkpoint_name, card_folder
    )
    for name, path in user_license.items():  # the output folder's LICENSE, for a push from a checkpoint
        contents.setdefault(name, path)
    check_no_secrets(contents, [os.path.abspath(folder), *(local_paths or [])], known_tokens(token, *extra_tokens))
    ModelCard(contents["README.md"].decode("utf-8")).validate()  # the Hub's own check, before the repo is touched
    api = api if api is not None else HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True, token=token).repo_id
    # Files are handed over open (see `_OpenFile`).
    handles: list[_OpenFile] = []

    def close(*_: Any) -> None:
        for handle in handles:
            handle.close()

    try:
        operations = []
        for path_in_repo, source in sorted(contents.items()):
            if isinstance(source, str):
                handles.append(_OpenFile(source))  # closed when the commit is done
                source = handles[-1]
            operations.append(CommitOperationAdd(path_in_repo=path_in_repo, path_or_fileobj=source))
        result = api.create_commit(
            repo_id,
            operations,
            commit_message=commit_message,
            revision=revision,
            token=token,
            run_as_future=not blocking,
        )
    except BaseException:
        close()
        raise
    if blocking:
        close()
    else:
        result.add_done_callback(close)
    return result
