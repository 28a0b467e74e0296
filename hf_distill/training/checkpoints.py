"""Which checkpoint `train(resume_from_checkpoint=...)` resumes from: the newest *complete* one for `True` (or
`"True"` from the command line), and for a named folder that is the newest of its parent (`get_last_checkpoint`).

`Trainer` takes the highest-numbered `checkpoint-N` folder as it is. A run killed while saving leaves that folder
incomplete (no or a truncated `trainer_state.json`, truncated weights, no optimizer state); resuming from it either
crashes or, worse, silently restarts the optimizer. Here each candidate is checked from the newest down, cheaply
(file headers, not tensors), and every folder skipped is named in a warning.
"""

from __future__ import annotations

import json
import os
import re
import struct
import zipfile
from typing import Any

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .._logging import get_logger

logger = get_logger(__name__)

_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
# Weights a checkpoint may hold (full model or adapter; safetensors or torch pickles), and sharded indexes.
_SAFETENSORS = ("model.safetensors", "adapter_model.safetensors")
_PICKLES = ("pytorch_model.bin", "adapter_model.bin")
_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def checkpoint_problem(folder: str, optimizer_expected: bool = True) -> str | None:
    """Why the checkpoint `folder` cannot be resumed from, or `None` when it looks complete.

    Checks that `trainer_state.json` parses; that the weights are there and not truncated (a safetensors file is as
    long as its header says; a sharded index's shards all exist and are whole); and, when `optimizer_expected`, that
    `optimizer.pt` and `scheduler.pt` are whole zip archives (torch's format; a truncated one has no central
    directory). `rng_state*.pth` and `scaler.pt`, when present, must be whole too.
    """
    state = os.path.join(folder, "trainer_state.json")
    try:
        with open(state, encoding="utf-8") as f:
            if "global_step" not in json.load(f):
                return "trainer_state.json has no global_step"
    except FileNotFoundError:
        return "trainer_state.json is missing"
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "trainer_state.json is truncated or not JSON"
    weights = _weights_problem(folder)
    if weights:
        return weights
    if optimizer_expected:
        for name in ("optimizer.pt", "scheduler.pt"):  # Trainer silently starts both afresh when either is missing
            path = os.path.join(folder, name)
            if not os.path.isfile(path):
                return f"{name} is missing"
            if not _torch_archive_whole(path):
                return f"{name} is truncated"
    for name in sorted(os.listdir(folder)):  # optional files: checked only when present
        if re.fullmatch(r"rng_state.*\.pth|scheduler\.pt|scaler\.pt", name) and not _torch_archive_whole(
            os.path.join(folder, name)
        ):
            return f"{name} is empty or truncated"
    return None


def _torch_archive_whole(path: str) -> bool:
    """`torch.save` writes a zip archive; a truncated or empty one has no central directory."""
    try:
        return os.path.getsize(path) > 0 and zipfile.is_zipfile(path)
    except OSError:
        return False


def _weights_problem(folder: str) -> str | None:
    for name in _SAFETENSORS:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return None if _safetensors_whole(path) else f"{name} is truncated"
    for name in _INDEXES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as f:
                    shards = sorted(set(json.load(f)["weight_map"].values()))
            except (json.JSONDecodeError, KeyError, AttributeError, UnicodeDecodeError):
                return f"{name} is truncated or not a weight index"
            for shard in shards:
                shard_path = os.path.join(folder, shard)
                if not os.path.isfile(shard_path):
                    return f"weight shard {shard} is missing"
                if shard.endswith(".safetensors") and not _safetensors_whole(shard_path):
                    return f"weight shard {shard} is truncated"
            return None
    for name in _PICKLES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return None if zipfile.is_zipfile(path) else f"{name} is truncated"
    return "no model weights (model.safetensors, adapter_model.safetensors, ...)"


def _safetensors_whole(path: str) -> bool:
    """A safetensors file is an 8-byte header length, a JSON header, then exactly the bytes its offsets span."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if 8 + length > size:
                return False
            header = json.loads(f.read(length))
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError):
        return False
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    return size == 8 + length + end


def _checkpoints_of(output_dir: str) -> list[tuple[int, str]]:
    if not os.path.isdir(output_dir):
        return []
    return [
        (int(m.group(1)), os.path.join(output_dir, name))
        for name in os.listdir(output_dir)
        if (m := _CHECKPOINT.match(name)) and os.path.isdir(os.path.join(output_dir, name))
    ]


def newest_complete_checkpoint(output_dir: str, optimizer_expected: bool = True, asked: str = "True") -> str:
    """The newest `checkpoint-N` folder of `output_dir` that `checkpoint_problem` finds complete, warning about each
    newer one it skips.

    Raises:
        `ValueError`: there is no checkpoint, or none is complete (each is named with what it lacks).
    """
    found = _checkpoints_of(output_dir)
    if not found:
        raise ValueError(
            f"resume_from_checkpoint={asked}, but {output_dir} holds no {PREFIX_CHECKPOINT_DIR}-N folder."
        )
    skipped = []
    for _, folder in sorted(found, reverse=True):
        problem = checkpoint_problem(folder, optimizer_expected)
        if problem is None:
            for name, why in skipped:
                logger.warning(f"Not resuming from {name}: it is incomplete ({why}); resuming from {folder} instead.")
            return folder
        skipped.append((folder, problem))
    raise ValueError(
        f"resume_from_checkpoint={asked}, but no checkpoint in {output_dir} is complete: "
        + "; ".join(f"{name}: {why}" for name, why in skipped)
        + ". Start without resume_from_checkpoint, or pass the path of a checkpoint to resume from."
    )


def _newest_complete_or_none(output_dir: str, optimizer_expected: bool) -> str | None:
    for _, folder in sorted(_checkpoints_of(output_dir), reverse=True):
        if checkpoint_problem(folder, optimizer_expected) is None:
            return folder
    return None


def resolve_checkpoint_path(path: str, optimizer_expected: bool = True) -> str:
    """The checkpoint to resume from when `resume_from_checkpoint` names a folder (as scripts do with
    `get_last_checkpoint(output_dir)`): the folder itself when complete; when it is the newest `checkpoint-N` of its
    parent, the newest complete one there (as with `True`, warning about each skipped folder).

    Raises:
        `ValueError`: any other incomplete checkpoint, naming what it lacks and the newest complete alternative.
    """
    problem = checkpoint_problem(path, optimizer_expected)
    if problem is None:
        return path
    parent = os.path.dirname(os.path.normpath(path))
    found = _checkpoints_of(parent)
    match = _CHECKPOINT.match(os.path.basename(os.path.normpath(path)))
    if match and found and int(match.group(1)) == max(step for step, _ in found):
        return newest_complete_checkpoint(parent, optimizer_expected, asked=repr(str(path)))
    alternative = _newest_complete_or_none(parent, optimizer_expected) if found else None
    hint = (
        f"the newest complete checkpoint there is {alternative!r}; pass it, or resume_from_checkpoint=True"
        if alternative
        else "no complete checkpoint was found beside it; start without resume_from_checkpoint"
    )
    raise ValueError(f"resume_from_checkpoint={str(path)!r} is an incomplete checkpoint ({problem}): {hint}.")


def resolve_resume(
    trainer: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """`Trainer.train`'s arguments with `resume_from_checkpoint` resolved to a complete checkpoint.

    `True` (or the string `"true"`, any case, naming no folder, as `--resume_from_checkpoint True` parses) becomes the
    newest complete checkpoint of `trainer.args.output_dir`; a folder is checked by `resolve_checkpoint_path`.
    Anything else (`None`, `False`) is returned unchanged.
    """
    resume = kwargs.get("resume_from_checkpoint", args[0] if args else None)
    # The optimizer is saved as optimizer.pt unless only the model is saved or DeepSpeed / FSDP save it their way.
    expected = not (trainer.args.save_only_model or trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled)
    if isinstance(resume, os.PathLike):
        resume = os.fspath(resume)
    if isinstance(resume, str) and resume.strip().lower() == "true" and not os.path.isdir(resume):
        resume = True
    if resume is True:
        folder = newest_complete_checkpoint(trainer.args.output_dir, optimizer_expected=expected)
    elif isinstance(resume, str) and os.path.isdir(resume):
        folder = resolve_checkpoint_path(resume, optimizer_expected=expected)
    else:
        return args, kwargs
    if args:
        return (folder, *args[1:]), kwargs
    return args, {**kwargs, "resume_from_checkpoint": folder}
