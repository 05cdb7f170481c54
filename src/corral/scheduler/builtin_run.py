"""A run of an agent whose harness is ``builtin``: corral's own LLM tool loop.

The loop runs here, in the scheduler's process, with the model API keys the plan kept
out of the run; every tool call starts a process in the run's runtime (host or sandbox)
from the plan's template, so the in-run commands (rlock, al-subagent, al-return …) work
through the bash tool exactly as for any other agent. Each turn and tool call is one JSON
line in the run log (which redacts credential values). The run's tokens and dollars are
written to the store after every turn; the agent's ``[budget]`` limits the run. A model
whose provider has a ``[providers.<name>]`` table asks the fleet's shared bucket of its
key before every request and waits out 429s (corral.llm.ratelimit); on a runner host
the loop runs in the runner's process and asks the control plane's buckets through the
runner API (``RemoteLedger``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from corral.errors import RunError
from corral.harness.builtin import Budgets, LoopResult, Pricer, run_loop
from corral.harness.tools import Toolbox
from corral.llm import client_for
from corral.llm.errors import ProviderError
from corral.llm.fallback import Breaker, ChainEntry, ModelChain
from corral.llm.pricing import Price, price_for
from corral.llm.ratelimit import GatedClient, Permits, bucket_for, limits_for
from corral.llm.types import Usage
from corral.project import Agent, Project
from corral.runtime import Process
from corral.scheduler.prepare import MODEL_KEY_VARIABLES, RunPlan
from corral.scheduler.runlog import RunLog
from corral.store import Store

__all__ = ["budgets_for", "pricer_for", "run_builtin"]

#: Budgets the loop reports by name; the wall clock is the run's timeout (timed_out).
_STORED_BUDGETS = frozenset({"turns", "tokens", "cost"})

#: Starts one process of the run (``argv``, stdin) and registers it for stops.
Launcher = Callable[[Sequence[str], bytes | None], Awaitable[Process]]


async def model_chain(
    project: Project,
    plan: RunPlan,
    breakers: dict[str, Breaker],
    permits: Permits | None = None,
    deadline: float | None = None,
) -> ModelChain:
    """The agent's ``models`` in order of preference, each with its provider's key; a
    model whose provider has a ``[providers.<name>]`` table asks ``permits`` (the fleet's
    shared bucket of its key) before every request and waits out 429s until
    ``deadline`` (loop time)."""
    configs = []
    for name in plan.agent.config.models:
        config = project.config.models.get(name)
        if config is None:
            raise RunError(f"model {name!r} is not defined in the project's [models]")
        configs.append((name, config))
    entries: list[ChainEntry] = []
    for name, config in configs:
        key = plan.model_keys.get(MODEL_KEY_VARIABLES.get(config.provider, ""), "")
        try:
            client = client_for(config, key)
        except ProviderError as exc:
            for made in entries:  # the clients made so far hold connection pools
                await made.client.aclose()
            raise RunError(f"model {name!r}: {exc}") from exc
        limits = project.config.providers.get(config.provider)
        if limits is not None and permits is not None:
            client = GatedClient(
                client,
                permits,
                bucket_for(config.provider, config.base_url, key),
                config.provider,
                limits_for(limits),
                waiter=plan.run.id,
                agent=plan.agent.name,
                deadline=deadline,
            )
        entries.append(ChainEntry(name, config.model, client))
    return ModelChain(entries, breakers=breakers)


def budgets_for(agent: Agent) -> Budgets:
    """The agent's ``[budget]``, with its ``timeout`` as the wall clock."""
    budget = agent.config.budget
    return Budgets(
        max_turns=budget.max_turns,
        max_tokens=budget.max_tokens,
        max_cost=budget.max_cost,
        wall_seconds=float(agent.config.timeout),
    )


def pricer_for(project: Project, agent: Agent) -> tuple[Pricer, float | None]:
    """Prices for the agent's models, and the dearest output token among them (dollars;
    None when none is priced); every model must have a price when money is limited.

    Money is limited when the agent has a cost budget or a daily cap applies (the
    agent's or the project's): counting an unpriced model as free would break them.
    """
    prices: dict[str, Price | None] = {}
    for name in agent.config.models:
        config = project.config.models.get(name)
        if config is None:
            raise RunError(f"model {name!r} is not defined in the project's [models]")
        prices[name] = price_for(config)
    limited = [
        what
        for what, value in (
            ("budget.maxCost", agent.config.budget.max_cost),
            ("budget.dailyCost", agent.config.budget.daily_cost),
            ("the project's [budget] dailyCost", project.config.budget.daily_cost),
        )
        if value is not None
    ]
    unpriced = [name for name, price in prices.items() if price is None]
    if limited and unpriced:
        name = unpriced[0]
        model = project.config.models[name].model
        raise RunError(
            f"model {name!r} ({model!r}) has no known price, and agent {agent.name!r} is "
            f"limited in dollars ({', '.join(limited)}): set [models.{name}] price = "
            "{ input = …, output = … } (US dollars per million tokens) in config.toml"
        )

    def pricer(name: str, usage: Usage) -> float | None:
        price = prices.get(name)
        return None if price is None else price.cost(usage)

    outputs = [price.output / 1_000_000 for price in prices.values() if price is not None]
    return pricer, max(outputs, default=None)


async def run_builtin(
    project: Project,
    plan: RunPlan,
    system_prompt: str,
    runlog: RunLog,
    launch: Launcher,
    breakers: dict[str, Breaker],
    store: Store,
) -> LoopResult:
    """Run the tool loop for ``plan`` to its end (a budget, a failure, or the answer)."""
    prompt = plan.write_prompt(project, system_prompt)
    pricer, output_price = pricer_for(project, plan.agent)
    # The store's buckets; a run on a runner host asks the control plane for its permits
    # (RemoteLedger, over the runner API, authenticated by the run's fence).
    permits = store if isinstance(store, Permits) else None
    deadline = time.monotonic() + float(plan.agent.config.timeout)
    chain = await model_chain(project, plan, breakers, permits, deadline)
    toolbox = Toolbox(launch, workdir=str(plan.inside.workdir))

    async def transcript(entry: dict[str, Any]) -> None:
        line = json.dumps({"run": plan.run.id, **entry}, ensure_ascii=False) + "\n"
        await runlog.write(line.encode())

    async def record(result: LoopResult) -> None:
        usage = result.usage
        await store.record_usage(
            plan.run.id,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            cost_usd=result.cost_usd,
            budget=result.budget if result.budget in _STORED_BUDGETS else None,
        )

    try:
        result = await run_loop(
            chain,
            toolbox,
            system_prompt,
            prompt,
            transcript,
            budgets_for(plan.agent),
            pricer=pricer,
            output_price=output_price,
            on_turn=record,
        )
    finally:
        for entry in chain.entries:
            await entry.client.aclose()
    await record(result)
    return result
