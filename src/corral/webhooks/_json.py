"""Reading a delivery's JSON body: decoding it, and typed access that names where it failed.

A sender we document (GitHub, a ``generic`` sender the user controls) is read
strictly: a field of the wrong type is a :class:`PayloadError` naming the field,
so a broken sender is told what to fix instead of having its event half-read. The
providers corral knows only from their documentation (Sentry, Linear, Mintlify) are
read leniently: a field of an unexpected type is treated as absent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = ["MAX_TEXT", "Node", "PayloadError", "clip", "describe", "epoch_utc", "load_object"]

# Free text (an issue's body) beyond this is cut in the trigger: it is a prompt, and the
# whole text is one `gh` call away. The stored receipt keeps the body as it came.
MAX_TEXT = 16_000


class PayloadError(ValueError):
    """The body is not a JSON object, not UTF-8, or not shaped as its sender documents.

    The message says what is wrong and where (``'issue.title' must be a string, got a
    number``); it never quotes the body.
    """


def describe(value: object) -> str:
    """A JSON value's kind, as named in messages: ``a string``, ``null``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "a list"
    return "an object"


def load_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a :class:`PayloadError` saying why not."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(
            f"the body is not UTF-8 text: byte 0x{body[exc.start]:02x} at offset {exc.start} "
            f"({exc.reason})"
        ) from None
    try:
        value = _DECODER.decode(text.removeprefix("\ufeff"))
    except json.JSONDecodeError as exc:
        hint = ""
        if text.startswith("payload="):
            hint = " (it is form-encoded: set the webhook's content type to application/json)"
        raise PayloadError(
            f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}" + hint
        ) from None
    except PayloadError:
        raise
    except (ValueError, RecursionError) as exc:  # a 5,000-digit number; nesting too deep
        raise PayloadError(f"the body is not usable JSON: {_first_line(exc)}") from None
    if not isinstance(value, dict):
        raise PayloadError(f"the body must be a JSON object, got {describe(value)}")
    if _MAY_HOLD_SURROGATE.search(text):
        try:
            _refuse_lone_surrogates(value, "")
        except RecursionError:
            raise PayloadError("the body is not usable JSON: it is nested too deeply") from None
    return value


#: A ``\\uD800``-``\\uDFFF`` escape: JSON text may spell half of a UTF-16 pair alone, which
#: decodes to a string no UTF-8 store or answer can hold. Only a body with one is walked.
_MAY_HOLD_SURROGATE = re.compile(r"\\u[dD][89abcdefABCDEF]")


def _refuse_lone_surrogates(value: Any, where: str) -> None:
    """A :class:`PayloadError` naming the first key or string holding a lone surrogate (a
    surrogate pair was already joined into its character by the decoder)."""
    if isinstance(value, str):
        if not value.isascii() and _has_surrogate(value):
            raise PayloadError(
                f"{_place(where)} holds a lone UTF-16 surrogate (an escape from "
                "\\ud800 to \\udfff without its pair), which is not text"
            )
    elif isinstance(value, dict):
        for key, item in value.items():
            path = f"{where}.{key}" if where else key
            if _has_surrogate(key):
                raise PayloadError(f"a key in {_place(where)} holds a lone UTF-16 surrogate")
            _refuse_lone_surrogates(item, path)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _refuse_lone_surrogates(item, f"{where}[{index}]")


def _place(where: str) -> str:
    return f"'{where}'" if where else "the body"


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _no_constant(name: str) -> Any:
    raise PayloadError(f"the body is not valid JSON: {name} is not a JSON value")


#: One decoder for every body (``json.loads`` with an option builds a new one per call).
_DECODER = json.JSONDecoder(parse_constant=_no_constant)


def _first_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


def epoch_utc(seconds: float) -> str | None:
    """``2026-03-24T14:30:00Z`` for a Unix time; ``None`` when it is out of range."""
    try:
        return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (ValueError, OverflowError, OSError):
        return None


def _iso_utc(text: str) -> str | None:
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        return None


def clip(text: str | None) -> str | None:
    if text is None or len(text) <= MAX_TEXT:
        return text
    return f"{text[:MAX_TEXT]}\n[... {len(text) - MAX_TEXT} more characters cut]"


@dataclass(frozen=True, slots=True)
class Node:
    """A JSON object inside a payload, with its path (``issue.user``) for messages."""

    data: Mapping[str, Any]
    path: str = ""
    strict: bool = True

    def _where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def _wrong(self, key: str, expected: str, value: object) -> None:
        if self.strict:
            raise PayloadError(f"'{self._where(key)}' must be {expected}, got {describe(value)}")

    def obj(self, key: str) -> Node | None:
        """The object at ``key``; ``None`` when absent or null."""
        value = self.data.get(key)
        if isinstance(value, dict):
            return Node(value, self._where(key), self.strict)
        if value is not None:
            self._wrong(key, "an object", value)
        return None

    def need(self, key: str, event: str) -> Node:
        """The object at ``key``, which the ``event`` cannot be without."""
        found = self.obj(key)
        if found is None:
            raise PayloadError(f"the {event} event has no '{self._where(key)}' object")
        return found

    def text(self, key: str) -> str | None:
        value = self.data.get(key)
        if isinstance(value, str):
            return value
        if value is not None:
            self._wrong(key, "a string", value)
        return None

    def integer(self, key: str) -> int | None:
        value = self.data.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if value is not None:
            self._wrong(key, "an integer", value)
        return None

    def login(self, key: str, field: str = "login") -> str | None:
        """``issue.user.login``: a person's name inside the object at ``key``."""
        person = self.obj(key)
        return person.text(field) if person is not None else None

    def names(self, key: str, field: str | None = None) -> list[str]:
        """A list of strings, or of objects whose ``field`` is the string (``labels[].name``)."""
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self._wrong(key, "a list", value)
            return []
        found: list[str] = []
        for index, item in enumerate(value):
            where = f"{key}[{index}]"
            if field is None:
                if isinstance(item, str):
                    found.append(item)
                else:
                    self._wrong(where, "a string", item)
            elif isinstance(item, dict):
                name = Node(item, self._where(where), self.strict).text(field)
                if name is not None:
                    found.append(name)
            else:
                self._wrong(where, "an object", item)
        return found

    def time(self, key: str) -> str | None:
        """An ISO 8601 time (or, where a sender uses one, a Unix time) as UTC ``...Z``."""
        value = self.data.get(key)
        if isinstance(value, str):
            moment = _iso_utc(value)
            if moment is None and self.strict:
                raise PayloadError(
                    f"'{self._where(key)}' is not an ISO 8601 time such as 2026-03-24T14:30:00Z"
                )
            return moment
        if isinstance(value, int | float) and not isinstance(value, bool):
            return epoch_utc(value)
        if value is not None:
            self._wrong(key, "an ISO 8601 time", value)
        return None
