"""Hot reload: agents added, edited and removed while `corral start` runs are picked up
without a restart; a bad edit is reported and the last good configuration keeps running."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from corral.cli._live import LiveView
from corral.project import Project, load_project
from corral.scheduler.reload import ProjectWatcher, summarize
from corral.scheduler.service import Scheduler, SchedulerOptions
from corral.store import ItemState, NewItem, Run, Store, TriggerKind, open_store
from tests.scheduler.helpers import wait_for, write_project
from tests.scheduler.procs import SchedulerProcess, wait_until

#: A webhook source that needs no secret, for deliveries the test posts itself.
PROJECT = '[webhooks.open]\ntype = "generic"\nallowUnsigned = true\n'
HOOKED = '[[webhooks]]\nsource = "open"\n'


def _agent(root: Path, name: str, command: str, tables: str = "") -> None:
    folder = root / "agents" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "SKILL.md").write_text(f"---\nname: {name}\n---\n# {name}\n")
    text = f'scale = 1\n[harness]\ncommand = "{command}"\n{tables}'
    (folder / "config.toml").write_text(text)


def deliver(scheduler: SchedulerProcess) -> list[str]:
    """Post a delivery to the scheduler's gateway: the agents it was queued for."""
    found = re.search(r"gateway on (http://\S+)", scheduler.output())
    assert found is not None
    body = {"event": "deploy", "title": "deploy api"}
    answer = httpx.post(f"{found.group(1)}/webhooks/open", json=body, timeout=30)
    assert answer.status_code == 202, answer.text
    return [a["agent"] for a in answer.json()["agents"] if a["state"] == "queued"]


async def _enqueue(url: str, agent: str) -> int:
    async with await open_store(url) as store:
        result = await store.enqueue(NewItem(agent=agent, trigger=TriggerKind.MANUAL))
        return result.item.id


def enqueue(url: str, agent: str) -> int:
    return asyncio.run(_enqueue(url, agent))


async def _run_of(url: str, item_id: int) -> Run | None:
    async with await open_store(url) as store:
        runs = [r for r in await store.list_runs(limit=1000) if r.item_id == item_id]
        return runs[0] if runs else None


def run_of(url: str, item_id: int) -> Run | None:
    return asyncio.run(_run_of(url, item_id))


def finished(url: str, item_id: int) -> Run:
    """The run of queue item ``item_id``, once it has ended."""

    def ended() -> Run | None:
        run = run_of(url, item_id)
        return run if run is not None and run.state.is_terminal else None

    wait_until(ended, 30)
    found = ended()
    assert found is not None
    return found


async def _item_state(url: str, item_id: int) -> ItemState:
    async with await open_store(url) as store:
        item = await store.get_item(item_id)
        assert item is not None
        return item.state


def log_of(root: Path, run: Run) -> str:
    return (root / ".corral" / "logs" / f"{run.id}.log").read_text()


def reloads(scheduler: SchedulerProcess) -> int:
    return scheduler.output().count("configuration reloaded:")


def stat(root: Path, url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env.update({"CORRAL_STATE_URL": url, "HOME": str(root.parent)})
    return subprocess.run(
        [sys.executable, "-m", "corral", "stat"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.slow
def test_agents_added_edited_and_removed_while_the_scheduler_runs(
    tmp_path: Path, store_url: str
) -> None:
    root = tmp_path / "p"
    write_project(root, {"a": {"command": "echo a-v1"}}, PROJECT)
    go = tmp_path / "go"
    with SchedulerProcess(root, store_url, tmp_path / "s.log") as scheduler:
        wait_until(lambda: "started; gateway on" in scheduler.output(), 30)
        assert deliver(scheduler) == []  # no agent listens to this source yet

        # Added: the store knows it at once, its work is dispatched, its webhooks match.
        _agent(root, "b", "echo b-v1", HOOKED)
        wait_until(lambda: "configuration reloaded: added b" in scheduler.output(), 30)
        run = finished(store_url, enqueue(store_url, "b"))
        assert run.state.value == "succeeded" and "b-v1" in log_of(root, run)
        assert deliver(scheduler) == ["b"]

        # Edited: the next run uses the new configuration.
        _agent(root, "a", "echo a-v2")
        wait_until(lambda: "configuration reloaded: changed a" in scheduler.output(), 30)
        assert "a-v2" in log_of(root, finished(store_url, enqueue(store_url, "a")))

        # A bad edit: reported with the loader's error, the last good config keeps running.
        (root / "agents" / "a" / "config.toml").write_text("scale = [\n")
        wait_until(lambda: "does not load" in scheduler.output(), 30)
        assert "agents/a/config.toml" in scheduler.output()
        assert "a-v2" in log_of(root, finished(store_url, enqueue(store_url, "a")))
        shown = stat(root, store_url)
        assert shown.returncode == 2
        assert "agents/a/config.toml" in shown.stderr
        assert f"(pid {scheduler.pid}) keeps its last good configuration" in shown.stderr

        # Mended: picked up again.
        before = reloads(scheduler)
        _agent(root, "a", "echo a-v3")
        wait_until(lambda: reloads(scheduler) > before, 30)
        assert "a-v3" in log_of(root, finished(store_url, enqueue(store_url, "a")))

        # Removed while one run of it goes and another waits: the running one finishes,
        # the queued one stays queued (undispatched) while the agent is gone.
        before = reloads(scheduler)
        _agent(root, "b", f"while [ ! -e {go} ]; do sleep 0.05; done; echo b-v2")
        wait_until(lambda: reloads(scheduler) > before, 30)
        going, waiting = enqueue(store_url, "b"), enqueue(store_url, "b")
        wait_until(lambda: (r := run_of(store_url, going)) and r.state.value == "running", 30)
        shutil.rmtree(root / "agents" / "b")
        wait_until(lambda: "configuration reloaded: removed b" in scheduler.output(), 30)
        go.touch()
        run = finished(store_url, going)
        assert run.state.value == "succeeded" and "b-v2" in log_of(root, run)
        finished(store_url, enqueue(store_url, "a"))  # the dispatcher has been round again
        assert run_of(store_url, waiting) is None
        assert asyncio.run(_item_state(store_url, waiting)) is ItemState.QUEUED
        assert scheduler.stop() == 0


async def _collect(project: Project, seen: list[Project]) -> None:
    seen.append(project)


async def settled(watcher: ProjectWatcher) -> bool:
    """Two polls: a change is loaded once it is the same at two polls in a row."""
    assert await watcher.check() is False  # seen changing: not loaded yet
    return await watcher.check()


async def test_the_watcher_applies_good_changes_and_reports_bad_ones_once(
    tmp_path: Path,
) -> None:
    root = tmp_path / "p"
    project = write_project(root, {"a": {"command": "true"}})
    seen: list[Project] = []
    watcher = ProjectWatcher(project, lambda p: _collect(p, seen), interval=0.01)
    assert await watcher.check() is False  # nothing changed

    (root / "config.toml").write_text("scale = 3\n")
    assert await settled(watcher) is True
    assert seen[-1].config.scale == 3
    assert summarize(project, seen[-1]).project_changed

    (root / "agents" / "a" / "config.toml").write_text("timeout = 'soon'\n")
    assert await settled(watcher) is False
    assert watcher.error is not None and "agents/a/config.toml" in watcher.error
    assert len(seen) == 1
    assert await watcher.check() is False  # reported once, not at every poll
    assert watcher.error is not None

    _agent(root, "a", "true")
    _agent(root, "c", "true")
    assert await settled(watcher) is True
    assert watcher.error is None
    summary = summarize(seen[0], seen[-1])
    assert summary.added == ("c",) and summary.removed == ()


async def test_a_file_still_changing_is_not_loaded(tmp_path: Path) -> None:
    """A save caught half-way (the file differs at each poll) waits until it settles."""
    root = tmp_path / "p"
    project = write_project(root, {"a": {"command": "true"}})
    seen: list[Project] = []
    watcher = ProjectWatcher(project, lambda p: _collect(p, seen), interval=0.01)
    config = root / "agents" / "a" / "config.toml"
    for step in range(4):
        config.write_text(f'[harness]\ncommand = "echo {step}"\n')
        assert await watcher.check() is False
    assert seen == [] and watcher.error is None
    assert await watcher.check() is True  # unchanged since the last poll
    assert seen[-1].agents["a"].config.harness.command == "echo 3"


SANDBOXED = '[harness]\ncommand = "true"\n[runtime]\ntype = "sandbox"\nnetwork = "none"\n'


def _sandboxed(tmp_path: Path) -> tuple[Project, list[Project], ProjectWatcher]:
    root = tmp_path / "p"
    write_project(root, {"other": {"command": "true"}}, "scale = 2\n")
    folder = root / "agents" / "boxed"
    folder.mkdir()
    (folder / "SKILL.md").write_text("---\nname: boxed\n---\n# boxed\n")
    (folder / "config.toml").write_text(SANDBOXED)
    project = load_project(root)
    seen: list[Project] = []
    return project, seen, ProjectWatcher(project, lambda p: _collect(p, seen), interval=0.01)


@pytest.mark.parametrize("where", ["config.toml", "agents/boxed/config.toml"])
@pytest.mark.parametrize("how", ["missing", "directory", "fifo"])
async def test_a_vanished_config_toml_is_a_bad_edit_not_no_settings(
    tmp_path: Path, where: str, how: str
) -> None:
    """rm + cp of a config.toml (or a directory or FIFO in its place) never loads as "no
    settings": the sandboxed agent stays sandboxed, the project keeps its limits."""
    project, seen, watcher = _sandboxed(tmp_path)
    path = project.root / where
    path.unlink()
    if how == "directory":
        path.mkdir()
    elif how == "fifo":
        os.mkfifo(path)  # nobody writes it: a blocking read would hang the watcher
    assert await settled(watcher) is False
    assert seen == []
    assert watcher.error is not None and where in watcher.error, watcher.error
    if how == "missing":  # put back: loaded again
        path.write_text(SANDBOXED if "agents" in where else "scale = 2\n")
        assert await settled(watcher) is True
        assert seen[-1].agents["boxed"].config.runtime.type == "sandbox"


async def test_removing_an_agent_folder_removes_the_agent(tmp_path: Path) -> None:
    project, seen, watcher = _sandboxed(tmp_path)
    shutil.rmtree(project.root / "agents" / "boxed")
    assert await settled(watcher) is True
    assert summarize(project, seen[-1]).removed == ("boxed",)


@pytest.mark.parametrize("edit", ["huge-int", "huge-skill"])
async def test_edits_that_used_to_crash_the_scheduler_are_reported(
    tmp_path: Path, edit: str
) -> None:
    project, seen, watcher = _sandboxed(tmp_path)
    folder = project.root / "agents" / "boxed"
    if edit == "huge-int":
        (folder / "config.toml").write_text(SANDBOXED + "scale = " + "9" * 5001 + "\n")
    else:
        with (folder / "SKILL.md").open("r+b") as handle:
            handle.truncate(100 * 1024**3)  # sparse 100 GB: reading it whole would fail
    assert await settled(watcher) is False
    assert watcher.error is not None and "agents/boxed/" in watcher.error, watcher.error
    assert seen == []


async def test_a_reload_keeps_the_store_and_gateway_in_use_and_warns_on_weaker_isolation(
    tmp_path: Path, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    project, _, _ = _sandboxed(tmp_path)
    scheduler = Scheduler(project, store)
    await scheduler.start()
    (project.root / "agents" / "boxed" / "config.toml").write_text('[harness]\ncommand = "true"\n')
    edited = load_project(project.root)
    gateway = edited.config.gateway.model_copy(update={"port": 1})
    moved = replace(
        edited,
        state_url="sqlite:////var/tmp/elsewhere.db",
        config=edited.config.model_copy(update={"gateway": gateway}),
    )
    with caplog.at_level(logging.WARNING, logger="corral"):
        summary = await scheduler.reload(moved)
    assert "the state store (state_url)" in summary.restart_needed
    assert scheduler.project.state_url == project.state_url  # the store in use
    assert scheduler.project.config.gateway == project.config.gateway
    assert scheduler.project.agents["boxed"].config.runtime.type == "host"  # applied
    warned = [r.getMessage() for r in caplog.records if "weakens the isolation" in r.getMessage()]
    assert warned and "boxed (runtime sandbox -> host)" in warned[0], warned


async def test_the_live_view_shows_a_bad_edit(tmp_path: Path, store: Store) -> None:
    project = write_project(tmp_path / "p", {"dev": {"command": "true"}})
    scheduler = Scheduler(project, store)
    await scheduler.start()
    assert scheduler.watcher is not None
    (project.root / "agents" / "dev" / "config.toml").write_text("scale = [\n")
    assert await settled(scheduler.watcher) is False
    view = LiveView(scheduler, "http://127.0.0.1:8080", None)
    await view.refresh()
    console = Console(record=True, width=200)
    console.print(view.render())
    text = console.export_text()
    assert "not reloaded (running the last good configuration)" in text
    assert "agents/dev/config.toml" in text
    assert scheduler.project is project  # still the last good one


@pytest.mark.slow
async def test_an_agent_added_with_a_schedule_gets_its_ticks(tmp_path: Path, store: Store) -> None:
    """Cron starts again on the new schedules: the added agent's next tick is queued (this
    waits for the next minute boundary)."""
    project = write_project(tmp_path / "p", {"a": {"command": "true"}})
    options = SchedulerOptions(poll_interval=0.05, reload_every=0.1, drain_grace=5)
    scheduler = Scheduler(project, store, options)
    stop = asyncio.Event()
    running = asyncio.create_task(scheduler.run(stop))
    try:
        folder = project.root / "agents" / "ticker"
        folder.mkdir()
        (folder / "SKILL.md").write_text("---\nname: ticker\n---\n# ticker\n")
        (folder / "config.toml").write_text('schedule = "* * * * *"\n[harness]\ncommand = "true"\n')
        await wait_for(lambda: "ticker" in scheduler.project.agents, 15)

        async def ticked() -> bool:
            items = await store.list_items(agent="ticker")
            return any(i.trigger is TriggerKind.SCHEDULE for i in items)

        await wait_for(ticked, 75, interval=0.2)
    finally:
        stop.set()
        await running


@pytest.mark.slow
def test_a_config_toml_briefly_missing_keeps_the_running_configuration(
    tmp_path: Path, store_url: str
) -> None:
    """rm + cp of an agent's config.toml while `corral start` runs: the gap is a bad edit
    (reported), never "no settings"; the copy, once in place, is loaded."""
    root = Path("/var/tmp") / f"corral-reload-{os.getpid()}-{tmp_path.name}"
    shutil.rmtree(root, ignore_errors=True)
    try:
        # The command is the project's: without its config.toml the agent still loads (as
        # one with no settings of its own: the default timeout instead of its own).
        write_project(root, {"a": {"command": "echo a-v1"}}, '[harness]\ncommand = "echo p"\n')
        (root / "agents" / "a" / "config.toml").write_text(
            'timeout = 77\n[harness]\ncommand = "echo a-v1"\n'
        )
        with SchedulerProcess(root, store_url, tmp_path / "s.log") as scheduler:
            wait_until(lambda: "started; gateway on" in scheduler.output(), 30)
            config = root / "agents" / "a" / "config.toml"
            config.unlink()
            wait_until(lambda: "does not load" in scheduler.output(), 30)
            assert "agents/a/config.toml: this config.toml was in the running" in (
                scheduler.output()
            )
            assert reloads(scheduler) == 0
            assert "a-v1" in log_of(root, finished(store_url, enqueue(store_url, "a")))
            _agent(root, "a", "echo a-v2")
            wait_until(lambda: "configuration reloaded: changed a" in scheduler.output(), 30)
            assert "a-v2" in log_of(root, finished(store_url, enqueue(store_url, "a")))
            assert scheduler.stop() == 0
    finally:
        shutil.rmtree(root, ignore_errors=True)
