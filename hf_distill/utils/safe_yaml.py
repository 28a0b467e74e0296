"""YAML front matter of cards, parsed without aliases and within a size cap: the one parser for every card hf_distill
reads (a teacher's README, a pulled student's card, the README a push merges into). With aliases a few hundred bytes
can stand for billions of nodes (the "billion laughs" card).

`huggingface_hub.RepoCard` parses with `yaml.safe_load`, which expands aliases, so it is not used on cards read here.
Imports nothing of hf_distill.
"""

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


def split_front_matter(text: str) -> tuple[dict[str, Any], str]:
    """(metadata, body) of a card's text: the YAML front matter parsed without aliases (`{}` when there is none), and
    the Markdown after it.

    Raises:
        `ValueError`: the front matter is not YAML or uses aliases (the message gives the line and column in the
        card), is nested deeper than the parser's stack, or is not a mapping.
    """
    match = FRONT_MATTER.match(text)
    if not match:
        return {}, text
    try:
        metadata = yaml.load(match.group(1), Loader=NoAliasLoader) or {}
    except RecursionError:  # `[[[[...` nested deeper than the parser's stack
        raise ValueError("nested too deeply to be card metadata") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 2}, column {mark.column + 1}" if mark is not None else ""  # +2: the `---` line
        raise ValueError(f"{getattr(error, 'problem', None) or error}{at}") from None
    if not isinstance(metadata, dict):
        raise ValueError(f"not a mapping (got {type(metadata).__name__})")
    return metadata, text[match.end() :]


def card_metadata_of(path: str, max_bytes: int = MAX_FRONT_MATTER_BYTES) -> dict[str, Any]:
    """The YAML front matter of the card at `path`, parsed without aliases; `{}` when it has none.

    Raises:
        `ValueError`: the card is over `max_bytes`, its front matter is not YAML, uses aliases, or is not a mapping.
    """
    size = os.path.getsize(path)
    if size > max_bytes:
        raise ValueError(f"{size} bytes, over the {max_bytes}-byte limit for a card")
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read(max_bytes + 1)
    try:
        return split_front_matter(text)[0]
    except ValueError as error:
        raise ValueError(f"front matter not read: {error}") from None
