"""Classification teachers whose labels are the student's in another order: the teacher's logits are permuted to the
student's label order; different label names or class counts are refused when the trainer is built."""

from __future__ import annotations

import re

import torch
from torch import nn

from .._logging import get_logger
from ..modeling.heads import unwrap_peft

logger = get_logger(__name__)

_DEFAULT_LABEL = re.compile(r"LABEL_\d+")


def _labels(model: nn.Module) -> list[str] | None:
    """The model's label names in class-index order, `None` for a model that is not a classifier."""
    base = unwrap_peft(model)
    if "Classification" not in type(base).__name__:
        return None
    id2label = getattr(getattr(base, "config", None), "id2label", None)
    if not id2label:
        return None
    return [str(id2label[i]) for i in sorted(id2label, key=int)]


def _real_names(labels: list[str]) -> bool:
    """`False` for the defaults transformers invents (`LABEL_0`, `LABEL_1`, ...): those name no class."""
    return not all(_DEFAULT_LABEL.fullmatch(name) for name in labels)


def label_permutation(student: nn.Module, teacher: nn.Module) -> list[int] | None:
    """Which teacher logit column holds each student label, when both classifiers name their labels alike but in
    another order; `None` when no permutation is needed (same order, unnamed labels, not classifiers).

    Raises:
        `ValueError`: different class counts, or (both with real label names) different names.
    """
    student_labels, teacher_labels = _labels(student), _labels(teacher)
    if student_labels is None or teacher_labels is None:
        return None
    if len(student_labels) != len(teacher_labels):
        raise ValueError(
            f"The student classifies into {_count(student_labels)} ({_listed(student_labels)}) and the teacher "
            f"into {_count(teacher_labels)} ({_listed(teacher_labels)}); distillation needs the same classes. Build the "
            "student with the teacher's labels (e.g. `num_labels`, `id2label` and `label2id` from the teacher's "
            "config)."
        )
    if not (_real_names(student_labels) and _real_names(teacher_labels)) or student_labels == teacher_labels:
        return None
    if sorted(student_labels) != sorted(teacher_labels) or len(set(student_labels)) != len(student_labels):
        only_student = sorted(set(student_labels) - set(teacher_labels))
        only_teacher = sorted(set(teacher_labels) - set(student_labels))
        raise ValueError(
            f"The student's labels ({_listed(student_labels)}) are not the teacher's ({_listed(teacher_labels)}): "
            f"only the student has {only_student or 'none'}, only the teacher has {only_teacher or 'none'}. "
            "Distilling would teach the student the teacher's classes under the wrong names; give the student the "
            "teacher's `id2label`/`label2id`, or a teacher trained on the same labels."
        )
    permutation = [teacher_labels.index(name) for name in student_labels]
    logger.info(
        f"The teacher orders its labels differently ({_listed(teacher_labels)}); its logits are permuted to the "
        f"student's order ({_listed(student_labels)})."
    )
    return permutation


def _count(labels: list[str]) -> str:
    return f"{len(labels)} label" + ("" if len(labels) == 1 else "s")


_UNSUPPORTED = ("regression", "multi_label_classification")


def _problem_type(model: nn.Module) -> str | None:
    """`"regression"` or `"multi_label_classification"` when the model's head is one (from `config.problem_type`, or,
    as transformers decides, `num_labels=1` on a per-example classification head); else `None`."""
    base = unwrap_peft(model)
    config = getattr(base, "config", None)
    problem_type = getattr(config, "problem_type", None)
    if problem_type in _UNSUPPORTED:
        return problem_type
    name = type(base).__name__
    per_example = "Classification" in name and not name.endswith("ForTokenClassification")
    if problem_type is None and per_example and getattr(config, "num_labels", None) == 1:
        return "regression"
    return None


def _unsupported_message(what: str, problem_type: str, fix: str) -> str:
    return (
        f"{what} is a {problem_type.replace('_', '-')} model (problem_type={problem_type!r}). DistillationTrainer "
        "distils single-label classification, language-model and seq2seq logits only (a softmax over classes or "
        f"tokens); regression and multi-label outputs are not distributions it can match. {fix}"
    )


def check_problem_type(model: nn.Module | None, who: str) -> None:
    """Refuse a regression or multi-label classification model (`who`: "student" or "teacher") when the trainer is
    built, rather than with a confusing error at the first step.

    Raises:
        `ValueError`: naming `problem_type` and what is supported.
    """
    if not isinstance(model, nn.Module):
        return
    problem_type = _problem_type(model)
    if problem_type is None:
        return
    fix = (
        "Train it with plain `Trainer`, or give it `num_labels>=2` and problem_type='single_label_classification' "
        "with integer class labels."
    )
    raise ValueError(_unsupported_message(f"The {who} ({type(unwrap_peft(model)).__name__})", problem_type, fix))


def check_class_labels(labels: torch.Tensor | None) -> None:
    """Refuse floating-point labels (regression targets, multi-hot rows): no distilled task has them. A dtype check,
    no device sync."""
    if labels is not None and labels.is_floating_point():
        problem_type = "regression" if labels.dim() == 1 else "multi_label_classification"
        raise ValueError(
            _unsupported_message(
                f"The batch's labels are floating point ({tuple(labels.shape)}), so the task", problem_type,
                "Give integer class labels (class ids, -100 for ignored positions), or train with plain `Trainer`.",
            )
        )  # fmt: skip


def _listed(labels: list[str]) -> str:
    shown = ", ".join(repr(name) for name in labels[:8])
    return shown + (f", ... ({len(labels)} in all)" if len(labels) > 8 else "")
