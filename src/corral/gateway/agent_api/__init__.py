"""The agent API: what the in-run commands (``corral.agentcmd``) talk to.

Every request carries the run's secret (``Authorization: Bearer <secret>``), checked
before its body is read; a wrong or missing one is answered 403 and changes nothing. A
run acts only for itself: the run is whoever the secret names, never a field of the
request.

Answers are the documented JSON of the commands; the HTTP status picks the command's exit
code (200 -> 0, 409 -> 1, 404 -> 2, 403 -> 3, 400/413 -> 4, 503 -> 5, 410 -> 13). Waiting requests
(``rlock --wait``, ``al-subagent-wait``) are long polls: they answer as soon as what they
wait for happens (``Changes``, the store's hub: this process's changes, and on
PostgreSQL every process's through LISTEN/NOTIFY), and poll the store as a fallback
(SQLite's other processes, notices lost while the listener reconnects).

The parts: ``_models`` (request bodies, limits, answer shapes), ``_keys`` (lock keys),
``_handlers`` (``AgentApi`` and the routes), ``_fastpath`` (``LockFastPath``: the
authenticate-first, capped-body door and the lock fast path), ``_errors`` (refusals and
store failures as answers).
"""

from __future__ import annotations

from fastapi import FastAPI

from corral.gateway.agent_api._errors import AgentApiError, install_error_handlers
from corral.gateway.agent_api._fastpath import LockFastPath, body_limit
from corral.gateway.agent_api._handlers import AgentApi, agent_router, current_run
from corral.gateway.agent_api._keys import validate_key
from corral.gateway.agent_api._models import MAX_CONTEXT_BYTES, MAX_RETURN_BYTES

__all__ = [
    "MAX_CONTEXT_BYTES",
    "MAX_RETURN_BYTES",
    "AgentApi",
    "AgentApiError",
    "LockFastPath",
    "agent_router",
    "body_limit",
    "current_run",
    "install_agent_api",
    "install_error_handlers",
    "validate_key",
]


def install_agent_api(app: FastAPI, api: AgentApi) -> None:
    """Serve ``api`` under /agent in ``app``: its routes, its error answers, and the
    door that authenticates each request before reading its body (``LockFastPath``)."""
    install_error_handlers(app)
    app.state.agent_api = api
    app.include_router(agent_router(api))
    app.add_middleware(LockFastPath, api=api)
