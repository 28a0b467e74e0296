"""The HTTP side of a served teacher: one JSON POST per batch to an OpenAI-compatible server, with retries.

Standard library `urllib.request` on purpose: one JSON request per batch needs no client library, and the one already
installed (huggingface_hub's session) is its own implementation detail. Every call opens its own connection and the
client holds no mutable state, so one client is safe to share between the threads of a scoring pool.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

from .._logging import get_logger
from .protocol import (
    RowScores,
    ServedModelNotFoundError,
    ServedResponseError,
    completion_request,
    model_entry,
    parse_scores,
    probe_request,
    probe_token_ids,
)

__all__ = ["ServedClient", "ServedTeacherError", "MAX_BACKOFF"]

logger = get_logger(__name__)

MAX_BACKOFF = 8.0
"""The longest wait between two attempts, in seconds (the wait doubles from `backoff` up to this)."""
_ERROR_CHARS = 300  # how much of a server's error body a message quotes


class ServedTeacherError(RuntimeError):
    """The server could not be reached or refused the request (after the retries, when the failure was retryable)."""


def _strip_credentials(url: str) -> tuple[str, str | None]:
    """`url` without `user:password@`, and the Basic authorization header those credentials make (or `None`)."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal lost its brackets in `hostname`
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    clean = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    user = urllib.parse.unquote(parts.username or "")
    password = urllib.parse.unquote(parts.password or "")
    return clean, "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _server_message(body: bytes) -> str:
    """The `message` of an OpenAI/vLLM error body (`{"error": {"message"}}` or `{"message"}`), else the raw text."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        payload = json.loads(text)
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        inner = payload.get("error")
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            text = inner["message"]
        elif isinstance(payload.get("message"), str):
            text = payload["message"]
        elif isinstance(inner, str):
            text = inner
    return text if len(text) <= _ERROR_CHARS else text[:_ERROR_CHARS] + "..."


class ServedClient:
    """A client for the scoring endpoint of an OpenAI-compatible server (vLLM >= 0.10.2 schema).

    Args:
        base_url (`str`): the API root, e.g. `"http://127.0.0.1:8000/v1"` (requests go to `{base_url}/completions` and
            `{base_url}/models`). `user:password@` in it becomes a Basic authorization header and is never shown.
        model (`str`): the served model name (vLLM's `--served-model-name`).
        api_key (`str`, *optional*): sent as `Authorization: Bearer <api_key>`, and nowhere else (not in messages,
            logs or `repr`).
        timeout (`float`, *optional*, defaults to 60.0): seconds to wait for a connection and for each read.
        max_retries (`int`, *optional*, defaults to 3): retries after a retryable failure (connection error,
            timeout, HTTP 429 or 5xx), so at most `max_retries + 1` attempts.
        backoff (`float`, *optional*, defaults to 0.5): the wait before retry `n` (from 0) is
            `min(backoff * 2**n, 8)` seconds.
        vocab_size (`int`, *optional*): when given, every scored id must be below it.

    Raises:
        `ValueError`: a `base_url` that is not http(s), or a negative `timeout`, `max_retries` or `backoff`.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        vocab_size: int | None = None,
    ) -> None:
        url, basic = _strip_credentials(base_url.rstrip("/"))
        if urllib.parse.urlsplit(url).scheme not in ("http", "https") or not urllib.parse.urlsplit(url).hostname:
            raise ValueError(f"base_url must be an http(s) URL such as 'http://127.0.0.1:8000/v1', got {url!r}")
        if not isinstance(model, str) or not model:
            raise ValueError(f"model must be the served model name (a non-empty string), got {model!r}")
        if timeout <= 0 or max_retries < 0 or backoff < 0:
            raise ValueError(
                f"timeout must be > 0 and max_retries, backoff >= 0; got timeout={timeout}, "
                f"max_retries={max_retries}, backoff={backoff}"
            )
        self.url = url
        self.model = model
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.vocab_size = vocab_size
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        elif basic:
            self._headers["Authorization"] = basic

    def __repr__(self) -> str:
        auth = ", auth=<set>" if "Authorization" in self._headers else ""
        return f"{type(self).__name__}(url={self.url!r}, model={self.model!r}{auth})"

    # -- public calls -------------------------------------------------------------------------------------------------

    def score(self, rows: Sequence[Sequence[int]], k: int, *, stop: threading.Event | None = None) -> list[RowScores]:
        """The served model's top-`k` log-probabilities at every position of every row.

        Args:
            rows (`list[list[int]]`): `B` non-empty rows of token ids (unpadded; lengths may differ).
            k (`int`): log-probabilities per position.
            stop (`threading.Event`, *optional*): once set, no new attempt starts and a wait before a retry ends
                (an attempt on the wire finishes): how a failed training run keeps nothing retrying after it.

        Returns:
            `list[RowScores]`: entry `i` has `ids` `(len(rows[i]), k)` and `logprobs` `(len(rows[i]), k)`, aligned
            like logits (position `t` scores token `t + 1`; the last position is zeros).

        Raises:
            `ServedTeacherError`: the server stayed unreachable or failing after the retries, or refused the request.
            `ServedResponseError`: the answer is malformed or does not belong to the tokens sent.
        """
        response = self._call("POST", "/completions", completion_request(self.model, rows, k), stop)
        return parse_scores(response, rows, k, self.model, vocab_size=self.vocab_size, url=self.url)

    def models(self) -> dict[str, Any]:
        """The `/models` entry of this client's model (`id`, and for vLLM `root`, `max_model_len`; maybe `revision`).

        Raises:
            `ServedTeacherError`: the server is unreachable, refused the request, or does not serve `model` (the
                message lists the names it serves).
            `ServedResponseError`: the answer is malformed.
        """
        try:
            return model_entry(self._call("GET", "/models", None), self.model, url=self.url)
        except ServedModelNotFoundError as error:
            # Not a malformed answer: the server works but the spec names another model, like an unreachable server
            # it stops the run before training, with the same exception type.
            raise ServedTeacherError(str(error)) from None

    def probe(self, text: str, k: int = 1) -> list[int]:
        """The token ids the server makes of `text` (with special tokens), to compare with the student's tokenizer;
        scored at `k` log-probabilities per position, so that a `k` the server refuses is refused here.

        Raises:
            `ServedTeacherError`: the server is unreachable or refused the request.
            `ServedResponseError`: the answer is malformed or lacks `prompt_token_ids`.
        """
        response = self._call("POST", "/completions", probe_request(self.model, text, k))
        return probe_token_ids(response, model=self.model, url=self.url)

    # -- transport ----------------------------------------------------------------------------------------------------

    def _call(self, method: str, path: str, body: dict[str, Any] | None, stop: threading.Event | None = None) -> Any:
        """One request with retries (none once `stop` is set); returns the decoded JSON answer."""
        endpoint = f"{self.url}{path}"
        data = None if body is None else json.dumps(body).encode()
        attempts = self.max_retries + 1
        last = ""
        for attempt in range(attempts):
            if stop is not None and stop.is_set():
                raise ServedTeacherError(
                    f"{method} {endpoint} (model {self.model!r}) was not sent: training had stopped"
                )
            request = urllib.request.Request(endpoint, data=data, method=method, headers=self._headers)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                    raw = answer.read()
            except urllib.error.HTTPError as error:  # before URLError: it is one
                try:
                    message = _server_message(error.read() or b"")
                except (OSError, http.client.HTTPException):  # the error body itself was cut off
                    message = error.reason if isinstance(error.reason, str) else "(no readable body)"
                if error.code != 429 and error.code < 500:
                    raise ServedTeacherError(self._refused(method, endpoint, error.code, message)) from None
                last = f"HTTP {error.code}: {message}"
            except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
                # Connection refused/reset, a dropped connection mid-answer, a timeout: all may pass, so retry.
                last = self._describe(error)
            else:
                try:
                    return json.loads(raw)
                except ValueError:
                    raise ServedResponseError(
                        f"the server at {self.url} (model {self.model!r}) answered {method} {path} with a body that "
                        f"is not JSON: {raw[:_ERROR_CHARS].decode('utf-8', errors='replace')!r}"
                    ) from None
            if attempt + 1 < attempts:
                wait = min(self.backoff * 2**attempt, MAX_BACKOFF)
                logger.warning(
                    "%s %s failed (attempt %d of %d: %s); retrying in %.2g s",
                    method, endpoint, attempt + 1, attempts, last, wait,
                )  # fmt: skip
                if stop is None:
                    time.sleep(wait)
                else:
                    stop.wait(wait)  # a sleep that `stop` ends
        raise ServedTeacherError(
            f"{method} {endpoint} (model {self.model!r}) failed after {attempts} attempt{'s' * (attempts > 1)}; last "
            f"error: {last}. Check that the server is running and reachable from here, or raise "
            f"teacher_request_retries / teacher_request_timeout"
        )

    def _describe(self, error: BaseException) -> str:
        """A short text for a transport error; timeouts say which limit was hit."""
        reason = error.reason if isinstance(error, urllib.error.URLError) else error
        if isinstance(reason, (TimeoutError, socket.timeout)):
            return f"timed out: no answer within timeout={self.timeout:g} s"
        if isinstance(reason, ConnectionRefusedError):
            return "connection refused (nothing listening at that address)"
        return f"{type(reason).__name__}: {reason}"

    def _refused(self, method: str, endpoint: str, code: int, message: str) -> str:
        hint = {
            401: "Check the API key (the variable teacher_api_key_env names)",
            403: "Check the API key (the variable teacher_api_key_env names)",
            404: "Check that the base URL ends with the API root (e.g. /v1) and that the model name is served",
        }.get(
            code,
            "The request is not retried: fix it (a log-probability limit: teacher_top_k, or cache.k, at most the "
            "server's --max-logprobs)",
        )
        return (
            f"{method} {endpoint} (model {self.model!r}) was refused with HTTP {code}: {message.rstrip('.')}. {hint}."
        )
