"""Warm start: from dispatch to the agent's first command, warm workspace against cold.

A real git repository of ``--files`` files (default 3,000) is made and cloned bare; a
real scheduler (``corral start``'s, on an embedded SQLite store, host runtime) runs one
agent whose command writes the time (bash's ``$EPOCHREALTIME``) as its first act.
Dispatch is the moment the scheduler claimed the item (``Scheduler.on_claim``). Before
each run a new commit is pushed to the bare repository (outside the timing), so a
refresh has something to fetch. Three ways, one after the other, ``--n`` runs each:

* ``cold``: ``hooks.warm`` clones BARE into the run's directory, no warm workspaces: each run
  clones at its start (what every run did before warm instances);
* ``warm``: ``[scale] warm = 1``, the same ``hooks.warm``, and ``hooks.refresh =
  ["git fetch -q origin && git reset -q --hard origin/main"]``: the run takes the
  prepared workspace and refreshes it;
* ``warm-norefresh``: the same without ``hooks.refresh``: what taking the workspace
  itself costs.

``--runner``: the same three ways on a runner host: a real control plane (``corral
start``, a process, on SQLite) and a runner (``corral.runner.agent.Runner``, in this
process, host runtime); the agent has ``runsOn = []``. Dispatch is the moment the
runner was given the run (the answer of its request for work). A runner learns an agent
with its first run (that one is cold; the two warm-up runs cover it).

Medians (and p90) in milliseconds; JSON to bench/results/ (or ``--out``).

    .venv/bin/python bench/warmstart.py              # 3,000 files, 15 runs a way
    .venv/bin/python bench/warmstart.py --n 30 --files 5000
    .venv/bin/python bench/warmstart.py --runner --n 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from _common import Result, machine_info, print_table, summarize_ms

from corral.bundles import pack
from corral.project import load_project
from corral.runner.agent import Runner, RunnerSettings
from corral.scheduler.service import Scheduler, SchedulerOptions
from corral.store import NewItem, Store, TriggerKind, open_store

FIRST = 'exec bash -c \'echo "$EPOCHREALTIME" > "$CORRAL_AGENT_DIR/stamps/$CORRAL_RUN_ID"\''
#: A clone into the run's directory, which is not empty (its .corral holds the run's files).
CLONE = (
    "git init -q -b main . && git remote add origin {bare} && git fetch -q origin "
    "&& git reset -q --hard origin/main"
)
REFRESH = "git fetch -q origin && git reset -q --hard origin/main"


def git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def make_repository(base: Path, files: int) -> tuple[Path, Path]:
    """A work tree with ``files`` files in 100-file folders, and its bare clone."""
    work = base / "src"
    work.mkdir()
    for i in range(files):
        folder = work / f"pkg{i // 100:03d}"
        folder.mkdir(exist_ok=True)
        (folder / f"mod{i % 100:02d}.py").write_text(f"# module {i}\nVALUE = {i}\n" * 20)
    git("init", "-q", "-b", "main", cwd=work)
    git("add", "-A", cwd=work)
    git("-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "init", cwd=work)
    bare = base / "repo.git"
    git("clone", "-q", "--bare", str(work), str(bare), cwd=base)
    git("remote", "add", "origin", str(bare), cwd=work)
    return work, bare


def push_commit(work: Path, n: int) -> None:
    (work / "CHANGES").write_text(f"change {n}\n")
    git("add", "-A", cwd=work)
    git("-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", f"c{n}", cwd=work)
    git("push", "-q", "origin", "main", cwd=work)


def write_agent(root: Path, bare: Path, way: str, *, runner: bool = False) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.toml").write_text("[fleet]\nheartbeatSeconds = 1\n" if runner else "")
    agent = root / "agents" / "dev"
    (agent / "stamps").mkdir(parents=True, exist_ok=True)
    (agent / "SKILL.md").write_text("---\nname: dev\n---\n# dev\n")
    # on a runner the agent's directory is the bundle's copy: stamps go to this one
    first = FIRST.replace("$CORRAL_AGENT_DIR", str(agent)) if runner else FIRST
    lines = [
        *(["runsOn = []"] if runner else []),
        "[harness]",
        f"command = {json.dumps(first)}",
        "[hooks]",
        f"warm = {json.dumps([CLONE.format(bare=bare)])}",
    ]
    if way == "warm":
        lines.append(f"refresh = {json.dumps([REFRESH])}")
    if way != "cold":
        lines += ["[scale]", "min = 1", "max = 1", "warm = 1"]
    (agent / "config.toml").write_text("\n".join(lines) + "\n")


async def measure(base: Path, work: Path, bare: Path, way: str, n: int) -> list[float]:
    root = base / way
    write_agent(root, bare, way)
    project = load_project(root)
    store: Store = await open_store(f"sqlite:///{root / 'corral.db'}")
    options = SchedulerOptions(poll_interval=0.05, supervise_every=0.05, kill_grace=1)
    scheduler = Scheduler(project, store, options)
    scheduler.watcher = None
    claimed: dict[str, float] = {}
    scheduler.on_claim = lambda claim: claimed.setdefault(claim.run.id, time.time())
    stop = asyncio.Event()
    stamps = root / "agents" / "dev" / "stamps"
    samples: list[float] = []

    async def go() -> None:
        await scheduler.start()
        await scheduler.run(stop, stop)

    task = asyncio.create_task(go())
    while scheduler.info is None:
        await asyncio.sleep(0.02)
    try:
        for i in range(n + 2):  # two first runs to warm up, not counted
            if way != "cold":
                while scheduler.warm.counts().get("dev", 0) < 1:
                    await asyncio.sleep(0.05)
            push_commit(work, i)
            before = set(claimed)
            await scheduler.submit(NewItem("dev", TriggerKind.MANUAL, prompt="go"))
            while True:
                new = set(claimed) - before
                if new and all((stamps / r).exists() for r in new):
                    runs = await store.list_runs(agent="dev", limit=1000)
                    if all(r.state.is_terminal for r in runs):
                        break
                await asyncio.sleep(0.02)
            (run_id,) = new
            text = (stamps / run_id).read_text().strip()
            if i >= 2:
                samples.append(float(text) - claimed[run_id])
        await check(store, scheduler, way)
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
        await store.close()
    return samples


async def measure_runner(base: Path, work: Path, bare: Path, way: str, n: int) -> list[float]:
    """``measure`` on a runner: a ``corral start`` process and an in-process runner."""
    root = base / f"runner-{way}"
    write_agent(root, bare, way, runner=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env |= {"CORRAL_STATE_URL": f"sqlite:///{root / 'corral.db'}", "HOME": str(base)}
    log = root / "start.log"
    with log.open("ab") as out:
        plane = subprocess.Popen(
            [sys.executable, "-m", "corral", "start", "--headless", "--port", "0"],
            cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    stop = asyncio.Event()
    task: asyncio.Task[None] | None = None
    try:
        deadline = time.monotonic() + 90
        while not (found := re.search(r"gateway on (http://[0-9.]+:\d+)", log.read_text())):
            if time.monotonic() > deadline or plane.poll() is not None:
                raise SystemExit(f"the control plane did not start:\n{log.read_text()[-2000:]}")
            await asyncio.sleep(0.1)
        url = found.group(1).replace("0.0.0.0", "127.0.0.1")
        operator = (root / ".corral" / "operator-token").read_text().strip()
        auth = {"Authorization": f"Bearer {operator}"}
        async with httpx.AsyncClient(base_url=url, headers=auth, timeout=60) as http:
            packed = pack(root)
            done = await http.post(
                "/control/bundles",
                content=packed.data,
                headers={"Content-Type": "application/x-tar"},
            )
            done.raise_for_status()
            token = (await http.post("/control/fleet/tokens", json={"labels": []})).json()
            joined = await http.post(
                "/fleet/v1/join",
                json={"token": token["token"], "name": "bench", "hostname": socket.gethostname()},
            )
            joined.raise_for_status()
            answer = joined.json()
            settings = RunnerSettings(
                urls=[url],
                runner_id=answer["runnerId"],
                credential=answer["credential"],
                name="bench",
                work_dir=root / "runner",
                heartbeat_seconds=1.0,
            )
            runner = Runner(settings)
            given: dict[str, float] = {}
            start = runner._start

            def timed(claim: Any, secret: str | None = None) -> None:
                given.setdefault(str(claim["run"]["id"]), time.time())
                start(claim, secret)

            runner._start = timed  # type: ignore[method-assign]
            task = asyncio.create_task(runner.run(stop))
            stamps = root / "agents" / "dev" / "stamps"
            samples: list[float] = []
            for i in range(n + 2):  # two first runs to warm up (the first: cold), not counted
                if way != "cold" and i > 0:
                    while runner.warm_counts().get("dev", 0) < 1:
                        await asyncio.sleep(0.05)
                push_commit(work, 1000 + i)
                before = set(given)
                (await http.post("/control/runs", json={"agent": "dev"})).raise_for_status()
                while True:
                    new = set(given) - before
                    if new and all((stamps / r).exists() for r in new) and not runner.live:
                        break
                    await asyncio.sleep(0.02)
                (run_id,) = new
                if i >= 2:
                    samples.append(float((stamps / run_id).read_text().strip()) - given[run_id])
            await check_runner(root, url, auth, way)
    finally:
        stop.set()
        if task is not None:
            await asyncio.wait_for(task, 60)
        plane.terminate()
        plane.wait(60)
    return samples


async def check_runner(root: Path, url: str, auth: dict[str, str], way: str) -> None:
    """As ``check``, on the control plane's records (the first run was cold: learnt)."""
    async with httpx.AsyncClient(base_url=url, headers=auth, timeout=60) as http:
        runs = (await http.get("/control/runs", params={"limit": 1000})).json()["runs"]
    bad = [(r["id"], r["state"]) for r in runs if r["state"] != "succeeded"]
    if bad:
        raise SystemExit(f"runner {way}: runs did not succeed: {bad}")
    logs = [(root / ".corral" / "logs" / f"{r['id']}.log").read_text() for r in runs]
    if any("exited with code" in text for text in logs):
        raise SystemExit(f"runner {way}: a hook failed")
    warm = sum("warm start" in text for text in logs)
    if warm != (0 if way == "cold" else len(runs) - 1):
        raise SystemExit(f"runner {way}: {warm} of {len(runs)} runs started warm")


async def check(store: Store, scheduler: Scheduler, way: str) -> None:
    """Every run succeeded, its hooks too, and started warm unless it was meant cold."""
    runs = await store.list_runs(agent="dev", limit=1000)
    bad = [(r.id, r.state.value, r.error) for r in runs if r.state.value != "succeeded"]
    if bad:
        raise SystemExit(f"{way}: runs did not succeed: {bad}")
    logs = [scheduler.executor.log_path(r.id).read_text() for r in runs]
    if any("exited with code" in text for text in logs):
        raise SystemExit(f"{way}: a hook failed; see {scheduler.executor.log_path(runs[0].id)}")
    warm = sum("warm start" in text for text in logs)
    if warm != (0 if way == "cold" else len(runs)):
        raise SystemExit(f"{way}: {warm} of {len(runs)} runs started warm")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=15, help="runs per way (15)")
    parser.add_argument("--files", type=int, default=3000, help="files in the repository")
    parser.add_argument("--out", type=Path, help="the JSON file (default bench/results/)")
    parser.add_argument(
        "--runner", action="store_true", help="runs on a runner host (a control plane process)"
    )
    args = parser.parse_args()
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="corral-warmstart-", dir="/var/tmp") as tmp:
        base = Path(tmp)
        work, bare = make_repository(base, args.files)
        size = sum(f.stat().st_size for f in bare.rglob("*") if f.is_file())
        figures["repository"] = {"files": args.files, "bare_bytes": size}
        for way in ("cold", "warm", "warm-norefresh"):
            way_of = measure_runner if args.runner else measure
            samples = await way_of(base, work, bare, way, args.n)
            figures[way] = summarize_ms(samples)
    rows = [
        [way, figures[way]["p50_ms"], figures[way]["p90_ms"], figures[way]["max_ms"]]
        for way in ("cold", "warm", "warm-norefresh")
    ]
    load = os.getloadavg()[0]
    params = {"n": args.n, "files": args.files, "runner": args.runner}
    result = Result("warmstart-runner" if args.runner else "warmstart", params=params)
    result.figures.update(figures)
    result.figures["loadavg_1m"] = round(load, 2)
    result.figures["machine"] = machine_info()
    print_table(
        f"dispatch -> the agent's first command{' on a runner' if args.runner else ''}, "
        f"{args.files} files, {args.n} runs a way "
        f"(load {load:.1f}); target warm p50 <= 50 ms",
        ["way", "p50 ms", "p90 ms", "max ms"],
        rows,
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result.to_json(), indent=2, default=str) + "\n")
        print(f"written to {args.out}")
    else:
        print(f"written to {result.write()}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
