"""A teacher behind an inference server as a kind of `Teacher`: no model runs here; each batch's tokens are scored by
the server (its top-k log-probabilities per position) and meet the student in the sparse objective, like a cache's."""

from __future__ import annotations

from typing import Any

import torch

from ..losses import TopK
from ..teacher.base import Teacher
from ..teacher.placement import Placement
from .client import ServedClient
from .endpoint import ServedEndpoint, ServedSettings
from .pipeline import ReadAhead, ScoringCollator, ScoringQueue, batch_rows
from .protocol import RowScores
from .providers import SELF_HOSTED, served_license_record

SERVED_API = "OpenAI-compatible completions, prompt_logprobs (vLLM schema)"


def scores_to_topk(
    scores: list[RowScores | None],
    starts: list[int],
    shape: tuple[int, int],
    k: int,
    device: torch.device,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Place each row's scores at its positions in the padded batch.

    Args:
        scores (`list[RowScores | None]`): per row, `(L, k)` ids and log-probabilities aligned like logits.
        starts (`list[int]`): where each row's first real token is in the batch.
        shape (`tuple[int, int]`): the batch's `(B, T)`.
        temperature (`float`, *optional*, defaults to 1.0): rescale to it (exact with k = vocabulary only).

    Returns:
        `(ids, logprobs)`: `(B, T, k)` int64 and float32 tensors on `device`, zeros at padding (never counted).
    """
    ids = torch.zeros((*shape, k), dtype=torch.long)
    logprobs = torch.zeros((*shape, k), dtype=torch.float32)
    for b, (row, start) in enumerate(zip(scores, starts)):
        if row is None:
            continue
        row = row.at_temperature(temperature)
        length = row.ids.shape[0]
        ids[b, start : start + length] = row.ids
        logprobs[b, start : start + length] = row.logprobs
    return ids.to(device, non_blocking=True), logprobs.to(device, non_blocking=True)


class ServedTeacher(Teacher):
    """Stands in for a teacher that an inference server runs (what `DistillationTrainer.teacher` is then).

    Args:
        endpoint (`ServedEndpoint`): the server's base URL and the model's name.
        settings (`ServedSettings`): k, concurrency, timeout, retries, prefetch, key, provider, license.
        client (`ServedClient`): the HTTP client (checked against the server by `setup_served_teacher`).
        temperature (`float`, *optional*, defaults to 1.0): the KD temperature. Servers return log-probabilities
            at T = 1; another T is applied here, which is exact only with the whole distribution (k = vocabulary).
        model_entry (`dict`, *optional*): the server's `/v1/models` entry for the model (its revision, owner).
        provider (`str`, *optional*): the provider whose terms apply (`hf_distill.served.providers`).
        tokenizer_checked (`bool`, *optional*): whether the server's tokenization was compared with the student's.
    """

    def __init__(
        self,
        endpoint: ServedEndpoint,
        settings: ServedSettings,
        client: ServedClient,
        *,
        temperature: float = 1.0,
        model_entry: dict[str, Any] | None = None,
        provider: str | None = None,
        tokenizer_checked: bool | None = None,
    ) -> None:
        super().__init__(Placement("served"), tokenizer_checked=tokenizer_checked)
        self.endpoint = endpoint
        self.settings = settings
        self.client = client
        self.temperature = temperature
        self.model_entry = model_entry or {}
        self.provider = provider
        # A few batches of each gradient-accumulation window may wait, plus those read ahead.
        self.queue = ScoringQueue(client, settings.k, settings.concurrency, capacity=4 * (settings.prefetch + 8))
        # `prefetch` batches in flight ahead of the one training: the dataloader already makes one batch ahead of
        # the one it yields (accelerate's `DataLoaderShard`), so `prefetch - 1` more are read ahead here.
        self.read_ahead = ReadAhead(settings.prefetch - 1) if settings.prefetch > 1 else None

    # ---- what the loss needs ----

    def targets(self, features: dict[str, Any], labels: torch.Tensor | None, *, chunked: bool = False) -> TopK:
        """The batch's `(B, T, k)` top-k ids and log-probabilities from the server, whichever path the student
        takes (the request sent when the batch was collated, or one made now)."""
        input_ids = features.get("input_ids")
        if not torch.is_tensor(input_ids) or input_ids.dim() != 2:
            raise ValueError(
                f"{self.describe()} scores token sequences: the batch needs an `input_ids` tensor of shape (B, T) "
                f"(got {type(input_ids).__name__})."
            )
        mask = features.get("attention_mask")
        scores = self.queue.scores(input_ids, mask)

        _, starts = batch_rows(input_ids, mask)
        # A temperature other than 1 is exact: setup allows it only when the server returns the whole distribution.
        shape = tuple(input_ids.shape)
        ids, logprobs = scores_to_topk(scores, starts, shape, self.settings.k, input_ids.device, self.temperature)
        return TopK(ids, logprobs, None)

    def score_rows(self, rows: list[list[int]]) -> list[RowScores | None]:
        """Scores of unpadded token rows, for writing a cache (`hf_distill.offline.writer.cache_teacher`)."""
        return self.queue._score(rows)

    def input_columns(self) -> tuple[str, ...]:
        return ("input_ids", "attention_mask")

    def head_model(self) -> None:
        return None  # the top-k meets the student's own head: no teacher head to project

    def prepare_training_data(self, train_dataset: Any, data_collator: Any) -> tuple[Any, Any]:
        """The dataset unchanged, and the collator wrapped to send each batch for scoring as it is made (unless
        `prefetch=0`: then each batch is scored when the loss needs it, and the student waits for the server)."""
        if self.settings.prefetch == 0:
            return train_dataset, data_collator
        return train_dataset, ScoringCollator(data_collator, self.queue)

    def training_ended(self, failed: bool) -> None:
        """Drop the requests for batches read ahead that will not be trained on; after a failure also stop what is
        in flight from retrying (see `ScoringQueue.drop_waiting`)."""
        self.queue.drop_waiting(failed)

    # ---- what the rest of the code asks about it ----

    def describe(self) -> str:
        return f"the served teacher {self.endpoint.model} at {self.endpoint.base_url} (top-{self.settings.k})"

    def lineage_record(self) -> dict[str, Any]:
        """The served model by name and reported revision, how it was served, and the terms on its outputs. The
        URL is not recorded: it names a machine of yours, and may sit on a private network."""
        revision = self.model_entry.get("revision")
        return {
            "adapter": None,
            "name": self.endpoint.model,
            "source": "served",
            "revision": revision if isinstance(revision, str) and revision else None,
            "license": served_license_record(self.provider, self.settings.license),
            "kind": "served",
            "served": {
                "api": SERVED_API,
                "k": self.settings.k,
                "provider": self.provider or SELF_HOSTED,
                "owned_by": self.model_entry.get("owned_by"),
            },
        }
