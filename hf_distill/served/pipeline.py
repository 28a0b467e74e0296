"""Keeping a served teacher ahead of the student: each batch is sent for scoring when it is collated, and the trainer
reads a few batches ahead, so that the server scores the next batches while the student trains on this one.

- `ScoringQueue`: a bounded pool of requests in flight, keyed by the batch's tokens. The loss asks for a batch's
  scores by its tokens, so a score can only ever meet the batch it was computed for; a batch that was never sent (an
  on-policy batch the student just generated, an evaluation batch, one dropped to stay within bounds) is scored on
  the spot. Correctness never depends on the queue, only speed.
- `ScoringCollator`: wraps the data collator to send each batch it makes.
- `ReadAhead`: the trainer's next-batch source that keeps `depth` batches fetched (and so sent) ahead. The batch
  order is the dataloader's own.
"""

from __future__ import annotations

import collections
import hashlib
import queue as _queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import torch

from .client import ServedClient
from .protocol import RowScores


def batch_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple[list[list[int]], list[int]]:
    """The token ids of each row without its padding, and where each row starts in the padded batch.

    Args:
        input_ids (`torch.Tensor` of shape `(B, T)`): the batch's tokens.
        attention_mask (`torch.Tensor` of shape `(B, T)`, *optional*): 1 on real tokens; `None`: every token is real.

    Returns:
        `(rows, starts)`: `B` lists of ids, and the offset of each row's first real token (0 when padded on the
        right, > 0 when padded on the left).

    Raises:
        `ValueError`: for a row whose real tokens are not one contiguous run (the server scores a sequence).
    """
    ids = input_ids.detach().cpu()
    if attention_mask is None:
        return ids.tolist(), [0] * ids.shape[0]
    mask = attention_mask.detach().cpu().bool()
    rows, starts = [], []
    for b in range(ids.shape[0]):
        where = mask[b].nonzero().flatten()
        if where.numel() == 0:
            rows.append([])
            starts.append(0)
            continue
        start, end = int(where[0]), int(where[-1]) + 1
        if where.numel() != end - start:
            raise ValueError(
                f"Row {b} of the batch has padding between its tokens (attention_mask holes): a served teacher scores "
                "each row as one sequence; pad on one side only."
            )
        rows.append(ids[b, start:end].tolist())
        starts.append(start)
    return rows, starts


def batch_key(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> bytes:
    """A digest of the batch's tokens and mask: what a request in flight is found by."""
    digest = hashlib.blake2b(digest_size=16)
    ids = input_ids.detach().cpu().to(torch.int64).contiguous()
    digest.update(repr(tuple(ids.shape)).encode())
    digest.update(ids.numpy().tobytes())
    if attention_mask is not None:
        digest.update(attention_mask.detach().cpu().to(torch.int8).contiguous().numpy().tobytes())
    return digest.digest()


class _DaemonPool:
    """`concurrency` daemon threads running submitted calls into `Future`s. Not `ThreadPoolExecutor`: its threads are
    joined at interpreter exit, so a request to a hung server would hold a finished (or failed) run open for up to
    its timeout times its retries; daemon threads end with the process."""

    def __init__(self, concurrency: int) -> None:
        self._work: _queue.SimpleQueue = _queue.SimpleQueue()
        for index in range(concurrency):
            threading.Thread(target=self._run, name=f"hf_distill-served-{index}", daemon=True).start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        self._work.put((future, fn, args))
        return future

    def _run(self) -> None:
        while True:
            future, fn, args = self._work.get()
            if not future.set_running_or_notify_cancel():  # cancelled while waiting
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as error:  # delivered to whoever reads the future
                future.set_exception(error)


class ScoringQueue:
    """Requests to a served teacher, in flight on `concurrency` threads, at most `capacity` waiting for their batch.

    Args:
        client (`ServedClient`): the server.
        k (`int`): log-probabilities per position.
        concurrency (`int`): requests in flight at once.
        capacity (`int`): requests kept for batches not yet trained on; past it the oldest is dropped (its batch is
            then scored when it comes, so nothing is lost but time).
    """

    def __init__(self, client: ServedClient, k: int, concurrency: int, capacity: int) -> None:
        self.client = client
        self.k = k
        self.capacity = max(capacity, 1)
        self._pool = _DaemonPool(concurrency)
        self._stop = threading.Event()  # set when a run fails: what is in flight stops retrying
        self._pending: collections.OrderedDict[bytes, list[Future]] = collections.OrderedDict()
        self._count = 0
        self._lock = threading.Lock()
        self.sent = 0  # requests sent ahead
        self.hits = 0  # batches whose scores were already requested when the loss asked
        self.misses = 0  # batches scored on the spot

    def submit(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        """Send a batch for scoring now; its scores wait for `scores` with the same tokens."""
        rows, _ = batch_rows(input_ids, attention_mask)
        future = self._pool.submit(self._score, rows, self._stop)
        key = batch_key(input_ids, attention_mask)
        with self._lock:
            self._pending.setdefault(key, []).append(future)
            self._count += 1
            self.sent += 1
            while self._count > self.capacity:  # the oldest batch was never trained on (e.g. after max_steps)
                _, dropped = self._pending.popitem(last=False)
                self._count -= len(dropped)
                for stale in dropped:
                    stale.cancel()

    def scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> list[RowScores | None]:
        """The batch's scores, `B` `RowScores` (padding excluded; `None` for a row of padding only): from the request
        sent for these very tokens if one is in flight, else from one made now. A failed request raises here, for
        the batch it belongs to."""
        key = batch_key(input_ids, attention_mask)
        with self._lock:
            futures = self._pending.get(key)
            future = futures.pop(0) if futures else None
            if future is not None:
                self._count -= 1
                if not futures:
                    del self._pending[key]
        if future is not None and not future.cancelled():
            self.hits += 1
            return future.result()
        self.misses += 1
        rows, _ = batch_rows(input_ids, attention_mask)
        return self._score(rows)

    def _score(self, rows: list[list[int]], stop: threading.Event | None = None) -> list[RowScores | None]:
        # A row of padding only (possible in a padded eval batch) is not sent: no server scores an empty prompt.
        sent = [row for row in rows if row]
        scored = iter(self.client.score(sent, self.k, stop=stop) if sent else [])
        return [next(scored) if row else None for row in rows]

    def drop_waiting(self, failed: bool = False) -> None:
        """Forget the requests made for batches that will not be trained on (those read ahead when training ends),
        cancelling the ones not yet sent; after a failure (`failed`) also stop the retries of those in flight, so
        that nothing keeps calling the server after the error. Requests made later start afresh."""
        with self._lock:
            for futures in self._pending.values():
                for future in futures:
                    future.cancel()
            self._pending.clear()
            self._count = 0
            if failed:
                self._stop.set()
                self._stop = threading.Event()


class ScoringCollator:
    """A data collator that also sends the batch it makes to the served teacher (see `ScoringQueue.submit`).

    Args:
        collator (`Callable`): the user's collator.
        queue (`ScoringQueue`): where batches are sent.
    """

    def __init__(self, collator: Callable[[list[Any]], dict[str, Any]], queue: ScoringQueue) -> None:
        self.collator = collator
        self.queue = queue

    def __call__(self, features: list[Any]) -> dict[str, Any]:
        batch = self.collator(features)
        input_ids = batch.get("input_ids") if hasattr(batch, "get") else None
        # In a dataloader worker process (`dataloader_num_workers > 0`) a request would be made in the worker's copy
        # of the queue, where the loss never looks: such batches are scored when the loss asks.
        in_worker = torch.utils.data.get_worker_info() is not None
        if torch.is_tensor(input_ids) and input_ids.dim() == 2 and not in_worker:
            self.queue.submit(input_ids, batch.get("attention_mask"))
        return batch

    def __getattr__(self, name: str) -> Any:  # the Trainer reads collator attributes (e.g. `tokenizer`)
        if name == "collator":
            raise AttributeError(name)
        return getattr(self.collator, name)


class ReadAhead:
    """The next batch of an epoch, with `depth` more already fetched from the same iterator (so already collated,
    and sent for scoring by `ScoringCollator`). Batches come out in the iterator's order; a new iterator (a new
    epoch or a new `train()`) drops what was fetched from the old one.

    Args:
        depth (`int`): batches kept fetched beyond the one returned; 0 reads nothing ahead.
    """

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self._iterator: Iterator | None = None
        self._buffer: collections.deque = collections.deque()
        self._exhausted = False

    def next_batch(self, iterator: Iterator) -> Any:
        """`next(iterator)`, with `depth` batches fetched ahead.

        Raises:
            `StopIteration`: when the iterator and the batches fetched ahead are exhausted.
        """
        if iterator is not self._iterator:
            self._iterator, self._exhausted = iterator, False
            self._buffer.clear()
        while not self._exhausted and len(self._buffer) <= self.depth:
            try:
                self._buffer.append(next(iterator))
            except StopIteration:
                self._exhausted = True
        if not self._buffer:
            raise StopIteration
        return self._buffer.popleft()
