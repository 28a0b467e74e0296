"""Reading a student's lineage back: from a Hub repo at any revision (the card's `distillation:` block, else
`distillation_lineage.json`) or a saved folder, following the teacher up the chain while the teacher is itself a
distilled student.

What is read is untrusted: the walk is iterative and capped (`max_depth`), a teacher name that is not a Hub repo id
ends the chain with a note, card front matter is parsed without YAML aliases (a "billion laughs" card is refused
instead of expanded), lineage files and cards over `MAX_LINEAGE_BYTES` are refused before they are read, and
`PulledLineage.format` escapes control characters so that a record cannot send escape sequences to a terminal.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from ..provenance import is_commit_sha, is_local
from ..utils.safe_yaml import split_front_matter
from ..utils.terminal import printable
from .lineage import LINEAGE_FILE, Lineage, LineageError

DEFAULT_MAX_DEPTH = 64
# A lineage record is a few kB; a card with one is tens of kB. Anything far larger is not one of ours.
MAX_LINEAGE_BYTES = 1 << 20


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
        """The chain as nested dicts (`teacher` holds the teacher's), built without recursion."""
        nested = None
        for node in reversed(self.chain()):
            nested = {
                "repo": node.repo,
                "revision": node.revision,
                "lineage": node.record.to_dict(),
                "teacher": nested,
                "teacher_note": node.teacher_note,
            }
        return nested

    def format(self) -> str:
        """The chain as a readable tree, student first, with control characters escaped (safe to print)."""
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
        return "\n".join(printable(line, newlines=False) for line in lines)


def _describe(record: Lineage) -> str:
    teacher = record.teacher or {}
    license_record = teacher.get("license")
    license_id = license_record.get("id", "unknown") if isinstance(license_record, dict) else "unknown"
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


def _read_capped(path: str, what: str) -> str:
    size = os.path.getsize(path)
    if size > MAX_LINEAGE_BYTES:
        raise LineageError([(what, f"{size} bytes, over the {MAX_LINEAGE_BYTES}-byte limit for lineage metadata")])
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read(MAX_LINEAGE_BYTES + 1)


def front_matter(text: str, where: str = "README.md") -> dict[str, Any]:
    """The YAML front matter of a card, parsed without aliases; `{}` when there is none.

    Raises:
        `LineageError`: the front matter is not YAML, uses aliases, or is not a mapping.
    """
    try:
        return split_front_matter(text)[0]
    except ValueError as error:
        raise LineageError([(f"{where} front matter", str(error))]) from None


def _load_json(path: str, what: str) -> Lineage:
    try:
        data = json.loads(_read_capped(path, what))
    except json.JSONDecodeError as error:
        raise LineageError([(what, f"not JSON ({error})")]) from None
    except RecursionError:  # `[[[[...` nested deeper than the decoder's stack: not a lineage record
        raise LineageError([(what, "JSON nested too deeply to be a lineage record")]) from None
    return Lineage.from_dict(data)


def _read_local(folder: str) -> Lineage:
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder}: no such folder (give a saved student's folder or a Hub model id).")
    readme = os.path.join(folder, "README.md")
    if os.path.isfile(readme):
        metadata = front_matter(_read_capped(readme, readme), readme)
        record = _from_metadata(metadata, f"{readme} (distillation metadata)")
        if record is not None:
            return record
    if os.path.isfile(os.path.join(folder, LINEAGE_FILE)):
        return _load_json(os.path.join(folder, LINEAGE_FILE), os.path.join(folder, LINEAGE_FILE))
    raise LineageNotFoundError(
        f"{folder} has no distillation lineage (no `distillation:` block in README.md, no {LINEAGE_FILE})."
    )


def _read_hub(repo_id: str, revision: str | None, token: str | None) -> tuple[Lineage, str]:
    try:
        info = HfApi(token=token).model_info(repo_id, revision=revision)
    except RecursionError:  # card metadata nested deeper than the JSON decoder's stack
        raise LineageError([(f"{repo_id} card metadata", "nested too deeply to be lineage metadata")]) from None
    metadata = info.card_data.to_dict() if info.card_data is not None else None
    record = _from_metadata(metadata, f"{repo_id}@{info.sha} README.md (distillation metadata)")
    if record is None:
        where = f"{repo_id}@{info.sha} {LINEAGE_FILE}"
        entries = HfApi(token=token).get_paths_info(repo_id, [LINEAGE_FILE], revision=info.sha)
        if not entries:
            raise LineageNotFoundError(
                f"{repo_id}@{info.sha} carries no distillation lineage (no `distillation:` card metadata and no "
                f"{LINEAGE_FILE}); it was not pushed by hf_distill."
            )
        size = getattr(entries[0], "size", None) or 0
        if size > MAX_LINEAGE_BYTES:  # refused before it is downloaded
            raise LineageError(
                [(where, f"{size} bytes, over the {MAX_LINEAGE_BYTES}-byte limit for lineage metadata")]
            )
        try:
            path = hf_hub_download(repo_id, LINEAGE_FILE, revision=info.sha, token=token)
        except EntryNotFoundError as error:
            if isinstance(error, LocalEntryNotFoundError):  # offline and not cached: not "missing"
                raise
            raise LineageNotFoundError(f"{where} is missing; it was not pushed by hf_distill.") from None
        record = _load_json(path, where)
    return record, info.sha


def read_lineage(
    repo_id_or_path: str,
    revision: str | None = None,
    follow_teachers: bool = True,
    token: str | None = None,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> PulledLineage:
    """The lineage of a distilled student, pushed to the Hub or saved locally, and of its teachers up the chain.

    Args:
        repo_id_or_path (`str`): a Hub model id, or a folder written by `save_model` / `push_to_hub`.
        revision (`str`, *optional*): branch, tag or commit of a Hub repo; defaults to the main branch.
        follow_teachers (`bool`, *optional*, defaults to `True`): read the teacher's lineage too, at the commit the
            student pinned, while the teacher is itself a distilled student.
        token (`str`, *optional*): for private repositories.
        max_depth (`int`, *optional*, defaults to 64): the most distilled models read, this one included; the last
            one read gets a `teacher_note` saying that the walk stopped there.

    Raises:
        `FileNotFoundError`: a local path that is not a folder. `OSError` subclasses of huggingface_hub
        (`RepositoryNotFoundError`, `RevisionNotFoundError`, `OfflineModeIsEnabled`, ...) for a Hub model that cannot
        be read. `LineageNotFoundError`: the model has no lineage. `LineageError`: malformed metadata (or a card or lineage
        file over `MAX_LINEAGE_BYTES`, or card YAML with aliases); it names the field and carries the readable rest
        as `.lineage`.
    """
    if isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < 1:
        raise ValueError(f"max_depth={max_depth!r}; use an integer >= 1 (the models read, this one included).")
    if is_local(repo_id_or_path):
        node = PulledLineage(os.path.basename(os.path.normpath(repo_id_or_path)), None, _read_local(repo_id_or_path))
    else:
        record, sha = _read_hub(repo_id_or_path, revision, token)
        node = PulledLineage(repo_id_or_path, sha, record)
    if follow_teachers:
        _follow(node, token, max_depth)
    return node


def _follow(node: PulledLineage, token: str | None, max_depth: int) -> None:
    """Walk up the teachers one at a time (no recursion: a long chain cannot exhaust the stack)."""
    seen = {(node.repo, node.revision)}
    for depth in range(1, max_depth + 1):
        teacher = node.record.teacher or {}
        if teacher.get("source") != "hub":
            node.teacher_note = f"{teacher.get('source', 'unknown')} teacher: not on the Hub"
            return
        name = teacher.get("name")
        try:
            validate_repo_id(name)
        except (HFValidationError, TypeError, ValueError):
            node.teacher_note = f"teacher name {name!r} is not a Hub repo id; not followed"
            return
        if not is_commit_sha(teacher.get("revision")):
            node.teacher_note = "teacher revision unresolved"
            return
        key = (name, teacher["revision"])
        if key in seen:
            node.teacher_note = "cycle in the lineage"
            return
        if depth == max_depth:
            node.teacher_note = f"not followed: read_lineage stops after max_depth={max_depth} models"
            return
        try:
            record, sha = _read_hub(name, teacher["revision"], token)
        except LineageNotFoundError:
            node.teacher_note = "not a distilled model"
            return
        except LineageError as error:
            node.teacher_note = f"its lineage is malformed: {error}"
            return
        except (RepositoryNotFoundError, HfHubHTTPError, OSError) as error:
            node.teacher_note = f"could not be read ({type(error).__name__})"
            return
        seen.add(key)
        node.teacher = PulledLineage(name, sha, record)
        node = node.teacher
