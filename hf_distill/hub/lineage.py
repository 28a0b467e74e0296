"""The lineage record of a distilled student: which teacher at which commit under which license, which student
initialisation (and adapter), by which objective, on which data, with which library versions, and how much quality
the student kept.

Plain data. Written next to every saved student as `distillation_lineage.json` and, on a push, into the card's
`distillation:` metadata block (schema `SCHEMA_VERSION`). Local paths never enter it: a model loaded from disk is
recorded by its folder name and the SHA-256 of its weights, marked `source: local`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .. import _packaged as assets
from ..losses import KDObjective
from ..modeling.heads import unwrap_peft
from ..modeling.record import model_record
from ..provenance import UNRESOLVED, is_commit_sha, library_versions, model_source
from ..teacher.base import Teacher
from ..utils.atomic import write_json

LINEAGE_FILE = "distillation_lineage.json"
SCHEMA_VERSION = 1
SOURCES = ("hub", "local", "packaged", "served", "unknown")
STUDENT_INITS = ("pretrained", "teacher_layers", "shared_base", "random")


class LineageError(ValueError):
    """Malformed lineage metadata. `field` names the first bad field; `lineage` holds what could still be read."""

    def __init__(self, problems: list[tuple[str, str]], lineage: Lineage | None = None) -> None:
        self.problems = problems
        self.field = problems[0][0]
        self.lineage = lineage
        listed = "; ".join(f"`{name}`: {why}" for name, why in problems)
        super().__init__(f"Malformed distillation lineage metadata: {listed}.")


@dataclass
class Lineage:
    """What a distilled student is made of. Plain data, JSON- and YAML-ready.

    Attributes:
        teacher (`dict`): `name`, `source` (hub / local / packaged), the pinned `revision` (40-hex or "unresolved")
            or `weights_sha256`, `license`, `kind` (`model`, `peft`, `shared_base`), architecture, parameters and,
            for an adapter teacher, its `adapter`.
        student (`dict`): `init` (how its weights started: pretrained id + revision, teacher layers, the teacher's own
            base, or random), architecture, parameters, `adapter` (method, base, config, trainable parameters).
        objective (`dict`): the loss in words (`description`) and its settings.
        datasets (`list[dict]`): `id`, `revision`, `split`, `fingerprint` of each dataset used, when known.
        versions (`dict`): hf_distill, transformers, torch, peft, accelerate, huggingface_hub.
        evaluation (`dict`, *optional*): teacher vs student on the eval set (see `DistillationTrainer.compare_with_teacher`).
        license_policy (`dict`, *optional*): the decision taken on the teacher's license at push time.
        schema (`int`): version of this layout.
    """

    teacher: dict[str, Any]
    student: dict[str, Any]
    objective: dict[str, Any]
    datasets: list[dict[str, Any]] = field(default_factory=list)
    versions: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] | None = None
    license_policy: dict[str, Any] | None = None
    schema: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {"schema": self.schema, **{k: v for k, v in dataclasses.asdict(self).items() if k != "schema"}}

    def save(self, directory: str) -> str:
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, LINEAGE_FILE)
        write_json(path, self.to_dict(), indent=2, sort_keys=False)  # never a half-written record
        return path

    @classmethod
    def load(cls, directory: str) -> Lineage:
        with open(os.path.join(directory, LINEAGE_FILE)) as f:
            return cls.from_dict(json.load(f))

    @classmethod
    def from_dict(cls, data: Any) -> Lineage:
        """Validate and read a record. Raises `LineageError` naming every bad field, with the readable rest."""
        if not isinstance(data, dict):
            raise LineageError([("distillation", f"expected a mapping, got {type(data).__name__}")])
        problems = _problems(data)
        bad = {name.split(".")[0] for name, _ in problems}
        readable = {f.name: data.get(f.name) for f in dataclasses.fields(cls) if f.name not in bad and f.name in data}
        if "schema" in data:  # the record's own schema, even an unreadable one, so the readable rest shows it
            readable["schema"] = data["schema"]
        for required in ("teacher", "student", "objective"):
            readable.setdefault(required, None)
        lineage = cls(**readable)
        if problems:
            raise LineageError(problems, lineage)
        return lineage

    @property
    def weights_derive_from_teacher(self) -> bool:
        """The student's weights started from the teacher's (layer copy, or an adapter over the teacher itself)."""
        init = (self.student or {}).get("init") or {}
        if init.get("kind") in ("teacher_layers", "shared_base"):
            return True
        return init.get("kind") == "pretrained" and _same_model(init, self.teacher or {})


def _same_model(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if a.get("weights_sha256") and a.get("weights_sha256") == b.get("weights_sha256"):
        return True
    return a.get("source") == b.get("source") == "hub" and a.get("name") == b.get("name")


def _problems(data: dict[str, Any]) -> list[tuple[str, str]]:
    """Every field of a record that a reader cannot trust, as (dotted name, why)."""
    problems = []
    if data.get("schema") != SCHEMA_VERSION:
        problems.append(("schema", f"{data.get('schema')!r} is not a schema this hf_distill reads ({SCHEMA_VERSION})"))
    for section in ("teacher", "student", "objective"):
        if not isinstance(data.get(section), dict):
            problems.append((section, f"missing or not a mapping (got {type(data.get(section)).__name__})"))
    teacher = data.get("teacher") if isinstance(data.get("teacher"), dict) else {}
    if teacher:
        named = isinstance(teacher.get("name"), str) and teacher["name"]
        if not named and not (teacher.get("source") == "unknown" and teacher.get("name") is None):
            problems.append(("teacher.name", f"{teacher.get('name')!r} is not a model name"))
        if teacher.get("source") not in SOURCES:
            problems.append(("teacher.source", f"{teacher.get('source')!r} is not one of {', '.join(SOURCES)}"))
        revision = teacher.get("revision")
        if teacher.get("source") == "hub" and not (is_commit_sha(revision) or revision == UNRESOLVED):
            problems.append(("teacher.revision", f"{revision!r} is neither a 40-hex commit sha nor {UNRESOLVED!r}"))
        sha256 = teacher.get("weights_sha256")
        if sha256 is not None and not (isinstance(sha256, str) and re.fullmatch(r"[0-9a-f]{64}", sha256)):
            problems.append(("teacher.weights_sha256", f"{sha256!r} is not a SHA-256 hex digest"))
        license_record = teacher.get("license")
        if license_record is not None and not isinstance(license_record, dict):
            problems.append(
                ("teacher.license", f"{license_record!r} is not a mapping like {{'id': 'apache-2.0'}} (or null)")
            )
        elif isinstance(license_record, dict) and not isinstance(license_record.get("id"), (str, type(None))):
            problems.append(("teacher.license.id", f"{license_record.get('id')!r} is not a license id string"))
    student = data.get("student") if isinstance(data.get("student"), dict) else {}
    init = student.get("init")
    if student and not (isinstance(init, dict) and init.get("kind") in STUDENT_INITS):
        problems.append(("student.init", f"{init!r} is not a mapping with kind in {', '.join(STUDENT_INITS)}"))
    if not isinstance(data.get("datasets", []), list):
        problems.append(("datasets", "not a list"))
    for optional in ("versions", "evaluation", "license_policy"):
        if data.get(optional) is not None and not isinstance(data[optional], dict):
            problems.append((optional, "not a mapping"))
    return problems


# ---- building the record from live objects ----


def _student_init(student: nn.Module, teacher_record: dict[str, Any]) -> dict[str, Any]:
    if teacher_record["kind"] == "shared_base":
        return {"kind": "shared_base"}
    source = model_source(unwrap_peft(student))
    if source.get("init") == "teacher_layers":
        return {"kind": "teacher_layers", "layers": source["layers"]}
    if source.get("source") == "unknown":
        return {"kind": "random"}
    return {"kind": "pretrained", **{k: v for k, v in source.items() if k != "license"}}


def dataset_records(**datasets: Any) -> list[dict[str, Any]]:
    """`{id, used_for, revision, split, fingerprint}` of each `datasets.Dataset` given by role (e.g.
    `training=train_dataset, evaluation=eval_dataset`; anything else is skipped).

    The id is `info.dataset_name`; the revision is the commit in the Hub URLs the dataset was downloaded from, when
    it was; a packaged text (`packaged:hamlet`) is recorded with its package version.
    """
    records = []
    for role, dataset in datasets.items():
        info = getattr(dataset, "info", None)
        if info is None or not hasattr(dataset, "_fingerprint"):
            continue
        name = info.dataset_name
        revisions = {
            m.group(1) for url in (info.download_checksums or {}) for m in [re.search(r"@([0-9a-f]{40})", url)] if m
        }
        record = {
            "id": name,
            "used_for": role,
            "config": info.config_name,
            "revision": revisions.pop() if len(revisions) == 1 else None,
            "split": None if dataset.split is None else str(dataset.split),
            "fingerprint": dataset._fingerprint,
        }
        if name and assets.is_packaged(name):
            record["package"] = assets.packaged_text_package(name)
        records.append(record)
    return records


def build_lineage(
    student: nn.Module,
    teacher: Teacher,
    objective: KDObjective,
    chunk_size: int = 0,
    datasets: list[dict[str, Any]] | None = None,
    evaluation: dict[str, Any] | None = None,
) -> Lineage:
    """The record for `student` (unwrapped, PEFT or not) distilled from `teacher` with `objective`."""
    teacher_record = teacher.lineage_record()  # each kind says what it is (a model, the shared base, a cache)
    teacher_record.setdefault("license", None)
    teacher_record["tokenizer_checked"] = teacher.tokenizer_checked
    return Lineage(
        teacher=teacher_record,
        student={"init": _student_init(student, teacher_record), **model_record(student)},
        objective={
            "description": objective.describe(),
            **dataclasses.asdict(objective),
            "kd_chunk_size": chunk_size,
        },
        datasets=list(datasets or []),
        versions=library_versions(),
        evaluation=evaluation,
    )
