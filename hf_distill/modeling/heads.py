"""What kind of head a model has, which decides how its logits line up with the labels, which Auto class loads a
teacher for it, and which `task:` of a recipe trains it: one table, `HEAD_KINDS`."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from transformers import (
    AutoModelForAudioClassification,
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


@dataclass(frozen=True)
class HeadKind:
    """One kind of head, known by the end of its model class's name (`LlamaForCausalLM` -> `ForCausalLM`)."""

    suffix: str
    token_level: bool  # one distribution per token (True) or one per example (False)
    auto_class: type | None = None  # loads a teacher for this head by name; None: pass the teacher model itself
    task: str | None = None  # the `task:` of an `hf-distill` recipe that trains this head, when the CLI has one
    pipeline_tag: str | None = None  # the Hub's task tag for a model card


HEAD_KINDS = (
    HeadKind("ForCausalLM", True, AutoModelForCausalLM, "causal_lm", "text-generation"),
    HeadKind("ForConditionalGeneration", True, AutoModelForSeq2SeqLM, None, "text2text-generation"),
    HeadKind("ForSeq2SeqLM", True, AutoModelForSeq2SeqLM, None, "text2text-generation"),
    HeadKind(
        "ForSequenceClassification",
        False,
        AutoModelForSequenceClassification,
        "sequence_classification",
        "text-classification",
    ),
    HeadKind("ForTokenClassification", True, AutoModelForTokenClassification, None, "token-classification"),
    HeadKind("ForImageClassification", False, AutoModelForImageClassification, None, "image-classification"),
    HeadKind("ForAudioClassification", False, AutoModelForAudioClassification, None, "audio-classification"),
    HeadKind("ForMaskedLM", True),  # no Auto class or card tag here: none was ever loaded or tagged for it by name
)
# The recipe tasks `hf-distill` trains, in the table's order.
TASKS = tuple(kind.task for kind in HEAD_KINDS if kind.task)


def unwrap_peft(model: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def head_name(model: nn.Module) -> str:
    return type(unwrap_peft(model)).__name__


def head_kind(class_name: str) -> HeadKind | None:
    """The row of `HEAD_KINDS` whose suffix ends `class_name` (e.g. `"BertForSequenceClassification"`), or `None`."""
    return next((kind for kind in HEAD_KINDS if class_name.endswith(kind.suffix)), None)


def head_kind_of_task(task: str) -> HeadKind:
    """The row of `HEAD_KINDS` a recipe's `task:` trains (`causal_lm`, `sequence_classification`)."""
    found = next((kind for kind in HEAD_KINDS if kind.task == task), None)
    if found is None:
        raise ValueError(f"task={task!r} is not supported by the CLI; use one of {', '.join(TASKS)}.")
    return found


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
    kind = head_kind(name)
    if kind is not None:
        return kind.token_level
    if "For" in name:
        return False
    return None
