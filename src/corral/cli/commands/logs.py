"""`corral logs [AGENT|RUN]`: the scheduler's log (no argument), a run's log, or an agent's
recent runs' logs, read or followed.

The scheduler's log is ``.corral/logs/scheduler.log``, written by `corral start` (every
scheduler started in this project directory appends to it). ``-n N`` shows the last N lines
(50 by default for the scheduler's log, as in Action Llama; the whole log of a run unless
given).

A run's log is what its processes printed (already redacted when it was written); for a
built-in harness run it also holds the transcript, one JSON object per line, which is
shown as readable lines unless ``--raw`` asks for it as stored.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections import deque
from datetime import datetime
from pathlib import Path

import click

from corral.cli._context import CliContext, is_agent_of
from corral.cli._main import cli
from corral.cli._render import parse_since
from corral.errors import UsageError
from corral.inert import inert, inert_output
from corral.project import Project
from corral.store import Run, Store
from corral.transcript import render_line

__all__ = ["SCHEDULER", "logs_cmd", "read_from", "scheduler_log_path"]

_POLL = 0.2


@cli.command("logs")
@click.argument("target", metavar="[AGENT|RUN]", required=False)
@click.option(
    "-n",
    "--lines",
    "lines",
    type=click.IntRange(min=0),
    help="Only the last N lines (default: 50 for the scheduler's log, all of a run's).",
)
@click.option("-f", "--follow", is_flag=True, help="Keep printing as the log grows.")
@click.option("-g", "--grep", "pattern", help="Only lines matching this regular expression.")
@click.option(
    "--since", help="For an agent: its runs created since (15m, 2h, 3d, or an ISO date/time)."
)
@click.option("--raw", is_flag=True, help="Print transcript lines as stored (JSON).")
@click.pass_obj
def logs_cmd(
    obj: CliContext,
    target: str | None,
    lines: int | None,
    follow: bool,
    pattern: str | None,
    since: str | None,
    raw: bool,
) -> None:
    """Print the scheduler's log (no argument, or `scheduler`), the log of run TARGET, or of
    agent TARGET's latest run (with --since: of its runs since then, oldest first). -f
    follows the run until it ends; for an agent or the scheduler, it goes on until
    interrupted."""
    project = obj.project_for_store()
    try:
        matcher = None if pattern is None else re.compile(pattern)
    except re.error as exc:
        raise click.BadParameter(f"{pattern!r} is not a regular expression: {exc}") from None
    scheduler = target is None or (target == SCHEDULER and target not in project.agents)
    if scheduler and since is not None:
        raise UsageError("--since picks an agent's runs; the scheduler's log takes -n N")
    tail = (SCHEDULER_TAIL if scheduler else None) if lines is None else lines
    show = _Printer(matcher, raw, tail)
    created_since = None if since is None else parse_since(since)
    try:
        if target is None or scheduler:
            asyncio.run(_scheduler_log(scheduler_log_path(project.root), show, follow))
        else:
            asyncio.run(_logs(obj, project, target, show, follow, created_since))
    except KeyboardInterrupt:
        pass
    finally:
        show.flush_tail()


#: `corral logs scheduler` is the scheduler's log too (unless an agent has that name).
SCHEDULER = "scheduler"
#: How many lines of the scheduler's log are shown without -n (Action Llama's default).
SCHEDULER_TAIL = 50


def scheduler_log_path(root: Path) -> Path:
    """The scheduler's log of the project at ``root`` (written by `corral start`)."""
    return root / ".corral" / "logs" / "scheduler.log"


async def _scheduler_log(path: Path, show: _Printer, follow: bool) -> None:
    if not path.exists() and not follow:
        raise UsageError(
            f"no scheduler log yet ({path}): it is written by `corral start` in this project"
        )
    offset = _copy(path, 0, show)
    show.feed(b"", final=not follow)
    show.flush_tail()
    while follow:
        await asyncio.sleep(_POLL)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size < offset:  # rotated: the new file is read from its start
            offset = 0
        offset = _copy(path, offset, show)


class _Printer:
    def __init__(self, matcher: re.Pattern[str] | None, raw: bool, tail: int | None) -> None:
        self.matcher = matcher
        self.raw = raw
        self._partial = b""
        #: With -n: lines are kept here (the last ``tail`` of them) until ``flush_tail``.
        self._tail: deque[str] | None = None if tail is None else deque(maxlen=tail)

    def write(self, text: str) -> None:
        if self._tail is not None:
            self._tail.append(text)
            return
        sys.stdout.write(text + "\n")

    def flush_tail(self) -> None:
        """Print the kept last lines; from now on lines are printed as they come."""
        if self._tail is not None:
            kept, self._tail = self._tail, None
            for text in kept:
                sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def feed(self, chunk: bytes, *, final: bool = False) -> None:
        """Print the whole lines of ``chunk`` (the rest waits for the next one)."""
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = b"" if final else lines.pop()
        for line in lines:
            if line or not final:
                self.line(line.removesuffix(b"\r").decode("utf-8", errors="replace"))

    def line(self, text: str) -> None:
        """One line of the log, made inert: a run's colours stay, every other escape
        sequence and control character is shown escaped (docs/watching.md)."""
        for shown in [text] if self.raw else render_line(text):
            if self.matcher is None or self.matcher.search(shown):
                self.write(inert_output(shown))
        if self._tail is None:
            sys.stdout.flush()

    def header(self, run: Run) -> None:
        what = inert(f"{run.id} ({run.trigger.value}, {run.outcome})")
        self.write(f"==> run {what} <==")


async def _logs(
    obj: CliContext,
    project: Project,
    target: str,
    show: _Printer,
    follow: bool,
    since: datetime | None,
) -> None:
    logs = project.root / ".corral" / "logs"
    async with await obj.store(project) as store:
        run = await store.get_run(target)
        if run is not None:
            await _print_run(store, logs, run, show, follow)
            return
        if not is_agent_of(project, target):
            raise UsageError(
                f"{target!r} is neither a run id nor an agent of this project; "
                "`corral runs` lists runs, `corral config` the agents"
            )
        runs = await store.list_runs(agent=target, limit=1 if since is None else 1000, since=since)
        if not runs and not follow:
            raise UsageError(
                f"agent {target!r} has no runs" + ("" if since is None else " since then")
            )
        seen: set[str] = set()
        for run in sorted(runs, key=lambda r: (r.created_at, r.id)):
            if len(runs) > 1 or follow:
                show.header(run)
            seen.add(run.id)
            await _print_run(store, logs, run, show, follow)
        while follow:  # an agent's next runs, as they start
            newer = await store.list_runs(agent=target, limit=20)
            for run in sorted(newer, key=lambda r: (r.created_at, r.id)):
                if run.id not in seen and run.started_at is not None:
                    seen.add(run.id)
                    show.header(run)
                    await _print_run(store, logs, run, show, follow)
            await asyncio.sleep(_POLL)


async def _print_run(store: Store, logs: Path, run: Run, show: _Printer, follow: bool) -> None:
    path = logs / f"{run.id}.log"
    offset = 0
    while True:
        offset = _copy(path, offset, show)
        if not follow:
            break
        show.flush_tail()  # -n with -f: the last lines so far, then everything new
        current = await store.get_run(run.id)
        if current is None or current.state.is_terminal:
            offset = _copy(path, offset, show)  # what was written before it ended
            break
        await asyncio.sleep(_POLL)
    show.feed(b"", final=True)
    if not follow and offset == 0 and not path.exists():
        sys.stderr.write(inert(f"run {run.id} has no log yet ({path})") + "\n")


def _copy(path: Path, offset: int, show: _Printer) -> int:
    chunk = read_from(path, offset)
    if chunk:
        show.feed(chunk)
    return offset + len(chunk)


def read_from(path: Path, offset: int) -> bytes:
    """What a log holds past ``offset`` (nothing when it does not exist yet)."""
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read()
    except FileNotFoundError:
        return b""
