"""The forward-pass helpers both models use: which arguments a forward accepts, the decoder inputs an encoder-decoder
builds from labels, the `logits` of an output (or a clear error), and what `compute_metrics` receives of an output."""

from __future__ import annotations

import inspect
import sys
from typing import Any

import torch
from torch import nn

from .heads import is_encoder_decoder, unwrap_peft

# Batch columns holding labels: kept out of every forward (the trainer computes its own losses from them).
LABEL_COLUMNS = ("labels", "label", "label_ids")


def model_logits(outputs: Any, who: str) -> torch.Tensor:
    """`outputs.logits` of a transformers `ModelOutput` or a plain dict, or a clear error."""
    if isinstance(outputs, dict) and outputs.get("logits") is not None:  # ModelOutput is a dict too
        return outputs["logits"]
    found = list(outputs.keys()) if isinstance(outputs, dict) else type(outputs).__name__
    raise ValueError(
        f"The {who}'s forward returned no `logits` (got {found}). Distillation needs a model whose output is a "
        "dict or ModelOutput with a `logits` entry; return `{'logits': ...}` from a custom module."
    )


def accepted_arguments(model: nn.Module) -> frozenset[str] | None:
    """Names `model.forward` declares, or `None` when it declares only `**kwargs` (it takes anything).

    Pass the unwrapped model: a DDP wrapper's `forward(*inputs, **kwargs)` says nothing about the model.
    """
    params = inspect.signature(unwrap_peft(model).forward).parameters
    named = frozenset(k for k, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))
    return named or None


def select_arguments(inputs: dict[str, Any], accepted: frozenset[str] | None) -> dict[str, Any]:
    """The entries of `inputs` a forward accepts, so teacher and student may need different columns."""
    return dict(inputs) if accepted is None else {k: v for k, v in inputs.items() if k in accepted}


def decoder_inputs(model: nn.Module, inputs: dict[str, Any], labels: torch.Tensor | None) -> dict[str, Any]:
    """Encoder-decoder models build `decoder_input_ids` from labels internally; do it here so labels can stay out of
    the forward (the trainer computes its own losses) and both models decode the same targets."""
    if not is_encoder_decoder(model) or labels is None or inputs.get("decoder_input_ids") is not None:
        return inputs
    return {**inputs, "decoder_input_ids": decoder_input_ids_from_labels(model, labels)}


def decoder_input_ids_from_labels(model: nn.Module, labels: torch.Tensor) -> torch.Tensor:
    """The `decoder_input_ids` the model's own forward would build from `labels`.

    Most seq2seq models expose `prepare_decoder_input_ids_from_labels`; some (Blenderbot, BlenderbotSmall, M2M100,
    NLLB-MoE) only shift inside `forward`. For those, the model module's own `shift_tokens_right(labels, pad_token_id,
    decoder_start_token_id)` is used when it has that signature, else the same rule: labels shifted right, the first
    position `config.decoder_start_token_id`, -100 replaced by `config.pad_token_id`.
    """
    inner = unwrap_peft(model)
    prepare = getattr(inner, "prepare_decoder_input_ids_from_labels", None)
    if callable(prepare):
        return prepare(labels=labels)
    config = inner.config
    pad, start = getattr(config, "pad_token_id", None), getattr(config, "decoder_start_token_id", None)
    if start is None or pad is None:
        raise ValueError(
            f"{type(inner).__name__} has no `prepare_decoder_input_ids_from_labels`, and its config lacks "
            f"decoder_start_token_id ({start}) or pad_token_id ({pad}) to build decoder inputs from labels; set "
            "them in the config, or pass `decoder_input_ids` in the batch."
        )
    shift = getattr(sys.modules.get(type(inner).__module__), "shift_tokens_right", None)
    if callable(shift):
        try:
            if len(inspect.signature(shift).parameters) == 3:
                return shift(labels, pad, start)
        except (TypeError, ValueError):
            pass
    shifted = labels.new_zeros(labels.shape)
    shifted[..., 1:] = labels[..., :-1].clone()
    shifted[..., 0] = start
    return shifted.masked_fill(shifted == -100, pad)


def outputs_for_metrics(outputs: dict[str, Any], ignore_keys: list[str]) -> Any:
    """What `compute_metrics` receives of a model's outputs: its tensors (logits first) except `loss` and
    `ignore_keys`. A KV cache, which a model in eval mode returns, can be neither gathered nor padded."""
    kept = tuple(
        v for k, v in outputs.items() if k not in [*ignore_keys, "loss"] and isinstance(v, (torch.Tensor, tuple))
    )
    return kept[0] if len(kept) == 1 else kept
