"""The control plane fails while runners hold runs, end to end: two `corral start` control
planes on one PostgreSQL database, runners configured with both URLs, one control plane
killed (-9): the runners carry on through the other and their runs finish, each run
once. And the only control plane killed (-9) and started again within the lease: its
runners' leases are resumed, nothing is run again."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections import Counter
from pathlib import Path

import pytest

from corral.store import RunState
from tests.fleet.fleetkit import (
    RunnerProcess,
    control_plane,
    join_runner,
    run_processes,
    start_runner,
    wait_for,
)
from tests.fleet.test_faults import _runs
from tests.scheduler.helpers import write_project

pytestmark = pytest.mark.slow

MARKER = "fmark-failover"


def _project(root: Path, out: Path, seconds: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    script = (
        f'echo "$CORRAL_ITEM_ID $CORRAL_RUN_ID" >> "{out}/starts"; '
        f"sleep {seconds}; "
        'al-status "after the sleep" || exit 7; '
        f'echo "$CORRAL_RUN_ID" >> "{out}/ends"; echo done # {MARKER}'
    )
    write_project(
        root,
        {"work": {"command": ["/bin/sh", "-c", script], "runsOn": ["linux"], "scale": 4}},
        "[fleet]\nheartbeatSeconds = 1\nofflineAfterSeconds = 4\n",
    )


def _counts(out: Path, name: str) -> Counter[str]:
    path = out / name
    lines = path.read_text().splitlines() if path.exists() else []
    return Counter(line.split()[0] for line in lines)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _with_urls(runner: RunnerProcess, urls: list[str]) -> RunnerProcess:
    config = json.loads(runner.config.read_text())
    runner.config.write_text(json.dumps(config | {"urls": urls, "drainSeconds": 1}))
    return runner


@pytest.mark.parametrize("dialect", ["postgresql"], indirect=True)
def test_runners_carry_on_through_the_other_control_plane(tmp_path: Path, store_url: str) -> None:
    root, out = tmp_path / "project", tmp_path / "out"
    _project(root, out, 5)
    runners: list[RunnerProcess] = []
    with (
        control_plane(root, store_url, tmp_path / "cp1.log") as cp1,
        control_plane(root, store_url, tmp_path / "cp2.log") as cp2,
    ):
        cp1.push()
        try:
            for name in ("a", "b"):
                # a free slot each: their requests for work are open on cp1 when it dies
                runner = join_runner(cp1, tmp_path, name, ["linux"], 3)
                runners.append(start_runner(_with_urls(runner, [cp1.url, cp2.url])))
            for _ in range(4):
                cp1.trigger("work")
            wait_for(lambda: len(run_processes(MARKER)) == 4, 60)
            cp1.process.kill9()
            killed_at = time.monotonic()
            for _ in range(2):  # and new work comes through cp2
                cp2.trigger("work")

            def ended() -> bool:
                runs = _runs(store_url)
                return len(runs) >= 6 and all(r.state.is_terminal for r in runs)

            try:
                wait_for(ended, 60)
            except AssertionError:
                raise AssertionError(
                    cp2.process.output()[-3000:] + "\n".join(r.output()[-3000:] for r in runners)
                ) from None
            took = time.monotonic() - killed_at
        finally:
            for runner in runners:
                runner.stop()
        runs = _runs(store_url)
        logs = [runner.output() for runner in runners]
    assert len(runs) == 6, [(r.id, r.state, r.error) for r in runs]
    assert all(r.state is RunState.SUCCEEDED for r in runs), [
        (r.id, r.state, r.error) for r in runs
    ]
    # each ran once: no run was lost and handed on, none started twice
    starts, ends = _counts(out, "starts"), _counts(out, "ends")
    assert len(starts) == 6 and set(starts.values()) == {1}, starts
    assert len(ends) == 6 and set(ends.values()) == {1}, ends
    assert all(r.status_text == "after the sleep" for r in runs)  # in-run calls went to cp2
    assert all(f"control plane {cp2.url} answers now" in text for text in logs), logs[0][-2000:]
    assert not any("self-fenced" in text for text in logs)
    print(f"\ncontrol plane killed: {len(runs)} runs finished through the other {took:.1f} s later")


def test_a_restarted_control_plane_resumes_its_runners_leases(
    tmp_path: Path, store_url: str
) -> None:
    root, out = tmp_path / "project", tmp_path / "out"
    _project(root, out, 8)
    port = _free_port()
    lease = 20.0  # a restart of `corral start` fits in its 7/12 (11.7 s) with room
    runner: RunnerProcess | None = None
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(
            control_plane(root, store_url, tmp_path / "cp1.log", "--port", str(port), lease=lease)
        )
        first.push()
        try:
            runner = join_runner(first, tmp_path, "a", ["linux"], 2)
            start_runner(_with_urls(runner, [first.url]))
            first.trigger("work")
            first.trigger("work")
            wait_for(lambda: len(run_processes(MARKER)) == 2, 60)
            held = {r.id: r for r in _runs(store_url)}
            first.process.kill9()
            killed_at = time.monotonic()
            second = stack.enter_context(
                control_plane(
                    root, store_url, tmp_path / "cp2.log", "--port", str(port), lease=lease
                )
            )
            back = time.monotonic() - killed_at
            assert second.url == first.url

            def ended() -> bool:
                runs = _runs(store_url)
                return all(r.state.is_terminal for r in runs)

            try:
                wait_for(ended, 60)
            except AssertionError:
                raise AssertionError(
                    second.process.output()[-3000:] + runner.output()[-3000:]
                ) from None
        finally:
            if runner is not None:
                runner.stop()
        runs = _runs(store_url)
    assert {r.id for r in runs} == set(held), [(r.id, r.state, r.error) for r in runs]
    assert all(r.state is RunState.SUCCEEDED for r in runs), [
        (r.id, r.state, r.error) for r in runs
    ]
    assert all(r.fence == held[r.id].fence for r in runs)
    starts, ends = _counts(out, "starts"), _counts(out, "ends")
    assert len(starts) == 2 and set(starts.values()) == {1}, starts
    assert len(ends) == 2 and set(ends.values()) == {1}, ends
    assert "self-fenced" not in runner.output()
    print(f"\ncontrol plane restarted in {back:.1f} s: {len(runs)} runs resumed, none run again")


def test_a_runner_gone_mid_request_is_given_nothing(tmp_path: Path, store_url: str) -> None:
    """A runner killed while its request for work waits: the control plane ends that
    request (it claims nothing for a runner that cannot receive it) and stops at once
    rather than at the end of the long poll."""
    root, out = tmp_path / "project", tmp_path / "out"
    _project(root, out, 1)
    with control_plane(root, store_url, tmp_path / "cp.log") as plane:
        plane.push()
        runner = start_runner(join_runner(plane, tmp_path, "a", ["linux"], 1))
        try:
            wait_for(lambda: "starting: 1 slot(s)" in runner.output(), 30)
            time.sleep(2)  # its request for work is open, waiting
            runner.kill9()
            time.sleep(1)
            plane.trigger("work")
            time.sleep(2)
            assert _runs(store_url) == []  # queued, not handed to the dead runner
            stopping = time.monotonic()
            assert plane.process.stop(timeout=60) == 0
            stopped = time.monotonic() - stopping
        finally:
            runner.stop()
    assert stopped < 15, stopped  # the long poll lasts 25 s
    print(f"\ncontrol plane stopped {stopped:.1f} s after SIGTERM, a runner's poll was open")
