"""`corral run` against a remote gateway: `-E NAME` whose environment sets `[gateway] url`.

The run is queued with `POST /control/runs` under an idempotency key made once per
command, so a retry (after a 503 with `Retry-After`, a dropped connection or a timeout)
answers the item the first attempt queued instead of queueing the work twice.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from corral.cli._render import err_console, print_json, safe
from corral.errors import UsageError
from corral.inert import inert
from corral.project import Project

__all__ = ["RETRY_FOR_S", "queue_remote", "remote_gateway", "run_remote"]

#: How long `corral run` keeps retrying a busy or unreachable gateway, in all.
RETRY_FOR_S = 60.0
#: The longest wait between two attempts, whatever Retry-After says.
_MAX_PAUSE_S = 10.0
_REQUEST_TIMEOUT_S = 30.0


def remote_gateway(project: Project) -> str | None:
    """The gateway URL the selected environment names (`-E NAME`), if any."""
    from corral.cli.commands.stat import _remote_url

    return _remote_url(project)


def run_remote(
    project: Project, url: str, agent: str, prompt: str | None, *, here: bool, as_json: bool
) -> int:
    """`corral run` through the gateway at ``url``: queue the run and say so (exit 0).
    Following it (``--wait``) or running it here (``--foreground``) needs the store."""
    from corral.cli.commands.stat import _remote_token

    if here:
        raise UsageError(
            f"environment {project.environment!r} points at a remote gateway ({url}): "
            "`corral run` there only queues the run; --wait and --foreground need the "
            "store (follow it with `corral -E NAME stat`)"
        )
    token = _remote_token(project)

    def retrying(message: str) -> None:
        err_console.print(f"[yellow]warning:[/] {safe(message)}")

    answer = asyncio.run(queue_remote(url, token, agent, prompt, on_retry=retrying))
    item = answer.get("item") or {}
    for dropped in answer.get("dropped") or []:
        reason = dropped.get("reason")
        err_console.print(
            f"[yellow]warning:[/] dropped queue item {safe(dropped.get('id'))}: {safe(reason)}"
        )
    if as_json:
        print_json(item)
    else:
        err_console.print(f"queued a run of {safe(agent)} (item {safe(item.get('id'))}) at {url}")
    return 0


async def queue_remote(
    url: str,
    token: str,
    agent: str,
    prompt: str | None,
    *,
    key: str | None = None,
    retry_for: float = RETRY_FOR_S,
    on_retry: Callable[[str], Awaitable[None] | None] | None = None,
) -> dict[str, Any]:
    """Queue a run of ``agent`` on the gateway at ``url``; return its answer (``item``,
    ``dropped``). Retries a 503 (after its Retry-After) and transport failures with the
    same key for up to ``retry_for`` seconds; any other refusal is a ``UsageError``."""
    key = key or f"cli-{uuid.uuid4()}"
    where = f"{url}/control/runs"
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": key}
    body = {"agent": agent, "prompt": prompt}
    loop = asyncio.get_running_loop()
    give_up = loop.time() + retry_for
    async with httpx.AsyncClient(timeout=_REQUEST_TIMEOUT_S) as http:
        while True:
            try:
                response = await http.post(where, json=body, headers=headers)
            except httpx.TransportError as exc:
                why, pause = f"cannot reach the gateway at {where}: {exc}", 1.0
            else:
                if response.status_code != 503:
                    return _answer(url, where, response)
                why = f"the gateway at {where} is busy: {_error_of(response)}"
                pause = _retry_after(response)
            if loop.time() + pause > give_up:
                raise UsageError(f"{why} (gave up after {retry_for:g} s; key {key})")
            if on_retry is not None:
                waiting = on_retry(f"{why}; retrying in {pause:g} s with the same key")
                if waiting is not None:
                    await waiting
            await asyncio.sleep(pause)


def _answer(url: str, where: str, response: httpx.Response) -> dict[str, Any]:
    status = response.status_code
    if status == 202:
        answer: dict[str, Any] = response.json()
        return answer
    if status in (401, 403):
        raise UsageError(f"the gateway at {url} refused the operator token ({status})")
    raise UsageError(f"the gateway at {where} answered {status}: {_error_of(response)}")


def _error_of(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    return inert(error if error else response.text[:200])


def _retry_after(response: httpx.Response) -> float:
    """Retry-After in seconds (1 when absent or not a number), at most ``_MAX_PAUSE_S``."""
    try:
        seconds = float(response.headers.get("Retry-After", "1"))
    except ValueError:
        seconds = 1.0
    return min(max(seconds, 0.1), _MAX_PAUSE_S)
