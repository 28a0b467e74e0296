"""The lineage record of a distilled student: which teacher, which student (and adapter), by which objective.

Written next to every saved student as `distillation_lineage.json`, so a student can always be traced to its teacher;
the Hub model card is built from it. Local paths never enter it: a model loaded from disk is recorded by its folder
name alone, marked `local`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from torch import nn

from .adapters import adapter_summary, is_peft_model
from .losses import KDObjective
from .tasks import unwrap_peft
from .teacher import SharedBaseTeacher

LINEAGE_FILE = "distillation_lineage.json"


def public_name(name_or_path: str | None) -> dict[str, Any]:
    """`{"name": hub_id}` for a Hub id, `{"name": folder_name, "local": True}` for anything on this machine."""
    if not name_or_path:
        return {"name": None}
    if os.path.isabs(name_or_path) or os.path.exists(name_or_path) or name_or_path.startswith((".", "~")):
        return {"name": os.path.basename(os.path.normpath(name_or_path)), "local": True}
    return {"name": name_or_path}


def _source(model: nn.Module) -> dict[str, Any]:
    base = unwrap_peft(model)
    config = getattr(base, "config", None)
    return {
        **public_name(getattr(config, "_name_or_path", None)),
        "revision": getattr(config, "_commit_hash", None),
        "architecture": type(base).__name__,
        "parameters": sum(p.numel() for p in base.parameters()),
    }


def _adapter(model: nn.Module) -> dict[str, Any] | None:
    summary = adapter_summary(model)
    if summary is not None:
        summary = {**summary, "base_model": public_name(summary["base_model"])}
    return summary


@dataclass
class Lineage:
    """What a distilled student is made of. Plain data, JSON-ready.

    Attributes:
        student (`dict`): source, architecture and parameter count of the student's model; `adapter` (method, base,
            config, trainable parameters) when the student is a PEFT adapter.
        teacher (`dict`): the same for the teacher; `kind` is `model`, `peft` (an adapter over a base) or
            `shared_base` (the student's own base with its adapters disabled).
        method (`dict`): the distillation objective, in words and as its settings.
    """

    student: dict[str, Any]
    teacher: dict[str, Any]
    method: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, directory: str) -> str:
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, LINEAGE_FILE)
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)
        return path

    @classmethod
    def load(cls, directory: str) -> Lineage:
        with open(os.path.join(directory, LINEAGE_FILE)) as f:
            return cls(**json.load(f))


def _version() -> str | None:
    try:
        return metadata.version("hf-distill")
    except metadata.PackageNotFoundError:
        return None


def build_lineage(student: nn.Module, teacher: nn.Module, objective: KDObjective) -> Lineage:
    """The record for `student` distilled from `teacher` with `objective` (the unwrapped student, PEFT or not)."""
    if isinstance(teacher, SharedBaseTeacher):
        teacher_record = {"kind": "shared_base", **_source(teacher.student), "adapter": None}
    else:
        kind = "peft" if is_peft_model(teacher) else "model"
        teacher_record = {"kind": kind, **_source(teacher), "adapter": _adapter(teacher)}
    return Lineage(
        student={**_source(student), "adapter": _adapter(student)},
        teacher=teacher_record,
        method={
            "library": "hf_distill",
            "library_version": _version(),
            "objective": objective.describe(),
            "settings": dataclasses.asdict(objective),
        },
    )
