"""What a model is made of, for the lineage record: its architecture, parameter count and adapter (method, base
model pinned, configuration). Plain data; teacher and student are described alike."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..provenance import model_source
from .adapters import adapter_summary
from .heads import unwrap_peft


def model_record(model: nn.Module) -> dict[str, Any]:
    """`{architecture, parameters, adapter}` of a model, PEFT or not (the adapter `None` without one)."""
    base = unwrap_peft(model)
    return {
        "architecture": type(base).__name__,
        "parameters": sum(p.numel() for p in base.parameters()),
        "adapter": adapter_record(model),
    }


def adapter_record(model: nn.Module) -> dict[str, Any] | None:
    """The adapter's summary with its base model's pinned identity (no license: that is the teacher's business)."""
    summary = adapter_summary(model)
    if summary is None:
        return None
    base = model_source(unwrap_peft(model))
    summary = {k: v for k, v in summary.items() if k not in ("base_model", "base_revision")}
    return {**summary, "base_model": {k: v for k, v in base.items() if k != "license"}}
