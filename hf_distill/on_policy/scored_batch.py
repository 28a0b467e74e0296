"""The batch both models are scored on after a generation: each prompt followed by its completion, with labels on the
completion only, so that the trainer's usual path (counting, teacher targets, student forward, any `kd_loss`, chunked
or not) takes the KD term over the generated tokens."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from ..losses import IGNORE_INDEX
from .prompts import Prompts


@dataclass
class ScoredBatch:
    """A generated batch, right-padded.

    Attributes:
        input_ids (`torch.Tensor` of shape `(B, L)`): prompt then completion, then `pad_token_id`.
        attention_mask (`torch.Tensor` of shape `(B, L)`): 1 on prompt and completion tokens.
        labels (`torch.Tensor` of shape `(B, L)`): the completion's tokens, `-100` on the prompt and the padding.
        completion_lengths (`torch.Tensor` of shape `(B,)`): generated tokens kept per row (EOS included).
        hit_max (`torch.Tensor` of shape `(B,)`, bool): rows that reached `max_new_tokens` without an EOS.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    completion_lengths: torch.Tensor
    hit_max: torch.Tensor

    def inputs(self) -> dict[str, torch.Tensor]:
        """The batch the trainer trains on."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "labels": self.labels}


def completion_lengths(completions: torch.Tensor, stop_ids: Iterable[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens of each completion up to and including its first stop token (EOS); all of them when it has none.

    Args:
        completions (`torch.Tensor` of shape `(B, N)`, `N >= 1`): generated tokens.
        stop_ids (iterable of `int`): the end-of-sequence ids.

    Returns:
        `(lengths, stopped)`: `torch.Tensor`s of shape `(B,)`: int64 kept lengths, and bool "has a stop token".
    """
    stops = torch.as_tensor(sorted(set(stop_ids)), dtype=completions.dtype, device=completions.device)
    is_stop = torch.isin(completions, stops)  # (B, N)
    width = completions.shape[1]
    positions = torch.arange(width, device=completions.device).expand_as(completions)  # (B, N)
    first = torch.where(is_stop, positions, width).min(dim=1).values  # (B,) index of the first EOS, or N
    stopped = first < width
    return torch.where(stopped, first + 1, width).long(), stopped


def scored_batch(
    prompts: Prompts, completions: torch.Tensor, stop_ids: Iterable[int], pad_token_id: int, max_new_tokens: int
) -> ScoredBatch:
    """Prompt + completion per row, completion cut after its first EOS, right-padded, labels on the completion.

    Args:
        prompts (`Prompts`): the left-padded prompts `(B, P)` that were generated from.
        completions (`torch.Tensor` of shape `(B, N)`): the generated tokens (`generate_completions`).
        stop_ids (iterable of `int`): the EOS ids the generation stopped at.
        pad_token_id (`int`): fills the right padding (masked, and labelled -100).
        max_new_tokens (`int`): the generation's limit, for `hit_max`.

    Returns:
        `ScoredBatch`.
    """
    lengths, stopped = completion_lengths(completions, stop_ids)  # (B,), (B,)
    prompt_lengths = prompts.lengths  # (B,)
    total = prompt_lengths + lengths  # (B,)
    batch, width = completions.shape[0], int(total.max())
    ids = completions.new_full((batch, width), pad_token_id)  # (B, L)
    labels = completions.new_full((batch, width), IGNORE_INDEX)  # (B, L)
    prompt_width = prompts.input_ids.shape[1]
    for row, (p, n) in enumerate(zip(prompt_lengths.tolist(), lengths.tolist())):
        ids[row, :p] = prompts.input_ids[row, prompt_width - p :]  # the prompt, without its left padding
        ids[row, p : p + n] = completions[row, :n]
        labels[row, p : p + n] = completions[row, :n]
    positions = torch.arange(width, device=ids.device)  # (L,)
    attention_mask = (positions[None, :] < total[:, None]).long()  # (B, L)
    hit_max = (lengths >= max_new_tokens) & ~stopped
    return ScoredBatch(ids, attention_mask, labels, lengths, hit_max)
