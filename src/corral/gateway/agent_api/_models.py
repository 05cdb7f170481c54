"""The agent API's request bodies, limits and answer shapes.

The bodies' schemas are the OpenAPI document; the answers are the documented JSON of
the in-run commands (docs/agent-commands.md).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, Field

from corral.gateway.edge import Seconds, WholeNumber
from corral.store import Call, CallState, Deadlock, LockGrant, LockHeld

__all__ = [
    "DEFAULT_CALL_WAIT",
    "DEFAULT_LOCK_WAIT",
    "MAX_CONTEXT_BYTES",
    "MAX_KEY_LENGTH",
    "MAX_RETURN_BYTES",
    "MAX_SHUTDOWN_REASON",
    "MAX_WAIT",
    "NOT_FOUND_CALL",
    "POLL_SECONDS",
    "AcquireBody",
    "CallBody",
    "EmptyBody",
    "ExitBody",
    "LockBody",
    "ReturnBody",
    "StatusBody",
    "WaitBody",
    "call_status",
    "deadlock_answer",
    "grant_answer",
    "held_answer",
    "iso",
    "shutdown_reason",
]

#: The largest ``al-return`` value, and the largest call context: 1 MiB of UTF-8.
MAX_RETURN_BYTES = 1024 * 1024
MAX_CONTEXT_BYTES = 1024 * 1024
MAX_KEY_LENGTH = 1024
DEFAULT_LOCK_WAIT = 300.0
DEFAULT_CALL_WAIT = 900.0
MAX_WAIT = 86_400.0
#: How often a waiting request looks at the store when nothing woke it: the fallback for
#: changes no notice reports (SQLite's other processes, a lock that merely expired).
POLL_SECONDS = 0.5


class LockBody(BaseModel):
    key: str = Field(min_length=1, max_length=MAX_KEY_LENGTH * 4)


class AcquireBody(LockBody):
    wait: bool = False
    timeout: Seconds | None = Field(default=None, ge=0, le=MAX_WAIT)


class CallBody(BaseModel):
    agent: str = Field(min_length=1, max_length=200)
    context: str = Field(default="", max_length=MAX_CONTEXT_BYTES)


class WaitBody(BaseModel):
    callIds: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(
        min_length=1, max_length=100
    )
    timeout: Seconds = Field(default=DEFAULT_CALL_WAIT, ge=0, le=MAX_WAIT)


class ReturnBody(BaseModel):
    value: str = Field(max_length=MAX_RETURN_BYTES * 2)


class StatusBody(BaseModel):
    text: str = Field(min_length=1, max_length=4096)


class ExitBody(BaseModel):
    code: WholeNumber = Field(default=15, ge=0, le=255)


#: ``al-shutdown`` without a reason: Action Llama's words.
DEFAULT_SHUTDOWN_REASON = "agent requested shutdown"


#: The longest shutdown reason kept, in characters; a longer one is cut, not refused.
MAX_SHUTDOWN_REASON = 4096


def shutdown_reason(raw: bytes) -> str:
    """The reason of an ``al-shutdown`` body, taken whatever its shape: a run asking to be
    killed is killed, so nothing in its body may turn the request into a refusal. A
    ``{"reason": ...}`` object gives the reason (a non-string one as JSON text); any
    other body is its own text; none gives Action Llama's default. Cut to
    :data:`MAX_SHUTDOWN_REASON` characters."""
    text = raw.decode("utf-8", "replace").strip()
    try:
        parsed = json.loads(text) if text else None
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
        parsed = text
    if isinstance(parsed, dict):
        parsed = parsed.get("reason")
    if parsed is None or parsed == "":
        return DEFAULT_SHUTDOWN_REASON
    reason = parsed if isinstance(parsed, str) else json.dumps(parsed)[: MAX_SHUTDOWN_REASON + 1]
    if len(reason) > MAX_SHUTDOWN_REASON:
        return reason[: MAX_SHUTDOWN_REASON - 1] + "…"
    return reason


class EmptyBody(BaseModel):
    pass


# -- answers ---------------------------------------------------------------------------


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def held_answer(held: LockHeld) -> dict[str, Any]:
    return {"ok": False, "holder": held.holder, "heldSince": iso(held.held_since)}


def grant_answer(grant: LockGrant) -> dict[str, Any]:
    return {
        "ok": True,
        "key": grant.key,
        "token": grant.token,
        "expiresAt": iso(grant.expires_at),
        "refreshed": grant.refreshed,
    }


def deadlock_answer(deadlock: Deadlock) -> dict[str, Any]:
    # "deadlock": true is what Action Llama's gateway adds; the documented keys come first.
    return {
        "ok": False,
        "reason": "possible deadlock detected",
        "cycle": list(deadlock.cycle),
        "deadlock": True,
    }


def call_status(call: Call) -> dict[str, Any]:
    answer: dict[str, Any] = {"status": call.state.value}
    if call.state is CallState.COMPLETED:
        answer["returnValue"] = call.return_value
    elif call.state is CallState.ERROR:
        answer["error"] = call.error
        answer["errorMessage"] = call.error
    return answer


NOT_FOUND_CALL = {"status": "error", "error": "call not found", "errorMessage": "call not found"}
