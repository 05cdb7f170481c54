"""`corral demo`: a real fleet, offline, for about a minute, on the embedded store.

It lays out a demo project (three shell-script agents that use the in-run commands),
stores a webhook signing secret for it under the project's own corral home, and runs
the scheduler and the gateway in this process, as `corral start` does. Meanwhile a
sender posts signed GitHub-style deliveries to the gateway's webhook endpoint: issues
labeled ``agent`` and comments on them, so ``dev`` runs (scale 3) contend for issue
locks and call ``reviewer``; a repeated delivery id (answered as a duplicate) and a
delivery with a bad signature (refused) are among them. ``janitor`` runs on its
schedule and once by hand at the start, and asks for a rerun. The deliveries are spread
over most of the run and a dev run's pace follows from the duration, so the fleet stays
busy until the end (the dashboard shows it working). At the end the fleet drains, and
the demo prints `corral stat` and what happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import shutil
import signal
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import httpx

from corral.credentials import CredentialStore
from corral.engine.token import LOCAL_TOKEN_NAME, local_token
from corral.errors import UsageError
from corral.gateway.app import create_app
from corral.gateway.server import GatewayServer, bind
from corral.project import Project, load_project
from corral.scheduler.service import Scheduler, SchedulerOptions
from corral.status import fleet_status
from corral.store import NewItem, Store, TriggerKind, open_store

__all__ = ["DemoReport", "create_demo_project", "run_demo"]

REPO = "acme/widgets"
#: The demo's issues: (number, title). Each is labeled, then commented on.
ISSUES = [
    (11, "Login button broken on Safari"),
    (12, "Crash when the cart is empty"),
    (13, "Typo on the pricing page"),
    (14, "Slow search on large catalogs"),
    (15, "Dark mode loses contrast in tables"),
    (16, "CSV export drops the last row"),
    (17, "Password reset mail never arrives"),
    (18, "Invoice totals off by one cent"),
    (19, "Tooltip hides the save button"),
    (20, "Timezone shown as UTC for everyone"),
    (21, "Upload stalls at 99 percent"),
    (22, "Broken link in the footer"),
]

#: The issues arrive over this share of the demo's duration; the work they make takes
#: the fleet to the end of it.
SEND_SHARE = 0.8
#: After the duration, how long the demo waits at most for the queued work to finish
#: before it drains (a drain dispatches nothing, not even the call a dev run waits for).
SETTLE_LIMIT = 45.0


def step_seconds(duration: float) -> float:
    """How long each of a dev run's three steps takes: 2.5 s in the one-minute demo, so
    that its 14 dev runs (with their reviews) keep the three dev slots busy to the end."""
    return round(max(0.2, min(2.5, duration / 24.0)), 2)


Say = Callable[[str], None]


@dataclass
class DemoReport:
    """What the demo did, for the closing summary (and the tests)."""

    deliveries: Counter[int] = field(default_factory=Counter)  # HTTP status -> count
    runs: Counter[str] = field(default_factory=Counter)  # outcome -> count
    runs_by_agent: Counter[str] = field(default_factory=Counter)
    locks_granted: int = 0
    locks_refused: int = 0
    calls_answered: int = 0
    reruns: int = 0
    dashboard: str = ""
    status: dict[str, Any] = field(default_factory=dict)


def create_demo_project(dest: Path) -> None:
    """Lay out the demo project in ``dest`` (which must not exist, or be empty)."""
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UsageError(
            f"{dest} already exists and is not empty; choose a new directory "
            "(the demo never overwrites files)"
        )
    template = resources.files("corral.demo") / "template"
    with resources.as_file(template) as root:
        shutil.copytree(root, dest, dirs_exist_ok=True)
    for script in dest.glob("agents/*/run.sh"):
        script.chmod(0o755)


async def run_demo(dest: Path, *, duration: float = 60.0, port: int = 0, say: Say) -> DemoReport:
    """Create the demo project in ``dest`` and run its fleet for ``duration`` seconds."""
    create_demo_project(dest)
    pace = step_seconds(duration)
    (dest / "shared" / ".demo-step").write_text(f"{pace}\n")
    # The demo's credentials and environments stay inside the demo's directory.
    os.environ["CORRAL_HOME"] = str(dest / ".corral-home")
    secret = secrets.token_hex(20)
    CredentialStore().add("webhook_secret", "github", {"secret": secret})
    project = load_project(dest)
    report = DemoReport()
    sock = bind("127.0.0.1", port)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    async with await open_store(project.state_url) as store:
        scheduler = Scheduler(
            project, store, SchedulerOptions(drain_grace=30.0, poll_interval=0.2), gateway_url=url
        )
        info = await scheduler.start()
        token = local_token(project.root)  # the project's own token, as on loopback
        app = create_app(scheduler, fixed_tokens={LOCAL_TOKEN_NAME: token})
        server = GatewayServer.for_app(app)
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        stop = asyncio.Event()
        fleet = asyncio.create_task(scheduler.run(stop))
        report.dashboard = f"{url}/dashboard"
        say(f"scheduler {info.id} started; gateway on {url}")
        say(f"dashboard: {report.dashboard}  (operator token: {token})")
        say(f"running the demo fleet for {duration:g} s; Ctrl-C ends it early")
        ended = asyncio.Event()
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signal.SIGINT, ended.set)
        try:
            await scheduler.submit(NewItem(agent="janitor", trigger=TriggerKind.MANUAL))
            sender = asyncio.create_task(_send(url, secret, duration, report, say))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ended.wait(), duration)
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            if not ended.is_set():
                say("time is up: letting the queued work finish")
                await _settle(store, project, ended)
        finally:
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(signal.SIGINT)
            say("draining: no new runs; waiting for the running ones to finish")
            stop.set()
            await fleet
            server.should_exit = True
            await serving
        await _summarise(store, project.root, report)
    return report


async def _send(url: str, secret: str, duration: float, report: DemoReport, say: Say) -> None:
    """Post the demo's deliveries, spread over most of the run (``SEND_SHARE``)."""
    plan = _deliveries()
    waits = sum(1 for *_, at_once in plan[:-1] if not at_once)
    gap = max(0.05, duration * SEND_SHARE / max(1, waits))
    async with httpx.AsyncClient(base_url=url, timeout=10.0) as http:
        for what, event, delivery_id, body, sign_with, at_once in plan:
            signature = _sign(body, sign_with or secret)
            headers = {
                "Content-Type": "application/json",
                "X-GitHub-Event": event,
                "X-GitHub-Delivery": delivery_id,
                "X-Hub-Signature-256": signature,
                "User-Agent": "GitHub-Hookshot/corral-demo",
            }
            response = await http.post("/webhooks/github", content=body, headers=headers)
            report.deliveries[response.status_code] += 1
            say(f"webhook {what}: {response.status_code} {_answer(response)}")
            await asyncio.sleep(0.05 if at_once else gap)


async def _settle(store: Store, project: Project, ended: asyncio.Event) -> None:
    """Wait (at most ``SETTLE_LIMIT`` seconds, or until Ctrl-C) until no work is queued or
    running: every delivery the demo sent is then worked off before the fleet drains."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE_LIMIT
    while loop.time() < deadline and not ended.is_set():
        status = await fleet_status(store, project)
        if not any(a["queued"] or a["running"] for a in status["agents"]):
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ended.wait(), 0.2)


def _answer(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:80]
    if body.get("duplicate"):
        return "(duplicate delivery: nothing queued)"
    if not body.get("ok"):
        return f"({body.get('error')})"
    queued = [a["agent"] for a in body.get("agents", []) if a.get("state") == "queued"]
    return f"(queued for {', '.join(queued) or 'nobody'})"


def _deliveries() -> list[tuple[str, str, str, bytes, str | None, bool]]:
    """(what, event, delivery id, body, secret to sign with (None: the right one), whether
    the next one follows at once)."""
    out: list[tuple[str, str, str, bytes, str | None, bool]] = []
    now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    for index, (number, title) in enumerate(ISSUES):
        labeled = _issue_payload(number, title, now)
        # The first issues get a comment right away: its dev run finds the lock taken.
        commented = index < 2
        last = index == len(ISSUES) - 1  # the duplicate and the forgery follow it at once
        out.append(
            (
                f"issue #{number} labeled agent",
                "issues",
                f"demo-{number}-l",
                labeled,
                None,
                commented or last,
            )
        )
        if commented:
            comment = _comment_payload(number, title, now)
            out.append(
                (f"comment on #{number}", "issue_comment", f"demo-{number}-c", comment, None, False)
            )
    first = out[0]
    out.append(("issue #11 again (same delivery id)", first[1], first[2], first[3], None, True))
    out.append(("a forged delivery (bad signature)", "issues", "demo-x", first[3], "wrong", False))
    return out


def _issue_payload(number: int, title: str, now: str) -> bytes:
    issue = {
        "number": number,
        "title": title,
        "body": f"Steps to reproduce #{number}...",
        "html_url": f"https://github.com/{REPO}/issues/{number}",
        "user": {"login": "jdoe"},
        "labels": [{"name": "bug"}, {"name": "agent"}],
        "assignees": [],
        "created_at": now,
        "updated_at": now,
    }
    payload = {
        "action": "labeled",
        "label": {"name": "agent"},
        "issue": issue,
        "repository": {"full_name": REPO, "owner": {"login": "acme"}},
        "sender": {"login": "jdoe"},
    }
    return json.dumps(payload).encode()


def _comment_payload(number: int, title: str, now: str) -> bytes:
    payload = json.loads(_issue_payload(number, title, now))
    payload["action"] = "created"
    del payload["label"]
    payload["comment"] = {
        "body": "Any news on this one?",
        "user": {"login": "pat"},
        "html_url": f"https://github.com/{REPO}/issues/{number}#issuecomment-1",
        "created_at": now,
        "updated_at": now,
    }
    return json.dumps(payload).encode()


def _sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def _summarise(store: Store, root: Path, report: DemoReport) -> None:
    project = load_project(root)
    report.status = await fleet_status(store, project)
    runs = await store.list_runs(limit=10_000)
    for run in runs:
        report.runs[run.outcome] += 1
        report.runs_by_agent[run.agent] += 1
        if run.parent_run_id is not None and run.trigger in (
            TriggerKind.SCHEDULE,
            TriggerKind.MANUAL,
        ):
            report.reruns += 1
        if run.agent == "dev":
            log = root / ".corral" / "logs" / f"{run.id}.log"
            with contextlib.suppress(FileNotFoundError):
                text = log.read_text(errors="replace")
                report.locks_granted += text.count("locked github://")
                report.locks_refused += text.count(" is taken: ")
    report.calls_answered = sum(
        1 for call in await store.list_calls(limit=10_000) if call.state.value == "completed"
    )


def print_summary(report: DemoReport, say: Say) -> None:
    outcomes = ", ".join(f"{n} {outcome}" for outcome, n in sorted(report.runs.items()))
    agents = ", ".join(f"{agent} {n}" for agent, n in sorted(report.runs_by_agent.items()))
    statuses = ", ".join(f"{n}x {code}" for code, n in sorted(report.deliveries.items()))
    say("")
    say("what happened:")
    say(f"  webhook deliveries: {statuses}")
    say(f"  runs: {sum(report.runs.values())} ({outcomes}); by agent: {agents}")
    say(f"  issue locks: {report.locks_granted} granted, {report.locks_refused} refused")
    say(f"  calls answered: {report.calls_answered}; reruns: {report.reruns}")


def main(
    dest: Path, duration: float, port: int, render_status: Callable[[dict[str, Any]], None]
) -> int:
    """The `corral demo` command: run, then print `corral stat` (drawn by ``render_status``,
    which the CLI passes in: the demo sits below the CLI's layer) and the summary."""

    def say(text: str) -> None:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()

    try:
        report = asyncio.run(run_demo(dest, duration=duration, port=port, say=say))
    except KeyboardInterrupt:
        return 130
    print("== corral stat")
    render_status(report.status)
    print_summary(report, print)
    return 0
