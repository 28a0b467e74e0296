"""Loading a teacher by name: a Hub id (pinned to a commit), a local folder, a `packaged:` asset or a PEFT adapter over
its base, with the Auto class of the student's head (or of a recipe's task) and in the student's dtype."""

from __future__ import annotations

import os
from typing import Any

import torch
from peft import PeftConfig, PeftModel
from torch import nn
from transformers import PreTrainedModel

from .. import _packaged as assets
from ..modeling.heads import HEAD_KINDS, head_kind, head_kind_of_task, unwrap_peft
from ..provenance import is_commit_sha, record_source, source_of


def model_dtype(model: nn.Module) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def load_teacher(
    name_or_path: str,
    student: nn.Module | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
    *,
    task: str | None = None,
    **from_pretrained_kwargs: Any,
) -> PreTrainedModel:
    """Load a teacher by Hub id, local folder or `packaged:` name, with its source recorded for the lineage.

    The Auto class comes from `hf_distill.modeling.heads.HEAD_KINDS`: by the student's head (a `...ForCausalLM`
    student gets `AutoModelForCausalLM`) and in the student's dtype, or, before there is a student (`hf-distill`
    builds one from the teacher's layers), by the recipe's `task`.

    Args:
        name_or_path (`str`): a Hub id, a local folder, or `packaged:<name>` (see `hf_distill._packaged`).
        student (`nn.Module`, *optional*): the student, a transformers model (PEFT-wrapped or not). Give it or `task`.
        trust_remote_code (`bool`, *optional*, defaults to `False`): let the repository run its own code.
        revision (`str`, *optional*): branch, tag or commit of a Hub teacher. It is resolved to a commit sha first
            and the weights are loaded at that sha, so the lineage names exactly what was loaded.
        task (`str`, *optional*): a recipe task (`causal_lm`, `sequence_classification`), used when there is no
            student.
        from_pretrained_kwargs: passed to `from_pretrained` (e.g. `num_labels`, `id2label` of a classifier).
    """
    if student is None:
        if task is None:
            raise ValueError(f"load_teacher({name_or_path!r}) needs the student or a task to choose the Auto class.")
        auto_class = head_kind_of_task(task).auto_class
    else:
        head_class = type(unwrap_peft(student)).__name__
        auto_class = getattr(head_kind(head_class), "auto_class", None)
        if auto_class is None:
            loadable = ", ".join(kind.suffix for kind in HEAD_KINDS if kind.auto_class)
            raise ValueError(
                f"teacher_model={name_or_path!r} is a name, but the student ({head_class}) has no head that maps to an "
                f"Auto class ({loadable}); load the teacher yourself and pass the model object as `teacher_model`."
            )
        from_pretrained_kwargs = {"dtype": model_dtype(student), **from_pretrained_kwargs}
    source = source_of(name_or_path, revision)
    pinned = source["revision"] if is_commit_sha(source.get("revision")) else revision
    path = assets.resolve_packaged_model(name_or_path) if assets.is_packaged(name_or_path) else name_or_path
    adapter = _adapter_config(path, pinned)
    if adapter is None:
        teacher = auto_class.from_pretrained(
            path, trust_remote_code=trust_remote_code, revision=pinned, **from_pretrained_kwargs
        )
        return record_source(teacher, source, path if os.path.isdir(path) else None)
    # An adapter folder or repo: its base, loaded the same way, with the adapter on top.
    if not adapter.base_model_name_or_path:
        raise ValueError(
            f"teacher_model={name_or_path!r} is a PEFT adapter whose adapter_config.json names no base model "
            "(base_model_name_or_path); load base and adapter yourself and pass the PeftModel as teacher_model."
        )
    base = load_teacher(
        adapter.base_model_name_or_path,
        student,
        trust_remote_code,
        adapter.revision,
        task=task,
        **from_pretrained_kwargs,
    )
    adapted = PeftModel.from_pretrained(base, path, revision=pinned)
    return record_source(adapted, source, path if os.path.isdir(path) else None)


def _adapter_config(path: str, revision: str | None = None) -> PeftConfig | None:
    """The adapter config when `path` (folder or Hub id) holds a PEFT adapter rather than a full model."""
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "adapter_config.json")):
            return None
    elif os.path.exists(path):
        return None
    try:
        return PeftConfig.from_pretrained(path, revision=revision)
    except (OSError, ValueError):
        return None
