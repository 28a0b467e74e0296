"""PEFT students and teachers: wrapping a student in adapters (with the checks around it), seeing through adapter
wrappers to a model's LM head, merging an adapter for saving, and describing an adapter for the lineage record."""

from __future__ import annotations

import copy
import importlib.util
from dataclasses import dataclass, field
from typing import Any

import torch
from peft import PeftConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from peft.tuners.lora import LoraLayer
from peft.utils.other import ModulesToSaveWrapper
from torch import nn

from .heads import unwrap_peft

# `teacher_model="base"`: the student's own base weights with its adapters disabled.
SHARED_BASE_TEACHER = "base"


def is_peft_model(model: nn.Module) -> bool:
    return isinstance(model, PeftModel)


def is_quantized(model: nn.Module) -> bool:
    """Loaded in 4 or 8 bits by bitsandbytes (the base of a QLoRA student)."""
    model = unwrap_peft(model)
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def require_bitsandbytes(where: str) -> None:
    """Refuse a 4/8-bit (QLoRA) request up front when bitsandbytes is missing, naming the setting."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError(
            f"{where} asks for a 4/8-bit (QLoRA) student, which needs bitsandbytes and a GPU it supports: "
            "`pip install bitsandbytes`, or train a LoRA student without quantization."
        )


def _linear_module_names(model: nn.Module) -> list[str]:
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)})


def wrap_student(model: nn.Module, peft_config: PeftConfig | None) -> nn.Module:
    """The student with adapters from `peft_config` (as TRL's trainers do), or the model unchanged.

    Raises:
        ValueError: `peft_config` together with a model that already is a `PeftModel`, or adapters that target
            nothing (or train nothing).
    """
    if peft_config is None:
        return model
    if not isinstance(peft_config, PeftConfig):
        raise TypeError(f"peft_config must be a peft config such as LoraConfig, got {type(peft_config).__name__}.")
    if is_peft_model(model):
        raise ValueError(
            f"peft_config={type(peft_config).__name__}(...) was given, but the model is already a PeftModel with "
            f"adapter(s) {sorted(model.peft_config)}. Pass either the wrapped model or the base model with "
            "peft_config, not both."
        )
    if is_quantized(model):
        # Casts norms to float32 and readies the quantized base for adapter training (QLoRA). Activation
        # checkpointing stays the Trainer's business (its `activation_checkpointing` argument).
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    try:
        wrapped = get_peft_model(model, peft_config)
    except ValueError as error:
        if "not found in the base model" not in str(error) and "matches no" not in str(error):
            raise
        targets = getattr(peft_config, "target_modules", None)
        raise ValueError(
            f"peft_config.target_modules={targets!r} matches no module of {type(model).__name__}. Its linear layers "
            f"are named {_linear_module_names(model)}; target some of those, or use target_modules='all-linear'."
        ) from error
    if not any(p.requires_grad for p in wrapped.parameters()):
        raise ValueError(f"peft_config={peft_config!r} leaves no trainable parameter in the student.")
    return wrapped


@dataclass
class LoraPart:
    """One active plain-LoRA adapter on a linear layer: `output += scaling · B(A(dropout(x)))`."""

    lora_A: nn.Linear
    lora_B: nn.Linear
    dropout: nn.Module
    scaling: float

    def side_input(self, hidden: torch.Tensor) -> torch.Tensor:
        """`(..., H)` -> `(..., r)`: what `lora_B` multiplies, scaling included."""
        return self.lora_A(self.dropout(hidden.to(self.lora_A.weight.dtype))) * self.scaling


@dataclass
class HeadParts:
    """An LM head seen through its adapter wrappers: a plain linear layer plus the LoRA adapters that add to it."""

    linear: nn.Linear
    loras: list[LoraPart] = field(default_factory=list)


def head_parts(head: nn.Module | None) -> HeadParts | None:
    """What the head computes, as a plain `nn.Linear` and active LoRA adapters, or `None` when it is anything else.

    Understood: a plain `nn.Linear`; peft's `modules_to_save` copy of it; a peft LoRA layer over it (plain LoRA, any
    number of active adapters, merged or disabled). Not understood (the trainer then uses the logits path): DoRA and
    other LoRA variants, LoRA with a bias, IA³ and other adapter types, quantized heads.
    """
    if type(head) is nn.Linear:
        return HeadParts(head)
    if isinstance(head, ModulesToSaveWrapper):
        active = head.active_adapters
        if head.disable_adapters or not active or active[0] not in head.modules_to_save:
            return head_parts(head.original_module)
        return head_parts(head.modules_to_save[active[0]])
    if isinstance(head, LoraLayer) and isinstance(head, nn.Module) and type(head.get_base_layer()) is nn.Linear:
        base = head.get_base_layer()
        if head.disable_adapters or head.merged:  # the forward is the base layer's (merged weights are in it)
            return HeadParts(base)
        loras = []
        for name in head.active_adapters:
            if name not in head.lora_A:
                continue
            lora_A, lora_B = head.lora_A[name], head.lora_B[name]
            if name in getattr(head, "lora_variant", {}) or lora_B.bias is not None or type(lora_A) is not nn.Linear:
                return None
            loras.append(LoraPart(lora_A, lora_B, head.lora_dropout[name], float(head.scaling[name])))
        return HeadParts(base, loras)
    return None


def base_head(head: nn.Module) -> nn.Module:
    """The module that computes a wrapped head's output while its adapters are disabled."""
    if isinstance(head, ModulesToSaveWrapper):
        return base_head(head.original_module)
    if isinstance(head, LoraLayer) and isinstance(head, nn.Module):
        return base_head(head.get_base_layer())
    return head


def merged_copy(model: PeftModel) -> nn.Module:
    """A plain transformers model with the adapters merged in; the trained `model` is left as it was."""
    if is_quantized(model):
        raise ValueError(
            "merge_adapter_on_save=True with a 4/8-bit base: merging into quantized weights loses precision. Save "
            "the adapter (the default) and merge it into a full-precision copy of the base with peft."
        )
    return copy.deepcopy(model).merge_and_unload()


def adapter_summary(model: nn.Module) -> dict[str, Any] | None:
    """The adapter of a PEFT model for the lineage record: method, base model and the config; `None` otherwise."""
    if not is_peft_model(model):
        return None
    name = model.active_adapter if isinstance(model.active_adapter, str) else model.active_adapters[0]
    config = model.peft_config[name]
    settings = {k: v for k, v in config.to_dict().items() if k not in ("base_model_name_or_path", "revision")}
    return {
        "method": str(config.peft_type.value if hasattr(config.peft_type, "value") else config.peft_type),
        "adapter_name": name,
        "base_model": config.base_model_name_or_path,
        "base_revision": config.revision,
        "config": _plain(settings),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def _plain(value: Any) -> Any:
    """JSON-ready: sets become sorted lists, enums their values."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted(_plain(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return getattr(value, "value", value)
