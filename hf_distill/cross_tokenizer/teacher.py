"""A live teacher whose tokenizer differs from the student's: it reads the same text tokenized by its own tokenizer,
and gives the loss its side of the alignment (`hf_distill.losses.AlignedTeacher`)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..losses import AlignedTeacher, ChunkLayout, HeadInput, lazy_first_rows, select_chunks, teacher_targets
from ..losses.reduction import align_for_prediction, position_mask
from ..modeling.lm_head import capture_head_input, check_head, linear_head
from ..teacher.live import LiveTeacher
from ..teacher.model import run_teacher, teacher_forward
from .alignment import ALIGNMENT_COLUMNS, TEACHER_ROW_COLUMNS, TokenAligner, alignment_record
from .vocabulary import SharedVocabulary, tokenizer_hash

# Teacher rows projected at once when its head is applied block by block (~64 MiB of float32 logits per block).
_TEACHER_BLOCK_ELEMENTS = 2**24
# Above this many float32 entries the teacher's first-position targets `(chunks, buckets)` are not kept for the step
# but projected again block by block as the loss needs them (`lazy_first_rows`): memory flat in the sequence length,
# for one more projection of those teacher rows (two under activation checkpointing).
_EAGER_FIRST_ROW_ELEMENTS = 2**24


class CrossTokenizerTeacher(LiveTeacher):
    """A frozen teacher model with a tokenizer of its own (see `DistillationConfig.cross_tokenizer`).

    Every batch is aligned once: the student's token ids are turned back into their text, the text is tokenized by
    the teacher's tokenizer, and the two tokenizations are cut into chunks at the byte offsets where both end a token
    (`hf_distill.cross_tokenizer.alignment`). The alignment columns come from the collator when it ran
    (`prepare_training_data` wraps it); batches built elsewhere (on-policy completions, a custom loop) are aligned
    here. Conversational rows that carry the teacher's own rendering (`teacher_input_ids` from
    `tokenize_for_distillation(..., teacher_tokenizer=...)`) are aligned with it on the message contents
    (`TokenAligner.collate_rendered`) instead of re-tokenizing the student's text.

    Args:
        model (`nn.Module`): the frozen, placed teacher (a causal LM).
        placement, device: see `Teacher`.
        method (`str`): `"exact"`, `"chunk"` or `"uld"` (`hf_distill.losses.CROSS_TOKENIZER_METHODS`).
        aligner (`TokenAligner`): the two tokenizers.
        vocabulary (`SharedVocabulary`): the tokens both vocabularies hold, mapped to shared buckets.
        temperature (`float`): the KD temperature its distributions are taken at.
    """

    own_columns = ALIGNMENT_COLUMNS

    def __init__(
        self,
        model: Any,
        placement: Any,
        *,
        method: str,
        aligner: TokenAligner,
        vocabulary: SharedVocabulary,
        temperature: float,
        device: torch.device | None = None,
    ) -> None:
        super().__init__(model, placement, device=device, tokenizer_checked=True)
        self.method = method
        self.aligner = aligner
        self.vocabulary = vocabulary
        self.temperature = temperature

    # ---- data ----

    def prepare_training_data(self, train_dataset: Any, data_collator: Any) -> tuple[Any, Any]:
        """The user's collator, followed by the alignment of every batch it builds (on the data loader's side)."""
        return train_dataset, AligningCollator(data_collator, self.aligner)

    def input_columns(self) -> tuple[str, ...]:
        """The teacher model's inputs and the per-row `TEACHER_ROW_COLUMNS` (its own rendering of chat rows), which
        must survive `remove_unused_columns` to reach the collator."""
        return (*super().input_columns(), *TEACHER_ROW_COLUMNS)

    def aligned_features(self, features: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The alignment columns of a batch, on the student's device: taken from the batch, or computed now."""
        input_ids = features["input_ids"]
        if all(name in features for name in ALIGNMENT_COLUMNS):
            columns = {name: features[name] for name in ALIGNMENT_COLUMNS}
        else:
            columns = self.aligner.collate(input_ids.cpu(), _cpu(features.get("attention_mask")))
        return {name: value.to(input_ids.device) for name, value in columns.items()}

    # ---- what the loss needs ----

    def _teacher_inputs(self, columns: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"input_ids": columns["teacher_input_ids"], "attention_mask": columns["teacher_attention_mask"]}

    def targets(
        self, features: dict[str, Any], labels: torch.Tensor | None, *, chunked: bool = False
    ) -> AlignedTeacher:
        columns = self.aligned_features(features)
        self._check_length(columns["teacher_input_ids"].shape[1])
        teacher_inputs = self._teacher_inputs(columns)
        if chunked:  # its (B, T_t, V_t) logits are never built: projected block by block below
            with capture_head_input(self.model) as hidden:
                teacher_forward(self.model, teacher_inputs, None)
            output: torch.Tensor | HeadInput = HeadInput(hidden.features(), linear_head(self.model))
        else:
            output = run_teacher(self.model, teacher_inputs, None, self.device).logits
        layout = ChunkLayout(
            columns["student_chunk"], columns["teacher_chunk"], columns["student_next"], columns["chunk_bytes"]
        )
        selection = select_chunks(layout, student_valid(features["input_ids"], labels, features.get("attention_mask")))
        teacher_ids = columns["teacher_input_ids"]
        # (B, T_t): the token each teacher position predicts, -1 where it is in no chunk
        teacher_next = torch.where(
            columns["teacher_chunk"] >= 0,
            F.pad(teacher_ids[:, 1:], (0, 1), value=-1),
            torch.full_like(teacher_ids, -1),
        )
        width = output.shape[-1] if torch.is_tensor(output) else output.head.weight.shape[0]
        buckets = len(self.vocabulary.student_to_shared) if self.method == "uld" else self.vocabulary.num_buckets
        eager = selection.num_chunks * buckets <= _EAGER_FIRST_ROW_ELEMENTS
        teacher_to_shared = self.vocabulary.teacher_to_shared.to(teacher_ids.device)
        first_rows, tail, chunk_logprob, top_bucket = teacher_targets(
            self.method,
            output,
            teacher_next,
            selection,
            teacher_to_shared,
            self.vocabulary.num_buckets,
            self.temperature,
            len(self.vocabulary.student_to_shared),
            max(1, _TEACHER_BLOCK_ELEMENTS // width),
            first_rows=eager,
            top_bucket=True,
        )
        rows_for = None
        if not eager:
            rows_for = lazy_first_rows(
                self.method,
                output,
                selection,
                teacher_to_shared,
                self.vocabulary.num_buckets,
                self.temperature,
                len(self.vocabulary.student_to_shared),
            )
        return AlignedTeacher(
            method=self.method,
            selection=selection,
            student_to_shared=self.vocabulary.student_to_shared.to(teacher_ids.device),
            num_buckets=self.vocabulary.num_buckets,
            first_rows=first_rows,
            tail=tail,
            chunk_logprob=chunk_logprob,
            rows_for=rows_for,
            top_bucket=top_bucket,
        )

    def _check_length(self, length: int) -> None:
        """The teacher's tokenization of a row can be longer than the student's: refuse what its positions cannot
        hold (an index error deep in its embedding otherwise, or silent extrapolation for rotary positions)."""
        limit = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        if isinstance(limit, int) and length > limit:
            raise ValueError(
                f"The teacher's tokenization of this batch is {length} tokens long, more than its "
                f"max_position_embeddings={limit}: cut the student's rows shorter (block_size / max_length) so that "
                "the same text fits the teacher too."
            )

    def outputs(self, features: dict[str, Any], labels: torch.Tensor | None) -> Any:
        raise TypeError(
            f"{self.describe()} reads another tokenizer's ids, so it cannot be scored on the student's batches as a "
            "model; its quality on the same text is the eval's teacher_bits_per_byte."
        )

    def check_head(self, features: dict[str, Any], labels: torch.Tensor | None) -> bool | None:
        columns = self.aligned_features(features)
        return check_head(self.model, lambda: self.model(**self._teacher_inputs(columns)))

    # ---- what the rest of the code asks about it ----

    def describe(self) -> str:
        return f"{super().describe()} through a {self.method} cross-tokenizer alignment"

    def lineage_record(self) -> dict[str, Any]:
        return {**super().lineage_record(), "tokenizer_sha256": tokenizer_hash(self.aligner.teacher_tokenizer)}

    def alignment_record(self) -> dict[str, Any]:
        """The lineage's record of the alignment: the method and both tokenizers (by content hash)."""
        return alignment_record(self.method, self.aligner, self.vocabulary.num_shared)


def student_valid(input_ids: torch.Tensor, labels: torch.Tensor | None, attention_mask: Any) -> torch.Tensor:
    """`(B, T_s)` bool: which student prediction positions count (the loss's own rule for a causal LM), the last
    position (nothing to predict) false."""
    leading = align_for_prediction(input_ids[..., None], True).shape[:-1]
    mask, _ = position_mask(leading, labels, attention_mask, True)
    return F.pad(mask.reshape(leading), (0, 1), value=False)


def _cpu(value: Any) -> torch.Tensor | None:
    return value.cpu() if torch.is_tensor(value) else None


class AligningCollator:
    """The user's data collator, then the alignment columns of the batch it built (`TokenAligner.collate`).

    Args:
        collator (`Callable`): what the Trainer would have used.
        aligner (`TokenAligner`): the two tokenizers.
    """

    def __init__(self, collator: Any, aligner: TokenAligner) -> None:
        self.collator = collator
        self.aligner = aligner

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        # The teacher's own rendering of chat rows (ragged lists the user's collator would choke on) is taken out
        # first, and aligned with the student's rendering once the batch is built.
        rendered = None
        if features and isinstance(features[0], dict) and "teacher_input_ids" in features[0]:
            features = [dict(feature) for feature in features]
            rendered = {name: [feature.pop(name, None) for feature in features] for name in TEACHER_ROW_COLUMNS}
        batch = self.collator(features)
        if "input_ids" in batch and torch.is_tensor(batch["input_ids"]):
            attention_mask = _cpu(batch.get("attention_mask"))
            if rendered is None:
                batch.update(self.aligner.collate(batch["input_ids"], attention_mask))
            else:
                batch.update(
                    self.aligner.collate_rendered(
                        batch["input_ids"],
                        attention_mask,
                        [_ints(row) for row in rendered["teacher_input_ids"]],
                        _masks(rendered["content_mask"]),
                        _masks(rendered["teacher_content_mask"]),
                    )
                )
        return batch


def _masks(rows: list[Any]) -> list[list[int] | None] | None:
    """Per-row content masks as lists (`None` when no row has one)."""
    if all(row is None for row in rows):
        return None
    return [None if row is None else _ints(row) for row in rows]


def _ints(row: Any) -> list[int]:
    """A row of ids as a list of ints (lists, tuples, arrays and tensors alike)."""
    return [int(v) for v in (row.tolist() if hasattr(row, "tolist") else row)]
