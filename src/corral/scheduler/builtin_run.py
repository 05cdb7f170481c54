"""A run of an agent whose harness is ``builtin``: corral's own LLM tool loop.

The loop runs here, in the scheduler's process, with the model API keys the plan kept
out of the run; every tool call starts a process in the run's runtime (host or sandbox)
from the plan's template, so the in-run commands (rlock, al-subagent, al-return …) work
through the bash tool exactly as for any other agent. Each turn and tool call is one JSON
line in the run log (which redacts credential values).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from corral.errors import RunError
from corral.harness.builtin import Budgets, LoopResult, run_loop
from corral.harness.tools import Toolbox
from corral.llm import client_for
from corral.llm.errors import ProviderError
from corral.llm.fallback import Breaker, ChainEntry, ModelChain
from corral.project import Project
from corral.runtime import Process
from corral.scheduler.prepare import MODEL_KEY_VARIABLES, RunPlan
from corral.scheduler.runlog import RunLog

__all__ = ["run_builtin"]

#: Starts one process of the run (``argv``, stdin) and registers it for stops.
Launcher = Callable[[Sequence[str], bytes | None], Awaitable[Process]]


async def model_chain(project: Project, plan: RunPlan, breakers: dict[str, Breaker]) -> ModelChain:
    """The agent's ``models`` in order of preference, each with its provider's key."""
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
        entries.append(ChainEntry(name, config.model, client))
    return ModelChain(entries, breakers=breakers)


async def run_builtin(
    project: Project,
    plan: RunPlan,
    system_prompt: str,
    runlog: RunLog,
    launch: Launcher,
    breakers: dict[str, Breaker],
) -> LoopResult:
    """Run the tool loop for ``plan`` to its end (a budget, a failure, or the answer)."""
    prompt = plan.write_prompt(project, system_prompt)
    chain = await model_chain(project, plan, breakers)
    toolbox = Toolbox(launch, workdir=str(plan.inside.workdir))

    async def transcript(entry: dict[str, Any]) -> None:
        line = json.dumps({"run": plan.run.id, **entry}, ensure_ascii=False) + "\n"
        await runlog.write(line.encode())

    budgets = Budgets(wall_seconds=float(plan.agent.config.timeout))
    try:
        return await run_loop(chain, toolbox, system_prompt, prompt, transcript, budgets)
    finally:
        for entry in chain.entries:
            await entry.client.aclose()
