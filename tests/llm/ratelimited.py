"""A fake provider that allows ``rate`` requests per ``period`` seconds per API key, as a
real provider's token bucket does, and answers HTTP 429 with ``retry-after-ms`` (and
``retry-after`` in whole seconds) otherwise; it counts what it granted and refused.

    async with RateLimitedProvider(rate=6, period=1.0) as fake:
        ...  # every unscripted request is answered by ``conversation``

Unscripted requests get :func:`conversation`'s answers: a ``bash`` tool call until the
conversation holds ``turns`` answers, then a final text, so one run of the built-in
harness makes ``turns`` requests.
"""

from __future__ import annotations

import math
import time
from typing import Any

from corral.llm.types import ToolUse
from tests.llm.fakeprovider import Api, FakeProvider, Reply, Response, Status

__all__ = ["RateLimitedProvider", "conversation", "most_in_window"]


def conversation(body: Any, turns: int) -> Reply:
    """A tool call for each of the first ``turns - 1`` requests of a conversation, then
    the answer (counted by the assistant messages already in the request)."""
    messages = body.get("messages", []) if isinstance(body, dict) else []
    answered = sum(1 for m in messages if isinstance(m, dict) and m.get("role") == "assistant")
    if answered + 1 >= turns:
        return Reply.text("Done.")
    return Reply.tools(ToolUse(f"t{answered}", "bash", {"command": "true"}))


def most_in_window(times: list[float], window: float) -> int:
    """The most of ``times`` within any ``window`` seconds."""
    ordered = sorted(times)
    most = start = 0
    for end, at in enumerate(ordered):
        while at - ordered[start] >= window:
            start += 1
        most = max(most, end - start + 1)
    return most


class RateLimitedProvider(FakeProvider):
    """See the module docstring. ``capacity`` requests may go at once after a quiet
    spell (default 1: the allowed requests are evenly spaced)."""

    def __init__(
        self, rate: float, period: float = 60.0, *, capacity: float = 1.0, turns: int = 1
    ) -> None:
        super().__init__()
        self.rate = rate
        self.period = period
        self.capacity = capacity
        self.turns = turns
        self.granted = 0
        self.refused = 0
        #: The monotonic time of every granted request, and of every request.
        self.times: list[float] = []
        self.arrivals: list[float] = []
        self._level = capacity
        self._at = time.monotonic()

    def admit(self, api: Api, body: Any) -> Status | None:
        now = time.monotonic()
        self.arrivals.append(now)
        per_second = self.rate / self.period
        self._level = min(self.capacity, self._level + (now - self._at) * per_second)
        self._at = now
        if self._level >= 1.0 - 1e-9:
            self._level -= 1.0
            self.granted += 1
            self.times.append(now)
            return None
        self.refused += 1
        wait = (1.0 - self._level) / per_second
        headers = {"retry-after-ms": f"{wait * 1000:.0f}", "retry-after": str(math.ceil(wait))}
        error = {"type": "rate_limit_error", "message": "rate limit exceeded"}
        return Status(429, {"type": "error", "error": error}, headers)

    def answer(self, api: Api, body: Any) -> Response | None:
        return conversation(body, self.turns)
