"""Package logger: one `hf_distill` logger with its own handler, so distillation messages show by default."""

from __future__ import annotations

import logging
import os

_ROOT = "hf_distill"


def get_logger(name: str) -> logging.Logger:
    """A child of the `hf_distill` logger. Level: `HF_DISTILL_VERBOSITY` (default `info`)."""
    root = logging.getLogger(_ROOT)
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[hf_distill] %(message)s"))
        root.addHandler(handler)
        root.setLevel(os.environ.get("HF_DISTILL_VERBOSITY", "info").upper())
        root.propagate = False
    return logging.getLogger(name if name.startswith(_ROOT) else f"{_ROOT}.{name}")
