"""Where a served teacher is and how to talk to it: the `openai-compatible:` teacher spec and the request settings.

A served teacher is named like a model, so that every place that takes a teacher name (`teacher_model=`,
`teacher_model_name_or_path`, a recipe's `teacher.model_name_or_path`, `hf-distill cache-teacher`) takes it too:

    openai-compatible:http://127.0.0.1:8000/v1#Qwen/Qwen2.5-72B-Instruct

the server's OpenAI-compatible base URL (up to and including `/v1`), then `#` and the model name the server serves
(`--served-model-name` in vLLM; what `GET /v1/models` lists).
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass
from typing import Any

from ..config import check_served_fields

SERVED_PREFIX = "openai-compatible:"


def is_served_spec(value: Any) -> bool:
    """Whether `value` names a served teacher (a string starting with `openai-compatible:`)."""
    return isinstance(value, str) and value.strip().lower().startswith(SERVED_PREFIX)


@dataclass(frozen=True)
class ServedEndpoint:
    """A teacher served behind an OpenAI-compatible API.

    Attributes:
        base_url (`str`): the API's base URL, e.g. `http://127.0.0.1:8000/v1` (no trailing slash).
        model (`str`): the served model's name, as the server lists it.
    """

    base_url: str
    model: str

    @classmethod
    def parse(cls, spec: str) -> ServedEndpoint:
        """Read `openai-compatible:<base_url>#<model>`.

        Raises:
            `ValueError`: naming the spec and what a valid one looks like: no `#model`, a URL that is not http(s),
                or credentials written into the URL (they would end up in logs and checkpoints: use
                `teacher_api_key_env`).
        """
        example = "openai-compatible:http://127.0.0.1:8000/v1#model-name"
        if not is_served_spec(spec):
            raise ValueError(f"{spec!r} is not a served teacher; write it like {example!r}.")
        rest = spec.strip()[len(SERVED_PREFIX) :]
        url, _, model = rest.partition("#")
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(
                f"The served teacher {_redacted(spec)!r}: {_redacted(url)!r} is not an http(s) URL; write it like "
                f"{example!r}."
            )
        if parsed.username or parsed.password:
            raise ValueError(
                f"The served teacher {_redacted(spec)!r} carries credentials in its URL, where they would reach logs "
                "and saved arguments: remove them and put the API key in an environment variable named by "
                "teacher_api_key_env (e.g. teacher_api_key_env='OPENAI_API_KEY')."
            )
        if not model.strip():
            raise ValueError(
                f"The served teacher {spec!r} names no model: add `#` and the name the server serves "
                f"(GET {url.rstrip('/')}/models lists them), like {example!r}."
            )
        return cls(base_url=url.rstrip("/"), model=model.strip())

    @property
    def host(self) -> str:
        return urllib.parse.urlsplit(self.base_url).hostname or ""

    @property
    def spec(self) -> str:
        return f"{SERVED_PREFIX}{self.base_url}#{self.model}"


def _redacted(text: str) -> str:
    """`text` with any `user:password@` of a URL in it replaced, for error messages."""
    parsed = urllib.parse.urlsplit(text.split(SERVED_PREFIX, 1)[-1])
    if parsed.password or parsed.username:
        return text.replace(parsed.netloc, parsed.netloc.rsplit("@", 1)[-1])
    return text


@dataclass(frozen=True)
class ServedSettings:
    """How the trainer asks a served teacher (from `DistillationConfig`'s `teacher_*` request fields).

    Attributes:
        k (`int`): log-probabilities per position (`teacher_top_k`).
        concurrency (`int`): requests in flight at once (`teacher_request_concurrency`).
        timeout (`float`): seconds one request may take (`teacher_request_timeout`).
        retries (`int`): retries of a request after a transient failure (`teacher_request_retries`).
        prefetch (`int`): batches scored ahead of the one the student trains on (`teacher_prefetch`).
        api_key_env (`str`, *optional*): the environment variable holding the API key (`teacher_api_key_env`).
        provider (`str`, *optional*): whose terms apply (`teacher_provider`); default from the URL's host.
        license (`str`, *optional*): the served model's license id (`teacher_license`).
    """

    k: int = 20
    concurrency: int = 2
    timeout: float = 120.0
    retries: int = 3
    prefetch: int = 2
    api_key_env: str | None = None
    provider: str | None = None
    license: str | None = None

    def __post_init__(self) -> None:
        check_served_fields(
            teacher_top_k=self.k,
            teacher_request_concurrency=self.concurrency,
            teacher_request_timeout=self.timeout,
            teacher_request_retries=self.retries,
            teacher_prefetch=self.prefetch,
        )

    def api_key(self) -> str | None:
        """The API key from `api_key_env`; refused when that variable is named but unset (a silent anonymous request
        would fail later with a less telling 401)."""
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ValueError(
                f"teacher_api_key_env={self.api_key_env!r}, but that environment variable is not set: export it "
                "with the server's API key, or leave teacher_api_key_env unset for a server without one."
            )
        return key
