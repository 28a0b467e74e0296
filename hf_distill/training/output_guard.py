"""Refuse an `output_dir` that would write into the teacher's folder, the student's source folder or a teacher cache:
the trainer saves checkpoints and the final model there, and rotates (deletes) old checkpoints."""

from __future__ import annotations

import fnmatch
import os
from typing import Any

from torch import nn
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .. import _packaged as assets
from ..config import distillation_setting
from ..modeling.heads import unwrap_peft
from ..provenance import local_folder


def _folder(path: Any) -> str | None:
    """The resolved folder `path` names on this machine (symlinks followed), else `None` (a Hub id, a file)."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        return None
    path = str(path)
    if assets.is_packaged(path):
        try:
            path = assets.resolve_packaged_model(path)
        except Exception:  # noqa: BLE001 - an unknown packaged name is refused where it is loaded, not here
            return None
    path = os.path.expanduser(path)
    return os.path.realpath(path) if os.path.isdir(path) else None


def _model_folders(model: Any, what: str) -> list[tuple[str, str]]:
    """Folders a model was read from: its recorded local folder, `config._name_or_path` and `name_or_path`, and for
    an adapter model its base's."""
    if not isinstance(model, nn.Module):
        return [(what, model)] if isinstance(model, (str, os.PathLike)) else []
    found = []
    for candidate in (model, unwrap_peft(model), getattr(model, "student", None)):
        if not isinstance(candidate, nn.Module):
            continue
        config = getattr(candidate, "config", None)
        for path in (
            local_folder(candidate),
            getattr(config, "_name_or_path", None),
            getattr(candidate, "name_or_path", None),
        ):
            found.append((what, path))
    return found


def protected_folders(
    student: nn.Module | None, teacher: Any = None, teacher_cache: Any = None, args: Any = None
) -> list[tuple[str, str]]:
    """`(what, resolved folder)` for every local folder this run reads its models from, without duplicates."""
    candidates = _model_folders(student, "the student's source folder")
    candidates += _model_folders(teacher, "the teacher's folder")
    if args is not None:
        candidates.append(("the teacher's folder", distillation_setting(args, "teacher_model_name_or_path")))
        candidates.append(("the teacher cache folder", distillation_setting(args, "teacher_cache")))
    if teacher_cache is not None and not hasattr(teacher_cache, "dataset"):  # a path, not a loaded TeacherCache
        candidates.append(("the teacher cache folder", teacher_cache))
    seen, folders = set(), []
    for what, path in candidates:
        folder = _folder(path)
        if folder is not None and (what, folder) not in seen:
            seen.add((what, folder))
            folders.append((what, folder))
    return folders


def _in_a_checkpoint_of(folder: str, output_dir: str) -> str | None:
    """The `checkpoint-*` folder of `output_dir` that holds `folder` (Trainer saves into and rotates those), else
    `None`. Other subfolders of `output_dir` are left alone by Trainer (`save_model` writes files at its root)."""
    if folder == output_dir or os.path.commonpath([folder, output_dir]) != output_dir:
        return None
    first = os.path.relpath(folder, output_dir).split(os.sep)[0]
    return os.path.join(output_dir, first) if fnmatch.fnmatchcase(first, f"{PREFIX_CHECKPOINT_DIR}-*") else None


def check_output_dir(
    output_dir: Any, student: nn.Module | None, teacher: Any = None, teacher_cache: Any = None, args: Any = None
) -> None:
    """Refuse an `output_dir` equal to, or inside, a folder this run reads a model or cache from, and one that holds
    such a folder inside its `checkpoint-*` folders (which Trainer overwrites and rotates away).

    Paths are compared after `~` expansion and with symlinks resolved (`os.path.realpath`), relative paths against the
    current directory; Hub ids name no local folder and are not compared.

    Raises:
        `ValueError`: naming `output_dir`, the folder it would write into and what that folder holds.
    """
    if output_dir is None:
        return
    target = os.path.realpath(os.path.expanduser(str(output_dir)))
    for what, folder in protected_folders(student, teacher, teacher_cache, args):
        inside = os.path.commonpath([target, folder]) == folder
        rotated = _in_a_checkpoint_of(folder, target)
        if rotated:
            raise ValueError(
                f"{what[0].upper()}{what[1:]} {folder!r} is inside output_dir={str(output_dir)!r}, in its "
                f"checkpoint folder {rotated!r}: the trainer writes the student's checkpoints into "
                f"'{PREFIX_CHECKPOINT_DIR}-<step>' folders there and checkpoint rotation (save_total_limit) deletes "
                "old ones, so this run could overwrite or delete the files it reads (and get_last_checkpoint would "
                "pick it to resume from). Choose another output_dir, e.g. "
                f"{os.path.join(target, 'distilled-student')!r}, or move the folder out of it."
            )
        if inside:
            where = "is" if target == folder else "is inside"
            raise ValueError(
                f"output_dir={str(output_dir)!r} {where} {what} {folder!r}: saving checkpoints and the student "
                "there would overwrite (and checkpoint rotation could delete) the files this run reads. Choose an "
                f"output_dir outside it, e.g. {os.path.join(os.path.dirname(folder), 'distilled-student')!r}."
            )
