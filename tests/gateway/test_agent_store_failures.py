"""A store that fails answers 503 on /agent/* (the in-run commands exit 5), never the
409 that the commands read as "conflict, the lock is held"."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.agentcmd import install
from tests.conftest import _pg_admin
from tests.gateway._agent_gateway import AgentGateway, agent_gateway
from tests.scheduler.helpers import write_project

KEY = "deploy://api-prod"


@pytest.fixture
def gateway(tmp_path: Path, store_url: str) -> Iterator[AgentGateway]:
    root = tmp_path / "p"
    write_project(root, {"dev": {"command": "true"}, "reviewer": {"command": "true"}})
    with agent_gateway(store_url, root, install(tmp_path / "bin")) as served:
        yield served


def unavailable(done: subprocess.CompletedProcess[bytes]) -> None:
    assert done.returncode == 5, (done.returncode, done.stdout)
    answer = json.loads(done.stdout)
    assert answer["ok"] is False and "store is unavailable" in answer["error"], answer


@pytest.mark.slow
def test_a_failing_store_answers_503_and_the_commands_exit_5(
    gateway: AgentGateway, store_url: str, dialect: str
) -> None:
    assert gateway.command("rlock", KEY).returncode == 0
    if dialect == "sqlite":
        # Another process holds the database's write lock past the store's busy timeout.
        holder = sqlite3.connect(store_url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")
            unavailable(gateway.command("rlock-heartbeat", KEY))
            unavailable(gateway.command("al-status", "working"))
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        # Once the store answers again, so does the gateway: the lock is still ours.
        assert gateway.command("rlock-heartbeat", KEY).returncode == 0
        return
    # PostgreSQL: the store's schema is dropped under the running gateway.
    _pg_admin(f'DROP SCHEMA "{store_url.rsplit("search_path%3D", 1)[1]}" CASCADE')
    for command, args, stdin in [
        ("rlock", (KEY,), b""),
        ("rlock-heartbeat", (KEY,), b""),
        ("runlock", (KEY,), b""),
        ("al-status", ("working",), b""),
        ("al-return", ("done",), b""),
        ("al-subagent", ("reviewer",), b"context"),
        ("al-rerun", (), b""),
    ]:
        unavailable(gateway.command(command, *args, input=stdin))


def test_a_run_that_has_ended_is_still_a_conflict(gateway: AgentGateway, store_url: str) -> None:
    # A refusal by what the store holds (not a failure of the store) stays 409 / exit 1.
    ended = _end_run(store_url, gateway.run_id)
    assert ended
    done = gateway.command("al-status", "late")
    assert done.returncode == 1, done.stdout
    assert "has ended" in json.loads(done.stdout)["error"]


def _end_run(store_url: str, run_id: str) -> bool:
    sql = f"UPDATE corral_runs SET state = 'failed' WHERE id = '{run_id}'"
    if store_url.startswith("sqlite:///"):
        conn = sqlite3.connect(store_url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            return conn.execute(sql).rowcount == 1
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(store_url, autocommit=True) as pg:
        return pg.execute(sql.encode()).rowcount == 1
