"""The prompts of a tokenized batch, left-padded for generation.

A row's prompt is the leading run of `-100` labels among its real tokens (the tokens `attention_mask` marks): the
completion-only convention of TRL's data formats and of `hf_distill.data`. A batch without `labels` is prompt-only:
each row's real tokens are its prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..losses import IGNORE_INDEX


@dataclass
class Prompts:
    """Prompts ready for `generate`.

    Attributes:
        input_ids (`torch.Tensor` of shape `(B, P)`): the prompts, left-padded with `pad_token_id`.
        attention_mask (`torch.Tensor` of shape `(B, P)`): 1 on prompt tokens, 0 on the padding at the left.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    @property
    def lengths(self) -> torch.Tensor:
        """`(B,)` prompt lengths."""
        return self.attention_mask.sum(dim=1)


def extract_prompts(batch: dict[str, Any], pad_token_id: int) -> Prompts:
    """The prompts of a tokenized causal-LM batch.

    Args:
        batch (`dict`): `input_ids` `(B, T)`, optionally `attention_mask` `(B, T)` (any padding side) and `labels`
            `(B, T)` aligned with `input_ids` (unshifted, `-100` on the prompt and on padding).
        pad_token_id (`int`): the id the left padding is filled with (masked out, so any id works).

    Returns:
        `Prompts`.

    Raises:
        `ValueError`: a batch without `input_ids`, or a row whose prompt is empty (its first real token already has a
            label: there is nothing to generate from), naming the row.
    """
    input_ids = batch.get("input_ids")
    if input_ids is None:
        raise ValueError(
            f"On-policy steps need tokenized prompts in `input_ids`; this batch has {sorted(batch)}. Tokenize the "
            "dataset (hf_distill.data does it for the TRL formats)."
        )
    mask = batch.get("attention_mask")
    mask = torch.ones_like(input_ids, dtype=torch.bool) if mask is None else mask.bool()
    labels = batch.get("labels")
    rows = []
    for row in range(input_ids.shape[0]):
        real = mask[row].nonzero().squeeze(-1)  # (n,) positions of real tokens, whatever side the padding is on
        length = real.numel()
        if labels is not None:
            answered = (labels[row, real] != IGNORE_INDEX).nonzero()
            length = int(answered[0]) if answered.numel() else length  # the leading run of -100
        if length == 0:
            raise ValueError(
                f"Row {row} of this batch has no prompt: its first token already has a label. On-policy steps "
                "generate from the prompt, the leading run of -100 labels (label the prompt tokens -100, or use a "
                "prompt-completion / conversational dataset format). Evaluation rows of plain text: set "
                "eval_on_policy=False to evaluate them without the on-policy metric."
            )
        rows.append(input_ids[row, real[:length]])
    width = max(r.numel() for r in rows)
    ids = input_ids.new_full((len(rows), width), pad_token_id)  # (B, P)
    attention = torch.zeros((len(rows), width), dtype=torch.long, device=input_ids.device)  # (B, P)
    for i, r in enumerate(rows):
        ids[i, width - r.numel() :] = r
        attention[i, width - r.numel() :] = 1
    return Prompts(ids, attention)
