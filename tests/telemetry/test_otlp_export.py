"""`[telemetry]` exports over OTLP/HTTP: a real `corral start` sends its runs' spans and
its metrics to a real receiver on loopback, which decodes them as a collector would."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from corral.errors import ConfigError
from corral.project import load_project
from corral.store import RunState, open_store
from tests.cli.test_walking_skeleton import set_command
from tests.processes import wait_until
from tests.scheduler.procs import SchedulerProcess
from tests.telemetry.otlp import OtlpReceiver, attrs

FAIL_WORD = "please-fail-7f3"


def make_project(tmp_path: Path, telemetry: str) -> Path:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env["HOME"] = str(tmp_path)
    made = subprocess.run(
        [sys.executable, "-m", "corral", "new", "demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    project = tmp_path / "demo"
    config = project / "agents" / "hello" / "config.toml"
    config.write_text(config.read_text().replace("*/15 * * * *", "0 0 1 1 *"))
    set_command(project, f'if grep -q {FAIL_WORD} "$CORRAL_PROMPT_FILE"; then exit 3; fi')
    with (project / "config.toml").open("a") as handle:
        handle.write(telemetry)
    return project


def queue(project: Path, store_url: str, prompt: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env.update({"CORRAL_STATE_URL": store_url, "HOME": str(project.parent)})
    queued = subprocess.run(
        [sys.executable, "-m", "corral", "run", "hello", prompt],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert queued.returncode == 0, queued.stderr
    assert "queued a run of hello" in queued.stderr


async def ended_runs(store_url: str) -> list[tuple[str, RunState]]:
    async with await open_store(store_url, migrate=False) as store:
        runs = await store.list_runs(agent="hello", limit=10)
    return [(run.id, run.state) for run in runs if run.state.is_terminal]


@pytest.mark.slow
async def test_start_exports_run_spans_and_metrics(tmp_path: Path, store_url: str) -> None:
    with OtlpReceiver() as receiver:
        project = make_project(
            tmp_path,
            textwrap.dedent(f"""
                [telemetry]
                enabled = true
                provider = "otel"
                endpoint = "{receiver.url}"
                serviceName = "corral-test"
                headers = {{ x-team = "ops" }}
                """),
        )
        log = tmp_path / "scheduler.log"
        with SchedulerProcess(project, store_url, log) as scheduler:
            wait_until(lambda: "gateway on http" in scheduler.output(), 30)
            queue(project, store_url, "all good")
            queue(project, store_url, FAIL_WORD)
            done: list[tuple[str, RunState]] = []
            for _ in range(300):
                done = await ended_runs(store_url)
                if len(done) == 2:
                    break
                await asyncio.sleep(0.1)  # polling the store: no event to await
            assert len(done) == 2, scheduler.output()
            assert scheduler.stop() == 0, scheduler.output()  # stopping flushes the export

        outcomes = {run_id: state.value for run_id, state in done}
        assert sorted(outcomes.values()) == ["failed", "succeeded"]
        spans = receiver.received.spans()
        resources = {r["service.name"] for r, _ in spans}
        assert resources == {"corral-test"}
        runs = {attrs(s.attributes)["agent.run_id"]: s for _, s in spans if s.name == "corral.run"}
        assert set(runs) == set(outcomes)
        for run_id, span in runs.items():
            values = attrs(span.attributes)
            assert values["agent.name"] == "hello"
            assert values["agent.trigger_type"] == "manual"
            assert values["corral.run.outcome"] == outcomes[run_id]
            assert values["corral.run.duration_s"] >= 0
            assert span.end_time_unix_nano >= span.start_time_unix_nano > 0
            failed = outcomes[run_id] == "failed"
            assert values.get("corral.run.exit_code") == (3 if failed else 0)
            assert span.status.code == (2 if failed else 1)  # ERROR / OK
            children = {s.name: s for _, s in spans if s.parent_span_id == span.span_id}
            assert set(children) == {"corral.claim", "corral.queue_wait"}
            for child in children.values():
                assert child.trace_id == span.trace_id
                assert child.end_time_unix_nano <= span.start_time_unix_nano
        assert all(h.get("x-team") == "ops" for h in receiver.received.headers)

        started = [
            (attrs(p.attributes), p.as_int)
            for m in receiver.received.metric("corral.runs.started")
            for p in m.sum.data_points
        ]
        assert started[-1] == ({"agent.name": "hello", "agent.trigger_type": "manual"}, 2)
        finished = {
            attrs(p.attributes)["corral.run.outcome"]: p.as_int
            for m in receiver.received.metric("corral.runs.finished")
            for p in m.sum.data_points
        }
        assert finished == {"succeeded": 1, "failed": 1}
        durations = [
            p
            for m in receiver.received.metric("corral.run.duration")
            for p in m.histogram.data_points
        ]
        assert sum(p.count for p in durations[-2:]) == 2  # one point per outcome, cumulative
        assert list(durations[-1].explicit_bounds)[:3] == [1.0, 5.0, 15.0]  # seconds
        depth = [
            (attrs(p.attributes), p.as_int)
            for m in receiver.received.metric("corral.queue.depth")
            for p in m.gauge.data_points
        ]
        assert depth[-1] == ({"agent.name": "hello"}, 0)


def test_disabled_telemetry_loads_no_sdk(tmp_path: Path) -> None:
    project = make_project(tmp_path, "\n[telemetry]\nenabled = false\n")
    probe = textwrap.dedent(f"""
        import sys
        from corral.project import load_project
        from corral.scheduler.service import Scheduler
        from corral.store._sqlite import SqliteStore
        from corral.telemetry import RunObserver
        project = load_project({str(project)!r})
        # A store object, never opened: building the scheduler reads nothing from it.
        store = SqliteStore("sqlite:///" + {str(tmp_path / "state.db")!r})
        scheduler = Scheduler(project, store)
        assert type(scheduler.observer) is RunObserver, scheduler.observer
        sdk = ("opentelemetry.sdk", "opentelemetry.exporter", "corral.telemetry._otel")
        loaded = [m for m in sys.modules if m.startswith(sdk)]
        print(loaded)
        """)
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_an_endpoint_that_is_not_a_url_is_refused_clearly(tmp_path: Path) -> None:
    project = make_project(
        tmp_path, '\n[telemetry]\nenabled = true\nprovider = "otel"\nendpoint = "collector:4318"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_project(project)
    text = caught.value.render()
    assert "telemetry" in text and "endpoint" in text
    assert "http:// or https:// URL of an OTLP/HTTP collector" in text
    assert "collector:4318" in text


@pytest.mark.slow
async def test_a_collector_that_is_down_costs_no_run(tmp_path: Path) -> None:
    with OtlpReceiver() as gone:
        url = gone.url  # a loopback port that nothing listens on once this block ends
    project = make_project(
        tmp_path, f'\n[telemetry]\nenabled = true\nprovider = "otel"\nendpoint = "{url}"\n'
    )
    store_url = f"sqlite:///{project / '.corral' / 'state.db'}"
    with SchedulerProcess(project, store_url, tmp_path / "scheduler.log") as scheduler:
        wait_until(lambda: "gateway on http" in scheduler.output(), 30)
        queue(project, store_url, "all good")
        done: list[tuple[str, RunState]] = []
        for _ in range(300):
            done = await ended_runs(store_url)
            if done:
                break
            await asyncio.sleep(0.1)  # polling the store: no event to await
        assert [state for _, state in done] == [RunState.SUCCEEDED], scheduler.output()
        assert scheduler.stop(timeout=30) == 0, scheduler.output()
    assert gone.received.traces == []
