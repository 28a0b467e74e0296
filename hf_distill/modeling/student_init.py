"""Initialise a smaller student from a subset of the teacher's layers (DistilBERT, Minitron)."""

from __future__ import annotations

import copy
from collections.abc import Sequence

from torch import nn
from transformers import PreTrainedModel

from ..provenance import checked_model_source, record_source


def _layer_stack(model: nn.Module, num_layers: int) -> tuple[str, nn.ModuleList]:
    """The `nn.ModuleList` holding the model's `num_layers` transformer blocks, and its qualified name."""
    stacks = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == num_layers]
    if len(stacks) != 1:
        found = [name for name, _ in stacks] or "none"
        raise ValueError(
            f"Could not find the one list of {num_layers} layers in {type(model).__name__} (found: {found}); "
            "initialise this student yourself and pass it as `model`."
        )
    return stacks[0]


def student_from_teacher_layers(teacher: PreTrainedModel, layers: Sequence[int]) -> PreTrainedModel:
    """A copy of `teacher` that keeps only `layers`, in the given order, with everything else (embeddings, final
    norm, head) copied. The student's weights derive from the teacher's: its model card must say so.

    Args:
        teacher (`PreTrainedModel`): the teacher; left unchanged.
        layers (`Sequence[int]`): teacher layer indices to keep, e.g. `[0, 6, 12, 18, 24, 29]`.

    Returns:
        `PreTrainedModel` of the teacher's class with `config.num_hidden_layers == len(layers)`.
    """
    num_layers = teacher.config.num_hidden_layers
    bad = [i for i in layers if not 0 <= i < num_layers]
    if not layers or bad:
        raise ValueError(f"student layers={list(layers)} must be non-empty indices in [0, {num_layers - 1}].")
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(layers)
    if getattr(config, "layer_types", None) is not None:  # per-layer attention kinds (sliding/full) follow the layers
        config.layer_types = [teacher.config.layer_types[i] for i in layers]
    student = type(teacher)(config).to(teacher.dtype)
    stack_name, _ = _layer_stack(teacher, num_layers)
    prefix = stack_name + "."
    state = {}
    for key, value in teacher.state_dict().items():
        if not key.startswith(prefix):
            state[key] = value
            continue
        index, rest = key[len(prefix) :].split(".", 1)
        if int(index) in layers:
            state[f"{prefix}{list(layers).index(int(index))}.{rest}"] = value
    student.load_state_dict(state, strict=True)
    return record_source(student, {"init": "teacher_layers", "layers": list(layers), **checked_model_source(teacher)})
