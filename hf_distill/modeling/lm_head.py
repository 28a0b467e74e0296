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

from .._logging import get_logger
from ..losses.chunked import LinearHead
from .adapters import head_parts
from .heads import unwrap_peft

logger = get_logger(__name__)


def head_module(model: nn.Module) -> nn.Module | None:
    """The module the model calls as its output projection, when `hf_distill.modeling.adapters.head_parts` understands it (a
    plain `nn.Linear`, tied or not, possibly under plain LoRA adapters or peft's `modules_to_save`), else `None`.

    Quantised heads and other adapter types are not understood; those models use the logits path.
    """
    get_output = getattr(unwrap_peft(model), "get_output_embeddings", None)
    head = get_output() if callable(get_output) else None
    return head if head_parts(head) is not None else None


def _text_config(model: nn.Module) -> Any:
    config = getattr(unwrap_peft(model), "config", None)
    get_text = getattr(config, "get_text_config", None)
    return get_text() if callable(get_text) else config


def _logits_bias_owner(model: nn.Module) -> nn.Module | None:
    """The module holding a `final_logits_bias` buffer `(1, V)` that its forward adds after the head (BART, mBART,
    Pegasus, Marian, Blenderbot), else `None`. The shared-base teacher's is its student's."""
    base = unwrap_peft(model)
    if torch.is_tensor(getattr(base, "final_logits_bias", None)):
        return base
    student = getattr(base, "student", None)  # `SharedBaseModel` runs the student's own forward
    if isinstance(student, nn.Module) and torch.is_tensor(getattr(unwrap_peft(student), "final_logits_bias", None)):
        return unwrap_peft(student)
    return None


def linear_head(model: nn.Module) -> LinearHead | None:
    """The model's head as a `LinearHead` with its post-head logit transforms read from the config:
    `final_logit_softcapping` (Gemma 2/3), `logit_scale` (Cohere), `logits_scaling` (Granite divides by it).
    A `final_logits_bias` added after the head (BART, Marian, Pegasus, ...) is the head's bias (summed with the
    head's own bias when it has one).

    LoRA adapters on the head become the head's `adapter_weight` (their `lora_B` weights side by side); the matching
    inputs are what `CapturedHidden.features()` appends to the hidden states.
    """
    head = head_module(model)
    if head is None:
        return None
    parts = head_parts(head)
    config = _text_config(model)
    scale = float(getattr(config, "logit_scale", None) or 1.0)
    granite = getattr(config, "logits_scaling", None)
    if granite:
        scale /= float(granite)
    softcap = getattr(config, "final_logit_softcapping", None)
    adapter_weight = None
    if parts.loras:
        weights = [lora.lora_B.weight for lora in parts.loras]  # (V, r) each
        adapter_weight = weights[0] if len(weights) == 1 else torch.cat(weights, dim=1)
    bias = parts.linear.bias
    owner = _logits_bias_owner(model)
    if owner is not None:
        extra = owner.final_logits_bias.reshape(-1).to(parts.linear.weight.dtype)  # (1, V) -> (V,)
        bias = extra if bias is None else bias + extra
    return LinearHead(
        parts.linear.weight,
        bias,
        logit_scale=scale,
        softcap=float(softcap) if softcap else None,
        adapter_weight=adapter_weight,
    )


def chunk_size_for(student: nn.Module, teacher: nn.Module, requested: int | None) -> int:
    """Tokens per chunk of the chunked loss for these two LM models: `0` (logits path) when either head is not
    understood or `requested` is 0; `requested` when given; else ~64 MiB float32 tiles per model, rounded down to a
    power of two (flat memory in N, near the matmul floor: see benchmarks/)."""
    if requested == 0 or head_module(student) is None or head_module(teacher) is None:
        return 0
    if requested is not None:
        return requested
    vocab = linear_head(student).weight.shape[0]
    return 1 << max(5, (2**24 // vocab).bit_length() - 1)


class CapturedHidden:
    """The head input recorded during one forward, `(B, T, H)`, and the head's LoRA inputs `(B, T, r)` if any."""

    hidden_states: torch.Tensor | None = None
    adapter_inputs: torch.Tensor | None = None

    def features(self) -> torch.Tensor:
        """`(B, T, H + r)`: what `linear_head(model)` projects (the hidden states, then the LoRA inputs)."""
        if self.adapter_inputs is None:
            return self.hidden_states
        return torch.cat([self.hidden_states, self.adapter_inputs.to(self.hidden_states.dtype)], dim=-1)


@contextlib.contextmanager
def capture_head_input(model: nn.Module) -> Iterator[CapturedHidden]:
    """Within the block, the model's head records its input and returns empty logits instead of projecting.

    A LoRA adapter on the head still runs its `lora_A` (and dropout) here, in the model's autograd graph, so its
    gradient arrives through the recorded adapter inputs; `lora_B` gets its gradient from the chunked loss. The
    empty logits are a zero-width matmul with the head's weight, so the weight still appears in the forward's
    autograd graph (DDP's unused-parameter search must not mark it unused: its gradient arrives via the chunked loss).
    """
    head = head_module(model)
    if head is None:
        raise ValueError(f"{type(unwrap_peft(model)).__name__} has no plain linear LM head to capture.")
    parts = head_parts(head)
    captured = CapturedHidden()
    had_instance_forward = "forward" in head.__dict__
    previous = head.__dict__.get("forward")

    def record(hidden: torch.Tensor) -> torch.Tensor:
        captured.hidden_states = hidden
        if parts.loras:
            inputs = [lora.side_input(hidden) for lora in parts.loras]
            captured.adapter_inputs = inputs[0] if len(inputs) == 1 else torch.cat(inputs, dim=-1)
        return hidden @ parts.linear.weight[:0].t()  # (B, T, 0)

    # A bias added after the head (`final_logits_bias`, (1, V)) must broadcast against the empty (B, T, 0) logits:
    # it is swapped for a (1, 0) one for the block; `linear_head` adds the real one to the head's bias.
    owner = _logits_bias_owner(model)
    logits_bias = None if owner is None else owner.final_logits_bias
    head.forward = record
    if owner is not None:
        owner.final_logits_bias = logits_bias[..., :0]
    try:
        yield captured
    finally:
        if owner is not None:
            owner.final_logits_bias = logits_bias
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
    batch; the model is put in evaluation mode for the check (dropout would make the two forwards differ). NaN/inf
    logits that the projection reproduces count as reproduced: the non-finite check reports them, naming the model.
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
    hidden = captured.features()[:, :positions]  # (b, t, H [+ r])
    projected = head.transform(head.linear(hidden.reshape(-1, hidden.shape[-1])))
    expected = logits[:, :positions].reshape(projected.shape).float()
    finite = expected[torch.isfinite(expected)]
    scale = finite.abs().max().clamp_min(1).item() if finite.numel() else 1.0
    return torch.allclose(projected, expected, rtol=1e-3, atol=1e-3 * scale, equal_nan=True)


def check_head(model: nn.Module, call: Any) -> bool | None:
    """`head_reproduces_logits`, guarded: the one-time check of a model's head before the chunked loss.

    Any exception during the check (a forward that the capture cannot run through, an output without `logits`, a
    head whose shape `linear_head` misreads) means the chunked path cannot be trusted for that model: it is logged
    on one info line and `None` returned, so the trainer uses the logits path instead of crashing.

    Returns:
        `True` when the head reproduces the model's logits, `False` when it does not, `None` when the check failed.
    """
    try:
        return head_reproduces_logits(model, call)
    except Exception as error:  # noqa: BLE001 - any failure means "not understood": fall back, don't crash
        logger.info(
            f"The memory-efficient loss could not check {type(unwrap_peft(model)).__name__}'s LM head "
            f"({type(error).__name__}: {error}); using the logits path. Set kd_chunk_size=0 to skip the check."
        )
        return None
