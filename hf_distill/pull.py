"""Reading a student's lineage back: from a Hub repo at any revision (the card's `distillation:` block, else
`distillation_lineage.json`) or a saved folder, following the teacher up the chain while the teacher is itself a
distilled student."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError

from .lineage import LINEAGE_FILE, Lineage, LineageError
from .model_card import split_card
from .provenance import is_commit_sha, is_local


class LineageNotFoundError(ValueError):
    """The model carries no distillation lineage (it was not pushed or saved by hf_distill)."""


@dataclass
class PulledLineage:
    """A student's lineage as read, with its teacher's when the teacher is itself a distilled student.

    Attributes:
        repo (`str`): the repo id, or the folder name for a local student.
        revision (`str`, *optional*): the 40-hex commit it was read at (`None` for a local folder).
        record (`Lineage`): the lineage record.
        teacher (`PulledLineage`, *optional*): the teacher's lineage; `None` at the top of the chain.
        teacher_note (`str`, *optional*): why the chain stops here (e.g. "not a distilled model", "local teacher").
    """

    repo: str
    revision: str | None
    record: Lineage
    teacher: PulledLineage | None = None
    teacher_note: str | None = None

    def chain(self) -> list[PulledLineage]:
        """This student, its teacher, the teacher's teacher, ... (distilled models only)."""
        node, found = self, []
        while node is not None:
            found.append(node)
            node = node.teacher
        return found

    def to_dict(self) -> dict[str, Any]:
        return {
            "repo": self.repo,
            "revision": self.revision,
            "lineage": self.record.to_dict(),
            "teacher": None if self.teacher is None else self.teacher.to_dict(),
            "teacher_note": self.teacher_note,
        }

    def format(self) -> str:
        """The chain as a readable tree, student first."""
        lines = []
        for depth, node in enumerate(self.chain()):
            pad = "   " * depth + ("└─ " if depth else "")
            at = f" @ {node.revision[:12]}" if node.revision else " (local)"
            lines.append(f"{pad}{node.repo}{at}: {_describe(node.record)}")
            teacher = node.record.teacher or {}
            if node.teacher is None:
                where = teacher.get("revision") or teacher.get("weights_sha256") or "unpinned"
                note = f" ({node.teacher_note})" if node.teacher_note else ""
                lines.append(f"{'   ' * (depth + 1)}└─ {teacher.get('name')} @ {str(where)[:12]}{note}")
        return "\n".join(lines)


def _describe(record: Lineage) -> str:
    teacher = record.teacher or {}
    license_id = (teacher.get("license") or {}).get("id", "unknown")
    init = ((record.student or {}).get("init") or {}).get("kind", "?")
    loss = (record.objective or {}).get("kd_loss", "?")
    return f"distilled from {teacher.get('name')} ({loss}, student init {init}, teacher license {license_id})"


def _from_metadata(metadata: dict[str, Any] | None, where: str) -> Lineage | None:
    if not metadata or "distillation" not in metadata:
        return None
    try:
        return Lineage.from_dict(metadata["distillation"])
    except LineageError as error:
        error.args = (f"{where}: {error.args[0]} The rest of the record is in the error's `lineage`.",)
        raise


def _read_local(folder: str) -> Lineage:
    readme = os.path.join(folder, "README.md")
    if os.path.isfile(readme):
        with open(readme, encoding="utf-8") as f:
            record = _from_metadata(split_card(f.read())[0], f"{readme} (distillation metadata)")
        if record is not None:
            return record
    if os.path.isfile(os.path.join(folder, LINEAGE_FILE)):
        return Lineage.load(folder)
    raise LineageNotFoundError(
        f"{folder} has no distillation lineage (no `distillation:` block in README.md, no {LINEAGE_FILE})."
    )


def _read_hub(repo_id: str, revision: str | None, token: str | None) -> tuple[Lineage, str]:
    info = HfApi(token=token).model_info(repo_id, revision=revision)
    metadata = info.card_data.to_dict() if info.card_data is not None else None
    record = _from_metadata(metadata, f"{repo_id}@{info.sha} README.md (distillation metadata)")
    if record is None:
        try:
            path = hf_hub_download(repo_id, LINEAGE_FILE, revision=info.sha, token=token)
        except EntryNotFoundError:
            raise LineageNotFoundError(
                f"{repo_id}@{info.sha} carries no distillation lineage (no `distillation:` card metadata and no "
                f"{LINEAGE_FILE}); it was not pushed by hf_distill."
            ) from None
        with open(path, encoding="utf-8") as f:
            record = Lineage.from_dict(json.load(f))
    return record, info.sha


def read_lineage(
    repo_id_or_path: str, revision: str | None = None, follow_teachers: bool = True, token: str | None = None
) -> PulledLineage:
    """The lineage of a distilled student, pushed to the Hub or saved locally, and of its teachers up the chain.

    Args:
        repo_id_or_path (`str`): a Hub model id, or a folder written by `save_model` / `push_to_hub`.
        revision (`str`, *optional*): branch, tag or commit of a Hub repo; defaults to the main branch.
        follow_teachers (`bool`, *optional*, defaults to `True`): read the teacher's lineage too, at the commit the
            student pinned, while the teacher is itself a distilled student.
        token (`str`, *optional*): for private repositories.

    Raises:
        `LineageNotFoundError`: the model has no lineage. `LineageError`: malformed metadata; it names the field and
        carries the readable rest as `.lineage`.
    """
    if is_local(repo_id_or_path):
        node = PulledLineage(os.path.basename(os.path.normpath(repo_id_or_path)), None, _read_local(repo_id_or_path))
    else:
        record, sha = _read_hub(repo_id_or_path, revision, token)
        node = PulledLineage(repo_id_or_path, sha, record)
    if follow_teachers:
        _follow(node, {(node.repo, node.revision)}, token)
    return node


def _follow(node: PulledLineage, seen: set[tuple[str, str | None]], token: str | None) -> None:
    teacher = node.record.teacher or {}
    if teacher.get("source") != "hub":
        node.teacher_note = f"{teacher.get('source', 'unknown')} teacher: not on the Hub"
        return
    if not is_commit_sha(teacher.get("revision")):
        node.teacher_note = "teacher revision unresolved"
        return
    key = (teacher["name"], teacher["revision"])
    if key in seen:
        node.teacher_note = "cycle in the lineage"
        return
    try:
        record, sha = _read_hub(teacher["name"], teacher["revision"], token)
    except LineageNotFoundError:
        node.teacher_note = "not a distilled model"
        return
    except LineageError as error:
        node.teacher_note = f"its lineage is malformed: {error}"
        return
    except (RepositoryNotFoundError, HfHubHTTPError, OSError) as error:
        node.teacher_note = f"could not be read ({type(error).__name__})"
        return
    node.teacher = PulledLineage(teacher["name"], sha, record)
    _follow(node.teacher, seen | {key}, token)
