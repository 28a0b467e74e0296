"""The one place that decides which positions count, and how token sums become the loss the optimizer sees.

Everything upstream of here works with per-position values; everything downstream with sums. Masking, label
shifting for causal language models, counting valid positions and the gradient-accumulation normalisation all live
in this module so that the training loss, the logged losses and the trainer's token count can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Positions:
    """Which positions of a micro-batch count, and how the labels line up with the predictions.

    Attributes:
        labels (`torch.Tensor` of shape `(B, T)` or `(B,)`, *optional*): hard labels, `-100` = ignored.
        attention_mask (`torch.Tensor` of shape `(B, T)`, *optional*): selects positions when there are no labels.
        shift_labels (`bool`, *optional*, defaults to `False`): causal LM, position t predicts token t+1.
        require_labels (`bool`, *optional*, defaults to `True`): refuse a label-less batch when `ce_weight > 0`.
            Evaluation passes `False`, so `predict()` on unlabelled data scores the KD term alone.
    """

    labels: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    shift_labels: bool = False
    require_labels: bool = True


@dataclass
class Targets:
    """Positions selected for the loss, flattened.

    Attributes:
        index (`torch.Tensor` of shape `(n,)`): flat indices into the `(B·T)` (or `B`) leading positions of the logits.
        labels (`torch.Tensor` of shape `(n,)` or `None`): the hard labels at those positions, when the batch has labels.
    """

    index: torch.Tensor
    labels: torch.Tensor | None

    @property
    def count(self) -> torch.Tensor:
        """The number of positions that count, as a 0-dim int64 tensor on the positions' device."""
        return self.index.new_tensor(self.index.numel())


def align_for_prediction(logits: torch.Tensor, shift_labels: bool) -> torch.Tensor:
    """Drop the last position of causal-LM logits, whose prediction has no next token to score.

    Args:
        logits (`torch.Tensor` of shape `(B, T, V)` or `(B, V)`): model logits.
        shift_labels (`bool`): whether position t predicts label t+1 (decoder-only language models).

    Returns:
        `torch.Tensor` of shape `(B, T-1, V)` when shifting, else `logits` unchanged.
    """
    return logits[:, :-1] if shift_labels else logits


def position_mask(
    leading_shape: torch.Size,
    labels: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    shift_labels: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Which prediction positions count, and their labels.

    With labels, a position counts when its label is not `-100` (for causal LMs the label of position t is
    `labels[:, t+1]`). Without labels, every position counts that the attention mask marks as real input (all of them
    when there is no mask of the matching shape, e.g. one row per example for classification).

    Args:
        leading_shape (`torch.Size`): the logits' shape without the class dimension, *after* `align_for_prediction`:
            `(B, T')` for token-level tasks or `(B,)` for one prediction per example.
        labels (`torch.Tensor` of shape `(B, T)` or `(B,)`, *optional*): hard labels, `-100` = ignored.
        attention_mask (`torch.Tensor` of shape `(B, T)`, *optional*): 1 for real tokens, 0 for padding.
        shift_labels (`bool`): causal-LM shifting.

    Returns:
        `(mask, labels)`: a bool tensor of `leading_shape`, and the labels aligned to it (or `None`).
    """
    if labels is not None:
        if shift_labels:
            labels = labels[:, 1:]
        if labels.shape != leading_shape:
            raise ValueError(
                f"labels of shape {tuple(labels.shape)} do not match the logits' positions {tuple(leading_shape)}."
            )
        return labels != IGNORE_INDEX, labels
    if attention_mask is not None:
        if shift_labels:
            attention_mask = attention_mask[:, :-1]
        if attention_mask.shape == leading_shape:
            return attention_mask.bool(), None
    return torch.ones(leading_shape, dtype=torch.bool, device=_device(labels, attention_mask)), None


def _device(*tensors: torch.Tensor | None) -> torch.device | None:
    return next((t.device for t in tensors if t is not None), None)


def select_targets(
    leading_shape: torch.Size,
    labels: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    shift_labels: bool,
) -> Targets:
    """Flat indices (and labels) of the positions that count; see `position_mask` for the rule.

    Args:
        leading_shape (`torch.Size`): `(B, T')` or `(B,)`, the aligned logits' shape without the class dimension.
        labels (`torch.Tensor` of shape `(B, T)` or `(B,)`, *optional*), attention_mask (`torch.Tensor` of shape
            `(B, T)`, *optional*), shift_labels (`bool`): as in `position_mask`.

    Returns:
        `Targets`: `index` `(n,)` into the flattened positions, `labels` `(n,)` or `None`.
    """
    mask, aligned_labels = position_mask(leading_shape, labels, attention_mask, shift_labels)
    flat_mask = mask.reshape(-1)
    index = flat_mask.nonzero().squeeze(-1)  # (n,)
    flat_labels = aligned_labels.reshape(-1)[index] if aligned_labels is not None else None
    return Targets(index=index, labels=flat_labels)


def take_rows(targets: Targets, leading_dims: int, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """The rows of per-position tensors at the positions that count: the one gather every loss path shares.

    Args:
        targets (`Targets`): from `select_targets` on the tensors' (aligned) leading shape.
        leading_dims (`int`): how many leading dimensions index positions: 2 for `(B, T, ...)`, 1 for `(B, ...)`.
        *tensors (`torch.Tensor` of shape `(B, T, *D)` or `(B, *D)`): aligned per-position tensors (logits, hidden
            states, cached top-k columns), all with the same leading shape.

    Returns:
        `list[torch.Tensor]` of shapes `(n, *D)`, one per tensor, in order. When every position counts the rows are
        views of the inputs, not copies.
    """
    flat = [t.reshape(-1, *t.shape[leading_dims:]) for t in tensors]  # (B·T, *D) or (B, *D)
    if flat and targets.index.numel() == flat[0].shape[0]:  # every position counts: no copy of the rows
        return flat
    return [t.index_select(0, targets.index) for t in flat]


def count_targets(
    leading_shape: torch.Size,
    labels: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    shift_labels: bool,
) -> torch.Tensor:
    """Number of positions that count, as a 0-dim int64 tensor (the same rule as `select_targets`).

    Args:
        leading_shape (`torch.Size`), labels (`torch.Tensor` of shape `(B, T)` or `(B,)`, *optional*),
        attention_mask (`torch.Tensor` of shape `(B, T)`, *optional*), shift_labels (`bool`): as in `select_targets`.
    """
    mask, _ = position_mask(leading_shape, labels, attention_mask, shift_labels)
    return mask.sum()


def normalize_token_sum(
    token_sum: torch.Tensor, num_targets: torch.Tensor | int, num_processes: int = 1
) -> torch.Tensor:
    """Turn a sum over this micro-batch's positions into its share of the loss of one optimizer step.

    `num_targets` is the number of positions that count in the *whole* gradient-accumulation window, summed over
    every process. Dividing each micro-batch's sum by it makes the accumulated gradient that of the mean over all
    those positions, whatever the split into micro-batches; multiplying by `num_processes` undoes the averaging of
    gradients that DDP/FSDP perform across processes. So (batch 4, GA 1) == (batch 2, GA 2) == (batch 1, GA 4),
    and 1 process == 2 processes, with padding and variable lengths. A window where nothing counts gives 0, not NaN.

    Args:
        token_sum (`torch.Tensor`, 0-dim): the loss summed over this micro-batch's valid positions.
        num_targets (`torch.Tensor` or `int`): valid positions in the whole accumulation window on all processes.
        num_processes (`int`): processes whose gradients are averaged (1 without data parallelism).
    """
    if not torch.is_tensor(num_targets):
        num_targets = torch.tensor(num_targets)
    denominator = num_targets.to(device=token_sum.device, dtype=torch.float32).clamp_min(1)
    return token_sum * num_processes / denominator
