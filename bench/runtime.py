"""Runtime benchmark: launch overhead of the host and the sandbox runtime.

Figures (see docs/sandbox.md, Start-up cost):

* launch->exec: from just before ``runtime.launch(spec)`` to the moment the
  agent's program runs, read from the program itself: a tiny C program (built
  here with ``cc`` if there is one) prints ``clock_gettime(CLOCK_MONOTONIC)``,
  the same clock as the benchmark's ``time.monotonic_ns()``. Without a C
  compiler, ``date +%s%N`` and ``time.time_ns()`` (CLOCK_REALTIME) stand in.
* launch->exit: until ``pump()`` has returned (the program exited, its output
  was read, the process reaped): what a run of ``/bin/true`` costs end to end.

Configurations: ``host``; ``host`` with the run's own /tmp and /app/static (corral as
root: a mount namespace per process, as every host run of a project gets); ``sandbox``
with the isolation the executor gives a run (the state dir and ~/.corral hidden, the
work dir bound writable, shared/, the agent dir and the bin dir read-only); the same
with ``network = "none"``; and with memory and CPU limits (the sandbox is held while it
is put in its cgroup, or given RLIMIT_AS). ``--only options`` measures each bwrap option on
its own: ``bwrap --ro-bind / /`` with one option added, launched alternately
with ``bwrap --ro-bind / /`` alone; its cost is the median paired difference.

N launches one after another per configuration, repeated (default 3,
interleaved), medians of the repetitions' p50 and p99. Targets: p50 <= 10 ms
host, <= 40 ms sandbox (launch->exec).

``.venv/bin/python bench/runtime.py --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    Result,
    median_of_runs,
    print_table,
    summarize_ms,
    wait_for_quiet,
)

from corral.runtime import Bind, HostRuntime, Isolation, LaunchSpec, Process, Runtime
from corral.runtime._limits import limit_support
from corral.runtime._private import make_static
from corral.runtime.host import start_process
from corral.runtime.sandbox import SandboxRuntime, host_root, sandbox_support

TARGET_P50_MS = {"host": 10.0, "sandbox": 40.0}
_REFERENCES = ("no sandbox (the program alone)", "bwrap --ro-bind / / alone")
PATH = "/usr/local/bin:/usr/bin:/bin"
STAMP_C = r"""
#include <stdio.h>
#include <time.h>
int main(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    printf("%lld\n", (long long)t.tv_sec * 1000000000LL + t.tv_nsec);
    return 0;
}
"""


@dataclass(frozen=True)
class Stamp:
    """A program that prints the time it started, and the parent's matching clock."""

    argv: list[str]
    clock: Callable[[], int]
    kind: str


def build_stamp(directory: Path) -> Stamp:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is not None:
        src, exe = directory / "stamp.c", directory / "stamp"
        src.write_text(STAMP_C)
        for extra in (["-static"], []):  # static: no dynamic loader in the figure
            done = subprocess.run([cc, "-O2", *extra, "-o", str(exe), str(src)], check=False)
            if done.returncode == 0:
                kind = "C, static" if extra else "C, dynamic"
                return Stamp([str(exe)], time.monotonic_ns, f"{kind}, CLOCK_MONOTONIC")
    return Stamp(["date", "+%s%N"], time.time_ns, "date +%s%N, CLOCK_REALTIME")


@dataclass
class Layout:
    """A project laid out as the executor does, outside /tmp."""

    root: Path

    def make(self, stamp_dir: Path) -> None:
        for d in ("project/.corral/runs/r", "project/shared", "project/agents/dev", "home/.corral"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        self.stamp_dir = stamp_dir

    def isolation(self, **kw: Any) -> Isolation:
        p = self.root / "project"
        return Isolation(
            binds=(
                Bind(p / ".corral/runs/r", Path("/tmp/work"), writable=True),
                Bind(p / "shared", p / "shared"),
                Bind(p / "agents/dev", p / "agents/dev"),
                Bind(self.stamp_dir, self.stamp_dir),
            ),
            hide=(p / ".corral", self.root / "home/.corral"),
            **kw,
        )


class Collect:
    def __init__(self) -> None:
        self.data = b""

    async def __call__(self, chunk: bytes) -> None:
        self.data += chunk


async def once(
    start: Callable[[], Awaitable[Process]], clock: Callable[[], int]
) -> tuple[float, float]:
    """(launch->exec, launch->exit) in seconds for one launch."""
    out = Collect()
    t0 = clock()
    process = await start()
    code = await process.pump(out)
    t1 = clock()
    if code != 0:
        raise RuntimeError(f"the stamp program failed ({code}): {out.data[-500:]!r}")
    stamp = int(out.data.split()[-1])
    return (stamp - t0) / 1e9, (t1 - t0) / 1e9


async def measure(
    start: Callable[[], Awaitable[Process]], clock: Callable[[], int], n: int
) -> dict[str, Any]:
    for _ in range(max(3, n // 20)):  # warm the page cache and the code paths
        await once(start, clock)
    to_exec, to_exit = [], []
    for _ in range(n):
        a, b = await once(start, clock)
        to_exec.append(a)
        to_exit.append(b)
    ex, ez = summarize_ms(to_exec), summarize_ms(to_exit)
    return {
        "exec_p50_ms": ex["p50_ms"],
        "exec_p99_ms": ex["p99_ms"],
        "exit_p50_ms": ez["p50_ms"],
        "exit_p99_ms": ez["p99_ms"],
    }


def runtime_configs(stamp: Stamp, layout: Layout) -> dict[str, Callable[[], Awaitable[Process]]]:
    env = {"PATH": PATH}
    host = HostRuntime()
    sandbox: Runtime = SandboxRuntime()
    host_spec = LaunchSpec(stamp.argv, layout.root / "host-work", env)
    specs = {
        "sandbox": layout.isolation(),
        "sandbox, network none": layout.isolation(network=False),
        "sandbox, memory + cpus limits": layout.isolation(memory_bytes=1 << 30, cpus=1.0),
    }
    configs: dict[str, Callable[[], Awaitable[Process]]] = {"host": lambda: host.launch(host_spec)}
    if host.mounts.unshare is not None:  # corral as root: the run's own /tmp and /app/static
        p = layout.root / "project"
        (p / "agents/dev/SKILL.md").write_text("# dev\n")
        tmp = layout.root / "host-work/.corral/tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        private = LaunchSpec(
            stamp.argv, layout.root / "host-work", env, tmp=tmp,
            static=make_static(p / "agents/dev", p / "shared"),
        )  # fmt: skip
        configs["host, private /tmp + /app/static"] = lambda: host.launch(private)
    for label, iso in specs.items():
        spec = LaunchSpec(stamp.argv, Path("/tmp/work"), env, isolation=iso)
        configs[label] = lambda spec=spec: sandbox.launch(spec)
    return configs


def option_configs(stamp: Stamp, layout: Layout) -> dict[str, Callable[[], Awaitable[Process]]]:
    """bwrap with only ``--ro-bind / /``, then with one more option each."""
    support = sandbox_support()
    base = [support.bwrap, "--ro-bind", "/", "/"]
    p = layout.root / "project"
    hide = [str(p / ".corral"), str(layout.root / "home/.corral")]
    binds = [
        "--bind", str(p / ".corral/runs/r"), "/tmp/work",
        "--ro-bind", str(p / "shared"), str(p / "shared"),
        "--ro-bind", str(p / "agents/dev"), str(p / "agents/dev"),
    ]  # fmt: skip
    env_wrap = [support.env, "--ignore-signal=TERM"]
    inner = ["--", support.env, "--default-signal=TERM", "-u", "PWD", "--"]
    options: dict[str, list[str]] = {
        "--dev /dev": ["--dev", "/dev"],
        "--proc /proc": ["--proc", "/proc"],
        "--tmpfs /tmp": ["--tmpfs", "/tmp"],
        "--tmpfs x2 hidden + --remount-ro x2": [
            *(a for h in hide for a in ("--tmpfs", h)),
            *(a for h in hide for a in ("--remount-ro", h)),
        ],
        "--tmpfs /tmp + 3 binds": ["--tmpfs", "/tmp", *binds],
        "--unshare-pid": ["--unshare-pid"],
        "--unshare-ipc": ["--unshare-ipc"],
        "--unshare-uts --hostname": ["--unshare-uts", "--hostname", "corral"],
        "--unshare-cgroup-try": ["--unshare-cgroup-try"],
        "--unshare-net": ["--unshare-net"],
        "--die-with-parent": ["--die-with-parent"],
        "--cap-drop ALL": ["--cap-drop", "ALL"],
        "--chdir": ["--chdir", "/"],
    }
    argvs: dict[str, list[str]] = {
        _REFERENCES[0]: stamp.argv,
        _REFERENCES[1]: [*base, *stamp.argv],
        "bwrap, host / entry by entry + --remount-ro /": [
            support.bwrap, *host_root(), "--remount-ro", "/", *stamp.argv
        ],
    }  # fmt: skip
    for label, extra in options.items():
        argvs[f"+ {label}"] = [*base, *extra, *stamp.argv]
    argvs["+ env wrappers (TERM handling)"] = [*env_wrap, *base, *inner, *stamp.argv]
    spec = LaunchSpec(stamp.argv, Path("/tmp/work"), {"PATH": PATH}, None, layout.isolation())
    argvs["the runtime's whole command line"] = SandboxRuntime(support).argv(spec)
    env = {"PATH": PATH}

    def starter(argv: Sequence[str]) -> Callable[[], Awaitable[Process]]:
        async def start() -> Process:
            proc = await start_process(argv, cwd=Path("/"), env=env, stdin=None)
            return Process(proc)

        return start

    return {label: starter(argv) for label, argv in argvs.items()}


async def measure_paired(
    base: Callable[[], Awaitable[Process]],
    start: Callable[[], Awaitable[Process]],
    clock: Callable[[], int],
    n: int,
) -> dict[str, Any]:
    """``start`` and ``base`` launched alternately; the option's cost is the median of
    the paired differences, which drift and background load mostly cancel out of."""
    for _ in range(max(3, n // 20)):
        await once(base, clock)
        await once(start, clock)
    ours, theirs, deltas = [], [], []
    for _ in range(n):
        b = (await once(base, clock))[0]
        a = (await once(start, clock))[0]
        ours.append(a)
        theirs.append(b)
        deltas.append(a - b)
    mine, ref = summarize_ms(ours), summarize_ms(theirs)
    return {
        "exec_p50_ms": mine["p50_ms"],
        "exec_p99_ms": mine["p99_ms"],
        "base_p50_ms": ref["p50_ms"],
        "delta_p50_ms": summarize_ms(deltas)["p50_ms"],
    }


async def run_part(
    name: str,
    configs: dict[str, Callable[[], Awaitable[Process]]],
    stamp: Stamp,
    args: argparse.Namespace,
    result: Result,
) -> None:
    """Each configuration N times per repetition; paired with the base for ``options``."""
    kept: dict[str, list[dict[str, Any]]] = {label: [] for label in configs}
    base = configs.get(_REFERENCES[1]) if name == "options" else None
    for rep in range(1, args.runs + 1):
        busy = wait_for_quiet(args.quiet_threshold, args.quiet_timeout)
        for label, start in configs.items():
            if base is None:
                figures = await measure(start, stamp.clock, args.n)
            elif label == _REFERENCES[1]:
                continue
            else:
                figures = await measure_paired(base, start, stamp.clock, args.n)
            figures["background_cpu_percent"] = busy
            kept[label].append(figures)
            result.runs.append({"part": name, "config": label, "rep": rep, **figures})
            print(f"  {name} rep {rep}: {label}: exec p50 {figures['exec_p50_ms']} ms")
    for label, runs in kept.items():
        if runs:
            result.figures.setdefault(name, {})[label] = median_of_runs(runs)


async def run_dispatch(stamp: Stamp, root: Path, args: argparse.Namespace, result: Result) -> None:
    """Dispatch -> exec through the real executor: claim in hand, ``execute`` plans the
    run (its secret in the store, the prompt files, the environment), then launches the
    stamp program as the agent, on each runtime."""
    from corral.agentcmd import install
    from corral.project import load_project
    from corral.scheduler.agentlink import AgentLink
    from corral.scheduler.executor import RunExecutor
    from corral.scheduler.service import agent_specs
    from corral.store import NewItem, TriggerKind, open_store

    project_dir = root / "dispatch"
    (project_dir / "shared").mkdir(parents=True, exist_ok=True)
    program = Path(stamp.argv[0])
    if program.is_absolute():  # a sandboxed run sees the project's shared/, not the bench's
        shutil.copy2(program, project_dir / "shared" / program.name)
        stamp = Stamp([str(project_dir / "shared" / program.name)], stamp.clock, stamp.kind)
    argv = json.dumps(stamp.argv)
    agents = {"host": "", "sandbox": '[runtime]\ntype = "sandbox"\n'}
    (project_dir / "config.toml").write_text("")
    for name, runtime in agents.items():
        folder = project_dir / "agents" / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "SKILL.md").write_text(f"---\nname: {name}\n---\nWork.\n")
        (folder / "config.toml").write_text(f"scale = 4\n[harness]\ncommand = {argv}\n{runtime}")
    project = load_project(project_dir)
    bin_dir = install(project_dir / ".corral" / "bin")
    link = AgentLink("http://127.0.0.1:9", bin_dir=bin_dir)
    async with await open_store(f"sqlite:///{project_dir / '.corral' / 'state.db'}") as store:
        await store.sync_project(agent_specs(project), scale_cap=None, max_attempts=1, max_reruns=0)
        executor = RunExecutor(project, store, link=link)
        kept: dict[str, list[dict[str, Any]]] = {name: [] for name in agents}
        for rep in range(1, args.runs + 1):
            busy = wait_for_quiet(args.quiet_threshold, args.quiet_timeout)
            for name in agents:
                samples = []
                for i in range(args.n + max(3, args.n // 20)):
                    queued = await store.enqueue(NewItem(agent=name, trigger=TriggerKind.MANUAL))
                    (claim,) = await store.claim(
                        "bench", lease_seconds=600, limit=1, item_id=queued.item.id
                    )
                    out = Collect()
                    t0 = stamp.clock()
                    done = await executor.execute(claim, out)
                    if done.run.state.value != "succeeded":
                        raise RuntimeError(f"{name}: {done.run.error}: {out.data[-300:]!r}")
                    if i >= max(3, args.n // 20):  # after the warm-up
                        samples.append((int(out.data.split()[-1]) - t0) / 1e9)
                figures = {**summarize_ms(samples), "background_cpu_percent": busy}
                kept[name].append(figures)
                result.runs.append({"part": "dispatch", "config": name, "rep": rep, **figures})
                print(f"  dispatch rep {rep}: {name}: exec p50 {figures['p50_ms']} ms")
        for name, runs in kept.items():
            result.figures.setdefault("dispatch", {})[name] = median_of_runs(runs)


def report(result: Result, args: argparse.Namespace) -> None:
    runtimes = result.figures.get("runtimes", {})
    if runtimes:
        rows = []
        for label, f in runtimes.items():
            target = TARGET_P50_MS["host" if label.startswith("host") else "sandbox"]
            ok = "yes" if f["exec_p50_ms"] <= target else "NO"
            rows.append(
                (label, f["exec_p50_ms"], f["exec_p99_ms"], f["exit_p50_ms"],
                 f["exit_p99_ms"], target, ok)
            )  # fmt: skip
        host = runtimes.get("host", {}).get("exec_p50_ms")
        sandbox = runtimes.get("sandbox", {}).get("exec_p50_ms")
        if host is not None and sandbox is not None:
            result.figures["sandbox_overhead_p50_ms"] = round(sandbox - host, 3)
        print_table(
            f"launch overhead, N={args.n}, median of {args.runs} (ms)",
            ["config", "exec p50", "exec p99", "exit p50", "exit p99", "target p50", "met"],
            rows,
        )
    dispatch = result.figures.get("dispatch", {})
    if dispatch:
        rows = []
        for label, f in dispatch.items():
            target = TARGET_P50_MS[label]
            ok = "yes" if f["p50_ms"] <= target else "NO"
            rows.append((label, f["p50_ms"], f["p99_ms"], target, ok))
        print_table(
            f"dispatch -> agent exec through the executor, N={args.n}, median of {args.runs} (ms)",
            ["runtime", "p50", "p99", "target p50", "met"],
            rows,
        )
    options = result.figures.get("options", {})
    if options:
        rows = [
            (label, f["exec_p50_ms"], f["exec_p99_ms"], f["base_p50_ms"], f["delta_p50_ms"])
            for label, f in options.items()
        ]
        print_table(
            f"bwrap options, launch->exec, each paired with `{_REFERENCES[1]}`, "
            f"N={args.n}, median of {args.runs} (ms)",
            ["argv", "p50", "p99", "base p50", "cost (paired p50)"],
            rows,
        )


async def _main(args: argparse.Namespace) -> int:
    parts = set(args.only.split(","))
    known = {"runtimes", "dispatch", "options"}
    if parts - known:
        raise SystemExit(f"--only: unknown part(s) {sorted(parts - known)}")
    tmp = Path(tempfile.mkdtemp(prefix="corral-bench-runtime-", dir="/var/tmp"))
    try:
        stamp_dir = tmp / "bin"
        stamp_dir.mkdir()
        stamp = build_stamp(stamp_dir)
        layout = Layout(tmp / "root")
        layout.make(stamp_dir)
        limits = limit_support()
        result = Result(
            name="runtime",
            params={
                "n": args.n,
                "runs": args.runs,
                "parts": sorted(parts),
                "stamp": stamp.kind,
                "uid": os.getuid(),
                "bwrap": sandbox_support().bwrap,
                "memory_limit": limits.memory_mechanism,
                "cpu_limit": limits.cpu_mechanism or "not enforced",
            },
        )
        print(f"stamp program: {stamp.kind}; limits: {result.params['memory_limit']}, "
              f"cpus {result.params['cpu_limit']}")  # fmt: skip
        if "runtimes" in parts:
            await run_part("runtimes", runtime_configs(stamp, layout), stamp, args, result)
        if "dispatch" in parts:
            await run_dispatch(stamp, tmp / "root", args, result)
        if "options" in parts:
            await run_part("options", option_configs(stamp, layout), stamp, args, result)
        report(result, args)
        path = result.write()
        print(f"\nwrote {path}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--n", type=int, default=200, help="launches per configuration and repetition")
    p.add_argument("--runs", type=int, default=3, help="repetitions (medians reported)")
    p.add_argument(
        "--only",
        default="runtimes,dispatch,options",
        help="comma-separated: runtimes, dispatch, options",
    )
    p.add_argument("--quick", action="store_true", help="one repetition of 50 launches")
    p.add_argument("--quiet-threshold", type=float, default=15.0)
    p.add_argument("--quiet-timeout", type=float, default=60.0)
    ns = p.parse_args(argv)
    if ns.quick:
        ns.runs, ns.n, ns.quiet_timeout = 1, 50, 5.0
    return ns


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(asyncio.run(_main(_parse())))
