"""YAML front matter of untrusted cards (a teacher's README, a pulled student's card), parsed without aliases and
within a size cap: with aliases a few hundred bytes can stand for billions of nodes (the "billion laughs" card).
Imports nothing of hf_distill."""

from __future__ import annotations

import os
import re
from typing import Any

import yaml

# A card's metadata is a few kB (tens with a distillation block); anything far larger is not card metadata.
MAX_FRONT_MATTER_BYTES = 1 << 20
FRONT_MATTER = re.compile(r"\A---\s*\n(.*?\n)---\s*\n?", re.DOTALL)


class NoAliasLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses aliases (`*name`); card metadata never needs them."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not accepted in card metadata", event.start_mark
            )
        return super().compose_node(parent, index)


def card_metadata_of(path: str, max_bytes: int = MAX_FRONT_MATTER_BYTES) -> dict[str, Any]:
    """The YAML front matter of the card at `path`, parsed without aliases; `{}` when it has none.

    Raises:
        `ValueError`: the card is over `max_bytes`, its front matter is not YAML, uses aliases, or is not a mapping.
    """
    size = os.path.getsize(path)
    if size > max_bytes:
        raise ValueError(f"{size} bytes, over the {max_bytes}-byte limit for a card")
    with open(path, encoding="utf-8", errors="replace") as f:
        match = FRONT_MATTER.match(f.read(max_bytes + 1))
    if not match:
        return {}
    try:
        metadata = yaml.load(match.group(1), Loader=NoAliasLoader) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"front matter not read: {getattr(error, 'problem', None) or error}") from None
    if not isinstance(metadata, dict):
        raise ValueError(f"front matter is not a mapping (got {type(metadata).__name__})")
    return metadata
