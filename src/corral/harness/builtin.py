"""The built-in harness's tool loop: ask the model, run the tools it calls, repeat.

The loop runs in the scheduler's process; the model is reached through a ``ModelChain``
(fallback, circuit breakers) and every tool call runs in the run's runtime through a
``Toolbox``, so model API keys never enter the run. Every turn and tool call is written
to the transcript (JSON objects, one per line in the run log). Budgets are enforced here,
not by the model: turns, tokens, dollars and wall-clock time, checked before every turn
(so a run overshoots a token or cost budget by at most the turn that crossed it, and a
cost budget also caps what the model may write in a turn to what is left); a run stopped
by one says which.

Exit codes follow the documented table: 0 done, 10 authentication failure, 12 every model
rate-limited or overloaded, 15 an unrecoverable error (the request was refused, or the
models kept failing), 124 out of time.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from corral.harness.tools import Toolbox
from corral.llm.errors import AuthFailed, BadRequest, ProviderError
from corral.llm.fallback import AllModelsFailed, ModelChain
from corral.llm.types import Block, Message, Text, ToolResult, ToolUse, Usage

__all__ = [
    "EXIT_AUTH",
    "EXIT_RATE_LIMITED",
    "EXIT_UNRECOVERABLE",
    "Budgets",
    "LoopResult",
    "run_loop",
]

EXIT_AUTH = 10
EXIT_RATE_LIMITED = 12
EXIT_UNRECOVERABLE = 15
EXIT_TIMEOUT = 124

#: Receives each transcript entry (a JSON-able dict).
Transcript = Callable[[dict[str, Any]], Awaitable[None]]
#: The dollars a turn of the named model cost, or None when the model has no price.
Pricer = Callable[[str, Usage], float | None]


@dataclass(frozen=True)
class Budgets:
    """Per-run limits; ``None`` means no limit."""

    max_turns: int = 50
    max_tokens: int | None = None
    #: US dollars; needs a ``Pricer`` that knows every model's price.
    max_cost: float | None = None
    wall_seconds: float | None = None
    #: The most the model may write in one turn.
    turn_tokens: int = 8192


@dataclass
class LoopResult:
    exit_code: int
    error: str | None
    turns: int
    usage: Usage = field(default_factory=lambda: Usage(0, 0, 0, 0))
    #: Dollars spent so far; None once a turn's model had no price (or nothing prices).
    cost_usd: float | None = 0.0
    #: Which budget stopped the run, if one did ("turns", "tokens", "cost", "wall clock").
    budget: str | None = None
    final_text: str = ""


def _add(total: Usage, more: Usage) -> Usage:
    return Usage(
        total.input_tokens + more.input_tokens,
        total.output_tokens + more.output_tokens,
        total.cache_read_tokens + more.cache_read_tokens,
        total.cache_write_tokens + more.cache_write_tokens,
    )


def _tokens(usage: Usage) -> int:
    return (
        usage.input_tokens
        + usage.output_tokens
        + usage.cache_read_tokens
        + usage.cache_write_tokens
    )


async def run_loop(
    chain: ModelChain,
    toolbox: Toolbox,
    system: str,
    prompt: str,
    transcript: Transcript,
    budgets: Budgets | None = None,
    *,
    pricer: Pricer | None = None,
    output_price: float | None = None,
    on_turn: Callable[[LoopResult], Awaitable[None]] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> LoopResult:
    """Run the conversation to its end, a budget, or a failure; never raises for the
    model's or the tools' problems (they are the result).

    ``on_turn`` sees the running totals after every model turn (the scheduler stores
    them, so a day's spend counts runs still going). ``output_price`` (dollars per output
    token, the dearest of the models) lets a cost budget also cap how much the model may
    write in a turn, so that the answer alone cannot spend more than is left."""
    limits = budgets or Budgets()
    if limits.max_cost is not None and pricer is None:
        raise ValueError("a cost budget needs a pricer")
    started = clock()
    messages = [Message("user", [Text(prompt)])]
    result = LoopResult(0, None, 0, cost_usd=0.0 if pricer is not None else None)
    while True:
        stop = _over_budget(limits, result, clock() - started)
        if stop is not None:
            result.budget, result.exit_code = stop
            result.error = f"stopped by the {stop[0]} budget ({_limit_text(limits, stop[0])})"
            await transcript({"type": "budget", "budget": stop[0], "error": result.error})
            return result
        try:
            completion, model = await chain.complete(
                system, messages, list(toolbox.specs), _turn_limit(limits, result, output_price)
            )
        except ProviderError as exc:
            return await _failed(result, exc, transcript)
        result.turns += 1
        result.usage = _add(result.usage, completion.usage)
        cost = None if pricer is None else pricer(model, completion.usage)
        result.cost_usd = (
            None if cost is None or result.cost_usd is None else result.cost_usd + cost
        )
        entry = _turn_entry(result.turns, model, completion.content, completion.usage)
        await transcript(entry | {"costUsd": cost, "totalCostUsd": result.cost_usd})
        if on_turn is not None:
            await on_turn(result)
        messages.append(Message("assistant", list(completion.content)))
        calls = [block for block in completion.content if isinstance(block, ToolUse)]
        if not calls:
            result.final_text = completion.text
            return result
        answers: list[Block] = []
        for call in calls:
            answer = await toolbox.run(call)
            answers.append(answer)
            await transcript(_tool_entry(call, answer))
        messages.append(Message("user", answers))


def _turn_limit(limits: Budgets, result: LoopResult, output_price: float | None) -> int:
    """The most the model may write in the next turn: ``turn_tokens``, or fewer when a
    cost budget has less left than that many output tokens cost."""
    if limits.max_cost is None or not output_price or result.cost_usd is None:
        return limits.turn_tokens
    affordable = int((limits.max_cost - result.cost_usd) / output_price)
    return max(1, min(limits.turn_tokens, affordable))


def _over_budget(limits: Budgets, result: LoopResult, elapsed: float) -> tuple[str, int] | None:
    if result.turns >= limits.max_turns:
        return ("turns", EXIT_UNRECOVERABLE)
    if limits.max_tokens is not None and _tokens(result.usage) >= limits.max_tokens:
        return ("tokens", EXIT_UNRECOVERABLE)
    if (
        limits.max_cost is not None
        and result.cost_usd is not None
        and result.cost_usd >= limits.max_cost
    ):
        return ("cost", EXIT_UNRECOVERABLE)
    if limits.wall_seconds is not None and elapsed >= limits.wall_seconds:
        return ("wall clock", EXIT_TIMEOUT)
    return None


def _limit_text(limits: Budgets, budget: str) -> str:
    if budget == "turns":
        return f"{limits.max_turns} turns"
    if budget == "tokens":
        return f"{limits.max_tokens} tokens"
    if budget == "cost":
        return f"${limits.max_cost:.2f}"
    return f"{limits.wall_seconds:g} s"


async def _failed(result: LoopResult, exc: ProviderError, transcript: Transcript) -> LoopResult:
    if isinstance(exc, AuthFailed):
        result.exit_code = EXIT_AUTH
    elif isinstance(exc, AllModelsFailed) and _all_throttled(exc):
        result.exit_code = EXIT_RATE_LIMITED
    else:
        result.exit_code = EXIT_UNRECOVERABLE
    kind = (
        "auth"
        if isinstance(exc, AuthFailed)
        else "bad request"
        if isinstance(exc, BadRequest)
        else "models failed"
    )
    result.error = f"{kind}: {exc}"
    await transcript({"type": "error", "kind": kind, "error": str(exc)})
    return result


_THROTTLED = frozenset({"rate_limited", "overloaded", "skipped_open"})


def _all_throttled(exc: AllModelsFailed) -> bool:
    """Every model was rate-limited, overloaded, or skipped while its circuit was open."""
    return bool(exc.attempts) and all(a.outcome in _THROTTLED for a in exc.attempts)


def _turn_entry(turn: int, model: str, content: list[Block], usage: Usage) -> dict[str, Any]:
    return {
        "type": "turn",
        "turn": turn,
        "model": model,
        "text": "".join(block.text for block in content if isinstance(block, Text)),
        "toolCalls": [
            {"id": block.id, "name": block.name, "input": block.input}
            for block in content
            if isinstance(block, ToolUse)
        ],
        "usage": {
            "input": usage.input_tokens,
            "output": usage.output_tokens,
            "cacheRead": usage.cache_read_tokens,
            "cacheWrite": usage.cache_write_tokens,
        },
    }


def _tool_entry(call: ToolUse, answer: ToolResult) -> dict[str, Any]:
    return {
        "type": "tool",
        "id": call.id,
        "name": call.name,
        "input": call.input,
        "output": answer.content,
        "isError": answer.is_error,
    }
