"""Bundles over HTTP: push and apply on the control API, fetch by hash with a strong ETag,
and the runner's cache, which checks every copy against its hash."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from corral.bundles import BundleCache, BundleError, bundle_hash, pack, read_entries
from corral.gateway.app import create_app
from corral.scheduler.service import Scheduler, SchedulerOptions
from corral.store import Store
from tests.scheduler.helpers import write_project

TOKEN = "s3cret-operator-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def gateway(tmp_path: Path, store: Store) -> AsyncIterator[tuple[httpx.AsyncClient, Path]]:
    root = tmp_path / "p"
    project = write_project(root, {"dev": {"command": "echo hi"}, "qa": {"command": "echo qa"}})
    scheduler = Scheduler(project, store, SchedulerOptions(poll_interval=0.05))
    await scheduler.start()
    transport = httpx.ASGITransport(app=create_app(scheduler, TOKEN))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        yield http, root


async def test_push_fetch_and_etag(gateway: tuple[httpx.AsyncClient, Path]) -> None:
    http, root = gateway
    packed = pack(root)
    refused = await http.post("/control/bundles", content=packed.data)
    assert refused.status_code == 401
    pushed = await http.post(
        "/control/bundles", content=packed.data, params={"note": "first"}, headers=AUTH
    )
    assert pushed.status_code == 200, pushed.text
    body = pushed.json()
    assert body["stored"] and body["moved"] and body["bundle"]["hash"] == packed.hash
    assert body["bundle"]["agents"] == packed.agents and body["bundle"]["current"]
    again = await http.post("/control/bundles", content=packed.data, headers=AUTH)
    assert again.json()["unchanged"] is True

    assert (await http.get(f"/fleet/v1/bundles/{packed.hash}")).status_code == 401
    got = await http.get(f"/fleet/v1/bundles/{packed.hash}", headers=AUTH)
    assert got.status_code == 200 and got.content == packed.data
    assert got.headers["etag"] == f'"{packed.hash}"'
    assert "immutable" in got.headers["cache-control"]
    same = await http.get(
        f"/fleet/v1/bundles/{packed.hash}", headers=AUTH | {"If-None-Match": got.headers["etag"]}
    )
    assert same.status_code == 304 and same.content == b""
    other = await http.get(
        f"/fleet/v1/bundles/{packed.hash}", headers=AUTH | {"If-None-Match": '"sha256:00"'}
    )
    assert other.status_code == 200

    agent = await http.get(f"/fleet/v1/bundles/{packed.hash}/agents/dev", headers=AUTH)
    assert agent.status_code == 200
    assert bundle_hash(agent.content) == packed.agents["dev"]
    assert agent.headers["etag"] == f'"{packed.agents["dev"]}"'
    assert not any(e.path.startswith("agents/qa/") for e in read_entries(agent.content))
    tag = {"If-None-Match": agent.headers["etag"]}
    cached = await http.get(f"/fleet/v1/bundles/{packed.hash}/agents/dev", headers=AUTH | tag)
    assert cached.status_code == 304
    nobody = await http.get(f"/fleet/v1/bundles/{packed.hash}/agents/nobody", headers=AUTH)
    assert nobody.status_code == 404 and "agents: dev, qa" in nobody.json()["error"]
    missing = await http.get("/fleet/v1/bundles/sha256:" + "0" * 64, headers=AUTH)
    assert missing.status_code == 404
    bad = await http.get("/fleet/v1/bundles/not-a-hash", headers=AUTH)
    assert bad.status_code == 400 and "not a bundle hash" in bad.json()["error"]

    listed = (await http.get("/control/bundles", headers=AUTH)).json()
    assert listed["current"]["hash"] == packed.hash
    assert [b["note"] for b in listed["bundles"]] == ["first"]
    shown = await http.get(f"/control/bundles/{packed.hash}", headers=AUTH)
    assert shown.json()["bundle"]["files"] == len(packed.entries)


async def test_a_bad_upload_is_refused_and_changes_nothing(
    gateway: tuple[httpx.AsyncClient, Path], store: Store
) -> None:
    http, root = gateway
    garbage = await http.post("/control/bundles", content=b"not a tar", headers=AUTH)
    assert garbage.status_code == 400 and "not a valid bundle" in garbage.json()["error"]
    (root / "agents" / "dev" / "config.toml").write_text("scale = [\n")
    broken = pack(root)
    answer = await http.post("/control/bundles", content=broken.data, headers=AUTH)
    assert answer.status_code == 400
    assert "agents/dev/config.toml" in answer.json()["error"]
    empty = await http.post("/control/bundles", content=b"", headers=AUTH)
    assert empty.status_code == 400
    assert await store.list_bundles() == [] and await store.bundle_head() is None


async def test_apply_rolls_back(gateway: tuple[httpx.AsyncClient, Path], store: Store) -> None:
    http, root = gateway
    first = pack(root)
    await http.post("/control/bundles", content=first.data, headers=AUTH)
    write_project(root, {"dev": {"command": "echo v2"}})
    second = pack(root)
    await http.post("/control/bundles", content=second.data, headers=AUTH)
    back = await http.post(f"/control/bundles/{first.hash}/apply", headers=AUTH)
    assert back.status_code == 200 and back.json()["current"]["hash"] == first.hash
    head = await store.bundle_head()
    assert head is not None and head.hash == first.hash
    unknown = await http.post(f"/control/bundles/sha256:{'1' * 64}/apply", headers=AUTH)
    assert unknown.status_code == 404


async def test_the_cache_verifies_keeps_and_refetches(tmp_path: Path) -> None:
    root = tmp_path / "p"
    write_project(root, {"dev": {"command": "echo hi"}, "qa": {"command": "echo qa"}})
    packed = pack(root)
    served: list[tuple[str, str | None]] = []
    tamper = {"on": False}

    async def fetch(hash_: str, agent: str | None) -> bytes:
        served.append((hash_, agent))
        if tamper["on"]:
            return packed.data + b"x"
        if agent is not None:
            from corral.bundles import agent_archive

            return agent_archive(read_entries(packed.data), agent)
        return packed.data

    cache = BundleCache(tmp_path / "cache", fetch, max_bytes=10 * len(packed.data))
    path = await cache.get(packed.hash)
    assert path.read_bytes() == packed.data and len(served) == 1
    await cache.get(packed.hash)
    assert len(served) == 1  # a hit: nothing fetched

    # A copy damaged on disk is refetched, never handed out.
    with path.open("r+b") as handle:
        handle.seek(100)
        handle.write(b"corrupt")
    assert await cache.read(packed.hash) == packed.data and len(served) == 2

    # One agent's bundle, by the hash the manifest names, cut from the project bundle.
    agent_path = await cache.get(packed.agents["dev"], agent="dev", within=packed.hash)
    assert served[-1] == (packed.hash, "dev")
    assert hashlib.sha256(agent_path.read_bytes()).hexdigest() in packed.agents["dev"]

    # Bytes that do not match their name are refused and not kept.
    tamper["on"] = True
    path.unlink()
    with pytest.raises(BundleError, match="nothing was cached"):
        await cache.get(packed.hash)
    assert not path.exists()


async def test_the_cache_evicts_the_least_recently_used(tmp_path: Path) -> None:
    blobs = {}
    for n in range(4):
        root = tmp_path / f"p{n}"
        write_project(root, {"dev": {"command": f"echo {n}"}})
        packed = pack(root)
        blobs[packed.hash] = packed.data

    async def fetch(hash_: str, agent: str | None) -> bytes:
        return blobs[hash_]

    hashes = list(blobs)
    cache = BundleCache(tmp_path / "cache", fetch, max_entries=2)
    await cache.get(hashes[0])
    await cache.get(hashes[1])
    import os

    os.utime(cache.path_of(hashes[0]), (1, 1))
    os.utime(cache.path_of(hashes[1]), (2, 2))
    await cache.get(hashes[0])  # used again: now the most recent
    await cache.get(hashes[2])  # evicts hashes[1], the least recently used
    assert set(cache.cached()) == {hashes[0], hashes[2]}
