"""Text from files and repositories made safe to print: control characters (terminal escape sequences, carriage
returns, bells, bidirectional overrides) are shown escaped, never sent to the terminal raw."""

from __future__ import annotations

import unicodedata

# Control (C0, C1, DEL), format (bidi overrides, zero-width ...) and line/paragraph separator characters.
_UNSAFE_CATEGORIES = ("Cc", "Cf", "Zl", "Zp")


def printable(text: object, newlines: bool = True) -> str:
    """`str(text)` with every control character escaped (ESC `"\\x1b[2J"` prints as the 7 characters `\\x1b[2J`);
    tabs and, when `newlines`, newlines are kept."""
    out = []
    for char in str(text):
        if char == "\t" or (char == "\n" and newlines) or unicodedata.category(char) not in _UNSAFE_CATEGORIES:
            out.append(char)
        else:
            out.append(f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")
    return "".join(out)
