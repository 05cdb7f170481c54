"""What every route of the gateway needs at its edge: answers that encode whatever they
quote, request-body numbers that are numbers, and the words for a body's bad input.

A JSON body may spell a lone UTF-16 surrogate (``"\\ud800"``): Python decodes it into a
string that cannot be written as UTF-8, so an answer quoting it (a 422 echoing the
input, an error naming a value) would fail while being sent, as a 500. ``json_response``
writes such a character as the JSON escape it came as. And JSON's ``true`` is not 1:
``WholeNumber`` refuses a boolean where a count is expected, naming the field.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import BeforeValidator, ValidationInfo
from starlette.requests import Request
from starlette.responses import JSONResponse

from corral.engine.actions import ActionError

__all__ = [
    "SafeJSONResponse",
    "Seconds",
    "WholeNumber",
    "json_response",
    "problems",
    "read_body",
]


class SafeJSONResponse(JSONResponse):
    """A JSON answer that encodes any string, a lone surrogate included (as ``\\udXXX``)."""

    def render(self, content: Any) -> bytes:
        text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        # Only a lone surrogate cannot be encoded, and it only occurs inside a JSON
        # string, where backslashreplace writes it as the very escape JSON uses for it.
        return text.encode("utf-8", "backslashreplace")


def json_response(
    body: dict[str, Any], status: int, headers: dict[str, str] | None = None
) -> SafeJSONResponse:
    return SafeJSONResponse(body, status_code=status, headers=headers)


def _not_a_boolean(value: Any, info: ValidationInfo) -> Any:
    if isinstance(value, bool):
        spelled = "true" if value else "false"
        raise ValueError(f"{info.field_name} must be a whole number, not a boolean ({spelled})")
    return value


def _seconds_not_a_boolean(value: Any, info: ValidationInfo) -> Any:
    if isinstance(value, bool):
        spelled = "true" if value else "false"
        raise ValueError(
            f"{info.field_name} must be a number of seconds, not a boolean ({spelled})"
        )
    return value


#: An ``int`` taken from a request body: ``true`` and ``false`` are refused (pydantic's lax
#: mode would read them as 1 and 0).
WholeNumber = Annotated[int, BeforeValidator(_not_a_boolean)]
#: A duration in seconds taken from a request body, booleans refused in the same way.
Seconds = Annotated[float, BeforeValidator(_seconds_not_a_boolean)]


def problems(errors: Sequence[Any]) -> str:
    """A validation failure in words: each field, and what was wrong with it."""
    found = []
    for error in errors:
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        if error.get("type") == "string_unicode":
            message = "holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not text"
        else:
            message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        found.append(f"{where or 'body'}: {message}")
    return "bad request: " + "; ".join(found)


async def read_body(request: Request, limit: int, what: str, send: str) -> bytes:
    """The request's body, read as it streams in: 413 past ``limit`` bytes (said or
    sent), 400 when empty. ``what``: "a bundle"; ``send``: what to send instead."""
    too_big = f"{what} may be at most {limit} bytes"
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ActionError(413, too_big)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ActionError(413, too_big)
        chunks.append(chunk)
    if size == 0:
        raise ActionError(400, f"the body is empty: send {send}")
    return b"".join(chunks)
