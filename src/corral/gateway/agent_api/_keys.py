"""Lock keys: URIs (``scheme:rest``) of printable characters.

A key is shown to operators (`corral locks`, the dashboard) and compared byte for byte,
so characters that do not show, or show as something else, are refused: every Unicode
separator (category Z: spaces such as U+00A0, U+2028 and U+2029) and every "other"
character (category C: controls such as U+0085, format characters such as the bidi
override U+202E and the zero-width space U+200B, private-use, unassigned and surrogate
code points). The refusal names the character by its code point and its position.
"""

from __future__ import annotations

import re
import unicodedata

from corral.gateway.agent_api._errors import AgentApiError
from corral.gateway.agent_api._models import MAX_KEY_LENGTH

__all__ = ["EXAMPLE", "validate_key"]

EXAMPLE = "a lock key is a URI such as github://acme/app/issues/42 or deploy://api-prod"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_KINDS = {
    "Zs": "a space",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
    "Cc": "a control character",
    "Cf": "an invisible format character",
    "Co": "a private-use character",
    "Cn": "an unassigned code point",
    "Cs": "a lone surrogate",
}


def _refuse(message: str) -> AgentApiError:
    return AgentApiError(400, {"ok": False, "error": message})


def _bad_character(key: str) -> tuple[int, str] | None:
    """The position and category of the first character a key may not hold."""
    if key.isascii() and key.isprintable() and " " not in key:
        return None  # the common case, decided without looking at each character
    for position, char in enumerate(key):
        category = unicodedata.category(char)
        if category[0] in "ZC":
            return position, category
    return None


def validate_key(key: str) -> str:
    """``key`` when it is a valid lock key, else a 400 that says what is wrong and where."""
    if len(key) > MAX_KEY_LENGTH:
        raise _refuse(
            f"resource key is {len(key)} characters; {EXAMPLE}, at most {MAX_KEY_LENGTH} characters"
        )
    bad = _bad_character(key)
    if bad is not None:
        position, category = bad
        char = key[position]
        name = unicodedata.name(char, "") if category != "Cs" else ""
        what = f"U+{ord(char):04X}" + (f" ({name})" if name else "")
        raise _refuse(
            f"invalid resource key {key!a}: character {what} at position {position} is "
            f"{_KINDS.get(category, 'not printable')}; keys may not contain whitespace, "
            f"control or invisible characters; {EXAMPLE}"
        )
    match = _SCHEME.match(key)
    if match is None or match.end() == len(key):
        raise _refuse(f"invalid resource key {key!r}: {EXAMPLE}")
    return key
