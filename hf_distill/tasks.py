"""What kind of head a model has, which decides how its logits line up with the labels."""

from __future__ import annotations

from torch import nn
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

# Heads that predict one distribution per token rather than one per example.
_TOKEN_LEVEL_SUFFIXES = (
    "ForCausalLM",
    "ForConditionalGeneration",
    "ForSeq2SeqLM",
    "ForTokenClassification",
    "ForMaskedLM",
)


def unwrap_peft(model: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def head_name(model: nn.Module) -> str:
    return type(unwrap_peft(model)).__name__


def is_encoder_decoder(model: nn.Module) -> bool:
    return bool(getattr(getattr(unwrap_peft(model), "config", None), "is_encoder_decoder", False))


def shifts_labels(model: nn.Module) -> bool:
    """Decoder-only language models predict token t+1 at position t, so their labels are shifted by one."""
    name = head_name(model)
    return not is_encoder_decoder(model) and (
        name in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values() or name.endswith("ForCausalLM")
    )


def is_token_level(model: nn.Module) -> bool | None:
    """`True` for per-token heads, `False` for known per-example heads, `None` for a model of unknown kind."""
    name = head_name(model)
    if name.endswith(_TOKEN_LEVEL_SUFFIXES):
        return True
    if "For" in name:
        return False
    return None
