"""The one interface the trainer calls a teacher through, whatever the teacher is: a live model (`LiveTeacher`), the
student's own base with its adapters disabled (`SharedBaseTeacher`), or a cache of its top-k
(`hf_distill.offline.teacher.CachedTeacher`). A new kind (a served model, say) subclasses `Teacher` and implements
`targets`, `describe` and `lineage_record`; the trainer needs no change.

What a teacher gives the loss is plain data from `hf_distill.losses`: dense logits, its final hidden states with its
LM head (`HeadInput`, for the memory-efficient path), or its top-k (`TopK`).
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from typing import Any, Union

import torch
from torch import nn

from ..losses import HeadInput, TopK
from ..modeling.forward import accepted_arguments
from .placement import Placement

# What `Teacher.targets` returns: `(B, T, V)` / `(B, C)` logits, hidden states with their head, or a cached top-k.
TeacherTargets = Union[torch.Tensor, HeadInput, TopK]  # noqa: UP007 - a runtime alias, documented by name


class Teacher(abc.ABC):
    """A frozen teacher as the trainer sees it: targets for the loss, and the facts the rest of the code asks about.

    Args:
        placement (`Placement`): where it lives (`replicate`, `shard`, `offload`, `devices`; `cache` for a cache).
        device (`torch.device`, *optional*): its own device when it is not the student's (its inputs go there).
        shared_vocab (`int`, *optional*): leading logit entries the loss compares when the two heads are padded to
            different sizes.
        tokenizer_checked (`bool`, *optional*): whether its tokenizer was compared with the student's (`True`), could
            not be (`False`), or the models read no token ids (`None`). The lineage records it.
    """

    # Batch columns that are the teacher's alone (a cache's top-k): kept by `remove_unused_columns`, never given to
    # the student's forward.
    own_columns: tuple[str, ...] = ()
    # What the trainer takes its next batch through, when the teacher wants batches fetched ahead of the student
    # (a served teacher's `hf_distill.served.pipeline.ReadAhead`, which has them scored meanwhile); `None`: `next()`.
    read_ahead: Any = None

    def __init__(
        self,
        placement: Placement,
        *,
        device: torch.device | None = None,
        shared_vocab: int | None = None,
        tokenizer_checked: bool | None = None,
    ) -> None:
        self.placement = placement
        self.device = device
        self.shared_vocab = shared_vocab
        self.tokenizer_checked = tokenizer_checked

    # ---- what the loss needs ----

    @abc.abstractmethod
    def targets(
        self, features: dict[str, Any], labels: torch.Tensor | None, *, chunked: bool = False
    ) -> TeacherTargets:
        """The teacher's side of the loss for one batch, without gradients, on the student's device.

        Args:
            features (`dict`): the batch without its label columns (`own_columns` included).
            labels (`torch.Tensor`, *optional*): only used to build an encoder-decoder's decoder inputs.
            chunked (`bool`, *optional*, defaults to `False`): the memory-efficient path is on: a dense teacher gives
                its final hidden states `(B, T, H)` and LM head (`HeadInput`) instead of its `(B, T, V)` logits.

        Returns:
            `torch.Tensor` of shape `(B, T, V)` or `(B, C)` (logits, in the student's label order), `HeadInput`, or
            `TopK`.
        """

    def outputs(self, features: dict[str, Any], labels: torch.Tensor | None) -> Any:
        """The teacher's own model outputs on a batch (logits in the student's label order), to score it as a model.

        Raises:
            `TypeError`: for a teacher that is not a model (a cache).
        """
        raise TypeError(f"{self.describe()} has no forward of its own to evaluate.")

    # ---- what the rest of the code asks about it ----

    @property
    def module(self) -> nn.Module | None:
        """The module that runs as the teacher, `None` when none does (a cache)."""
        return None

    @abc.abstractmethod
    def describe(self) -> str:
        """Short description for logs."""

    @abc.abstractmethod
    def lineage_record(self) -> dict[str, Any]:
        """The lineage's `teacher` section: its pinned identity, `kind`, architecture and parameters (see
        `hf_distill.hub.lineage.Lineage`)."""

    def alignment_record(self) -> dict[str, Any] | None:
        """How its tokenization is aligned with the student's, for the lineage; `None` when both read the same ids."""
        return None

    def input_columns(self) -> tuple[str, ...]:
        """Batch columns the teacher reads: they must survive the Trainer's `remove_unused_columns`."""
        accepted = None if self.module is None else accepted_arguments(self.module)
        return tuple(accepted or ())

    def parameters(self) -> Iterator[nn.Parameter]:
        """The weights it holds in memory (none for a cache, nor for the shared base: those are the student's)."""
        return iter(()) if self.module is None else self.module.parameters()

    def head_model(self) -> nn.Module | None:
        """The model whose LM head the memory-efficient path projects for the teacher; `None` when it projects none
        (a cache: its top-k meets the student's hidden states, so only the student's head matters)."""
        return self.module

    def check_head(self, features: dict[str, Any], labels: torch.Tensor | None) -> bool | None:
        """Whether projecting its captured hidden states through its head gives its own logits (checked once, on one
        example, before the memory-efficient path is trusted); `None` when the check itself failed."""
        return True

    def prepare_training_data(self, train_dataset: Any, data_collator: Any) -> tuple[Any, Any]:
        """The training data this teacher needs: unchanged for a model; a cache trains on its own rows."""
        return train_dataset, data_collator

    def prepare_eval_data(self, eval_dataset: Any) -> Any:
        """The evaluation data this teacher needs: unchanged, except for a cache in the teacher's own tokenization,
        whose rows become the student's."""
        return eval_dataset

    def training_ended(self, failed: bool) -> None:
        """Called when `train()` returns (`failed=False`) or raises (`True`): a teacher that works ahead of the
        student (a served one) drops what it will not need. Nothing to do for the others."""
        return None

    def local_folder(self) -> str | None:
        """The local folder its weights were read from, when it was (its license files are there)."""
        return None

    def local_paths(self) -> list[str]:
        """Absolute paths this teacher was loaded from, which a pushed file must never contain."""
        return []
