"""Completions of a batch's prompts by the student (on-policy) or the teacher (sequence-level KD), with
`transformers`' `generate`: eval mode, no gradients, KV cache, left-padded prompts, seeded without touching the
training RNG."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from transformers import GenerationConfig

from ..modeling.heads import unwrap_peft
from ..teacher.base import Teacher
from ..teacher.shared_base import SharedBaseModel
from .prompts import Prompts


def generation_seed(seed: int, step: int, micro_batch: int, rank: int) -> int:
    """The sampling seed of one micro-batch: distinct per optimizer step, micro-batch and process, the same on a rerun
    (and after resuming)."""
    return seed + 1_000_003 * step + 10_007 * micro_batch + rank


@contextlib.contextmanager
def student_for_generation(model: nn.Module, accelerator: Any) -> Iterator[nn.Module]:
    """The student as `generate` needs it: unwrapped from DDP, with ZeRO-3 parameters gathered and gradient
    checkpointing off (TRL's `unwrap_model_for_generation`), in eval mode (no dropout), its PEFT adapters active.

    Args:
        model (`nn.Module`): the model the Trainer trains (`trainer.model_wrapped`: DDP, a DeepSpeed engine, ...).
        accelerator (`accelerate.Accelerator`): the trainer's.
    """
    from trl.models.utils import unwrap_model_for_generation  # imported here: trl takes seconds to import

    with unwrap_model_for_generation(model, accelerator) as unwrapped:
        was_training = unwrapped.training
        unwrapped.eval()
        try:
            yield unwrapped
        finally:
            unwrapped.train(was_training)


@contextlib.contextmanager
def teacher_for_generation(teacher: Teacher) -> Iterator[nn.Module]:
    """The teacher's module, able to `generate`: for the shared base (`teacher_model="base"`), the student with its
    adapters disabled; otherwise the teacher's own (frozen, eval-mode) model.

    Raises:
        `ValueError`: a teacher with no module (a cache) or whose module cannot generate.
    """
    module = teacher.module
    if isinstance(module, SharedBaseModel):
        student = module.student
        was_training = student.training
        student.eval()
        try:
            with student.disable_adapter():
                yield student
        finally:
            student.train(was_training)
        return
    if module is None or not callable(getattr(module, "generate", None)):
        raise ValueError(
            f"teacher_generation_fraction > 0 needs a teacher that can generate; {teacher.describe()} cannot. Set "
            "teacher_generation_fraction=0."
        )
    yield module


def vocabulary_size(model: nn.Module) -> int | None:
    """The size of `model`'s output vocabulary (its LM head's rows), `None` when unknown."""
    head = unwrap_peft(model).get_output_embeddings() if hasattr(unwrap_peft(model), "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    return None if weight is None else int(weight.shape[0])


@torch.no_grad()
def generate_completions(
    model: nn.Module,
    prompts: Prompts,
    config: GenerationConfig,
    seed: int,
    *,
    device: torch.device | None = None,
) -> torch.Tensor:
    """The tokens `model` generates after each prompt.

    Args:
        model (`nn.Module`): a model with `generate`, in eval mode.
        prompts (`Prompts`): left-padded `(B, P)`.
        config (`GenerationConfig`): how to generate (its `pad_token_id` fills rows that finished early).
        seed (`int`): the sampling seed (see `generation_seed`); the global RNG state is restored afterwards.
        device (`torch.device`, *optional*): the model's device when it is not the prompts' (a teacher placed on
            devices of its own); the completions come back to the prompts' device.

    Returns:
        `torch.Tensor` of shape `(B, N)`, `N <= max_new_tokens`: the completions, padded with `pad_token_id` after the
        rows that stopped early.
    """
    home = prompts.input_ids.device
    device = device or home
    # `manual_seed` seeds every CUDA device too: restore them all, not only the one generating.
    rng_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=rng_devices):  # the training RNG (dropout, data order) is left untouched
        torch.manual_seed(seed)
        sequences = model.generate(
            input_ids=prompts.input_ids.to(device),
            attention_mask=prompts.attention_mask.to(device),
            generation_config=config,
        )  # (B, P + N)
    return sequences[:, prompts.input_ids.shape[1] :].to(home)  # (B, N)
