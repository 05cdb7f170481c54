"""Task board benchmark: concurrent claimers over one board, corral against the seed's script.

Side by side in one run, for each size in ``--sizes`` (default 5, 50, 200 claimer
processes) and each driver in ``--drivers``, over the same generated task set (``--projects``
x ``--per-project`` tasks, default 10 x 100, priorities 1-10, each task requiring 0-3
earlier tasks of its project; from ``--seed``):

* ``peer``: the git-native framework's published claim script
  (``.agents-core/scripts/claim-task-v2.sh`` of vmatresu/saltbitter, read from
  ``--peer-repo`` and copied into the scratch directory at run time; nothing of it is kept
  in this repository), each claimer in its own clone of a local bare repository that
  holds the tasks in the seed's layout, on branch ``develop``.
* ``peer-fixed``: the same script with its return-code bug fixed at run time (``main``
  branches on the output of ``try_claim`` instead of its exit status, so every outcome is
  "Unexpected return code" and no retry ever happens; the fix makes it branch on the
  status).
* ``git``: corral's git-native backend (``corral.tasks.gitboard.GitBoard``) against a
  local bare repository.
* ``corral-sqlite`` / ``corral-postgres``: corral's board in the store (``claim_task`` /
  ``finish_task``), a SQLite file or a fresh PostgreSQL database.
* ``corral-gateway-sqlite`` / ``corral-gateway-postgres``: a real control plane
  (``corral start``) over that store; each claimer is a run of its agent ``claimer``
  (scale N), holding its run's secret, claiming and completing over the agent API on one
  kept-alive HTTP connection. Its claims belong to its run and end with it.
* ``corral-gateway-cmd-sqlite`` / ``corral-gateway-cmd-postgres``: the same, each call
  the real ``task-claim`` / ``task-complete`` command (process start included); only at
  ``--cmd-sizes`` (default 5), a smaller sample.

Each claimer is a process of its own. All start together (a barrier: every process says
it is ready, then all are told to go with the same deadline; for a run of the control
plane, by files: ``ready/<run>`` and the bench's ``go``) and loop until the board is
drained or the budget (``--budget`` seconds per driver and size) ends: claim the best
eligible task, work ``--work-ms`` (uniform 0..work-ms, from the claimer's seed), complete
it. When no task is eligible (all remaining ones wait for dependencies held by others) a
claimer waits a little and asks again. Each records monotonic times per call and writes
JSON lines; the parent merges them.

Figures per driver and size: claims done, conflicts (a task that two claimers were told
they hold: must be 0), retries per claim (failed attempts before a claim landed: for the
seed's script its failed pushes and vanished tasks, from its log lines; for the git
backend the claim's ``retries``; corral's board does not retry), claim latency p50/p99
(from the call to the answer, for calls that returned a task; for the seed's script the
call is the chain of script runs until one holds a task, as an agent would rerun it),
completed tasks per second over the budget, and tasks never claimed in the budget.
A store claimer told "busy" (StoreBusy: nothing was changed) asks again after 0-100 ms
and counts that as a retry. After an empty answer a claimer waits 50 ms, doubling to
0.8 s (jittered), before asking again. A call still running at the deadline is cut (the
seed's script is killed) or, when it cannot be cut, counted as late and left out.

A driver whose code is absent (the git backend or the store's board not merged yet) is
reported as unavailable, with the reason, and the others still run. PostgreSQL at sizes
above its free connections (every claimer process holds a connection) is reported as not
run, with the figures of the server; its settings are not changed.

    .venv/bin/python bench/tasks.py --quick          # 5 claimers, 100 tasks, 20 s budget
    .venv/bin/python bench/tasks.py                  # 5, 50, 200 claimers, 1,000 tasks
    .venv/bin/python bench/tasks.py --drivers peer,peer-fixed --sizes 5,50 --budget 90

``--worker`` is the claimer processes' internal entry point.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import json
import math
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DEFAULT_PG_DSN, Result, fresh_database, percentile, print_table

DRIVERS = (
    "peer",
    "peer-fixed",
    "git",
    "corral-sqlite",
    "corral-postgres",
    "corral-gateway-sqlite",
    "corral-gateway-postgres",
    "corral-gateway-cmd-sqlite",
    "corral-gateway-cmd-postgres",
)
DEFAULT_PEER_REPO = Path("/work/.mirror/vmatresu+saltbitter/repo")
PEER_SCRIPT = ".agents-core/scripts/claim-task-v2.sh"
PEER_BRANCH = "develop"
#: The seed's bug: ``main`` takes the output of ``try_claim`` for its status.
PEER_BUGGY_LINE = "        case $(try_claim $attempt) in\n"
#: The minimal fix: take the function's exit status (``||`` keeps ``set -e`` from
#: ending the script on a non-zero status, as the command substitution did).
PEER_FIXED_LINES = "        rc=0\n        try_claim $attempt || rc=$?\n        case $rc in\n"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@localhost",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@localhost",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_TERMINAL_PROMPT": "0",
}


# --------------------------------------------------------------------------- the task set


@dataclass(frozen=True)
class GenTask:
    id: str
    project: str
    priority: int
    requires: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.project}/{self.id}"


def make_tasks(seed: int, projects: int, per_project: int) -> list[GenTask]:
    """The task set: ids unique over all projects (TASK-0001...), so the git backend's
    ``complete(task_id)`` and the seed's per-project directories agree on one name."""
    rng = random.Random(seed)
    width = max(3, len(str(projects * per_project)))
    out: list[GenTask] = []
    n = 0
    for p in range(projects):
        project = f"proj-{p:02d}"
        earlier: list[str] = []
        for _ in range(per_project):
            n += 1
            tid = f"TASK-{n:0{width}d}"
            k = min(len(earlier), rng.randint(0, 3))
            requires = tuple(sorted(rng.sample(earlier, k)))
            out.append(GenTask(tid, project, rng.randint(1, 10), requires))
            earlier.append(tid)
    return out


def seed_task_file(task: GenTask) -> str:
    """A task file in the seed's TOON layout (``.agents/projects/<p>/tasks/<id>.toon``).

    Every edge is written on the requiring side only (``blocks[0]:``): the seed's script
    reads every ``TASK-`` line below ``required[`` as a requirement, ``blocks`` entries
    included, so a task naming what it blocks would wait for its own dependents."""
    lines = [
        "task:",
        f" id: {task.id}",
        f" project: {task.project}",
        f" title: Generated task {task.id} of {task.project}",
        " type: backend",
        f" priority: {task.priority}",
        " status: ready",
        "",
        "description:",
        " summary: A task generated by corral's bench/tasks.py",
        "",
        "acceptance_criteria[1]:",
        " The claimer completes it",
        "",
        "dependencies:",
        f" required[{len(task.requires)}]:",
        *[f"  {r}" for r in task.requires],
        " blocks[0]:",
        "",
        "metadata:",
        " created_by: bench",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- git helpers


def _git(
    *args: str, cwd: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", *args],
        cwd=cwd,
        env={**os.environ, **GIT_ENV},
        capture_output=True,
        text=True,
        check=check,
    )


def peer_script(peer_repo: Path, dest: Path, fixed: bool) -> Path:
    """Copy the seed's claim script out of ``peer_repo`` into ``dest`` (fixed or not)."""
    try:
        text = _git("--git-dir", str(peer_repo), "show", f"HEAD:{PEER_SCRIPT}").stdout
    except subprocess.CalledProcessError as exc:
        raise SystemExit(
            f"--peer-repo {peer_repo}: cannot read {PEER_SCRIPT} from its HEAD "
            f"({exc.stderr.strip() or exc}); give a clone or bare mirror of vmatresu/saltbitter"
        ) from None
    if fixed:
        if text.count(PEER_BUGGY_LINE) != 1:
            raise SystemExit(
                f"--peer-repo {peer_repo}: {PEER_SCRIPT} no longer has the line "
                f"{PEER_BUGGY_LINE.strip()!r} exactly once, so the return-code fix cannot be "
                "applied; the script changed upstream: check the fix by hand"
            )
        text = text.replace(PEER_BUGGY_LINE, PEER_FIXED_LINES)
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / ("claim-task-v2-fixed.sh" if fixed else "claim-task-v2.sh")
    path.write_text(text)
    path.chmod(0o755)
    return path


def make_seed_remote(tasks: Sequence[GenTask], root: Path) -> Path:
    """A bare repository whose ``develop`` holds ``tasks`` in the seed's layout."""
    work = root / "seed-work"
    bare = root / "seed.git"
    _git("init", "-q", "-b", PEER_BRANCH, str(work))
    projects = sorted({t.project for t in tasks})
    agents = work / ".agents"
    for p in projects:
        (agents / "projects" / p / "tasks").mkdir(parents=True)
        (agents / "claimed" / p).mkdir(parents=True)
        (agents / "completed" / p).mkdir(parents=True)
        (agents / "claimed" / p / ".gitkeep").write_text("")
        (agents / "completed" / p / ".gitkeep").write_text("")
        (agents / "projects" / f"{p}.toon").write_text(
            f"project:\n id: {p}\n name: {p}\n status: active\n"
        )
    for t in tasks:
        (agents / "projects" / t.project / "tasks" / f"{t.id}.toon").write_text(seed_task_file(t))
    _git("add", "-A", cwd=work)
    _git("commit", "-q", "-m", "tasks for bench/tasks.py", cwd=work)
    _git("clone", "-q", "--bare", str(work), str(bare))
    shutil.rmtree(work)
    return bare


def peer_solo_claim(peer_repo: Path, tasks: Sequence[GenTask], root: Path) -> float:
    """Seconds one run of the fixed script takes to claim a task with no one else around:
    what the board's size alone costs it (it reads every task file with a few processes
    per file)."""
    root.mkdir(parents=True)
    script = peer_script(peer_repo, root / "script", fixed=True)
    remote = make_seed_remote(tasks, root)
    clone = root / "clone"
    _git("clone", "-q", "-b", PEER_BRANCH, str(remote), str(clone))
    t0 = time.monotonic()
    proc = subprocess.run(
        ["bash", str(script), "solo", "", PEER_BRANCH],
        cwd=clone,
        env={**os.environ, **GIT_ENV},
        capture_output=True,
        text=True,
    )
    took = time.monotonic() - t0
    if proc.returncode != 0 or "SUCCESS: Claimed" not in proc.stderr:
        raise RuntimeError(f"the seed's script did not claim alone: {proc.stderr[-500:]}")
    return took


# --------------------------------------------------------------------------- drivers (in a claimer)


@dataclass
class Claimed:
    key: str  # project/id
    project: str
    id: str
    retries: int
    handle: Any = None
    #: peer only: the script's exit status for the run that landed the claim.
    exit_status: int | None = None


class Cut(Exception):
    """The budget ended in the middle of a call."""


async def _maybe(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class PeerDriver:
    """Runs the seed's script in this claimer's own clone; completion is emulated (the
    seed's complete-task.sh looks for claimed files under ``state/<p>/``, not where
    claim-task-v2.sh puts them): move the file from ``claimed/`` to ``completed/``, commit,
    and push, pulling and retrying until the push lands."""

    def __init__(self, cfg: dict[str, Any], name: str) -> None:
        self.script = cfg["peer_script"]
        self.name = name
        self.clone = Path(cfg["scratch"]) / "clones" / name
        _git("clone", "-q", "-b", PEER_BRANCH, cfg["remote"], str(self.clone))
        self.env = {**os.environ, **GIT_ENV}
        self.failed_attempts = 0
        self.attempts = 0
        self.runs = 0
        self.completion_retries = 0
        self.told_by_status = 0
        #: Failed attempts of the last call that returned no task.
        self.last_retries = 0

    def _run(self, args: list[str], deadline: float) -> tuple[int, str, str]:
        timeout = deadline - time.monotonic()
        if timeout <= 0:
            raise Cut
        proc = subprocess.Popen(
            args,
            cwd=self.clone,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise Cut from None
        return proc.returncode, out, err

    async def claim(self, deadline: float) -> Claimed | None:
        failed = 0
        while True:
            rc, out, err = self._run(["bash", self.script, self.name, "", PEER_BRANCH], deadline)
            self.runs += 1
            attempts = err.count("] Claim attempt ")
            self.attempts += attempts
            # An attempt fails on a lost push race or a task gone after the pull.
            lost = err.count("conflict detected") + err.count("disappeared (already claimed)")
            failed += lost
            self.failed_attempts += lost
            won = re.search(r"SUCCESS: Claimed (\S+) on branch", err)
            if won:
                tid = won.group(1)
                tried = re.findall(rf"Attempting to claim {re.escape(tid)} from (\S+) ", err)
                project = tried[-1] if tried else out.strip().partition("/")[0]
                if rc == 0:
                    self.told_by_status += 1
                return Claimed(f"{project}/{tid}", project, tid, failed, exit_status=rc)
            if "No ready tasks available" in err:
                self.last_retries = failed
                return None
            # Failed run (all its attempts lost, or the return-code bug): run it again.

    async def complete(self, claimed: Claimed, deadline: float) -> None:
        src = f".agents/claimed/{claimed.project}/{claimed.id}.toon"
        dst = f".agents/completed/{claimed.project}/{claimed.id}.toon"
        rng = random.Random(self.name)
        for attempt in range(1000):
            if time.monotonic() >= deadline:
                raise Cut
            c = self.clone
            _git("fetch", "-q", "origin", PEER_BRANCH, cwd=c, check=False)
            _git("reset", "-q", "--hard", f"origin/{PEER_BRANCH}", cwd=c)
            if not (c / src).exists():
                raise RuntimeError(f"{claimed.key}: claimed file {src} is not in the remote")
            _git("mv", src, dst, cwd=c)
            with open(c / dst, "a") as f:
                f.write(f"\ncompletion:\n status: completed\n completed_by: {self.name}\n")
            _git("add", dst, cwd=c)
            _git(
                "commit", "-q", "-m", f"[AGENT-COMPLETE] {self.name} completed {claimed.key}", cwd=c
            )
            if _git("push", "-q", "origin", PEER_BRANCH, cwd=c, check=False).returncode == 0:
                return
            self.completion_retries += 1
            await asyncio.sleep(rng.uniform(0, min(1.0, 0.05 * 2 ** min(attempt, 5))))
        raise RuntimeError(f"{claimed.key}: completion push never landed")

    def stats(self) -> dict[str, Any]:
        return {
            "script_runs": self.runs,
            "attempts": self.attempts,
            "failed_attempts": self.failed_attempts,
            "completion_retries": self.completion_retries,
            "told_by_status": self.told_by_status,
        }

    async def close(self) -> None:
        pass


class GitDriver:
    def __init__(self, cfg: dict[str, Any], name: str) -> None:
        from corral.tasks.gitboard import GitBoard

        cache = Path(cfg["scratch"]) / "caches" / name
        self.board = GitBoard(cfg["remote"], name, cache=cache)
        self.retries = 0

    async def claim(self, deadline: float) -> Claimed | None:
        res = await _maybe(self.board.claim())
        if res is None:
            return None
        task = res.task
        tid = getattr(task, "id", task)
        project = getattr(task, "project", "")
        retries = int(getattr(res, "retries", 0) or 0)
        self.retries += retries
        return Claimed(f"{project}/{tid}", project, tid, retries, handle=res)

    async def complete(self, claimed: Claimed, deadline: float) -> None:
        await _maybe(self.board.complete(claimed.id))

    def stats(self) -> dict[str, Any]:
        return {"retries": self.retries}

    async def close(self) -> None:
        close = getattr(self.board, "close", None)
        if close is not None:
            await _maybe(close())


class CorralDriver:
    def __init__(self, cfg: dict[str, Any], name: str) -> None:
        self.url = cfg["url"]
        self.name = name
        self.store: Any = None
        self.busy = 0
        self.last_retries = 0

    async def open(self) -> None:
        from corral.store import open_store

        self.store = await open_store(self.url, migrate=False)

    async def _busy_retry(self, call: Any, deadline: float) -> tuple[Any, int]:
        """``call()``, again after StoreBusy (the store's "nothing was changed, try
        again"), as a claimer would; (answer, how many times it was busy)."""
        from corral.errors import StoreBusy

        busy = 0
        while True:
            try:
                return await call(), busy
            except StoreBusy:
                busy += 1
                self.busy += 1
                if time.monotonic() >= deadline:
                    raise Cut from None
                await asyncio.sleep(random.uniform(0.0, 0.1))

    async def claim(self, deadline: float) -> Claimed | None:
        task, busy = await self._busy_retry(
            lambda: self.store.claim_task(claimer=self.name), deadline
        )
        self.last_retries = busy
        if task is None:
            return None
        return Claimed(f"{task.project}/{task.id}", task.project, task.id, busy, handle=task.token)

    async def complete(self, claimed: Claimed, deadline: float) -> None:
        from corral.tasks import TaskStatus

        await self._busy_retry(
            lambda: self.store.finish_task(
                claimed.project, claimed.id, claimed.handle, TaskStatus.DONE
            ),
            deadline,
        )

    def stats(self) -> dict[str, Any]:
        return {"store_busy": self.busy}

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()


class KeepAlive:
    """A minimal HTTP/1.1 client on one kept-alive connection (asyncio streams): what a
    long-lived agent tool holds. Lighter than httpx, so on a small machine the claimers
    take less CPU from the control plane they measure."""

    def __init__(self, url: str, secret: str) -> None:
        self.url = url
        self.head = (
            "Host: corral\r\nAuthorization: Bearer "
            + secret
            + "\r\nContent-Type: application/json\r\nAccept: application/json\r\n"
        )
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        if self.url.startswith("unix:"):
            self.reader, self.writer = await asyncio.open_unix_connection(self.url[5:])
        else:
            host, _, port = self.url[len("http://") :].rstrip("/").partition(":")
            self.reader, self.writer = await asyncio.open_connection(host, int(port or 80))

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, str]:
        payload = json.dumps(body).encode()
        request = (
            f"POST {path} HTTP/1.1\r\n{self.head}Content-Length: {len(payload)}\r\n\r\n"
        ).encode() + payload
        for attempt in (0, 1):
            if self.writer is None:
                await self._connect()
            assert self.reader is not None and self.writer is not None
            try:
                self.writer.write(request)
                head = await self.reader.readuntil(b"\r\n\r\n")
            except (ConnectionError, asyncio.IncompleteReadError):
                # The gateway closed the kept-alive connection: once more on a new one.
                await self.aclose()
                if attempt:
                    raise
                continue
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            length = 0
            close = False
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.lower() == "content-length":
                    length = int(value)
                elif name.lower() == "connection" and value.strip().lower() == "close":
                    close = True
            text = (await self.reader.readexactly(length)).decode()
            if close:
                await self.aclose()
            return status, text
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None


class GatewayDriver:
    """A real run of a control plane (``corral start``) claiming over the agent API.

    ``http``: one keep-alive HTTP client for the whole run, as a long-lived agent tool
    would hold (the run's own secret, the gateway the scheduler gave it). ``cmd``: the
    installed in-run commands ``task-claim`` / ``task-complete``, a process per call, so
    the latency includes the command's start, as a shell agent sees it."""

    def __init__(self, cfg: dict[str, Any], name: str, via: str) -> None:
        self.via = via
        self.name = name
        self.busy = 0
        self.last_retries = 0
        self.client: Any = None
        self.url = os.environ.get("GATEWAY_URL", "")
        self.secret = os.environ.get("CORRAL_RUN_SECRET", "")
        if not self.url or not self.secret:
            raise RuntimeError("GATEWAY_URL or CORRAL_RUN_SECRET is not set: not a corral run")
        if via == "cmd":
            found = shutil.which("task-claim")
            if found is None:
                raise RuntimeError("task-claim is not on the run's PATH")
            self.bin = Path(found).parent

    async def open(self) -> None:
        if self.via == "http":
            self.client = KeepAlive(self.url, self.secret)

    async def _post(self, path: str, body: dict[str, Any], deadline: float) -> tuple[int, Any]:
        """POST, again after 503 (a busy store: nothing was changed); (status, answer)."""
        while True:
            if self.via == "http":
                status, text = await self.client.post(path, body)
            else:
                status, text = await self._command(path, body)
            if status != 503:
                return status, (json.loads(text) if text.strip() else {})
            self.busy += 1
            self.last_retries += 1
            if time.monotonic() >= deadline:
                raise Cut
            await asyncio.sleep(random.uniform(0.0, 0.1))

    async def _command(self, path: str, body: dict[str, Any]) -> tuple[int, str]:
        """The in-run command for ``path``; its exit code mapped back to a status."""
        if path.endswith("/claim"):
            argv = [str(self.bin / "task-claim")]
        else:
            argv = [str(self.bin / "task-complete"), body["id"], "--project", body["project"]]
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await proc.communicate()
        status = {0: 200, 1: 409, 5: 503}.get(proc.returncode or 0, 500)
        if status == 500:
            raise RuntimeError(f"{argv[0]} exited {proc.returncode}: {(out + err).decode()[-300:]}")
        return status, out.decode()

    async def claim(self, deadline: float) -> Claimed | None:
        self.last_retries = 0
        status, got = await self._post("/agent/tasks/claim", {"labels": []}, deadline)
        if status == 409:
            return None
        if status != 200:
            raise RuntimeError(f"task-claim answered {status}: {got}")
        key = f"{got['project']}/{got['id']}"
        return Claimed(key, got["project"], got["id"], self.last_retries, handle=got["token"])

    async def complete(self, claimed: Claimed, deadline: float) -> None:
        body = {"id": claimed.id, "project": claimed.project}
        status, got = await self._post("/agent/tasks/complete", body, deadline)
        if status != 200:
            raise RuntimeError(f"task-complete {claimed.key} answered {status}: {got}")

    def stats(self) -> dict[str, Any]:
        return {"gateway_busy": self.busy}

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()


# --------------------------------------------------------------------------- a claimer process


async def _worker(cfg_path: str, index: int) -> None:
    cfg = json.loads(Path(cfg_path).read_text())
    if not cfg["driver"].startswith("corral-gateway"):
        await _claimer(cfg, f"claimer-{index:03d}", index)
        return
    # A run of the control plane: its name is its run's id; the bench counts the runs
    # that ended by their files in ``ended/``.
    name = f"run-{os.environ.get('CORRAL_RUN_ID', os.getpid())}"
    try:
        await _claimer(cfg, name, index)
    finally:
        (Path(cfg["scratch"]) / "ended" / name).write_text("end")


async def _open_driver(cfg: dict[str, Any], name: str) -> Any:
    kind = cfg["driver"]
    if kind in ("peer", "peer-fixed"):
        return PeerDriver(cfg, name)
    if kind == "git":
        return GitDriver(cfg, name)
    driver: GatewayDriver | CorralDriver
    if kind.startswith("corral-gateway"):
        driver = GatewayDriver(cfg, name, "cmd" if "-cmd-" in kind else "http")
    else:
        driver = CorralDriver(cfg, name)
    await driver.open()
    return driver


async def _claimer(cfg: dict[str, Any], name: str, index: int) -> None:
    kind = cfg["driver"]
    gateway = kind.startswith("corral-gateway")
    out = open(Path(cfg["scratch"]) / "out" / f"{name}.jsonl", "w")

    def emit(**rec: Any) -> None:
        out.write(json.dumps(rec) + "\n")

    driver: Any = None
    try:
        driver = await _open_driver(cfg, name)
    except Exception as exc:
        emit(k="error", at="setup", msg=f"{type(exc).__name__}: {exc}")
        out.close()
        await _barrier(cfg, name, gateway)
        return
    line = await _barrier(cfg, name, gateway)
    if len(line) != 3 or line[0] != "go":
        out.close()
        if driver is not None:
            await driver.close()
        return
    # The barrier: every claimer starts at the same monotonic instant (the clock is the
    # machine's, shared by all processes).
    start, deadline = float(line[1]), float(line[2])
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    rng = random.Random(f"{cfg['seed']}-{name if gateway else index}")
    counter = Path(cfg["scratch"]) / "completed.count"
    total = cfg["total"]
    emit(k="start", t=time.monotonic())
    idle = 0.05
    try:
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            try:
                got = await driver.claim(deadline)
            except Cut:
                emit(k="cut", during="claim", t0=t0, t1=time.monotonic())
                break
            t1 = time.monotonic()
            if got is None:
                emit(k="none", t0=t0, t1=t1, retries=getattr(driver, "last_retries", 0))
                if counter.exists() and counter.stat().st_size >= total:
                    break
                # Nothing eligible (the rest waits on tasks others hold): ask again after a
                # jittered wait that doubles from 50 ms to 0.8 s, as a patient agent would.
                await asyncio.sleep(rng.uniform(0.5, 1.0) * idle)
                idle = min(idle * 2, 0.8)
                continue
            idle = 0.05
            emit(
                k="claim",
                task=got.key,
                t0=t0,
                t1=t1,
                retries=got.retries,
                exit=got.exit_status,
            )
            await asyncio.sleep(rng.uniform(0, cfg["work_ms"]) / 1000.0)
            t2 = time.monotonic()
            try:
                await driver.complete(got, deadline)
            except Cut:
                emit(k="cut", during="complete", task=got.key, t0=t2, t1=time.monotonic())
                break
            emit(k="done", task=got.key, t0=t2, t1=time.monotonic())
            fd = os.open(counter, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            os.write(fd, b"x")
            os.close(fd)
    except Exception as exc:
        emit(k="error", at="loop", msg=f"{type(exc).__name__}: {exc}")
    emit(k="end", t=time.monotonic(), stats=driver.stats())
    with contextlib.suppress(Exception):
        await driver.close()
    out.close()


async def _barrier(cfg: dict[str, Any], name: str, gateway: bool) -> list[str]:
    """Say "ready" and wait for "go <start> <deadline>": on stdin and stdout for a
    claimer the bench started; for a run of the control plane (whose stdin and stdout
    are its own), a file ``ready/<name>`` and the bench's file ``go``."""
    if not gateway:
        print("ready", flush=True)
        return sys.stdin.readline().split()
    scratch = Path(cfg["scratch"])
    (scratch / "ready" / name).write_text("ready")
    go = scratch / "go"
    give_up = time.monotonic() + cfg["ready_timeout"]
    while time.monotonic() < give_up:
        if go.exists():
            return go.read_text().split()
        await asyncio.sleep(0.05)
    return []


# --------------------------------------------------------------------------- the parent


def driver_unavailable(driver: str) -> str | None:
    """Why ``driver`` cannot run in this checkout, or None."""
    if driver == "git":
        try:
            from corral.tasks import gitboard
        except ImportError as exc:
            return f"corral.tasks.gitboard is not in this checkout ({exc})"
        if not hasattr(gitboard, "GitBoard"):
            return "corral.tasks.gitboard has no GitBoard"
        return None
    if driver.startswith("corral-"):
        from corral.store import Store

        missing = [m for m in ("add_tasks", "claim_task", "finish_task") if not hasattr(Store, m)]
        if missing:
            return f"the store has no task board yet (Store lacks {', '.join(missing)})"
    return None


async def pg_room(dsn: str) -> tuple[int, int, int]:
    """(max_connections, superuser_reserved_connections, connections now) of the server."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT current_setting('max_connections')::int,"
            " current_setting('superuser_reserved_connections')::int,"
            " (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')"
        )
        row = await cur.fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


async def _setup_store(url: str, tasks: Sequence[GenTask]) -> None:
    from corral.store import open_store
    from corral.tasks import TaskSpec

    specs = [
        TaskSpec(
            id=t.id,
            project=t.project,
            title=f"Generated task {t.id} of {t.project}",
            priority=t.priority,
            requires=t.requires,
        )
        for t in tasks
    ]
    async with await open_store(url) as store:
        await store.add_tasks(specs)


async def _setup_git(remote: Path, tasks: Sequence[GenTask], cache: Path) -> None:
    from corral.tasks import TaskSpec
    from corral.tasks.gitboard import GitBoard

    _git("init", "-q", "--bare", str(remote))
    specs = [
        TaskSpec(
            id=t.id,
            project=t.project,
            title=f"Generated task {t.id} of {t.project}",
            priority=t.priority,
            requires=t.requires,
        )
        for t in tasks
    ]
    board = GitBoard(str(remote), "bench-setup", cache=cache)
    await _maybe(board.init(specs))


async def _spawn(cfg_path: Path, n: int, log: Path) -> list[asyncio.subprocess.Process]:
    procs = []
    with open(log, "ab") as errf:
        for i in range(n):
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--worker",
                    str(cfg_path),
                    "--index",
                    str(i),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=errf,
                    start_new_session=True,
                )
            )
    return procs


def _kill(procs: Sequence[asyncio.subprocess.Process]) -> None:
    for p in procs:
        if p.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_gateway_project(root: Path, url: str, n: int, cfg_path: Path, nice: int = 0) -> None:
    """A corral project whose agent ``claimer`` (scale ``n``, the project's cap too) runs
    this file's claimer loop as its command, against the board in ``url``; under
    ``nice -n <nice>`` when ``nice`` is not 0."""
    agent = root / "agents" / "claimer"
    agent.mkdir(parents=True)
    (root / "config.toml").write_text(
        f"scale = {n}\nworkQueueSize = {2 * n + 10}\n\n[state]\nurl = {json.dumps(url)}\n"
    )
    (agent / "SKILL.md").write_text("---\nname: claimer\n---\n# claimer\nbench/tasks.py\n")
    niced = f"nice -n {nice} " if nice else ""
    command = (
        f"exec {niced}{shlex.quote(sys.executable)} {shlex.quote(str(Path(__file__).resolve()))} "
        f"--worker {shlex.quote(str(cfg_path))} --index -1"
    )
    (agent / "config.toml").write_text(
        f"scale = {n}\n\n[harness]\ncommand = {json.dumps(command)}\n"
    )


async def _control_plane(
    root: Path, log: Path, token: str
) -> tuple[asyncio.subprocess.Process, str]:
    """``corral start`` in ``root`` on a free loopback port; (process, gateway URL) once
    its /health answers."""
    import httpx

    port = _free_port()
    corral = Path(sys.executable).parent / "corral"
    with open(log, "ab") as errf:
        proc = await asyncio.create_subprocess_exec(
            str(corral),
            "start",
            "--headless",
            "--port",
            str(port),
            cwd=root,
            env={**os.environ, "CORRAL_OPERATOR_TOKEN": token},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=errf,
            stderr=errf,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    give_up = time.monotonic() + 60.0
    async with httpx.AsyncClient(base_url=url, timeout=2.0) as client:
        while True:
            if proc.returncode is not None:
                raise RuntimeError(f"corral start exited {proc.returncode}; see {log}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get("/health")).status_code == 200:
                    return proc, url
            if time.monotonic() > give_up:
                _kill([proc])
                await proc.wait()
                raise RuntimeError(f"corral start did not answer /health in 60 s; see {log}")
            await asyncio.sleep(0.1)


async def _stop_control_plane(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout=60.0)
        except TimeoutError:
            _kill([proc])
            await proc.wait()


async def _count(directory: Path, n: int, timeout: float, proc: Any) -> int:
    """Wait until ``directory`` holds ``n`` files (or ``timeout`` s, or the control plane
    exits); how many it holds."""
    give_up = time.monotonic() + timeout
    while True:
        have = sum(1 for _ in directory.iterdir())
        if have >= n or time.monotonic() > give_up or proc.returncode is not None:
            return have
        await asyncio.sleep(0.1)


async def measure_gateway(
    driver: str, n: int, tasks: Sequence[GenTask], args: argparse.Namespace, scratch: Path
) -> dict[str, Any]:
    """``n`` runs of a real control plane (``corral start`` over the board's store), each
    a claimer with its own run token; the bench queues them over the control API."""
    import httpx

    for sub in ("out", "ready", "ended"):
        (scratch / sub).mkdir(parents=True)
    cfg: dict[str, Any] = {
        "driver": driver,
        "scratch": str(scratch),
        "seed": args.seed,
        "work_ms": args.work_ms,
        "total": len(tasks),
        "ready_timeout": args.ready_timeout,
    }
    cfg_path = scratch / "config.json"
    cfg_path.write_text(json.dumps(cfg))
    token = f"bench-{os.getpid()}-{random.getrandbits(64):x}"
    async with contextlib.AsyncExitStack() as stack:
        t_setup = time.monotonic()
        if driver.endswith("-sqlite"):
            url = f"sqlite:///{scratch}/board.db"
        else:
            url = await stack.enter_async_context(fresh_database(args.dsn, prefix="tasks"))
        await _setup_store(url, tasks)
        root = scratch / "project"
        write_gateway_project(root, url, n, cfg_path, args.claimer_nice)
        proc, gw = await _control_plane(root, scratch / "control-plane.log", token)
        try:
            auth = {"Authorization": f"Bearer {token}"}
            async with httpx.AsyncClient(base_url=gw, headers=auth, timeout=30.0) as client:
                for _ in range(n):
                    resp = await client.post("/control/runs", json={"agent": "claimer"})
                    if resp.status_code != 202:
                        raise RuntimeError(f"queueing a run: {resp.status_code} {resp.text}")
            ready = await _count(scratch / "ready", n, args.ready_timeout, proc)
            if ready < n:
                raise RuntimeError(
                    f"{driver} x{n}: {ready} of {n} runs got ready; see {scratch}/project"
                )
            setup_s = time.monotonic() - t_setup
            go = time.monotonic() + 0.5 + n * 0.002
            deadline = go + args.budget
            tmp = scratch / "go.tmp"
            tmp.write_text(f"go {go} {deadline}\n")
            tmp.rename(scratch / "go")
            wait = go - time.monotonic() + args.budget + 30.0
            ended = await _count(scratch / "ended", n, wait, proc)
            stragglers = n - ended
        finally:
            await _stop_control_plane(proc)
    fig = merge(scratch / "out", tasks, go, deadline)
    fig["setup_s"] = round(setup_s, 1)
    fig["stragglers_killed"] = stragglers
    return fig


async def measure(
    driver: str, n: int, tasks: Sequence[GenTask], args: argparse.Namespace, scratch: Path
) -> dict[str, Any]:
    """One driver at one size: set up a fresh board, run ``n`` claimers, merge figures."""
    if driver.startswith("corral-gateway"):
        return await measure_gateway(driver, n, tasks, args, scratch)
    scratch.mkdir(parents=True)
    (scratch / "out").mkdir()
    cfg: dict[str, Any] = {
        "driver": driver,
        "scratch": str(scratch),
        "seed": args.seed,
        "work_ms": args.work_ms,
        "total": len(tasks),
    }
    async with contextlib.AsyncExitStack() as stack:
        t_setup = time.monotonic()
        if driver in ("peer", "peer-fixed"):
            cfg["peer_script"] = str(
                peer_script(Path(args.peer_repo), scratch / "script", driver == "peer-fixed")
            )
            cfg["remote"] = str(make_seed_remote(tasks, scratch))
        elif driver == "git":
            remote = scratch / "board.git"
            await _setup_git(remote, tasks, scratch / "caches" / "setup")
            cfg["remote"] = str(remote)
        elif driver == "corral-sqlite":
            cfg["url"] = f"sqlite:///{scratch}/board.db"
            await _setup_store(cfg["url"], tasks)
        else:
            url = await stack.enter_async_context(fresh_database(args.dsn, prefix="tasks"))
            cfg["url"] = url
            await _setup_store(url, tasks)
        cfg_path = scratch / "config.json"
        cfg_path.write_text(json.dumps(cfg))
        procs = await _spawn(cfg_path, n, scratch / "workers.stderr")
        try:
            for p in procs:
                assert p.stdout is not None
                line = await asyncio.wait_for(p.stdout.readline(), timeout=args.ready_timeout)
                if line.strip() != b"ready":
                    raise RuntimeError(
                        f"{driver} x{n}: a claimer did not start; see {scratch}/workers.stderr"
                    )
            setup_s = time.monotonic() - t_setup
            go = time.monotonic() + 0.5 + n * 0.002
            deadline = go + args.budget
            for p in procs:
                assert p.stdin is not None
                p.stdin.write(f"go {go} {deadline}\n".encode())
                await p.stdin.drain()
                p.stdin.close()
            grace = 30.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(p.wait() for p in procs)), timeout=args.budget + grace
                )
            stragglers = sum(1 for p in procs if p.returncode is None)
        finally:
            _kill(procs)
            for p in procs:
                with contextlib.suppress(Exception):
                    await p.wait()
        final = final_state_peer(cfg["remote"], scratch) if driver.startswith("peer") else {}
    fig = merge(scratch / "out", tasks, go, deadline)
    fig["setup_s"] = round(setup_s, 1)
    fig["stragglers_killed"] = stragglers
    fig.update(final)
    if driver.startswith("peer") and final:
        # The repository is the truth for the seed: two claimers hold one task when its
        # file carries two claim sections.
        fig["conflicts"] = max(fig["conflicts"], final["repo_double_claims"])
    return fig


def final_state_peer(remote: str, scratch: Path) -> dict[str, Any]:
    """What the seed's repository says at the end: files per directory, and task files
    that carry more than one ``claimed_by`` (two agents claimed the same task)."""
    check = scratch / "final"
    _git("clone", "-q", "-b", PEER_BRANCH, remote, str(check))
    agents = check / ".agents"
    counts = {
        d: sum(1 for _ in (agents / d).glob("*/TASK-*.toon")) for d in ("claimed", "completed")
    }
    ready = sum(1 for _ in (agents / "projects").glob("*/tasks/TASK-*.toon"))
    doubles = 0
    for path in list((agents / "claimed").glob("*/*.toon")) + list(
        (agents / "completed").glob("*/*.toon")
    ):
        if path.read_text().count("claimed_by:") > 1:
            doubles += 1
    commits = int(_git("rev-list", "--count", "HEAD", cwd=check).stdout.strip())
    return {
        "repo_open": ready,
        "repo_claimed": counts["claimed"],
        "repo_completed": counts["completed"],
        "repo_double_claims": doubles,
        "repo_commits": commits,
    }


@dataclass
class Tally:
    """The claimers' records of one row, merged."""

    deadline: float
    last_done: float
    holders: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    in_budget: set[str] = field(default_factory=set)
    done: set[str] = field(default_factory=set)
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    stats: Counter[str] = field(default_factory=Counter)
    exits: Counter[str] = field(default_factory=Counter)

    def add(self, who: str, rec: dict[str, Any]) -> None:
        k = rec["k"]
        if k == "claim":
            # Safety counts whenever it happened; figures only within the budget (a call
            # that cannot be cut, like the git backend's, may answer late).
            self.holders[rec["task"]].add(who)
            if rec["t1"] > self.deadline:
                self.counts["late"] += 1
                return
            self.counts["claims"] += 1
            self.counts["retries"] += rec["retries"]
            self.in_budget.add(rec["task"])
            self.latencies.append(rec["t1"] - rec["t0"])
            if rec.get("exit") is not None:
                self.exits[str(rec["exit"])] += 1
        elif k == "done" and rec["t1"] <= self.deadline:
            self.done.add(rec["task"])
            self.last_done = max(self.last_done, rec["t1"])
        elif k == "none":
            self.counts["nones"] += 1
            self.counts["retries"] += rec.get("retries", 0)
        elif k == "cut":
            self.counts[f"cut_{rec['during']}"] += 1
        elif k == "error":
            self.errors.append(f"{who} ({rec['at']}): {rec['msg']}")
        elif k == "end":
            self.stats.update(rec.get("stats", {}))


def merge(out_dir: Path, tasks: Sequence[GenTask], go: float, deadline: float) -> dict[str, Any]:
    t = Tally(deadline=deadline, last_done=go)
    for path in sorted(out_dir.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            t.add(path.stem, json.loads(line))
    claims = t.counts["claims"]
    drained = len(t.done) == len(tasks)
    window = (t.last_done if drained else deadline) - go
    ms = [x * 1000.0 for x in t.latencies]
    fig: dict[str, Any] = {
        "claims": claims,
        "completed": len(t.done),
        "conflicts": sum(len(h) - 1 for h in t.holders.values() if len(h) > 1),
        "retries_per_claim": round(t.counts["retries"] / claims, 3) if claims else math.nan,
        "claim_p50_ms": round(percentile(ms, 50), 1),
        "claim_p99_ms": round(percentile(ms, 99), 1),
        "claim_max_ms": round(max(ms), 1) if ms else math.nan,
        "tasks_per_s": round(len(t.done) / window, 2) if window > 0 else math.nan,
        "never_claimed": len(tasks) - len(t.in_budget),
        "late_claims": t.counts["late"],
        "drained": drained,
        "window_s": round(window, 2),
        "no_task_answers": t.counts["nones"],
        "cut_claims": t.counts["cut_claim"],
        "cut_completions": t.counts["cut_complete"],
        "errors": len(t.errors),
        "error_samples": sorted(set(t.errors))[:5],
    }
    if t.exits:
        fig["claim_exit_status"] = dict(t.exits)
    fig.update({f"driver_{k}": v for k, v in t.stats.items()})
    return fig


def _row(driver: str, n: int, fig: dict[str, Any]) -> list[Any]:
    if "skipped" in fig:
        return [driver, n, "-", "-", "-", "-", "-", "-", "-", fig["skipped"][:60]]
    note = []
    if fig["errors"]:
        note.append(f"{fig['errors']} errors")
    if fig.get("driver_told_by_status") == 0 and fig["claims"]:
        note.append("exit 1 on every claim")
    if fig["drained"]:
        note.append(f"drained in {fig['window_s']} s")
    return [
        driver,
        n,
        fig["claims"],
        fig["conflicts"],
        fig["retries_per_claim"],
        fig["claim_p50_ms"],
        fig["claim_p99_ms"],
        fig["tasks_per_s"],
        fig["never_claimed"],
        ", ".join(note),
    ]


async def _main(args: argparse.Namespace) -> int:
    if args.worker:
        await _worker(args.worker, args.index)
        return 0
    drivers = [d.strip() for d in args.drivers.split(",") if d.strip()]
    for d in drivers:
        if d not in DRIVERS:
            raise SystemExit(f"--drivers: unknown driver {d!r}; choose from {', '.join(DRIVERS)}")
    sizes = [int(s) for s in args.sizes.split(",")]
    tasks = make_tasks(args.seed, args.projects, args.per_project)
    params = {k: v for k, v in vars(args).items() if k not in ("worker", "index")}
    params.update(tasks=len(tasks), edges=sum(len(t.requires) for t in tasks))
    result = Result("tasks", params=params)
    unavailable = {d: why for d in drivers if (why := driver_unavailable(d))}
    for d, why in unavailable.items():
        print(f"driver {d} is unavailable: {why}", flush=True)
        result.notes.append(f"driver {d} unavailable: {why}")
    scratch_root = Path(tempfile.mkdtemp(prefix="corral-bench-tasks-"))
    try:
        if any(d.startswith("peer") for d in drivers) and not args.no_solo:
            solo = peer_solo_claim(Path(args.peer_repo), tasks, scratch_root / "solo")
            result.figures["peer_solo_claim_s"] = round(solo, 2)
            print(f"the seed's script, one claimer alone: {solo:.2f} s per claim", flush=True)
        rows, failed = await _run_all(
            args, drivers, sizes, tasks, unavailable, result, scratch_root
        )
    finally:
        if args.keep:
            print(f"scratch kept in {scratch_root}")
        else:
            shutil.rmtree(scratch_root, ignore_errors=True)
    for d in drivers:
        for n in sizes:
            reps = [r for r in result.runs if r["driver"] == d and r["claimers"] == n]
            result.figures[f"{d}_{n}"] = _median_figs(reps)
    print_table(
        f"task board: {len(tasks)} tasks ({args.projects} projects), budget {args.budget:.0f} s "
        f"per row, work 0-{args.work_ms:.0f} ms, {args.reps} rep(s); latency = call to answer",
        [
            "driver",
            "claimers",
            "claims",
            "conflicts",
            "retries/claim",
            "p50 ms",
            "p99 ms",
            "tasks/s",
            "never claimed",
            "note",
        ],
        rows,
    )
    path = Path(args.json) if args.json else None
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result.to_json(), indent=2, default=str) + "\n")
        print(path)
    else:
        print(result.write())
    if failed:
        print(
            "FAILED: corral's board or git backend gave one task to two claimers, or a "
            "claimer failed (see error_samples in the JSON)",
            file=sys.stderr,
        )
        return 1
    return 0


async def _run_all(
    args: argparse.Namespace,
    drivers: Sequence[str],
    sizes: Sequence[int],
    tasks: Sequence[GenTask],
    unavailable: dict[str, str],
    result: Result,
    scratch_root: Path,
) -> tuple[list[list[Any]], bool]:
    """Every driver at every size, ``args.reps`` times, interleaved (one driver after the
    other at each size, so drift on the machine hits all drivers alike)."""
    rows: list[list[Any]] = []
    failed = False
    cmd_sizes = {int(s) for s in args.cmd_sizes.split(",") if s.strip()}
    for rep in range(args.reps):
        for n in sizes:
            for d in drivers:
                if d in unavailable:
                    fig: dict[str, Any] = {"skipped": f"unavailable: {unavailable[d]}"}
                elif "-cmd-" in d and n not in cmd_sizes:
                    fig = {"skipped": f"the command's sample runs at --cmd-sizes {args.cmd_sizes}"}
                elif d == "corral-postgres" and (why := await _pg_too_small(args.dsn, n)):
                    fig = {"skipped": why}
                    print(f"corral-postgres x{n} not run: {why}", flush=True)
                else:
                    print(f"[rep {rep + 1}] {d} x{n} ...", flush=True)
                    scratch = scratch_root / f"{rep}-{d}-{n}"
                    fig = await measure(d, n, tasks, args, scratch)
                    if not args.keep:
                        # rm is several times faster than shutil.rmtree on 200 clones.
                        subprocess.run(["rm", "-rf", str(scratch)], check=False)
                    print(f"    {json.dumps(fig)}", flush=True)
                    if not d.startswith("peer") and (fig["conflicts"] or fig["errors"]):
                        failed = True
                result.runs.append({"rep": rep, "driver": d, "claimers": n, **fig})
                rows.append(_row(d, n, fig))
    return rows, failed


def _median_figs(reps: list[dict[str, Any]]) -> dict[str, Any]:
    from _common import median_of_runs

    ran = [{k: v for k, v in r.items() if k not in ("rep", "driver", "claimers")} for r in reps]
    if not ran or "skipped" in ran[0]:
        return ran[0] if ran else {}
    out = median_of_runs(ran)
    # Conflicts and errors are summed over repetitions, not medianed.
    out["conflicts"] = sum(r["conflicts"] for r in ran)
    out["errors"] = sum(r["errors"] for r in ran)
    return out


async def _pg_too_small(dsn: str, n: int) -> str | None:
    try:
        most, reserved, now = await pg_room(dsn)
    except Exception as exc:
        return f"PostgreSQL at {dsn} unreachable: {exc}"
    # Each claimer process holds one connection (the store's pool keeps one open); the
    # setup and the benchmark's own connection need two more.
    free = most - reserved - now - 2
    if n > free:
        return (
            f"{n} claimer processes need {n} connections; the server allows "
            f"max_connections={most} ({reserved} reserved, {now} in use), {free} free"
        )
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--drivers", default=",".join(DRIVERS))
    parser.add_argument("--sizes", default="5,50,200", help="claimer processes, comma-separated")
    parser.add_argument("--projects", type=int, default=10)
    parser.add_argument("--per-project", type=int, default=100)
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--budget", type=float, default=90.0, help="seconds per driver and size")
    parser.add_argument("--work-ms", type=float, default=20.0, help="work per task: 0..this ms")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--ready-timeout", type=float, default=300.0)
    parser.add_argument("--peer-repo", default=str(DEFAULT_PEER_REPO))
    parser.add_argument("--dsn", default=DEFAULT_PG_DSN)
    parser.add_argument(
        "--claimer-nice",
        type=int,
        default=0,
        help="corral-gateway drivers: run the claimers (the runs) under nice -n N, so "
        "the control plane is not starved of CPU by its own agents on one small machine "
        "(agents run on other hosts in a real fleet); 0: as they are",
    )
    parser.add_argument(
        "--cmd-sizes",
        default="5",
        help="the sizes at which the corral-gateway-cmd drivers run (a process per call: "
        "a smaller sample); comma-separated",
    )
    parser.add_argument("--json", default=None, help="write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument(
        "--no-solo",
        action="store_true",
        help="skip timing one run of the seed's script alone on the board",
    )
    parser.add_argument(
        "--quick", action="store_true", help="5 claimers, 2 x 50 tasks, 20 s per row"
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        # Only what was not given on the command line.
        for name, value in (("sizes", "5"), ("projects", 2), ("per_project", 50), ("budget", 20.0)):
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    sys.exit(asyncio.run(_main(args)))


if __name__ == "__main__":
    main()
