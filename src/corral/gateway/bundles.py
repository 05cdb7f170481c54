"""Bundles over HTTP: `corral push` uploads one, runners fetch them by hash.

Operators (an operator token, as for the rest of /control):

    POST /control/bundles?note=...        the bundle's bytes (application/x-tar): checked
                                          (hash, format, the project loads), stored and
                                          made current; 200 with what changed
    GET  /control/bundles                 the pushed bundles, newest first, and the head
    GET  /control/bundles/{hash}          one bundle: size, files, each agent's hash
    POST /control/bundles/{hash}/apply    make a stored bundle current (a rollback)
    POST /control/bundles?canary=10%      stored, not current: a rollout to 10% of the runs
                                          of the agents it changes (min_runs, promote_after)
    GET  /control/rollouts?agent=         the running rollout and the last ones, compared
    POST /control/rollouts/{id|running}/promote|rollback   end one by hand

Runners:

    GET /fleet/v1/bundles/{hash}                  the bundle's bytes
    GET /fleet/v1/bundles/{hash}/agents/{agent}   one agent's bundle (the project-level
                                                  files and agents/<agent>/**), whose hash
                                                  is the one the manifest names for it

A bundle never changes under its name, so each answer carries its hash as a strong ETag
and ``Cache-Control: immutable``, and ``If-None-Match`` with that ETag is answered 304.
Every runner-facing route authenticates through ``bundle_reader``: a runner's
credential, or an operator token. A runner reads the current bundle and the bundles of
the runs it holds, no other (an older bundle may hold what the project dropped since).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from corral.bundles import (
    MAX_BUNDLE_BYTES,
    BundleError,
    agent_archive,
    bundle_hash,
    manifest_of,
    normalize_hash,
    read_entries,
)
from corral.engine.actions import ActionError
from corral.engine.fleet import CREDENTIAL_PREFIX
from corral.errors import ConfigError, StoreConflict
from corral.gateway.control import Operator, operator
from corral.gateway.edge import read_body
from corral.gateway.fleet import refusals, require_runner
from corral.rollouts import Rule, parse_share
from corral.scheduler import rollouts
from corral.scheduler.bundles import check_bundle
from corral.scheduler.service import Scheduler
from corral.store import Store
from corral.views import bundle_head_json, bundle_json

__all__ = ["bundle_reader", "install_bundles"]

_TAR = "application/x-tar"


_reader_bearer = HTTPBearer(auto_error=False, scheme_name="runnerCredential")


async def bundle_reader(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_reader_bearer)],
) -> str:
    """Who may read bundles: a runner of the fleet (its credential: ``runner:<id>``; a
    revoked runner is refused 403), or an operator (``token:<name>``)."""
    given = credentials.credentials.strip() if credentials is not None else ""
    if given.startswith(CREDENTIAL_PREFIX):
        runner = await require_runner(request, credentials)
        return f"runner:{runner.id}"
    return await operator(request, credentials)


Reader = Annotated[str, Depends(bundle_reader)]


def install_bundles(app: FastAPI, scheduler: Scheduler) -> None:
    app.include_router(_control_router(scheduler))
    app.include_router(_fleet_router(scheduler))


def _hash(text: str) -> str:
    try:
        return normalize_hash(text)
    except BundleError as exc:
        raise ActionError(400, str(exc)) from None


def _rollout_routes(router: APIRouter, store: Store) -> None:
    @router.get("/rollouts", summary="The running rollout and the last ones, compared")
    async def list_rollouts(
        agent: Annotated[str | None, Query(max_length=200)] = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 5,
    ) -> dict[str, Any]:
        return await rollouts.status(store, agent, limit=limit)

    @router.post("/rollouts/{ref}/{verb}", summary="Promote or roll back a rollout by hand")
    async def end_rollout(ref: str, verb: str, actor: Operator) -> dict[str, Any]:
        states = {"promote": "promoted", "rollback": "rolled_back"}
        if verb not in states:
            raise ActionError(404, f"a rollout is ended by promote or rollback, not {verb!r}")
        if ref != "running" and not ref.isdigit():
            raise ActionError(400, f"a rollout is named by its number or 'running', not {ref!r}")
        try:
            ended = await rollouts.end_by_hand(
                store, None if ref == "running" else int(ref), states[verb], actor=actor
            )
        except LookupError as exc:
            raise ActionError(409, str(exc.args[0])) from None
        return {"ok": True, "rollout": ended.to_json()}


def _canary_rule(
    canary: str | None, min_runs: int, promote_after: int | None
) -> tuple[float, Rule | None]:
    if canary is None:
        return 0.0, None
    try:
        return parse_share(canary), Rule(min_runs=min_runs, promote_after=promote_after)
    except ValueError as exc:
        raise ActionError(400, f"canary: {exc}") from None


def _control_router(scheduler: Scheduler) -> APIRouter:
    router = APIRouter(prefix="/control", tags=["bundles"], dependencies=[Depends(operator)])
    store = scheduler.store
    _rollout_routes(router, store)

    @router.post(
        "/bundles",
        summary="Publish a project bundle and make it current",
        openapi_extra={
            "requestBody": {
                "required": True,
                "description": (
                    "The bundle's bytes, as `corral push` packs them (sent as "
                    "application/x-tar; any content type is read as bytes)"
                ),
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                },
            }
        },
    )
    async def push(
        request: Request,
        actor: Operator,
        note: Annotated[str | None, Query(max_length=500)] = None,
        canary: Annotated[str | None, Query(max_length=20)] = None,
        min_runs: Annotated[int, Query(ge=1, le=100000)] = 20,
        promote_after: Annotated[int | None, Query(ge=1, le=100000)] = None,
    ) -> dict[str, Any]:
        share, rule = _canary_rule(canary, min_runs, promote_after)
        data = await _body(request)
        hash_ = bundle_hash(data)
        try:
            entries = await asyncio.to_thread(read_entries, data)
            await asyncio.to_thread(check_bundle, data, hash_, scheduler.project.environment)
        except BundleError as exc:
            raise ActionError(400, f"not a valid bundle: {exc}") from None
        except ConfigError as exc:
            raise ActionError(400, "the bundle's project does not load:\n" + exc.render()) from None
        manifest = {"agents": manifest_of(entries), "files": len(entries)}
        if rule is not None:
            try:
                rollout = await store.publish_canary(
                    hash_,
                    data,
                    manifest,
                    share=share,
                    rule=rule.to_json(),
                    actor=actor,
                    note=note,
                )
            except StoreConflict as exc:
                raise ActionError(409, str(exc)) from None
            return {"ok": True, "rollout": rollout.to_json()}
        published = await store.publish_bundle(hash_, data, manifest, actor=actor, note=note)
        return {
            "ok": True,
            "bundle": bundle_json(published.bundle, published.head),
            "stored": published.stored,
            "moved": published.moved,
            "unchanged": published.unchanged,
        }

    @router.get("/bundles", summary="Pushed bundles, newest first, and the current one")
    async def list_bundles(
        limit: Annotated[int, Query(ge=0, le=1000)] = 50,
    ) -> dict[str, Any]:
        head = await store.bundle_head()
        bundles = await store.list_bundles(limit=limit)
        return {
            "current": bundle_head_json(head),
            "bundles": [bundle_json(b, head) for b in bundles],
        }

    @router.get("/bundles/{bundle}", summary="One pushed bundle")
    async def show_bundle(bundle: str) -> dict[str, Any]:
        found = await store.get_bundle(_hash(bundle))
        if found is None:
            raise ActionError(404, f"no bundle {bundle} (`corral bundles ls` lists them)")
        return {"bundle": bundle_json(found, await store.bundle_head())}

    @router.post("/bundles/{bundle}/apply", summary="Make a pushed bundle current (roll back)")
    async def apply_bundle(bundle: str, actor: Operator) -> dict[str, Any]:
        try:
            head = await store.set_bundle_head(_hash(bundle), actor=actor)
        except StoreConflict as exc:
            raise ActionError(404, str(exc)) from None
        return {"ok": True, "current": bundle_head_json(head)}

    return router


def _fleet_router(scheduler: Scheduler) -> APIRouter:
    router = APIRouter(prefix="/fleet/v1", tags=["fleet"])
    store = scheduler.store

    @router.get(
        "/bundles/{bundle}",
        summary="A bundle's bytes, by hash",
        response_class=Response,
        responses={
            200: {"content": {_TAR: {}}},
            304: {"description": "not modified"},
            **refusals(400, 401, 403, 404, 503),
        },
    )
    async def fetch_bundle(bundle: str, request: Request, reader: Reader) -> Response:
        wanted = _hash(bundle)
        await _may_read(scheduler, reader, wanted)
        if _matches(request, wanted):
            return _not_modified(wanted)
        data = await store.bundle_data(wanted)
        if data is None:
            raise ActionError(404, f"no bundle {wanted} in the store")
        return _bytes(data, wanted)

    @router.get(
        "/bundles/{bundle}/agents/{agent}",
        summary="One agent's bundle, cut from a project bundle",
        response_class=Response,
        responses={
            200: {"content": {_TAR: {}}},
            304: {"description": "not modified"},
            **refusals(400, 401, 403, 404, 503),
        },
    )
    async def fetch_agent_bundle(
        bundle: str, agent: str, request: Request, reader: Reader
    ) -> Response:
        wanted = _hash(bundle)
        await _may_read(scheduler, reader, wanted)
        found = await store.get_bundle(wanted)
        if found is None:
            raise ActionError(404, f"no bundle {wanted} in the store")
        agent_hash = found.agents.get(agent)
        if agent_hash is None:
            known = ", ".join(sorted(found.agents)) or "none"
            raise ActionError(404, f"bundle {wanted} has no agent {agent!r} (agents: {known})")
        if _matches(request, agent_hash):
            return _not_modified(agent_hash)
        data = await store.bundle_data(wanted)
        if data is None:
            raise ActionError(404, f"no bundle {wanted} in the store")
        entries = await asyncio.to_thread(read_entries, data, expect=wanted)
        cut = await asyncio.to_thread(agent_archive, entries, agent)
        return _bytes(cut, agent_hash)

    return router


async def _may_read(scheduler: Scheduler, reader: str, wanted: str) -> None:
    """A runner reads the current bundle and those of the runs it holds (an older
    bundle may hold what the project dropped since): 403 for any other. An operator
    reads every one."""
    if not reader.startswith("runner:"):
        return
    runner_id = reader.removeprefix("runner:")
    store = scheduler.store
    head = await store.bundle_head()
    if head is not None and wanted == head.hash:
        return
    for run_id in await store.runner_holdings(runner_id):
        run = await store.get_run(run_id)
        if run is not None and run.bundle == wanted:
            return
    raise ActionError(
        403,
        f"bundle {wanted} is not the current bundle nor one of a run of runner "
        f"{runner_id}: a runner reads only those",
    )


async def _body(request: Request) -> bytes:
    return await read_body(
        request, MAX_BUNDLE_BYTES, "a bundle", "the bundle's bytes (`corral push`)"
    )


def _etag(hash_: str) -> str:
    return f'"{hash_}"'


def _matches(request: Request, hash_: str) -> bool:
    given = request.headers.get("if-none-match")
    if not given:
        return False
    tags = [tag.strip() for tag in given.split(",")]
    return "*" in tags or _etag(hash_) in tags


_CACHE = "private, max-age=31536000, immutable"


def _not_modified(hash_: str) -> Response:
    return Response(status_code=304, headers={"ETag": _etag(hash_), "Cache-Control": _CACHE})


def _bytes(data: bytes, hash_: str) -> Response:
    headers = {"ETag": _etag(hash_), "Cache-Control": _CACHE}
    return Response(content=data, media_type=_TAR, headers=headers)
