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

from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, RevisionResolutionError
from huggingface_hub.repocard import metadata_load
from torch import nn

from . import assets

UNRESOLVED = "unresolved"
SOURCE_ATTRIBUTE = "_hf_distill_source"
LOCAL_FOLDER_ATTRIBUTE = "_hf_distill_local_folder"
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
            "weights_sha256": weights_sha256(folder),
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


def license_of(card_data: dict[str, Any] | None) -> dict[str, Any] | None:
    """`{"id", "name", "link"}` from a card's metadata (`license`, `license_name`, `license_link`); `None` without."""
    if not card_data or not card_data.get("license"):
        return None
    record = {"id": card_data["license"]}
    for key in ("name", "link"):
        if card_data.get(f"license_{key}"):
            record[key] = card_data[f"license_{key}"]
    return record


def _local_license(folder: str) -> dict[str, Any] | None:
    readme = os.path.join(folder, "README.md")
    return license_of(metadata_load(readme)) if os.path.isfile(readme) else None


def hub_card_facts(repo_id: str, sha: str) -> dict[str, Any]:
    """License and weight bytes of a Hub repo at `sha`; both `None` when the Hub cannot tell (offline)."""
    try:
        info = HfApi().model_info(repo_id, revision=None if sha == UNRESOLVED else sha, files_metadata=True)
    except _RESOLUTION_ERRORS:
        return {"weights_bytes": None, "license": None}  # an unknown license makes the push ask for acknowledgement
    sizes = [s.size for s in info.siblings or [] if s.size is not None and s.rfilename.endswith(_WEIGHT_SUFFIXES)]
    return {
        "weights_bytes": sum(sizes) if sizes else None,
        "license": license_of(info.card_data.to_dict() if info.card_data is not None else None),
    }


def record_source(model: nn.Module, source: dict[str, Any], local_folder: str | None = None) -> nn.Module:
    """Attach `source` (and, privately, the local folder it was read from) to `model`; returns `model`."""
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
