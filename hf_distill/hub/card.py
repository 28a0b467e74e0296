"""The student's model card: YAML metadata that follows the Hub's conventions plus a `distillation:` block, and a body
rendered from `hf_distill/templates/` that discloses the lineage, the teacher-vs-student comparison and the license
duties. Rendering is deterministic (same record, same bytes), and an existing README is merged, not clobbered.
"""

from __future__ import annotations

import importlib.resources
from typing import Any

import jinja2
import yaml
from huggingface_hub import EvalResult, ModelCardData

from ..modeling.heads import head_kind
from ..provenance import UNRESOLVED, is_commit_sha, is_local
from ..utils.safe_yaml import split_front_matter
from .licenses import LicenseDecision
from .lineage import Lineage

TEMPLATE = "student_card.md.jinja"
SECTION_START = "<!-- hf_distill:lineage:start -->"
SECTION_END = "<!-- hf_distill:lineage:end -->"
HUB_URL = "https://huggingface.co"
TAGS = ("distillation", "hf-distill")
# Keys of the card metadata that hf_distill owns: an existing README's values are replaced (kept where hf_distill has
# none for license and base model; see `_merge_metadata`).
OWNED_KEYS = (
    "license",
    "license_name",
    "license_link",
    "base_model",
    "base_model_relation",
    "model-index",
    "distillation",
)
# The order of the card's metadata keys (the Hub reads any order; a fixed one keeps renders byte-identical).
METADATA_ORDER = (
    "language",
    "license",
    "license_name",
    "license_link",
    "base_model",
    "base_model_relation",
    "library_name",
    "tags",
    "datasets",
    "model-index",
    "distillation",
)


def _model_link(record: dict[str, Any]) -> str:
    name = record.get("name") or "an unnamed model"
    if record.get("source") == "hub":
        revision = record.get("revision")
        if is_commit_sha(revision):
            return f"[{name}]({HUB_URL}/{name}/tree/{revision})"
        return f"[{name}]({HUB_URL}/{name})"
    if record.get("source") == "packaged":
        return f"`{name}` (shipped in `{record.get('package')}`; upstream [{record['upstream']}]({HUB_URL}/{record['upstream']}))"
    if record.get("source") == "local":
        return f"`{name}` (a local checkpoint)"
    if record.get("source") == "served":
        served = record.get("served") or {}
        provider = served.get("provider")
        by = "a server of the trainer's own" if provider in (None, "self-hosted") else f"the provider {provider}"
        return f"`{name}` (served by {by}; its top-{served.get('k')} log-probabilities per token)"
    return f"`{name}`"


def _revision_text(record: dict[str, Any]) -> str:
    if record.get("modified_after_loading"):
        return "not pinned: its weights were changed in memory after it was loaded from this checkpoint"
    if record.get("source") == "hub":
        revision = record.get("revision")
        return f"`{revision}`" if is_commit_sha(revision) else "unresolved (the commit could not be determined)"
    if record.get("weights_sha256"):
        return f"weights SHA-256 `{record['weights_sha256']}`"
    if record.get("source") == "served":
        revision = record.get("revision")
        return f"`{revision}` (as the server reported it)" if revision else "not reported by the server"
    return "unknown"


def _license_text(license_record: dict[str, Any] | None) -> str:
    if not license_record:
        return "unknown"
    text = f"`{license_record['id']}`"
    if license_record.get("name"):
        text += f" ({license_record['name']})"
    if license_record.get("link"):
        text += f", {license_record['link']}"
    return text


def _init_text(lineage: Lineage) -> str:
    init = lineage.student["init"]
    if init["kind"] == "teacher_layers":
        return f"from the teacher's layers {init['layers']}"
    if init["kind"] == "shared_base":
        return "the teacher's own weights, trained as an adapter"
    if init["kind"] == "pretrained":
        cut = f"layers {init['layers']} of " if init.get("layers") else ""  # a cut of another model (recipes)
        return f"{cut}{_model_link(init)} at {_revision_text(init)}"
    return "random (from a config)"


def _adapter_text(adapter: dict[str, Any] | None) -> str | None:
    if not adapter:
        return None
    config = adapter.get("config") or {}
    text = adapter["method"] + (f" r={config['r']}" if config.get("r") else "")
    text += f", {_count(adapter.get('trainable_parameters'))} trainable parameters"
    targets = config.get("target_modules")
    if targets:
        text += f", on {targets if isinstance(targets, str) else ', '.join(targets)}"
    base = adapter.get("base_model") or {}
    return text + (f", over {_model_link(base)}" if base.get("name") else "")


def _data_text(lineage: Lineage) -> str:
    parts = []
    for d in lineage.datasets:
        name = d.get("id") or "an unnamed dataset"
        detail = [
            d.get("used_for"),
            f"split {d['split']}" if d.get("split") else None,
            f"revision `{d['revision']}`" if d.get("revision") else None,
        ]
        detail += [f"from `{d['package']}`" if d.get("package") else None, f"fingerprint `{d['fingerprint']}`"]
        parts.append(f"`{name}` ({', '.join(x for x in detail if x)})")
    return "; ".join(parts) or "not recorded"


def _number(value: Any) -> str:
    return "–" if value is None else f"{value:.4g}"


def _count(value: Any) -> str:
    if value is None:
        return "–"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= size:
            return f"{value / size:.1f}{unit}"
    return str(value)


def _bytes(value: Any) -> str:
    if value is None:
        return "–"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value} B"


def _kept(evaluation: dict[str, Any] | None) -> str | None:
    metric = (evaluation or {}).get("metric") or {}
    teacher, student = metric.get("teacher"), metric.get("student")
    if not teacher or not student:
        return None
    ratio = student / teacher if metric.get("higher_is_better") else teacher / student
    return f"{100 * ratio:.1f}%"


def base_model(
    lineage: Lineage, adapter_push: bool, finetuned_from: str | None = None
) -> tuple[str | None, str | None]:
    """`base_model` and `base_model_relation` for the card: the student's initialisation checkpoint, or the teacher
    only when the student's weights derive from it; never both (two base models read as a merge)."""
    relation = "adapter" if adapter_push else "finetune"
    if finetuned_from:
        if is_local(finetuned_from):
            raise ValueError(
                f"finetuned_from={finetuned_from!r} is a local path; give the Hub id of the checkpoint the student "
                "started from (local paths never go into a pushed card)."
            )
        return finetuned_from, relation
    init, teacher = lineage.student["init"], lineage.teacher
    if init["kind"] == "pretrained" and init.get("source") == "hub":
        return init["name"], relation
    if init["kind"] in ("teacher_layers", "shared_base") and teacher.get("source") == "hub":
        return teacher["name"], relation
    return None, None


def card_metadata(
    lineage: Lineage,
    policy: LicenseDecision,
    repo_id: str,
    adapter_push: bool = False,
    finetuned_from: str | None = None,
    tags: list[str] | None = None,
    language: str | list[str] | None = None,
    datasets: list[str] | None = None,
) -> dict[str, Any]:
    """The card's YAML metadata (see `HUB.md`): license, base model, tags, datasets, model-index, distillation.

    Built as a `huggingface_hub.ModelCardData` (the `model-index` from `EvalResult`s, the `distillation:` block and
    `base_model_relation` as extra keys), returned as a dict in `METADATA_ORDER`.
    """
    license_record = policy.student_license or {}
    base, relation = base_model(lineage, adapter_push, finetuned_from)
    hub_datasets = [d["id"] for d in lineage.datasets if d.get("id") and d.get("revision")]
    eval_results = _eval_results(lineage)
    data = ModelCardData(
        language=language or None,
        license=license_record.get("id"),
        license_name=license_record.get("name") or None,
        license_link=license_record.get("link") or None,
        base_model=base,
        library_name="peft" if adapter_push else "transformers",
        tags=[*TAGS, *(tags or [])],
        datasets=list(dict.fromkeys([*(datasets or []), *hub_datasets])) or None,
        eval_results=eval_results,
        model_name=repo_id.split("/")[-1] if eval_results else None,
        base_model_relation=relation,
        distillation={**lineage.to_dict(), "license_policy": policy.to_dict()},
    ).to_dict()
    return {key: data[key] for key in METADATA_ORDER if key in data}


def _eval_results(lineage: Lineage) -> list[EvalResult] | None:
    """The teacher-vs-student evaluation as the `model-index` results: the student's metric (when there is one) and
    its top-1 agreement with the teacher, on the held-out set."""
    evaluation = lineage.evaluation
    if not evaluation:
        return None
    architecture = lineage.student.get("architecture", "")
    kind = head_kind(architecture)
    task = (kind.pipeline_tag if kind else None) or "other"
    dataset = evaluation.get("dataset") or "held-out evaluation set"
    metrics = []
    if evaluation.get("metric"):
        name = evaluation["metric"]["name"]
        metrics.append((name, evaluation["metric"]["student"], f"student {name}"))
    metrics.append(("agreement", evaluation["agreement"], "top-1 agreement with the teacher"))
    return [
        EvalResult(
            task_type=task,
            dataset_type=dataset,
            dataset_name=dataset,
            metric_type=metric,
            metric_value=value,
            metric_name=name,
        )
        for metric, value, name in metrics
        if value is not None  # `model-index` drops None values, and the Hub refuses a metric without a value
    ] or None


def _template() -> jinja2.Template:
    text = importlib.resources.files("hf_distill.templates").joinpath(TEMPLATE).read_text(encoding="utf-8")
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    env.filters.update(
        number=_number, count=_count, bytes=_bytes, percent=lambda v: "–" if v is None else f"{100 * v:.1f}%"
    )
    return env.from_string(text)


# Duties met by a file that only a push adds (`hf_distill.hub.push.push_contents`); a local card says so.
_PUSH_FILE_DUTIES = ("NOTICE file", "a copy of the teacher's license", "the teacher's license text")


def _duties(policy: LicenseDecision, pushed: bool) -> list[str]:
    if pushed:
        return list(policy.duties)
    return [f"{d} (added by a push with hf_distill)" if d.startswith(_PUSH_FILE_DUTIES) else d for d in policy.duties]


def render_body(
    lineage: Lineage,
    policy: LicenseDecision,
    repo_id: str,
    local_finetuned_from: str | None = None,
    pushed: bool = True,
) -> str:
    """The card's Markdown body (title, then the hf_distill section between its markers).

    `local_finetuned_from` is the folder name (never the path) of a local checkpoint the user says the student was
    fine-tuned from: shown in the lineage table, as it cannot be a `base_model`. With `pushed=False` (a card written
    locally) the duties met by files only a push adds (NOTICE, the license copy) are worded as what a push adds.
    """
    teacher = lineage.teacher
    return _template().render(
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        lineage=lineage,
        teacher=teacher,
        student=lineage.student,
        evaluation=lineage.evaluation,
        policy=policy,
        duties=_duties(policy, pushed),
        teacher_link=_model_link(teacher),
        teacher_revision=_revision_text(teacher),
        teacher_license=_license_text(teacher.get("license")),
        init_text=_init_text(lineage),
        adapter_text=_adapter_text(lineage.student.get("adapter")),
        data_text=_data_text(lineage),
        versions_text=", ".join(f"{k} {v}" for k, v in lineage.versions.items() if v),
        kept=_kept(lineage.evaluation),
        local_finetuned_from=local_finetuned_from,
        section_start=SECTION_START,
        section_end=SECTION_END,
    )


def split_card(text: str) -> tuple[dict[str, Any], str]:
    """(metadata, body) of a README; a README without front matter has empty metadata. Parsed without YAML aliases
    (`hf_distill.utils.safe_yaml`), like every card hf_distill reads.

    Raises:
        `ValueError`: the front matter is not YAML, uses aliases, or is not a mapping.
    """
    try:
        return split_front_matter(text)
    except ValueError as error:
        raise ValueError(
            f"The existing README.md's YAML front matter was not read ({error}); fix or remove it."
        ) from None


def _is_generated_template(body: str) -> bool:
    # transformers' and peft's default cards: placeholders only, nothing a person wrote.
    return "[More Information Needed]" in body or not body.strip()


def _merge_metadata(existing: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    merged = {k: v for k, v in existing.items() if k not in OWNED_KEYS and k != "licence"}
    for key in ("tags", "datasets"):
        old = existing.get(key) or []
        old = [old] if isinstance(old, str) else list(old)
        if key in ours or old:
            merged[key] = list(dict.fromkeys([*old, *ours.get(key, [])]))
    for key, value in ours.items():
        if key not in ("tags", "datasets"):
            merged[key] = value
    # The user's own values for what hf_distill leaves empty: their license (its name and link only with it), their
    # base model (never a local path).
    stated = existing.get("license")
    if isinstance(stated, str) and stated and ours.get("license") in (None, stated):
        for key in ("license", "license_name", "license_link"):
            if key not in ours and isinstance(existing.get(key), str):
                merged[key] = existing[key]
    base = existing.get("base_model")
    bases = [base] if isinstance(base, str) else base if isinstance(base, list) else []
    if "base_model" not in ours and bases and all(isinstance(b, str) and b and not is_local(b) for b in bases):
        merged["base_model"] = base
        if isinstance(existing.get("base_model_relation"), str):
            merged["base_model_relation"] = existing["base_model_relation"]
    return merged


def render_card(
    lineage: Lineage,
    policy: LicenseDecision,
    repo_id: str,
    existing: str | None = None,
    local_finetuned_from: str | None = None,
    pushed: bool = True,
    **metadata_options: Any,
) -> str:
    """The full README.md: front matter and body; merged into `existing` when there is one. `metadata_options` go to
    `card_metadata`; `local_finetuned_from` and `pushed` to `render_body`.

    An existing README keeps its own metadata (hf_distill's keys are replaced, tags and datasets are joined) and its
    own text; the hf_distill section replaces the one between the markers of an earlier render, or is appended.
    A generated placeholder card (transformers'/peft's defaults) is replaced.
    """
    meta = card_metadata(lineage, policy, repo_id, **metadata_options)
    body = render_body(lineage, policy, repo_id, local_finetuned_from, pushed)
    if existing:
        old_meta, old_body = split_card(existing)
        meta = _merge_metadata(old_meta, meta)
        if SECTION_START in old_body and SECTION_END in old_body:
            start, end = old_body.index(SECTION_START), old_body.index(SECTION_END) + len(SECTION_END)
            section = body[body.index(SECTION_START) : body.index(SECTION_END) + len(SECTION_END)]
            body = old_body[:start] + section + old_body[end:]
        elif not _is_generated_template(old_body):
            section = body[body.index(SECTION_START) :]
            body = old_body.rstrip("\n") + "\n\n" + section
    # Not `ModelCardData.to_yaml`: it folds lines at 80 columns (the lineage's descriptions would wrap mid-sentence)
    # and dumps with the unsafe `yaml.Dumper`.
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000)
    return f"---\n{front}---\n\n{body.lstrip(chr(10))}"


__all__ = ["UNRESOLVED", "base_model", "card_metadata", "render_body", "render_card", "split_card"]
