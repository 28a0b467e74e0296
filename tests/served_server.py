"""A small OpenAI-compatible scoring server for tests: `hf_distill.served` talks to it over real HTTP on 127.0.0.1.

Why this exists: served teachers must be tested against a real socket and a real model, but no inference server
(vLLM, SGLang, TGI) installs offline within CI's time, so this module serves a local transformers causal LM with the
part of the schema hf_distill uses: vLLM's OpenAI-compatible server, >= 0.10.2 (`POST /v1/completions` with the
`prompt_logprobs` and `return_token_ids` extensions, `GET /v1/models`).

Schema served (see /work/x19/DESIGN.md):
- `prompt_logprobs=K`: for every prompt position `j >= 1`, the top-K of `log_softmax` of the model's float32 logits
  (temperature 1) at position `j - 1`, keyed by the token id as a JSON string, each `{"logprob", "rank",
  "decoded_token"}`; the actual prompt token is added with its true rank when it is outside the top K; entry 0 is null.
- `return_token_ids=true`: each choice echoes `prompt_token_ids` and the generated `token_ids`.
- One greedy token is generated per prompt (`max_tokens` is otherwise ignored); `finish_reason` is "length".
- String prompts are tokenized with `add_special_tokens` from the request (default true), like vLLM.
- Errors are vLLM-like JSON: `{"error": {"message", "type", "param", "code"}}`.

Fault knobs (CLI flags, or keyword arguments of `start_server`): `--delay S`, `--die-after N`, `--wrong-ids`,
`--malformed`, `--fail-first N`, `--max-logprobs M`, `--revision R` (and `--shuffle-choices`, which reverses the
choices to test matching by index). Run: `python tests/served_server.py --model FOLDER --served-model-name NAME`;
the first stdout line is `PORT <n>`.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch

__all__ = ["ServerHandle", "start_server", "main"]


@functools.lru_cache(maxsize=4)
def _load(model_path: str) -> tuple[Any, Any, threading.Lock]:
    """Model, tokenizer and the lock serialising its forwards (cached: several test servers share one model)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_path, torch_dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(model_path), threading.Lock()


class _State:
    """What the handlers share: the model, the knobs, and the request counters (behind a lock)."""

    def __init__(self, model_path: str, name: str, *, in_process: bool, **knobs: Any) -> None:
        self.model, self.tokenizer, self.model_lock = _load(model_path)
        self.name, self.model_path, self.in_process = name, model_path, in_process
        self.delay = float(knobs.pop("delay", 0.0) or 0.0)
        self.die_after = knobs.pop("die_after", None)
        self.wrong_ids = bool(knobs.pop("wrong_ids", False))
        self.malformed = bool(knobs.pop("malformed", False))
        self.fail_first = int(knobs.pop("fail_first", 0) or 0)
        self.max_logprobs = knobs.pop("max_logprobs", None)
        self.revision = knobs.pop("revision", None)
        self.shuffle_choices = bool(knobs.pop("shuffle_choices", False))
        if knobs:
            raise TypeError(f"unknown knobs: {sorted(knobs)}")
        self.counter_lock = threading.Lock()
        self.requests = 0  # every request, for --fail-first
        self.scored = 0  # answered /completions requests, for --die-after
        self.authorization: list[str | None] = []  # the Authorization header of every request, for tests
        self._decoded: dict[int, str] = {}
        self.stop = None  # set by start_server: how --die-after stops an in-process server

    @functools.cached_property
    def vocab(self) -> int:
        return self.model.get_output_embeddings().weight.shape[0]

    def decoded(self, token: int) -> str:
        # vLLM's `decoded_token`; cached because every position repeats most of the top-K
        if token not in self._decoded:
            self._decoded[token] = self.tokenizer.decode([token])
        return self._decoded[token]

    def score(self, ids: list[int], k: int) -> dict[str, Any]:
        """One choice: prompt_logprobs of `ids` at top-`k`, and one greedy token."""
        with self.model_lock, torch.no_grad():  # the model is not thread-safe; the HTTP side stays concurrent
            logits = self.model(torch.tensor([ids])).logits[0].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        k = logprobs.shape[-1] if k < 0 else min(k, logprobs.shape[-1])  # vLLM reads -1 as "the whole vocabulary"
        top_lp, top_ids = logprobs.topk(k, dim=-1)
        entries: list[dict[str, Any] | None] = [None]  # nothing predicts the first token
        for j in range(1, len(ids)):
            dist, actual = logprobs[j - 1], ids[j]
            entry = {
                str(token): {"logprob": lp, "rank": rank, "decoded_token": self.decoded(token)}
                for rank, (token, lp) in enumerate(zip(top_ids[j - 1].tolist(), top_lp[j - 1].tolist()), 1)
            }
            if str(actual) not in entry:  # vLLM adds the actual token, with its true rank
                rank = int((dist > dist[actual]).sum()) + 1
                entry[str(actual)] = {
                    "logprob": float(dist[actual]),
                    "rank": rank,
                    "decoded_token": self.decoded(actual),
                }
            entries.append(entry)
        token = int(logits[-1].argmax())
        return {
            "prompt_logprobs": entries,
            "text": self.decoded(token),
            "token_ids": [token],
        }


def _error(code: int, message: str, kind: str) -> tuple[int, dict[str, Any]]:
    return code, {"error": {"message": message, "type": kind, "param": None, "code": code}}


class _Handler(BaseHTTPRequestHandler):
    server_version = "hf-distill-test-server/1"
    state: _State  # set on the subclass made per server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - upstream name
        pass  # keep test output clean

    def _send(self, code: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test): nothing to answer

    def _begin(self) -> bool:
        """Common to every request: record auth, apply --delay and --fail-first. False when already answered."""
        state = self.state
        with state.counter_lock:
            state.requests += 1
            failing = state.requests <= state.fail_first
            state.authorization.append(self.headers.get("Authorization"))
        if state.delay:
            time.sleep(state.delay)
        if failing:
            self._send(*_error(503, "the test server is failing on purpose (--fail-first)", "ServiceUnavailable"))
            return False
        return True

    def do_GET(self) -> None:  # noqa: N802 - upstream name
        if not self._begin():
            return
        if self.path.rstrip("/") != "/v1/models":
            return self._send(*_error(404, f"no route {self.path}", "NotFoundError"))
        entry = {
            "id": self.state.name,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "hf-distill-tests",
            "root": self.state.model_path,
            "parent": None,
            "max_model_len": self.state.model.config.max_position_embeddings,
        }
        if self.state.revision is not None:
            entry["revision"] = self.state.revision
        self._send(200, {"object": "list", "data": [entry]})

    def do_POST(self) -> None:  # noqa: N802 - upstream name
        if not self._begin():
            return
        if self.path.rstrip("/") != "/v1/completions":
            return self._send(*_error(404, f"no route {self.path}", "NotFoundError"))
        try:
            request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        except ValueError as error:
            return self._send(*_error(400, f"invalid JSON: {error}", "BadRequestError"))
        state = self.state
        with state.counter_lock:
            dying = state.die_after is not None and state.scored >= state.die_after
            state.scored += 0 if dying else 1
        if dying:  # --die-after: the N+1-th scoring request kills the server before any answer
            if not state.in_process:
                os._exit(1)
            self.close_connection = True
            threading.Thread(target=state.stop, daemon=True).start()  # shutdown() must not run on a handler thread
            return
        self._send(*self._complete(request))

    def _complete(self, request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        state = self.state
        if request.get("model") != state.name:
            return _error(404, f"The model `{request.get('model')}` does not exist.", "NotFoundError")
        k = request.get("prompt_logprobs")
        if k is not None and state.max_logprobs is not None and k > state.max_logprobs:
            # vLLM's wording (v1 engine's processor), refused before any work
            message = f"Requested prompt logprobs of {k}, which is greater than max allowed: {state.max_logprobs}"
            return _error(400, message, "BadRequestError")
        prompts = request.get("prompt")
        if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]  # one prompt, as text or ids
        if not isinstance(prompts, list) or not prompts:
            return _error(400, "prompt must be a string, a list of ids, or a list of those", "BadRequestError")
        special = request.get("add_special_tokens", True)
        rows = [
            state.tokenizer(p, add_special_tokens=special)["input_ids"] if isinstance(p, str) else list(p)
            for p in prompts
        ]
        if any(not row or min(row) < 0 or max(row) >= state.vocab for row in rows):
            return _error(400, f"every prompt must be non-empty ids in [0, {state.vocab})", "BadRequestError")
        choices = []
        for index, row in enumerate(rows):
            scored = state.score(row, k or 0)
            echoed = list(row)
            if state.wrong_ids and index == len(rows) - 1:
                echoed[len(echoed) // 2] = (echoed[len(echoed) // 2] + 1) % state.vocab
            choice = {
                "index": index,
                "text": scored["text"],
                "logprobs": None,
                "finish_reason": "length",
                "stop_reason": None,
                "prompt_logprobs": scored["prompt_logprobs"] if k is not None else None,
                "prompt_token_ids": echoed if request.get("return_token_ids") else None,
                "token_ids": scored["token_ids"] if request.get("return_token_ids") else None,
            }
            if state.malformed:
                del choice["prompt_logprobs"]
            choices.append(choice)
        if state.shuffle_choices:
            choices.reverse()
        prompt_tokens = sum(map(len, rows))
        return 200, {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": state.name,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(rows),
                "total_tokens": prompt_tokens + len(rows),
            },
        }


class ServerHandle:
    """A running server: `.url` (`http://127.0.0.1:<port>/v1`), `.port`, `.state` (counters), `.stop()`.

    Also unpacks as `url, stop = start_server(...)`.
    """

    def __init__(self, server: ThreadingHTTPServer, thread: threading.Thread, state: _State) -> None:
        self._server, self._thread, self.state = server, thread, state
        self.port = server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._stopped = threading.Event()

    def stop(self) -> None:
        """Stops serving and closes the socket (idempotent); afterwards a connection to the port is refused."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._server.shutdown()
        self._server.server_close()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)

    def __iter__(self):
        return iter((self.url, self.stop))


def _make_server(model_path: str, name: str, port: int, in_process: bool, **knobs: Any) -> ThreadingHTTPServer:
    state = _State(str(model_path), name, in_process=in_process, **knobs)
    handler = type("Handler", (_Handler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True  # a slow handler (--delay) never blocks shutdown
    server.state = state
    return server


def start_server(model_path: str | os.PathLike, name: str, *, port: int = 0, **knobs: Any) -> ServerHandle:
    """Serves the causal LM in `model_path` as `name` from a daemon thread; returns once it accepts connections.

    Knobs: `delay`, `die_after` (stops the server instead of exiting), `wrong_ids`, `malformed`, `fail_first`,
    `max_logprobs`, `revision`, `shuffle_choices`.
    """
    server = _make_server(str(model_path), name, port, in_process=True, **knobs)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    handle = ServerHandle(server, thread, server.state)
    server.state.stop = handle.stop
    thread.start()
    return handle


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--model", required=True, help="a local transformers causal LM folder (with its tokenizer)")
    parser.add_argument("--served-model-name", required=True)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--port-file", help="also write the port there (atomically)")
    parser.add_argument("--delay", type=float, default=0.0, help="sleep this many seconds before every answer")
    parser.add_argument("--die-after", type=int, help="exit (status 1) on the scoring request after the N-th")
    parser.add_argument("--wrong-ids", action="store_true", help="echo one prompt id changed (in the last row)")
    parser.add_argument("--malformed", action="store_true", help="drop prompt_logprobs from the choices")
    parser.add_argument("--fail-first", type=int, default=0, help="answer HTTP 503 to the first N requests")
    parser.add_argument("--max-logprobs", type=int, help="refuse prompt_logprobs above this with HTTP 400")
    parser.add_argument("--revision", help="report this revision in /v1/models")
    parser.add_argument("--shuffle-choices", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    knobs = {
        key: getattr(args, key)
        for key in ("delay", "die_after", "wrong_ids", "malformed", "fail_first", "max_logprobs", "revision")
    }
    server = _make_server(
        args.model, args.served_model_name, args.port, False, shuffle_choices=args.shuffle_choices, **knobs
    )
    port = server.server_address[1]
    if args.port_file:  # written before the PORT line, so a reader of that line can also read the file
        tmp = f"{args.port_file}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(str(port))
        os.replace(tmp, args.port_file)
    print(f"PORT {port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    sys.exit(main())
