"""corral upgrades itself: side by side, swapped atomically, rolled back by itself.

Shared by the runners (``corral.runner.agent``) and the control plane processes
(``corral.engine.plane_upgrade``). Layout under a work directory (a runner's; a control
plane's ``.corral`` of its project)::

    versions/<version>/venv     one virtual environment per installed version
    versions/current            a symlink to the version in use (swapped by renaming a
                                new symlink over it: atomic)
    versions/trial.json         an upgrade under trial: from, to, the old interpreter,
                                the deadline by which the new process must be healthy
                                (``trial-<tag>.json`` for a process with a tag: several
                                control plane processes share one versions directory)
    versions/<version>/healthy  written once the version passed its smoke check here
    versions/failure.json       the last failed upgrade, reported on the next heartbeat

Installing: a new venv (``--without-pip``) whose ``corral-base.pth`` names the
site-packages of the running install (its dependencies), and ``pip install --no-deps
--ignore-installed`` of the corral wheel into it: offline, and seconds rather than
minutes. The wheel comes from the control plane (``GET /fleet/v1/upgrade/wheel``, the
runner's credential, its sha256 checked) or from an index URL the operator named.

The swap (as a runner does it): the runner drains (no new work, its running runs
finish), points ``current`` at the new version, starts the guard (``python -m
corral.engine.versions guard``, the OLD interpreter, a process of its own) and
re-executes itself (same pid) with the new interpreter. The new process runs the smoke
check (a real run of the probe agent through
``RunExecutor`` over a store of its own) before asking for work: when it passes, it
writes ``healthy`` and the guard exits; when it fails, the process swaps back and
re-executes the old interpreter. When the new process does not come up healthy within
the deadline (it crashed at import, hung, exited), the guard swaps back, stops it and
starts the old version in its place. Three versions are kept (the current one, the
one before, one more); older ones are removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from corral import __version__
from corral.pep440 import is_version

__all__ = [
    "KEEP",
    "START_TIMEOUT",
    "UpgradeError",
    "Versions",
    "check_wheel",
    "guard",
    "smoke_check",
    "start_guard",
]

log = logging.getLogger("corral.upgrade")

#: Versions kept on a runner (the current one included).
KEEP = 3
#: The new process must pass its smoke check within this long after the swap.
START_TIMEOUT = float(os.environ.get("CORRAL_UPGRADE_START_TIMEOUT", "60"))
#: The probe's run must end within this long.
SMOKE_TIMEOUT = 30.0
_BASE_PTH = "corral-base.pth"


class UpgradeError(Exception):
    """An install, start or smoke check failed; the message says which and why."""


def _site_packages(prefix: Path) -> Path:
    lib = prefix / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    return lib / "site-packages"


def base_paths() -> list[str]:
    """The directories whose packages a new version's venv reuses: those the running
    version reuses itself (its ``corral-base.pth``), else its own site-packages."""
    own = Path(sysconfig.get_paths()["purelib"])
    pth = own / _BASE_PTH
    if pth.is_file():
        return [line for line in pth.read_text().splitlines() if line.strip()]
    return [str(own)]


class Versions:
    """The versions directory of one runner (or of the control plane processes of one
    project on one host: each with its ``tag``, its own trial and failure files)."""

    def __init__(self, work_dir: Path, tag: str = "") -> None:
        self.root = work_dir / "versions"
        self.current = self.root / "current"
        suffix = f"-{tag}" if tag else ""
        self.trial_file = self.root / f"trial{suffix}.json"
        self.failure_file = self.root / f"failure{suffix}.json"

    def dir(self, version: str) -> Path:
        """The directory of ``version``: UpgradeError unless it is a version (PEP 440), so
        that no order names a path outside ``versions/``."""
        if not is_version(version):
            raise UpgradeError(
                f"{version!r} is not a corral version (PEP 440, e.g. 1.2.0 or 1.2.0rc1): refused"
            )
        return self.root / version

    def venv(self, version: str) -> Path:
        return self.dir(version) / "venv"

    def python(self, version: str) -> Path:
        return self.venv(version) / "bin" / "python"

    def installed(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if not p.is_symlink() and p.is_dir() and (p / "venv").exists()
        )

    def current_version(self) -> str | None:
        with contextlib.suppress(OSError):
            return Path(os.readlink(self.current)).name
        return None

    def adopt_running(self) -> None:
        """Record the running install as a version (its venv a symlink to the running
        prefix), so that swapping back to it is like swapping to any other."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        venv = self.venv(__version__)
        if not venv.exists():
            venv.parent.mkdir(mode=0o700, exist_ok=True)
            os.symlink(sys.prefix, venv)
        if self.current_version() is None:
            self.point_at(__version__)

    def point_at(self, version: str) -> None:
        """Swap ``current`` to ``version``: a new symlink renamed over the old one."""
        fresh = self.root / f".current-{os.getpid()}-{time.monotonic_ns()}"
        os.symlink(version, fresh)
        os.replace(fresh, self.current)

    # -- install ----------------------------------------------------------------------

    def install(self, version: str, wheel: Path | None = None, index: str | None = None) -> Path:
        """Install corral ``version`` side by side (from ``wheel``, or from ``index``):
        its interpreter. UpgradeError when it cannot be installed."""
        target = self.dir(version)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if (target / "healthy").exists() and self.python(version).exists():
            return self.python(version)
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=f".install-{version}-"))
        try:
            venv = staging / "venv"
            base = Path(getattr(sys, "_base_executable", sys.executable))
            _run([str(base), "-m", "venv", "--without-pip", str(venv)], "create the venv")
            site = _site_packages(venv)
            site.mkdir(parents=True, exist_ok=True)
            (site / _BASE_PTH).write_text("\n".join(base_paths()) + "\n")
            argv = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
            argv += ["--no-deps", "--ignore-installed", "--disable-pip-version-check"]
            if wheel is not None:
                argv += ["--no-index", str(wheel)]
            elif index is not None:
                argv += ["--index-url", index, f"corral=={version}"]
            else:
                raise UpgradeError("neither a wheel nor an index to install from")
            _run(argv, f"install corral {version}")
            got = _run(
                [str(venv / "bin" / "python"), "-c", "import corral; print(corral.__version__)"],
                "import the installed corral",
            ).strip()
            if got != version:
                raise UpgradeError(
                    f"the installed corral says it is version {got!r}, not {version!r}: "
                    "the wheel or index serves another version"
                )
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(mode=0o700)
            os.replace(venv, target / "venv")
            # a venv's scripts name its path: the interpreter link is what we use
            return self.python(version)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def prune(self, keep: int = KEEP) -> list[str]:
        """Remove the oldest versions past ``keep`` (never the current one): removed."""
        current = self.current_version()
        found = [v for v in self.installed() if v != current]
        found.sort(key=lambda v: (self.root / v).stat().st_mtime)
        removed = []
        while len(found) + (1 if current else 0) > keep:
            victim = found.pop(0)
            path = self.root / victim
            venv = path / "venv"
            if venv.is_symlink():
                venv.unlink()
            shutil.rmtree(path, ignore_errors=True)
            removed.append(victim)
        return removed

    # -- trial ------------------------------------------------------------------------

    def begin_trial(self, old: str, new: str, argv: Sequence[str], timeout: float) -> None:
        record = {
            "from": old,
            "to": new,
            "oldPython": sys.executable,
            "argv": list(argv),
            "deadline": time.time() + timeout,
            "pid": os.getpid(),
        }
        _write_json(self.trial_file, record)

    def trial(self) -> dict[str, Any] | None:
        with contextlib.suppress(OSError, ValueError):
            found = json.loads(self.trial_file.read_text())
            return found if isinstance(found, dict) else None
        return None

    def end_trial(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.trial_file.unlink()

    def mark_healthy(self, version: str) -> None:
        self.dir(version).mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.dir(version) / "healthy").write_text(f"{time.time()}\n")

    def record_failure(self, version: str, stage: str, error: str) -> None:
        _write_json(
            self.failure_file,
            {"version": version, "stage": stage, "error": error[:2000], "at": time.time()},
        )

    def take_failure(self) -> dict[str, Any] | None:
        with contextlib.suppress(OSError, ValueError):
            found = json.loads(self.failure_file.read_text())
            return found if isinstance(found, dict) else None
        return None

    def clear_failure(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.failure_file.unlink()

    def swap_back(self, trial: dict[str, Any], stage: str, error: str) -> None:
        """Point ``current`` at the version the trial came from; record the failure."""
        self.point_at(str(trial["from"]))
        self.record_failure(str(trial["to"]), stage, error)
        shutil.rmtree(self.dir(str(trial["to"])) / "healthy", ignore_errors=True)
        self.end_trial()


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fresh = path.with_name(f".{path.name}.{os.getpid()}")
    fresh.write_text(json.dumps(value))
    os.replace(fresh, path)


def _run(argv: list[str], what: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PIP_NO_INPUT"] = "1"
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UpgradeError(f"could not {what}: {exc}") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip()[-800:]
        raise UpgradeError(f"could not {what} (exit {done.returncode}): {tail}")
    return done.stdout


def check_wheel(data: bytes, sha256: str) -> None:
    got = hashlib.sha256(data).hexdigest()
    if got != sha256.removeprefix("sha256:"):
        raise UpgradeError(
            f"the wheel's sha256 is {got}, not the {sha256} the control plane announced: "
            "it was changed or cut short on the way; not installed"
        )


# -- the smoke check -------------------------------------------------------------------


async def smoke_check(work_dir: Path) -> str:
    """A real run of the probe agent (``corral.runner.probe``) through ``RunExecutor``,
    over a SQLite store of its own: its output. UpgradeError when the run does not
    succeed within ``SMOKE_TIMEOUT``."""
    from corral.project import load_project
    from corral.scheduler.executor import RunExecutor
    from corral.scheduler.service import agent_specs
    from corral.store import NewItem, RunState, TriggerKind, open_store

    root = Path(tempfile.mkdtemp(dir=work_dir, prefix=".smoke-"))
    try:
        folder = root / "agents" / "probe"
        folder.mkdir(parents=True)
        (root / "config.toml").write_text("")
        (folder / "SKILL.md").write_text("---\nname: probe\n---\n# probe\n")
        command = json.dumps([sys.executable, "-m", "corral.runner.probe"])
        (folder / "config.toml").write_text(
            f"timeout = {int(SMOKE_TIMEOUT)}\n[harness]\ncommand = {command}\n"
        )
        project = load_project(root)
        output = bytearray()

        async def sink(chunk: bytes) -> None:
            output.extend(chunk)

        async with await open_store(f"sqlite:///{root / 'probe.db'}") as store:
            await store.sync_project(
                agent_specs(project), scale_cap=None, max_attempts=1, max_reruns=0
            )
            queued = await store.enqueue(NewItem(agent="probe", trigger=TriggerKind.MANUAL))
            claims = await store.claim(
                "smoke-check", lease_seconds=SMOKE_TIMEOUT * 2, limit=1, item_id=queued.item.id
            )
            if not claims:
                raise UpgradeError("the smoke check's run could not be claimed")
            executor = RunExecutor(project, store, grace=2.0)
            try:
                result = await asyncio.wait_for(executor.execute(claims[0], sink), SMOKE_TIMEOUT)
            except TimeoutError:
                raise UpgradeError(
                    f"the smoke check's probe run did not end within {SMOKE_TIMEOUT:g} s"
                ) from None
            text = output.decode(errors="replace")
            if result.run.state is not RunState.SUCCEEDED or "corral probe ok" not in text:
                raise UpgradeError(
                    f"the smoke check's probe run ended {result.run.state.value} "
                    f"(exit {result.run.exit_code}): {text.strip()[-400:]}"
                )
            return text
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- the guard -------------------------------------------------------------------------


def guard(work_dir: Path, pid: int, poll: float = 0.2, tag: str = "") -> int:
    """Watch a trial: returns once the new version is healthy (0) or the trial ended;
    when the deadline passes first, or the process dies, swap back, stop the process
    and start the old version in its place (this process becomes it: same argv, old
    interpreter; its pid written to ``runner.pid``, or ``versions/<tag>.pid``, and the
    failure filed under that pid's tag for a control plane process)."""
    versions = Versions(work_dir, tag)
    while True:
        trial = versions.trial()
        if trial is None:
            return 0  # the new process ended the trial (healthy, or swapped back itself)
        healthy = (versions.root / str(trial["to"]) / "healthy").exists()
        if healthy:
            return 0
        alive = _alive(pid)
        if time.time() > float(trial["deadline"]) or not alive:
            break
        time.sleep(poll)
    why = (
        "the new process exited before it was healthy"
        if not _alive(pid)
        else f"the new process was not healthy within {START_TIMEOUT:g} s"
    )
    versions.swap_back(trial, "start", f"corral {trial['to']} did not start: {why}")
    if tag:
        # a control plane process's files carry its pid, and the old version comes back
        # as this process (another pid): the failure it must report is filed under it
        os.replace(versions.failure_file, Versions(work_dir, str(os.getpid())).failure_file)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            if not _alive(pid):
                break
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    argv = [str(trial["oldPython"]), *list(trial["argv"])]
    pidfile = versions.root / f"{tag}.pid" if tag else work_dir / "runner.pid"
    pidfile.write_text(f"{os.getpid()}\n")
    os.execv(argv[0], argv)
    return 1  # not reached


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return True


def start_guard(work_dir: Path, pid: int, tag: str = "") -> None:
    """The guard, a process of its own with the running (old) interpreter; its output
    goes where the process's goes."""
    argv = [sys.executable, "-m", "corral.engine.versions", "guard", str(work_dir), str(pid)]
    subprocess.Popen(
        [*argv, *([tag] if tag else [])],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )


if __name__ == "__main__":  # pragma: no cover - the guard's entry point
    if len(sys.argv) in (4, 5) and sys.argv[1] == "guard":
        tag = sys.argv[4] if len(sys.argv) == 5 else ""
        sys.exit(guard(Path(sys.argv[2]), int(sys.argv[3]), tag=tag))
    sys.exit("usage: python -m corral.engine.versions guard WORK_DIR PID [TAG]")


async def judge_trial(
    versions: Versions,
    trial: dict[str, Any],
    check: Callable[[], Awaitable[object]],
    logger: logging.Logger = log,
) -> list[str] | None:
    """The smoke check ``check`` of the version this process runs on ``trial``. Passed:
    the version is marked healthy, the trial ends and old versions are pruned (None).
    Failed (any exception): ``current`` is swapped back and the command line of the old
    version is returned, for the caller to re-execute. Said in the caller's ``logger``
    (its own log is where an operator looks)."""
    logger.info("corral %s: the smoke check after the upgrade from %s", __version__, trial["from"])
    try:
        await check()
    except Exception as exc:  # any failure of the new version rolls back
        error = f"the smoke check of corral {__version__} failed: {exc}"
        logger.error("%s; swapping back to %s", error, trial["from"])
        versions.swap_back(trial, "smoke", error)
        return [str(trial["oldPython"]), *list(trial["argv"])]
    versions.mark_healthy(__version__)
    versions.end_trial()
    removed = await asyncio.to_thread(versions.prune)
    logger.info("corral %s is healthy (removed old versions: %s)", __version__, removed or "none")
    return None
