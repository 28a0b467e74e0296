"""Pushing a student to the Hub with its lineage: weights, card, lineage record, NOTICE and the teacher's license
files, in one commit. Everything is checked before anything is uploaded: the teacher's license terms, the card
(against the Hub's own metadata validation), and that no local path or token is in any file that would leave.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any

from huggingface_hub import HfApi, ModelCard

from .licenses import LicenseDecision, decide
from .lineage import LINEAGE_FILE, Lineage
from .logs import get_logger
from .model_card import render_card
from .provenance import hub_card_facts, is_commit_sha, weights_bytes

logger = get_logger(__name__)

# Never pushed: the pickled TrainingArguments (local paths, possibly the hub token), logs, other checkpoints.
NEVER_PUSHED = ("training_args.bin", "runs", "runs/*", "_*", "checkpoint-*", "checkpoint-*/*", "README.md")
# A checkpoint's training state: it goes under last-checkpoint/ (for resuming), not beside the model at the root.
TRAINING_STATE = (*NEVER_PUSHED, "optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state*.pth", "trainer_state.json")
# Text files whose content is checked for local paths and tokens (weights and tokenizer vocabularies are not text
# anyone writes a path into).
_CHECKED_SUFFIXES = (".json", ".md", ".txt", ".yaml", ".yml", ".jinja")
_TEACHER_LICENSE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "USE_POLICY.md", "NOTICE", "NOTICE.txt")


class PushRefusedError(ValueError):
    """A push stopped before anything was uploaded."""


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


def license_decision(lineage: Lineage, repo_id: str, options: PushOptions) -> LicenseDecision:
    return decide(
        lineage.teacher.get("license"),
        repo_id,
        student_license=options.license,
        weights_derive_from_teacher=lineage.weights_derive_from_teacher,
        acknowledge_teacher_license=options.acknowledge_teacher_license,
        override_name_prefix=options.override_name_prefix,
    )


def _copy_tree(source: str, target: str, skip: tuple[str, ...]) -> None:
    """Hard-link (or copy) `source` into `target`, leaving out paths matching `skip`."""
    for root, dirs, files in os.walk(source):
        relative_root = os.path.relpath(root, source)
        dirs[:] = [d for d in dirs if not _matches(os.path.normpath(os.path.join(relative_root, d)), skip)]
        for name in files:
            relative = os.path.normpath(os.path.join(relative_root, name))
            if _matches(relative, skip):
                continue
            destination = os.path.join(target, relative)
            os.makedirs(os.path.dirname(destination), exist_ok=True)
            try:
                os.link(os.path.join(root, name), destination)  # no copy of the weights when the filesystem allows
            except OSError:
                shutil.copy2(os.path.join(root, name), destination)


def _matches(relative: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(relative, pattern) for pattern in patterns)


def _sanitize(staging: str, public_base: str | None) -> None:
    """Rewrite the fields known to hold local paths: PEFT's base model, the Trainer state's best checkpoint."""
    for root, _, files in os.walk(staging):
        for name in files:
            path = os.path.join(root, name)
            if name == "adapter_config.json":
                _rewrite_json(path, lambda d: {**d, "base_model_name_or_path": public_base})
            elif name == "trainer_state.json":
                _rewrite_json(
                    path,
                    lambda d: {
                        **d,
                        "best_model_checkpoint": d["best_model_checkpoint"]
                        and os.path.basename(d["best_model_checkpoint"]),
                    },
                )


def _rewrite_json(path: str, change: Any) -> None:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    os.unlink(path)  # a hard link: write a new file, never through the link into output_dir
    with open(path, "w", encoding="utf-8") as f:
        json.dump(change(data), f, indent=2)


def check_no_secrets(staging: str, local_paths: list[str], token: str | None) -> None:
    """Refuse when a text file to be pushed contains one of `local_paths` or the token."""
    needles = [(p, "a local path") for p in local_paths if p and len(p) > 1] + (
        [(token, "the Hub token")] if token else []
    )
    for root, _, files in os.walk(staging):
        for name in files:
            if not name.endswith(_CHECKED_SUFFIXES) and name not in ("NOTICE",):
                continue
            path = os.path.join(root, name)
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
            for needle, what in needles:
                if needle in text:
                    shown = "<token>" if what == "the Hub token" else needle
                    raise PushRefusedError(
                        f"{os.path.relpath(path, staging)} contains {what} ({shown!r}); nothing was pushed. Remove "
                        "it from that file in the output folder (or save to a folder whose path is not recorded) "
                        "and push again."
                    )


def folder_card(
    lineage: Lineage, policy: LicenseDecision, repo_id: str, options: PushOptions, folder: str, adapter_push: bool
) -> str:
    """The student's card, merged into `folder`'s README.md when there is one."""
    path = os.path.join(folder, "README.md")
    existing = open(path, encoding="utf-8").read() if os.path.isfile(path) else None
    return render_card(
        lineage,
        policy,
        repo_id,
        existing,
        adapter_push=adapter_push,
        finetuned_from=options.finetuned_from,
        tags=options.tags,
        language=options.language,
        datasets=options.datasets,
    )


def stage_push(
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
) -> str:
    """A temporary folder holding exactly what the commit will contain; the caller removes it. An existing
    README.md in `card_folder` (default: `folder`) is merged into the card."""
    staging = tempfile.mkdtemp(prefix="hf_distill_push_")
    try:
        _copy_tree(folder, staging, skip)
        if checkpoint_folder is not None:  # what resuming needs, under last-checkpoint/ as the Trainer pushes it
            _copy_tree(checkpoint_folder, os.path.join(staging, checkpoint_name), ("training_args.bin", "README.md"))
        adapter_push = os.path.isfile(os.path.join(staging, "adapter_config.json"))
        if adapter_push and lineage.student["init"]["kind"] == "teacher_layers":
            raise PushRefusedError(
                "The student is an adapter over a model cut from the teacher's layers, which exists nowhere else, so "
                "the adapter alone cannot be loaded by anyone. Set merge_adapter_on_save=True to push a full model."
            )
        record = Lineage(**{**lineage.__dict__, "license_policy": policy.to_dict()})
        if record.evaluation is not None:
            sizes = {**record.evaluation["size_on_disk"], "student": weights_bytes(staging)}
            record.evaluation = {**record.evaluation, "size_on_disk": sizes}
        card = folder_card(record, policy, repo_id, options, card_folder or folder, adapter_push)
        with open(os.path.join(staging, "README.md"), "w", encoding="utf-8") as f:
            f.write(card)
        if os.path.exists(os.path.join(staging, LINEAGE_FILE)):
            os.unlink(os.path.join(staging, LINEAGE_FILE))
        record.save(staging)
        if policy.notice or policy.built_with:
            with open(os.path.join(staging, "NOTICE"), "w", encoding="utf-8") as f:
                f.write("\n".join(line for line in (policy.built_with, policy.notice) if line) + "\n")
        for name, content in license_files.items():
            target = name if not os.path.exists(os.path.join(staging, name)) else f"TEACHER_{name}"
            with open(os.path.join(staging, target), "wb") as f:
                f.write(content)
        base = record.student["init"] if record.student["init"]["kind"] == "pretrained" else record.teacher
        _sanitize(staging, base.get("name") if base.get("source") == "hub" else None)
        return staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def teacher_license_files(teacher_source: dict[str, Any], local_folder: str | None) -> dict[str, bytes]:
    """The teacher's LICENSE / USE_POLICY / NOTICE files: from its local folder, or from its repo at the pinned
    commit. Empty when none can be read."""
    found = {}
    if local_folder and os.path.isdir(local_folder):
        for name in _TEACHER_LICENSE_FILES:
            if os.path.isfile(os.path.join(local_folder, name)):
                with open(os.path.join(local_folder, name), "rb") as f:
                    found[name] = f.read()
        return found
    if teacher_source.get("source") != "hub" or teacher_source.get("revision") in (None, "unresolved"):
        return found
    api = HfApi()
    try:
        files = api.list_repo_files(teacher_source["name"], revision=teacher_source["revision"])
        for name in (f for f in files if f in _TEACHER_LICENSE_FILES):
            path = api.hf_hub_download(teacher_source["name"], name, revision=teacher_source["revision"])
            with open(path, "rb") as f:
                found[name] = f.read()
    except (OSError, ValueError) as error:
        logger.warning(f"Could not read the teacher's license files from the Hub ({error}).")
    return found


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
) -> Any:
    """Push `folder` (a saved student) to `repo_id` with its card, lineage, NOTICE and license files in one commit.

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
    policy = license_decision(lineage, repo_id, options)
    license_files = teacher_license_files(lineage.teacher, teacher_folder)
    if policy.needs_license_copy and not license_files and policy.terms not in _NO_COPY_NEEDED:
        if not any(os.path.isfile(os.path.join(folder, name)) for name in ("LICENSE", "LICENSE.txt", "LICENSE.md")):
            raise PushRefusedError(
                f"The teacher's license ({policy.terms}) requires a copy of it to travel with the student, but no "
                "LICENSE file could be read from the teacher. Save the teacher's license text as LICENSE in the "
                "output folder and push again."
            )
        policy.duties.append("the teacher's license text, provided by the uploader as LICENSE")
    staging = stage_push(
        folder, lineage, policy, repo_id, options, license_files, skip, checkpoint_folder, checkpoint_name, card_folder
    )
    try:
        check_no_secrets(staging, [os.path.abspath(folder), *(local_paths or [])], token)
        with open(os.path.join(staging, "README.md"), encoding="utf-8") as f:
            ModelCard(f.read()).validate()  # the Hub's own metadata check, before the repository is touched
        api = HfApi(token=token)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        future = api.upload_folder(
            repo_id=repo_id,
            folder_path=staging,
            commit_message=commit_message,
            revision=revision,
            run_as_future=not blocking,
        )
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if blocking:
        shutil.rmtree(staging, ignore_errors=True)
    else:
        future.add_done_callback(lambda _: shutil.rmtree(staging, ignore_errors=True))
    return future


# Permissive licenses: the license id in the card is enough when no LICENSE file exists to copy.
_NO_COPY_NEEDED = ("apache-2.0", "mit", "bsd-2-clause", "bsd-3-clause", "cc-by-4.0", "cc0-1.0", "unlicense")
