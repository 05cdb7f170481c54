"""Model fallback: try an agent's models in order of preference, with circuit breakers.

    chain = ModelChain([
        ChainEntry("sonnet", "claude-sonnet-4-5", anthropic_client),
        ChainEntry("gpt", "gpt-5", openai_client),
    ])
    completion, name = await chain.complete(system, messages, tools, max_tokens)

Per entry, by the error its client raised:

* :class:`RateLimited` / :class:`Overloaded`: the entry's breaker opens at once (for
  ``cooldown`` seconds, or ``retry_after`` if the provider asked for longer) and the next
  entry is tried without sleeping.
* :class:`Unavailable` (incl. :class:`BadResponse`): the same entry is retried up to
  ``max_retries`` times, sleeping ``uniform(0, min(max_delay, base_delay * 2**n))`` before
  retry ``n + 1`` (exponential backoff, full jitter); then one failure is counted on its
  breaker (which opens after 3 consecutive ones) and the next entry is tried.
* :class:`AuthFailed` / :class:`BadRequest` (and any other :class:`ProviderError`): raised
  at once; other entries are not tried.

An open breaker is skipped until its cooldown ends; then it is half-open: one call may try
the entry (concurrent calls keep skipping it), a success closes the breaker and a failure
opens it again. When no entry answered, :class:`AllModelsFailed` lists why for each.

Breakers live in a ``dict`` keyed by entry name; pass the same dict to several chains
(e.g. every run of one scheduler) to share what they learn about model health.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from corral.llm.errors import (
    AuthFailed,
    BadRequest,
    Overloaded,
    ProviderError,
    RateLimited,
    Unavailable,
)
from corral.llm.types import Completion, LLMClient, Message, ToolSpec

__all__ = [
    "AllModelsFailed",
    "Attempt",
    "Breaker",
    "ChainEntry",
    "ModelChain",
    "Outcome",
]

Outcome = Literal[
    "ok", "rate_limited", "overloaded", "unavailable", "auth", "bad_request", "skipped_open"
]


@dataclass(frozen=True)
class ChainEntry:
    """One model of a chain: its ``name`` (the breaker key), the provider's model id and
    the client that reaches it."""

    name: str
    model: str
    client: LLMClient


@dataclass(frozen=True)
class Attempt:
    """One try (or skip) of an entry; ``delay`` is what was slept after it before retrying."""

    entry: str
    outcome: Outcome
    error: str = ""
    delay: float = 0.0


class Breaker:
    """The health of one model: consecutive failures and, when open, until when.

    Opens after ``rate_limit_threshold`` consecutive rate-limit/overload failures
    (default 1) or ``unavailable_threshold`` consecutive unavailable ones (default 3);
    times are those of the chain's clock.
    """

    def __init__(self, *, rate_limit_threshold: int = 1, unavailable_threshold: int = 3) -> None:
        self.rate_limit_threshold = rate_limit_threshold
        self.unavailable_threshold = unavailable_threshold
        self.failures = 0
        self.open_until: float | None = None
        self.trial_in_flight = False

    def __repr__(self) -> str:
        return (
            f"Breaker(failures={self.failures}, open_until={self.open_until}, "
            f"trial_in_flight={self.trial_in_flight})"
        )

    def is_open(self, now: float) -> bool:
        """Whether a call now must skip this model."""
        if self.open_until is None:
            return False
        return now < self.open_until or self.trial_in_flight

    def half_open(self, now: float) -> bool:
        return self.open_until is not None and now >= self.open_until

    def acquire(self, now: float) -> bool:
        """Whether a call may try the model now; in half-open state only one call may."""
        if self.is_open(now):
            return False
        if self.half_open(now):
            self.trial_in_flight = True
        return True

    def release(self) -> None:
        """End a try that neither succeeded nor failed for health reasons (e.g. bad request)."""
        self.trial_in_flight = False

    def succeed(self) -> None:
        self.failures = 0
        self.open_until = None
        self.trial_in_flight = False

    def fail(
        self, now: float, cooldown: float, *, rate_limited: bool, retry_after: float | None = None
    ) -> None:
        """Count a failure; open (for ``cooldown``, or longer if ``retry_after`` says so)
        when the threshold is reached or a half-open trial failed."""
        trial = self.half_open(now)
        self.trial_in_flight = False
        self.failures += 1
        threshold = self.rate_limit_threshold if rate_limited else self.unavailable_threshold
        if trial or self.failures >= threshold:
            wait = max(cooldown, retry_after) if retry_after is not None else cooldown
            self.open_until = now + wait


class AllModelsFailed(ProviderError):
    """No entry of a chain answered; ``reasons`` maps each entry to why.

    ``retry_after`` is the number of seconds until the earliest of the chain's breakers
    closes (0 when some entry failed without opening its breaker).
    """

    def __init__(
        self, reasons: dict[str, str], retry_after: float, attempts: list[Attempt]
    ) -> None:
        self.reasons = reasons
        self.retry_after = retry_after
        self.attempts = attempts
        listed = "; ".join(f"{name}: {why}" for name, why in reasons.items())
        super().__init__(f"all models failed: {listed}", provider="model chain")


def _secs(seconds: float) -> str:
    return f"{round(seconds, 1):g} s"


class ModelChain:
    """Completions from the first healthy entry of ``entries``; see the module docstring."""

    def __init__(
        self,
        entries: Sequence[ChainEntry],
        *,
        cooldown: float = 60.0,
        max_retries: int = 2,
        base_delay: float = 0.5,
        max_delay: float = 8.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        breakers: dict[str, Breaker] | None = None,
    ) -> None:
        if not entries:
            raise ValueError("a model chain needs at least one entry")
        names = [e.name for e in entries]
        if len(set(names)) != len(names):
            raise ValueError(f"model chain entry names must be unique: {names}")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.entries = list(entries)
        self.cooldown = cooldown
        self.max_retries = max_retries
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._clock = clock
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        self.breakers: dict[str, Breaker] = breakers if breakers is not None else {}
        for name in names:
            self.breakers.setdefault(name, Breaker())
        #: The tries of the most recently started :meth:`complete` call.
        self.attempts: list[Attempt] = []

    def backoff(self, retry: int) -> float:
        """The jittered delay before retry ``retry + 1`` of one entry."""
        return self._rng.uniform(0, min(self.max_delay, self.base_delay * 2**retry))

    async def complete(
        self,
        system: str,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec],
        max_tokens: int,
        thinking_level: str | None = None,
    ) -> tuple[Completion, str]:
        """The first answer of a healthy entry and that entry's name.

        Raises :class:`AuthFailed` / :class:`BadRequest` at once, and
        :class:`AllModelsFailed` when every entry failed or was skipped.
        """
        attempts: list[Attempt] = []
        self.attempts = attempts
        reasons: dict[str, str] = {}
        for entry in self.entries:
            breaker = self.breakers[entry.name]
            now = self._clock()
            if not breaker.acquire(now):
                why = self._open_reason(breaker, now)
                attempts.append(Attempt(entry.name, "skipped_open", why))
                reasons[entry.name] = why
                continue
            try:
                completion, why = await self._try(
                    entry, breaker, attempts, system, messages, tools, max_tokens, thinking_level
                )
            finally:
                breaker.release()
            if completion is not None:
                return completion, entry.name
            reasons[entry.name] = why
        raise AllModelsFailed(reasons, self._retry_after(), attempts)

    async def _try(
        self,
        entry: ChainEntry,
        breaker: Breaker,
        attempts: list[Attempt],
        system: str,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec],
        max_tokens: int,
        thinking_level: str | None,
    ) -> tuple[Completion | None, str]:
        """One entry with its retries: the completion, or ``None`` and why it failed."""
        retry = 0
        while True:
            try:
                completion = await entry.client.complete(
                    entry.model, system, messages, tools, max_tokens, thinking_level
                )
            except RateLimited as exc:
                attempts.append(Attempt(entry.name, "rate_limited", str(exc)))
                breaker.fail(
                    self._clock(), self.cooldown, rate_limited=True, retry_after=exc.retry_after
                )
                if exc.retry_after is not None:
                    return None, f"rate limited (retry after {_secs(exc.retry_after)})"
                return None, "rate limited"
            except Overloaded as exc:
                attempts.append(Attempt(entry.name, "overloaded", str(exc)))
                breaker.fail(self._clock(), self.cooldown, rate_limited=True)
                return None, "overloaded"
            except Unavailable as exc:
                if retry < self.max_retries:
                    delay = self.backoff(retry)
                    attempts.append(Attempt(entry.name, "unavailable", str(exc), delay))
                    await self._sleep(delay)
                    retry += 1
                    continue
                attempts.append(Attempt(entry.name, "unavailable", str(exc)))
                breaker.fail(self._clock(), self.cooldown, rate_limited=False)
                return None, f"unavailable after {retry + 1} tries ({exc})"
            except AuthFailed as exc:
                attempts.append(Attempt(entry.name, "auth", str(exc)))
                raise
            except BadRequest as exc:
                attempts.append(Attempt(entry.name, "bad_request", str(exc)))
                raise
            attempts.append(Attempt(entry.name, "ok"))
            breaker.succeed()
            return completion, ""

    def _open_reason(self, breaker: Breaker, now: float) -> str:
        assert breaker.open_until is not None
        if now >= breaker.open_until:
            return "circuit half-open, another call is trying it"
        return f"circuit open until {_secs(breaker.open_until - now)} from now"

    def _retry_after(self) -> float:
        now = self._clock()
        waits = []
        for entry in self.entries:
            until = self.breakers[entry.name].open_until
            waits.append(0.0 if until is None else max(0.0, until - now))
        return min(waits)
