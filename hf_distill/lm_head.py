"""Reach a model's final hidden states through its own forward, without computing its logits.

The chunked loss needs the input of each model's LM head. Calling the model the Trainer wraps (so DDP/FSDP hooks and
adapters see the forward) with its head swapped, for the duration of one call, for a stand-in that records its input
and returns empty `(B, T, 0)` logits gives exactly that: the model body runs as usual, no `(B, T, V)` tensor is ever
allocated, and the recorded hidden states carry the body's autograd graph.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from .losses.chunked import LinearHead
from .tasks import unwrap_peft


def head_module(model: nn.Module) -> nn.Linear | None:
    """The model's output projection when it is a plain `nn.Linear` (tied or not), else `None`.

    Quantised or adapter-wrapped heads are not plain linear layers; those models use the logits path.
    """
    get_output = getattr(unwrap_peft(model), "get_output_embeddings", None)
    head = get_output() if callable(get_output) else None
    return head if type(head) is nn.Linear else None


def _text_config(model: nn.Module) -> Any:
    config = getattr(unwrap_peft(model), "config", None)
    get_text = getattr(config, "get_text_config", None)
    return get_text() if callable(get_text) else config


def linear_head(model: nn.Module) -> LinearHead | None:
    """The model's head as a `LinearHead` with its post-head logit transforms read from the config:
    `final_logit_softcapping` (Gemma 2/3), `logit_scale` (Cohere), `logits_scaling` (Granite divides by it)."""
    head = head_module(model)
    if head is None:
        return None
    config = _text_config(model)
    scale = float(getattr(config, "logit_scale", None) or 1.0)
    granite = getattr(config, "logits_scaling", None)
    if granite:
        scale /= float(granite)
    softcap = getattr(config, "final_logit_softcapping", None)
    return LinearHead(head.weight, head.bias, logit_scale=scale, softcap=float(softcap) if softcap else None)


class CapturedHidden:
    """Holds the head input recorded during one forward: `(B, T, H)`."""

    hidden_states: torch.Tensor | None = None


@contextlib.contextmanager
def capture_head_input(model: nn.Module) -> Iterator[CapturedHidden]:
    """Within the block, the model's head records its input and returns empty logits instead of projecting.

    The empty logits are a zero-width matmul with the head's weight, so the weight still appears in the forward's
    autograd graph (DDP's unused-parameter search must not mark it unused: its gradient arrives via the chunked loss).
    """
    head = head_module(model)
    if head is None:
        raise ValueError(f"{type(unwrap_peft(model)).__name__} has no plain linear LM head to capture.")
    captured = CapturedHidden()
    had_instance_forward = "forward" in head.__dict__
    previous = head.__dict__.get("forward")

    def record(hidden: torch.Tensor) -> torch.Tensor:
        captured.hidden_states = hidden
        return hidden @ head.weight[:0].t()  # (B, T, 0)

    head.forward = record
    try:
        yield captured
    finally:
        if had_instance_forward:
            head.forward = previous
        else:
            del head.forward


def slice_batch(inputs: dict[str, Any], rows: int) -> dict[str, Any]:
    """The first `rows` examples of a batch (tensors whose first dimension is the batch)."""
    batch = next(v.shape[0] for v in inputs.values() if torch.is_tensor(v) and v.dim() > 0)
    return {
        k: v[:rows] if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == batch else v for k, v in inputs.items()
    }


@torch.no_grad()
def head_reproduces_logits(model: nn.Module, call: Any, positions: int = 8) -> bool:
    """Whether projecting the captured hidden states through `linear_head(model)` gives the model's own logits.

    Catches post-head transforms this module does not know about. `call()` runs the model's forward on a small
    batch; the model is put in evaluation mode for the check (dropout would make the two forwards differ).
    """
    was_training = model.training
    model.eval()
    try:
        logits = call()["logits"]
        with capture_head_input(model) as captured:
            call()
    finally:
        model.train(was_training)
    head = linear_head(model)
    hidden = captured.hidden_states[:, :positions]  # (b, t, H)
    projected = head.transform(head.linear(hidden.reshape(-1, hidden.shape[-1])))
    expected = logits[:, :positions].reshape(projected.shape).float()
    return torch.allclose(projected, expected, rtol=1e-3, atol=1e-3 * expected.abs().max().clamp_min(1).item())
