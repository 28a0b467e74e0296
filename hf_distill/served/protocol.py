"""The wire format of a served teacher: requests to, and checked scores from, an OpenAI-compatible `/v1/completions`.

The schema is vLLM's (>= 0.10.2): `prompt_logprobs=K` returns, for every prompt position `j >= 1`, the top-K
log-probabilities of token `j` given the tokens before it (plus the actual token when it is outside the top K), and
`return_token_ids=True` echoes the prompt's token ids, which is how every score is tied to the tokens it was sent for.
This module does no I/O (the HTTP side is `client.py`): it builds request bodies and turns decoded JSON into tensors,
refusing anything that does not match what was sent.
"""

from __future__ import annotations

import dataclasses
import operator
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import torch

__all__ = [
    "MAX_LOGPROB",
    "RowScores",
    "ServedModelNotFoundError",
    "ServedResponseError",
    "completion_request",
    "model_entry",
    "parse_scores",
    "probe_request",
    "probe_token_ids",
]

MAX_LOGPROB = 1e-4
"""The largest log-probability accepted: a log-probability is <= 0, up to the rounding of the server's float32."""

_RETURN_TOKEN_IDS_HINT = (
    "hf_distill needs vLLM's `return_token_ids` (vLLM >= 0.10.2) to check that every score belongs to the tokens sent"
)
_PROMPT_LOGPROBS_HINT = "hf_distill needs vLLM's `prompt_logprobs` extension of /v1/completions"


class ServedResponseError(ValueError):
    """A server's answer does not match the schema, or does not belong to what was sent (never retried)."""


class ServedModelNotFoundError(ServedResponseError):
    """`GET /models` does not list the model asked for (the message lists the names the server serves)."""


@dataclass(frozen=True)
class RowScores:
    """The served teacher's top-K for one row, aligned like a causal LM's logits.

    Args:
        ids (`torch.LongTensor` of shape `(L, K)`): position `t` holds the K most likely next tokens after tokens
            `0..t` (i.e. candidates for token `t + 1`), most likely first. The last position (`t = L - 1`, which
            predicts beyond the row) is all zeros.
        logprobs (`torch.FloatTensor` of shape `(L, K)`): their log-probabilities (descending along K); zeros at the
            last position.
        next_logprob (`torch.FloatTensor` of shape `(L,)`, *optional*): at position `t`, the log-probability of the
            row's actual token `t + 1` (the server always returns it, in the top K or not); 0 at the last position.
            A teacher-tokenized cache stores it for chunk likelihoods.
    """

    ids: torch.Tensor
    logprobs: torch.Tensor
    next_logprob: torch.Tensor | None = None

    def at_temperature(self, temperature: float) -> RowScores:
        """The same scores as `log_softmax(logits / temperature)` (servers answer at temperature 1). Exact only when
        K is the whole vocabulary, which callers check; the zero-filled last position stays zero."""
        if temperature == 1.0:
            return self
        logprobs = self.logprobs.clone()
        logprobs[:-1] = torch.log_softmax(self.logprobs[:-1] / temperature, dim=-1)
        return dataclasses.replace(self, logprobs=logprobs)

    def __len__(self) -> int:
        return self.ids.shape[0]


def _where(model: str, url: str | None) -> str:
    return f"the server at {url} (model {model!r})" if url else f"the server of model {model!r}"


def _token_ids(row: Any, what: str) -> list[int]:
    """`row` as a list of Python ints; a float or a nested list is a caller bug, so it is refused, not truncated."""
    if isinstance(row, torch.Tensor):
        if row.dim() != 1 or row.dtype.is_floating_point:
            raise ValueError(f"{what} must be a 1-D integer tensor, got shape {tuple(row.shape)} and {row.dtype}")
        return row.tolist()
    try:
        return [operator.index(token) for token in row]
    except TypeError:
        raise ValueError(f"{what} must be a list of int token ids, got {row!r:.200}") from None


def completion_request(model: str, rows: Sequence[Sequence[int]], k: int) -> dict[str, Any]:
    """The JSON body of one `/completions` request that scores `rows` (one prompt each, sent unpadded).

    Args:
        model (`str`): the served model name (vLLM's `--served-model-name`).
        rows (`list[list[int]]`): `B` rows of token ids, each non-empty; rows may differ in length.
        k (`int`): how many log-probabilities per position (`prompt_logprobs`), at least 1.

    Returns:
        `dict`: the request body. `max_tokens=1` because vLLM generates at least one token; `temperature=0` keeps
        that token cheap and deterministic; `add_special_tokens=False` because the ids are already the final ones.

    Raises:
        `ValueError`: an empty model name, a `k` below 1, no rows, an empty row or a non-integer id.
    """
    if not isinstance(model, str) or not model:
        raise ValueError(f"model must be the served model name (a non-empty string), got {model!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k (the number of log-probabilities per position) must be an int >= 1, got {k!r}")
    if len(rows) == 0:
        raise ValueError("rows is empty: a scoring request needs at least one row of token ids")
    prompt = []
    for i, row in enumerate(rows):
        ids = _token_ids(row, f"rows[{i}]")
        if not ids:
            raise ValueError(f"rows[{i}] is empty: a server cannot score an empty prompt; drop the row before scoring")
        if min(ids) < 0:
            raise ValueError(f"rows[{i}] holds a negative token id ({min(ids)}): remove padding/ignore ids first")
        prompt.append(ids)
    return {
        "model": model,
        "prompt": prompt,
        "max_tokens": 1,
        "temperature": 0.0,
        "echo": False,
        "prompt_logprobs": k,
        "return_token_ids": True,
        "add_special_tokens": False,
    }


def parse_scores(
    response: Any,
    rows: Sequence[Sequence[int]],
    k: int,
    model: str,
    *,
    vocab_size: int | None = None,
    url: str | None = None,
) -> list[RowScores]:
    """Checks a `/completions` answer against the request it answers and returns each row's top-K.

    Args:
        response (`dict`): the decoded JSON answer to `completion_request(model, rows, k)`.
        rows (`list[list[int]]`): the `B` rows that were sent (row `i` is matched with the choice whose `index` is
            `i`, whatever order the choices come in).
        k (`int`): the `prompt_logprobs` that was requested.
        model (`str`): the served model name (for messages).
        vocab_size (`int`, *optional*): when given, every returned id must be in `[0, vocab_size)`.
        url (`str`, *optional*): the server's URL without credentials (for messages).

    Returns:
        `list[RowScores]`: `B` entries; entry `i` has `ids` and `logprobs` of shape `(len(rows[i]), k)`, position `t`
        holding `prompt_logprobs[t + 1]` sorted by log-probability (descending) and cut to exactly `k` entries, and the
        last position zero-filled.

    Raises:
        `ServedResponseError`: the answer is not the schema's (missing or duplicate choices, no
            `prompt_token_ids`, echoed ids that differ from the ids sent, wrong `prompt_logprobs` length, fewer than
            `k` entries at a position, an entry without the actual prompt token, a non-finite or positive
            log-probability, an id out of range); the message names the row and the position.
    """
    where = _where(model, url)
    if not isinstance(response, dict) or not isinstance(response.get("choices"), list):
        raise ServedResponseError(f"{where} answered without a `choices` list: got {str(response)[:300]!r}")
    choices = response["choices"]
    if len(choices) != len(rows):
        raise ServedResponseError(f"{where} returned {len(choices)} choices for the {len(rows)} rows sent")
    # vLLM may finish prompts out of order: match by `index`, never by position in the list.
    by_index: list[dict | None] = [None] * len(rows)
    for choice in choices:
        index = choice.get("index") if isinstance(choice, dict) else None
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(rows):
            raise ServedResponseError(f"{where} returned a choice with index {index!r}; expected 0..{len(rows) - 1}")
        if by_index[index] is not None:
            raise ServedResponseError(f"{where} returned choice index {index} twice")
        by_index[index] = choice
    token_id = _TokenIds()
    return [
        _parse_row(choice, _token_ids(row, f"rows[{i}]"), i, k, vocab_size, where, token_id)
        for i, (choice, row) in enumerate(zip(by_index, rows))
    ]


class _TokenIds(dict):
    """`key -> int(key)` for the string token ids of a response, converted once each."""

    def __missing__(self, key: str) -> int:
        value = self[key] = int(key)
        return value


def _parse_row(
    choice: dict, sent: list[int], i: int, k: int, vocab_size: int | None, where: str, token_id: _TokenIds
) -> RowScores:
    echoed = choice.get("prompt_token_ids")
    if echoed is None:
        raise ServedResponseError(f"{where} did not echo prompt_token_ids (row {i}): {_RETURN_TOKEN_IDS_HINT}")
    if echoed != sent:
        if not isinstance(echoed, list) or len(echoed) != len(sent):
            got = f"{len(echoed)} ids" if isinstance(echoed, list) else repr(echoed)[:100]
            raise ServedResponseError(f"{where} echoed {got} in prompt_token_ids of row {i}; {len(sent)} were sent")
        t = next(t for t, (a, b) in enumerate(zip(sent, echoed)) if a != b)
        raise ServedResponseError(
            f"{where} scored different tokens than were sent: row {i}, position {t} was sent id {sent[t]} but the "
            f"server echoed {echoed[t]!r} (a tokenizer or a proxy changed the prompt); its scores would be misaligned"
        )
    entries = choice.get("prompt_logprobs")
    if not isinstance(entries, list):
        raise ServedResponseError(f"{where} returned no prompt_logprobs list for row {i}: {_PROMPT_LOGPROBS_HINT}")
    length = len(sent)
    if len(entries) != length:
        raise ServedResponseError(
            f"{where} returned {len(entries)} prompt_logprobs entries for row {i}, which has {length} tokens"
        )
    ids_out = torch.zeros(length, k, dtype=torch.long)
    lp_out = torch.zeros(length, k, dtype=torch.float32)
    body = entries[1:]  # entry 0 (no context before the first token) is null in vLLM; ignored either way
    if not body:
        return RowScores(ids_out, lp_out, torch.zeros(length, dtype=torch.float32))

    if not all(type(entry) is dict for entry in body):
        j = next(j for j, entry in enumerate(body, 1) if type(entry) is not dict)
        raise ServedResponseError(f"{where}: row {i}, prompt_logprobs[{j}] is {body[j - 1]!r:.100}, not an object")
    lens = [len(entry) for entry in body]
    if min(lens) < k:
        j = next(j for j, n in enumerate(lens, 1) if n < k)
        raise ServedResponseError(
            f"{where}: row {i}, prompt_logprobs[{j}] holds {lens[j - 1]} entries; k={k} were requested (is the "
            f"server's --max-logprobs below k, or does it cut prompt_logprobs?)"
        )
    for j, entry in enumerate(body, 1):
        # vLLM always adds the actual prompt token; its absence means the scores are shifted or for other tokens.
        if str(sent[j]) not in entry:
            raise ServedResponseError(
                f"{where}: row {i}, prompt_logprobs[{j}] lacks the actual prompt token {sent[j]}, which vLLM always "
                f"includes: the scores do not belong to the tokens sent (are they shifted by a position?)"
            )

    # One flat list per row, padded to the widest position (K or K + 1 entries) with -inf, then one tensor and one
    # sort: the per-entry Python work is a dict lookup for the id (`token_id` caches `int(key)`: the same ids recur
    # at every position) and the `["logprob"]` lookup, both driven from C by `map`; `array` converts the lists to
    # machine numbers in C (far faster than `torch.tensor` on a list) and `frombuffer` shares its memory.
    width = max(lens)
    flat_ids: list[int] = []
    flat_lp: list[float] = []
    logprob_of = itemgetter("logprob")
    pad_ids, pad_lp = [0] * width, [float("-inf")] * width
    try:
        for entry, n in zip(body, lens):
            flat_ids.extend(map(token_id.__getitem__, entry))
            flat_lp.extend(map(logprob_of, entry.values()))
            if n < width:
                flat_ids.extend(pad_ids[: width - n])
                flat_lp.extend(pad_lp[: width - n])
        ids = torch.frombuffer(array("q", flat_ids), dtype=torch.int64).view(length - 1, width)
        lp = torch.frombuffer(array("d", flat_lp), dtype=torch.float64).view(length - 1, width)
    except (KeyError, TypeError, ValueError, OverflowError):
        _raise_bad_entry(body, i, where)
        raise  # _raise_bad_entry found nothing: a bug here, not in the response

    real = torch.arange(width) < torch.tensor(lens).unsqueeze(1) if width > k else torch.ones_like(ids, dtype=bool)
    bad = real & ~(torch.isfinite(lp) & (lp <= MAX_LOGPROB))
    if bad.any():
        j, c = bad.nonzero()[0].tolist()
        raise ServedResponseError(
            f"{where}: row {i}, prompt_logprobs[{j + 1}] gives token {int(ids[j, c])} the log-probability "
            f"{float(lp[j, c])}; a log-probability must be finite and <= 0"
        )
    bad = real & ((ids < 0) | (ids >= vocab_size)) if vocab_size is not None else real & (ids < 0)
    if bad.any():
        j, c = bad.nonzero()[0].tolist()
        bound = f"[0, {vocab_size})" if vocab_size is not None else ">= 0"
        raise ServedResponseError(
            f"{where}: row {i}, prompt_logprobs[{j + 1}] holds token id {int(ids[j, c])}, outside {bound} (is the "
            f"server running a model with another vocabulary?)"
        )
    # The actual next token's log-probability, before the cut to K may drop it (every position holds it: checked).
    actual = (ids == torch.tensor(sent[1:]).unsqueeze(1)) & real
    next_out = torch.zeros(length, dtype=torch.float32)
    next_out[:-1] = lp.masked_fill(~actual, float("-inf")).amax(-1).float()
    # Sort descending (padding is -inf, so it sorts last) and keep exactly k: the actual token beyond the top K goes.
    lp, order = lp.sort(dim=-1, descending=True, stable=True)
    ids_out[:-1] = ids.gather(-1, order[:, :k])
    lp_out[:-1] = lp[:, :k].float()
    return RowScores(ids_out, lp_out, next_out)


def _raise_bad_entry(body: list[dict], i: int, where: str) -> None:
    """Finds the first entry the fast path could not read and raises a message naming it."""
    for j, entry in enumerate(body, 1):
        for key, value in entry.items():
            try:
                int(key)
            except ValueError:
                raise ServedResponseError(
                    f"{where}: row {i}, prompt_logprobs[{j}] has key {key!r}, not a token id"
                ) from None
            logprob = value.get("logprob") if isinstance(value, dict) else None
            if isinstance(logprob, bool) or not isinstance(logprob, (int, float)):
                raise ServedResponseError(
                    f"{where}: row {i}, prompt_logprobs[{j}][{key!r}] is {value!r:.100}; expected "
                    f'{{"logprob": <number>, "rank": <int>, ...}}'
                )


def probe_request(model: str, text: str, k: int = 1) -> dict[str, Any]:
    """The JSON body that asks the server to tokenize `text` its own way (with special tokens) and echo the ids.

    Args:
        model (`str`): the served model name.
        text (`str`): the probe text, non-empty.
        k (`int`, *optional*, defaults to 1): `prompt_logprobs` asked: the k training will ask, so that a server
            that refuses it (vLLM's `--max-logprobs`) says so before training starts.

    Returns:
        `dict`: the request body.

    Raises:
        `ValueError`: an empty model name or text.
    """
    if not isinstance(model, str) or not model:
        raise ValueError(f"model must be the served model name (a non-empty string), got {model!r}")
    if not isinstance(text, str) or not text:
        raise ValueError(f"the probe text must be a non-empty string, got {text!r}")
    return {
        "model": model,
        "prompt": text,
        "max_tokens": 1,
        "temperature": 0.0,
        "echo": False,
        "prompt_logprobs": k,
        "return_token_ids": True,
        "add_special_tokens": True,
    }


def probe_token_ids(response: Any, *, model: str = "", url: str | None = None) -> list[int]:
    """The token ids the server made of the probe text.

    Args:
        response (`dict`): the decoded JSON answer to `probe_request`.
        model (`str`, *optional*): the served model name (for messages).
        url (`str`, *optional*): the server's URL without credentials (for messages).

    Returns:
        `list[int]`: `choices[0].prompt_token_ids`, to compare with `student_tokenizer(text)["input_ids"]`.

    Raises:
        `ServedResponseError`: no choice, or no `prompt_token_ids` list of ints.
    """
    where = _where(model, url)
    choices = response.get("choices") if isinstance(response, dict) else None
    if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
        raise ServedResponseError(f"{where} answered the probe without exactly one choice: {str(response)[:300]!r}")
    ids = choices[0].get("prompt_token_ids")
    if ids is None:
        raise ServedResponseError(f"{where} did not echo prompt_token_ids: {_RETURN_TOKEN_IDS_HINT}")
    if not isinstance(ids, list) or not all(type(token) is int for token in ids):
        raise ServedResponseError(f"{where} echoed prompt_token_ids that are not a list of ints: {ids!r:.200}")
    return ids


def model_entry(models_response: Any, model: str, *, url: str | None = None) -> dict[str, Any]:
    """The `/models` entry of `model`.

    Args:
        models_response (`dict`): the decoded JSON answer of `GET /models` (`{"object": "list", "data": [...]}`).
        model (`str`): the served model name looked for (vLLM's `--served-model-name`).
        url (`str`, *optional*): the server's URL without credentials (for messages).

    Returns:
        `dict`: the entry whose `id` is `model` (vLLM gives `root`, `max_model_len`; some servers a `revision`).

    Raises:
        `ServedResponseError`: the answer has no `data` list.
        `ServedModelNotFoundError` (a `ServedResponseError`): no entry is named `model`; the message lists the names
            the server does serve.
    """
    data = models_response.get("data") if isinstance(models_response, dict) else None
    if not isinstance(data, list):
        raise ServedResponseError(
            f"{_where(model, url)}: GET /models answered without a `data` list: {str(models_response)[:300]!r}"
        )
    for entry in data:
        if isinstance(entry, dict) and entry.get("id") == model:
            return entry
    served = [entry.get("id") for entry in data if isinstance(entry, dict)]
    at = f" at {url}" if url else ""
    raise ServedModelNotFoundError(
        f"the server{at} does not serve a model named {model!r}; it serves {served}. Use one of these names after "
        f"'#' in the teacher spec (vLLM's --served-model-name)"
    )
