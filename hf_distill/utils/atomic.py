"""Atomic file writes: every file hf_distill writes appears whole or not at all.

The content goes to a temporary file in the same folder (same filesystem, so the rename cannot become a copy), is
flushed to disk, and is renamed over the target with `os.replace`, which is atomic on POSIX and Windows. A crash, a
full disk or a kill mid-write leaves the previous file (or none) and at most a hidden `.<name>.<random>.tmp` file,
never a truncated `distillation_lineage.json`, manifest, shard or card.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from typing import IO, Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """A temporary path beside `path` for writers that take a path (e.g. `pyarrow.parquet.write_table`); renamed to
    `path` when the block exits without an exception, deleted otherwise.

    Example:
        ```python
        >>> with atomic_path("out/shard-00000.parquet") as tmp:
        ...     pq.write_table(table, tmp)
        ```
    """
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}.{secrets.token_hex(6)}.tmp")
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """`open(path, mode)` that replaces `path` only once the block has written everything (mode `"w"` or `"wb"`).

    Example:
        ```python
        >>> with atomic_open("out/distillation_lineage.json") as f:
        ...     json.dump(record, f)
        ```
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode={mode!r}; atomic_open writes whole files: use 'w' or 'wb'.")
    with atomic_path(path) as tmp:
        # "x": the temporary name is new; the file gets the usual permissions (umask), unlike mkstemp's 0600.
        with open(tmp, mode.replace("w", "x"), encoding=None if "b" in mode else encoding) as f:
            yield f


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_open(path) as f:
        f.write(text)


def write_json(path: str | os.PathLike, data: Any, **dump_kwargs: Any) -> None:
    """`json.dump(data, ...)` to `path` atomically (`dump_kwargs` as for `json.dump`, e.g. `indent=2`)."""
    with atomic_open(path) as f:
        json.dump(data, f, **dump_kwargs)


def _fsync(path: str) -> None:
    # The data must be on disk before the rename makes it visible, or a power loss could expose an empty file.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
