"""Where a model or dataset came from, pinned: a Hub id at a 40-hex commit, a packaged asset at its package version,
or a local folder by the SHA-256 of its weights. Never a guess: what cannot be resolved is recorded as `unresolved`.

The record travels with the model object (`SOURCE_ATTRIBUTE`), set by whoever loaded it (the teacher loader, the
recipe runner, `student_from_teacher_layers`); a model without one is described from its `config._name_or_path`.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import warnings
from importlib import metadata
from typing import Any

import torch
from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, RevisionResolutionError
from safetensors import safe_open
from torch import nn

from . import _packaged as assets
from .utils.safe_yaml import card_metadata_of

UNRESOLVED = "unresolved"
SOURCE_ATTRIBUTE = "_hf_distill_source"
LOCAL_FOLDER_ATTRIBUTE = "_hf_distill_local_folder"
CHECKED_ATTRIBUTE = "_hf_distill_checked_against_checkpoint"
_SHA = re.compile(r"^[0-9a-f]{40}$")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")
_NOT_WEIGHTS = ("training_args.bin",)  # the Trainer's pickled arguments
_WEIGHT_PATTERNS = tuple(f"*{suffix}" for suffix in _WEIGHT_SUFFIXES)
# huggingface_hub raises these when the Hub cannot be reached or the repo/revision is unknown.
_RESOLUTION_ERRORS = (RevisionResolutionError, HfHubHTTPError, OSError, ValueError)


def is_commit_sha(revision: str | None) -> bool:
    return isinstance(revision, str) and bool(_SHA.match(revision))


def is_local(name_or_path: str) -> bool:
    """Whether `name_or_path` names something on this machine rather than a Hub repository."""
    return os.path.isabs(name_or_path) or os.path.exists(name_or_path) or name_or_path.startswith((".", "~"))


def resolve_revision(repo_id: str, revision: str | None = None, repo_type: str = "model") -> str:
    """The 40-hex commit `revision` (default: the main branch) of `repo_id` points to, from the Hub or, offline, from
    the local cache's refs; `UNRESOLVED` (with a warning) when neither knows. A sha is returned as given."""
    if is_commit_sha(revision):
        return revision
    try:
        return HfApi().resolve_revision(repo_id, repo_type=repo_type, revision=revision).resolved
    except _RESOLUTION_ERRORS as error:
        warnings.warn(
            f"Could not resolve revision {revision or 'main'!r} of {repo_id!r} to a commit ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); its lineage records the revision as "
            f"{UNRESOLVED!r}. Pass the 40-hex commit sha as the revision to pin it.",
            stacklevel=2,
        )
        return UNRESOLVED


def weight_files(folder: str) -> list[str]:
    """The model weight files directly in `folder` (safetensors, bin, gguf; not the Trainer's training_args.bin)."""
    found = {p for pattern in _WEIGHT_PATTERNS for p in glob.glob(os.path.join(folder, pattern))}
    return sorted(p for p in found if os.path.basename(p) not in _NOT_WEIGHTS)


def weights_bytes(folder: str) -> int | None:
    files = weight_files(folder)
    return sum(os.path.getsize(p) for p in files) if files else None


def weights_sha256(folder: str) -> str | None:
    """SHA-256 over the folder's weight files (name and bytes, in name order); `None` when it holds none."""
    files = weight_files(folder)
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        digest.update(os.path.basename(path).encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def source_of(name_or_path: str, revision: str | None = None) -> dict[str, Any]:
    """The pinned identity of a model given by name: Hub id + commit, packaged asset + package version + weights
    hash, or a local folder's name + weights hash (its path never enters the record)."""
    if assets.is_packaged(name_or_path):
        info = assets.packaged_model_info(name_or_path)
        folder = assets.packaged_model_dir(name_or_path)
        loaded = assets.resolve_packaged_model(name_or_path)  # the checkpoint actually loaded (fp32 for SmolLM2)
        return {
            "name": f"{assets.PACKAGED_PREFIX}{assets.strip_prefix(name_or_path).lower()}",
            "source": "packaged",
            "package": f"{info['package']}=={_version(info['package'])}",
            "upstream": info["upstream"],
            "note": info["note"],
            "weights_sha256": assets.packaged_weights_sha256(name_or_path) or weights_sha256(folder),
            "weights_bytes": weights_bytes(loaded),
            "license": {"id": info["license"]},
        }
    if is_local(name_or_path):
        folder = os.path.expanduser(name_or_path)
        return {
            "name": os.path.basename(os.path.normpath(folder)),
            "source": "local",
            "weights_sha256": weights_sha256(folder) if os.path.isdir(folder) else None,
            "weights_bytes": weights_bytes(folder) if os.path.isdir(folder) else None,
            "license": _local_license(folder),
        }
    sha = resolve_revision(name_or_path, revision)
    return {"name": name_or_path, "source": "hub", "revision": sha, **hub_card_facts(name_or_path, sha)}


def license_of(card_data: dict[str, Any] | None, where: str = "the card") -> dict[str, Any] | None:
    """`{"id", "name", "link"}` from a card's metadata (`license`, `license_name`, `license_link`); `None` without.
    A `license` or `license_name` / `license_link` that is not a string makes the license unknown, with a warning."""
    if not card_data or not card_data.get("license"):
        return None
    wrong = [
        k
        for k in ("license", "license_name", "license_link")
        if card_data.get(k) and not isinstance(card_data[k], str)
    ]
    if wrong:
        warnings.warn(
            f"{where}: {', '.join(wrong)} is not a string (got {type(card_data[wrong[0]]).__name__}); the teacher's "
            "license is recorded as unknown.",
            stacklevel=2,
        )
        return None
    record = {"id": card_data["license"]}
    for key in ("name", "link"):
        if card_data.get(f"license_{key}"):
            record[key] = card_data[f"license_{key}"]
    return record


def _local_license(folder: str) -> dict[str, Any] | None:
    readme = os.path.join(folder, "README.md")
    if not os.path.isfile(readme):
        return None
    where = f"{os.path.basename(os.path.normpath(folder))}/README.md"
    try:
        metadata = card_metadata_of(readme)
    except ValueError as error:  # aliases, oversized, not YAML: never expanded, never trusted
        warnings.warn(f"{where}: {error}; the teacher's license is recorded as unknown.", stacklevel=2)
        return None
    return license_of(metadata, where)


def hub_card_facts(repo_id: str, sha: str) -> dict[str, Any]:
    """License and weight bytes of a Hub repo at `sha`; both `None` when the Hub cannot tell (offline)."""
    try:
        info = HfApi().model_info(repo_id, revision=None if sha == UNRESOLVED else sha, files_metadata=True)
    except _RESOLUTION_ERRORS:
        return {"weights_bytes": None, "license": None}  # an unknown license makes the push ask for acknowledgement
    sizes = [s.size for s in info.siblings or [] if s.size is not None and s.rfilename.endswith(_WEIGHT_SUFFIXES)]
    return {
        "weights_bytes": sum(sizes) if sizes else None,
        "license": license_of(info.card_data.to_dict() if info.card_data is not None else None, f"{repo_id}'s card"),
    }


def record_source(model: nn.Module, source: dict[str, Any], local_folder: str | None = None) -> nn.Module:
    """Attach `source` (and, privately, the local folder it was read from) to `model`; returns `model`."""
    # An attribute of our own name on the model, not a registry keyed by the object: the record must follow the model
    # through wrappers that forward attribute reads to it (PeftModel, DeepSpeedEngine) and through `deepcopy`.
    object.__setattr__(model, SOURCE_ATTRIBUTE, source)
    if local_folder is not None:
        object.__setattr__(model, LOCAL_FOLDER_ATTRIBUTE, os.path.abspath(os.path.expanduser(local_folder)))
    return model


def model_source(model: nn.Module) -> dict[str, Any]:
    """What `record_source` attached, else the identity `config._name_or_path` gives (`source: unknown` without one),
    which is then attached so that it is resolved once."""
    recorded = getattr(model, SOURCE_ATTRIBUTE, None)
    if recorded is not None:
        return dict(recorded)
    name = getattr(getattr(model, "config", None), "_name_or_path", None)
    source = source_of(name) if name else {"name": None, "source": "unknown"}
    record_source(model, source, name if name and is_local(name) else None)
    return dict(source)


def _checkpoint_folder(model: nn.Module, source: dict[str, Any]) -> str | None:
    """The folder holding the weights `source` names, when they are on this machine (Hub ids: the local cache)."""
    if source.get("source") == "local":
        folder = local_folder(model) or getattr(getattr(model, "config", None), "_name_or_path", None)
        return folder if folder and os.path.isdir(folder) else None
    if source.get("source") == "packaged":
        return assets.resolve_packaged_model(source["name"])
    if source.get("source") == "hub" and is_commit_sha(source.get("revision")):
        try:
            return snapshot_download(source["name"], revision=source["revision"], local_files_only=True)
        except Exception:  # not in the cache (or not fully): nothing to compare with
            return None
    return None


def weights_match_checkpoint(model: nn.Module, folder: str, budget_bytes: int = 256 << 20) -> bool | None:
    """Whether `model`'s weights equal those in `folder`'s safetensors files, compared exactly (after casting the
    file's tensor to the model's dtype) for every tensor both hold with the same shape, smallest first, until
    `budget_bytes` have been read: all of a model up to that size; norms, biases and heads of a larger one (where any
    full fine-tune shows). `None` when no tensor could be compared (other formats, renamed keys, sharded or
    quantized parameters)."""
    state = {k: v for k, v in model.state_dict().items() if type(v) is torch.Tensor and not v.is_meta}
    compared = 0
    for path in sorted(glob.glob(os.path.join(folder, "*.safetensors"))):
        with safe_open(path, framework="pt") as checkpoint:
            names = [k for k in checkpoint.keys() if k in state]
            for name in sorted(names, key=lambda k: state[k].numel()):
                mine = state[name]
                if compared + mine.numel() * mine.element_size() > budget_bytes:
                    break
                saved = checkpoint.get_tensor(name)
                if saved.shape != mine.shape or not saved.is_floating_point():
                    continue
                if not torch.equal(saved.to(mine.dtype), mine.detach().cpu()):
                    return False
                compared += mine.numel() * mine.element_size()
    return True if compared else None


def mark_if_modified(model: nn.Module, source: dict[str, Any]) -> dict[str, Any]:
    """`source`, unless `model`'s weights no longer equal the checkpoint it names (a teacher fine-tuned in memory
    after loading): then the pins (commit, weights hash) are dropped, `modified_after_loading` is set and a warning
    says how to pin it. A record that cannot be checked is returned as it is."""
    folder = _checkpoint_folder(model, source)
    if folder is None or weights_match_checkpoint(model, folder) is not False:
        return source
    warnings.warn(
        f"The weights of {source.get('name')!r} in memory differ from the checkpoint it was loaded from (trained or "
        f"edited after loading?); its lineage does not pin it to that checkpoint. Save it (`save_pretrained`) and load "
        f"it from that folder, or push it and pass its Hub id, to pin what the student learned from.",
        stacklevel=2,
    )
    unpinned = {**source, "modified_after_loading": True, "weights_sha256": None}
    if unpinned.get("source") == "hub":
        unpinned["revision"] = UNRESOLVED
    return unpinned


def checked_model_source(model: nn.Module) -> dict[str, Any]:
    """`model_source(model)`, verified against the checkpoint it names the first time (`mark_if_modified`): call it
    on a model as it is handed over (a teacher to the trainer, a model to cut a student from), before any cast."""
    if getattr(model, CHECKED_ATTRIBUTE, False):
        return model_source(model)
    source = mark_if_modified(model, model_source(model))
    record_source(model, source)
    object.__setattr__(model, CHECKED_ATTRIBUTE, True)
    return dict(source)


def local_folder(model: nn.Module) -> str | None:
    """The local folder `model` was loaded from, when it was (never written anywhere; used to check pushes)."""
    return getattr(model, LOCAL_FOLDER_ATTRIBUTE, None)


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def library_versions() -> dict[str, str | None]:
    """The versions of the libraries that shaped a student (written into its lineage)."""
    return {
        name: _version(dist)
        for name, dist in [
            ("hf_distill", "hf-distill"),
            ("transformers", "transformers"),
            ("torch", "torch"),
            ("peft", "peft"),
            ("accelerate", "accelerate"),
            ("huggingface_hub", "huggingface_hub"),
        ]
    }
