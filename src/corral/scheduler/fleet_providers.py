"""Where the fleet autoscaler's runners come from: a provider starts one runner (given
its name, the control plane's URL and a fresh single-use activation token) and stops it.

``local`` starts `corral runner join` then `corral runner start` on this host, each
runner with a state directory of its own under ``.corral/fleet-runners/<name>``; its
handle is the runner process's pid. ``command`` runs the project's own scripts (any
cloud, any VM tool) with a timeout; the last line a start script prints is its handle
(a VM id, say), given back to the stop script.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

__all__ = ["CommandProvider", "LocalProvider", "Provider", "ProviderError", "StartSpec"]

#: The most of a failed script's output kept in its error.
_TAIL = 600
#: The most of a script's output read back.
_READ_LIMIT = 1 << 20


class ProviderError(Exception):
    """A runner could not be started or stopped (the message says why)."""


@dataclass(frozen=True)
class StartSpec:
    name: str
    url: str
    token: str
    labels: tuple[str, ...]
    slots: int


class Provider(Protocol):
    name: str

    async def start(self, spec: StartSpec) -> str:
        """Start a runner that joins with ``spec.token``; its handle."""
        ...

    async def stop(self, name: str, handle: str | None, runner_id: str | None) -> None:
        """Stop the runner (its runs have ended, or it never joined)."""
        ...

    def alive(self, name: str, handle: str | None) -> bool | None:
        """Whether the runner's process lives (None: this provider cannot tell)."""
        ...


#: The scheduler's variables a runner or a provider script inherits: the basics a
#: process needs, nothing that may carry the control plane's secrets (its store URL,
#: PG* passwords, API keys, cloud credentials).
_ENV_KEEP = frozenset(
    {"PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TERM", "TMPDIR", "USER", "LOGNAME", "SHELL"}
    | {"VIRTUAL_ENV", "SSL_CERT_FILE", "SSL_CERT_DIR"}
)
_ENV_KEEP_PREFIXES = ("LC_", "PYTHON", "XDG_")


def _runner_env(home: Path | None = None) -> dict[str, str]:
    """The part of this process's environment a runner or a provider script inherits:
    an allow-list (``PATH``, ``HOME``, locale, ``TMPDIR``, ``PYTHON*``, ...), so neither
    corral's own variables (the control plane's store URL, tokens) nor any other secret
    of the scheduler's (``PG*``, ``*_API_KEY``, ``AWS_*``, ...) reaches them."""
    env = {
        k: v for k, v in os.environ.items() if k in _ENV_KEEP or k.startswith(_ENV_KEEP_PREFIXES)
    }
    if home is not None:
        env["CORRAL_HOME"] = str(home)
    return env


def _tail(data: bytes) -> str:
    text = data.decode("utf-8", "replace").strip()
    return text[-_TAIL:]


async def _run(
    argv: list[str], *, env: dict[str, str], cwd: Path, timeout: float, what: str
) -> str:
    """Run ``argv`` to its end within ``timeout`` (killed past it, with its process
    group); its standard output. A non-zero exit or the timeout raise ProviderError.

    Its output goes to unnamed files, not pipes: a script that starts a runner in the
    background without redirecting it is done when the script exits, not when that
    runner closes the output it inherited. Cancelled (the scheduler stopping), the
    script and its process group are killed and reaped before the cancellation goes
    on: nothing is left running unwatched."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        except OSError as exc:
            raise ProviderError(f"{what}: cannot run {argv[0]!r}: {exc}") from None
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            await _kill_group(proc)
            raise ProviderError(f"{what}: still running after {timeout:g} s; killed") from None
        except BaseException:
            await _kill_group(proc)
            raise
        said_out, said_err = _read_back(out), _read_back(err)
    if proc.returncode != 0:
        said = _tail(said_err) or _tail(said_out) or "no output"
        raise ProviderError(f"{what}: exited with {proc.returncode}: {said}")
    return said_out.decode("utf-8", "replace")


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL ``proc``'s process group and wait for ``proc`` (at once: the signal
    cannot be ignored); a second cancellation meanwhile does not leave it unreaped."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    waiting = asyncio.ensure_future(proc.wait())
    try:
        await asyncio.shield(waiting)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(waiting, 5.0)
        raise


def _read_back(file: IO[bytes]) -> bytes:
    """What a script wrote to ``file`` (at most ``_READ_LIMIT`` bytes: a process it left
    running in the background may still be writing)."""
    file.seek(0)
    return file.read(_READ_LIMIT)


class LocalProvider:
    """Runner processes on this host (``provider = "local"``)."""

    name = "local"

    def __init__(self, root: Path, *, timeout: float = 120.0) -> None:
        self.base = root / ".corral" / "fleet-runners"
        self.cwd = root
        self.timeout = timeout
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def home(self, name: str) -> Path:
        return self.base / name

    def config(self, name: str) -> Path:
        return self.home(name) / "runner.json"

    async def start(self, spec: StartSpec) -> str:
        home = self.home(spec.name)
        if home.exists():
            shutil.rmtree(home)
        home.mkdir(parents=True)
        env = _runner_env(home / "home")
        corral = [sys.executable, "-m", "corral", "runner"]
        # the token in the environment, not on the command line (where ps shows it)
        join = [*corral, "join", spec.url, "--name", spec.name]
        join += ["--slots", str(spec.slots), "--config", str(self.config(spec.name))]
        join_env = env | {"CORRAL_RUNNER_TOKEN": spec.token}
        await _run(
            join, env=join_env, cwd=self.cwd, timeout=self.timeout, what="corral runner join"
        )
        with (home / "runner.log").open("ab") as log:
            proc = subprocess.Popen(
                [*corral, "start", "--config", str(self.config(spec.name))],
                cwd=self.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # survives this scheduler; found again by its pid
            )
        self._children[proc.pid] = proc
        return str(proc.pid)

    def alive(self, name: str, handle: str | None) -> bool | None:
        pid = _pid(handle)
        if pid is None:
            return False
        child = self._children.get(pid)
        if child is not None:
            return child.poll() is None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        # the pid is this runner's only while its command line names its config
        return state != "Z" and str(self.config(name)).encode() in cmdline

    async def stop(self, name: str, handle: str | None, runner_id: str | None) -> None:
        pid = _pid(handle)
        if pid is None or not self.alive(name, handle):
            self._children.pop(pid or -1, None)
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60.0
        while self.alive(name, handle) and loop.time() < deadline:
            await asyncio.sleep(0.1)
        if self.alive(name, handle):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        child = self._children.pop(pid, None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(5)
        if not self.alive(name, handle):  # its state goes with it (the runner was revoked)
            shutil.rmtree(self.home(name), ignore_errors=True)


def _pid(handle: str | None) -> int | None:
    if handle is None or not handle.isdigit():
        return None
    return int(handle)


class CommandProvider:
    """The project's scripts start and stop a runner host (``provider = "command"``)."""

    name = "command"

    def __init__(
        self,
        root: Path,
        start: str | tuple[str, ...],
        stop: str | tuple[str, ...],
        *,
        timeout: float,
    ) -> None:
        self.cwd = root
        self.start_cmd = start
        self.stop_cmd = stop
        self.timeout = timeout

    @staticmethod
    def _argv(command: str | tuple[str, ...]) -> list[str]:
        return ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)

    async def start(self, spec: StartSpec) -> str:
        env = _runner_env() | {
            "CORRAL_URL": spec.url,
            "CORRAL_RUNNER_TOKEN": spec.token,
            "CORRAL_RUNNER_NAME": spec.name,
            "CORRAL_RUNNER_SLOTS": str(spec.slots),
            "CORRAL_RUNNER_LABELS": ",".join(spec.labels),
        }
        out = await _run(
            self._argv(self.start_cmd),
            env=env,
            cwd=self.cwd,
            timeout=self.timeout,
            what="[fleet.autoscale] start",
        )
        lines = [line.strip() for line in out.splitlines() if line.strip()]
        return lines[-1][:200] if lines else ""

    async def stop(self, name: str, handle: str | None, runner_id: str | None) -> None:
        env = _runner_env() | {
            "CORRAL_RUNNER_NAME": name,
            "CORRAL_RUNNER_HANDLE": handle or "",
            "CORRAL_RUNNER_ID": runner_id or "",
        }
        await _run(
            self._argv(self.stop_cmd),
            env=env,
            cwd=self.cwd,
            timeout=self.timeout,
            what="[fleet.autoscale] stop",
        )

    def alive(self, name: str, handle: str | None) -> bool | None:
        return None
