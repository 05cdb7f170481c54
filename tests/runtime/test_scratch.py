"""Each run has a scratch space of its own: two concurrent runs of one agent that clone
into the same ``/tmp`` path never see each other's files, on the host runtime and in the
sandbox; and ``/app/static`` holds the agent's files and ``shared/`` as in Action Llama.

The projects live OUTSIDE /tmp (under /var/tmp): a run's private /tmp would hide a
project under /tmp, and corral then falls back to the host's /tmp (TMPDIR only).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from corral.runtime._private import mount_support
from corral.store import RunState, open_store
from tests.gateway.fleet import running_fleet
from tests.runtime.conftest import require_sandbox

#: Clone into the fixed path, leave a marker, meet the other run at the barrier (both
#: have cloned and written by then), then record what /tmp/repo holds.
RUN_SH = """\
set -u
: "${TMPDIR:=/tmp}"
report="$CORRAL_WORKDIR/report"
# A sandboxed run is a uid of its own (corral as root): git refuses a repository it does
# not own unless told otherwise, in a global config (a HOME of the run's own, in /tmp).
export HOME="$TMPDIR/home"
mkdir -p "$HOME" && git config --global safe.directory '*'
git clone -q "$BARE" /tmp/repo >>"$report" 2>&1 || echo "clone failed" >>"$report"
echo "$CORRAL_RUN_ID" > "/tmp/repo/marker-$CORRAL_RUN_ID"
exec 3<>"/dev/tcp/127.0.0.1/$BARRIER"
read -r go <&3
echo "seen: $(cd /tmp/repo && ls marker-* | tr '\\n' ' ')" >>"$report"
echo "tmpdir: ${TMPDIR:-}" >>"$report"
listing=$(cd /app/static && ls | tr '\\n' ' ')
echo "static: $(cat /app/static/shared/conventions.md) $listing" >>"$report"
touch /app/static/shared/new 2>/dev/null && echo "static is writable" >>"$report"
exit 0
"""


STATIC_LISTING = ["SKILL.md", "config.toml", "run.sh", "shared"]


@pytest.fixture
def base() -> Iterator[Path]:
    """A world-readable directory outside /tmp for the project and the bare repository."""
    made = Path(tempfile.mkdtemp(prefix="corral-scratch-", dir="/var/tmp"))
    made.chmod(0o755)
    try:
        yield made
    finally:
        shutil.rmtree(made, ignore_errors=True)


def bare_repo(base: Path) -> Path:
    work, bare = base / "src", base / "repo.git"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q", str(work)], check=True)
    (work / "README").write_text("hello\n")
    subprocess.run([*git, "-C", str(work), "add", "README"], check=True)
    subprocess.run([*git, "-C", str(work), "commit", "-q", "-m", "one"], check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True)
    for path in [bare, *bare.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)  # a run of another uid reads it
    return bare


class Barrier:
    """A loopback server that answers each of ``parties`` connections once all are in."""

    def __init__(self, parties: int) -> None:
        self.parties = parties
        self.writers: list[asyncio.StreamWriter] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def _arrive(self, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        if len(self.writers) == self.parties:
            for each in self.writers:
                each.write(b"go\n")
                await each.drain()
                each.close()

    async def __aenter__(self) -> Barrier:
        self._server = await asyncio.start_server(self._arrive, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self.writers:
            writer.close()


@pytest.fixture
async def barrier() -> AsyncIterator[Barrier]:
    async with Barrier(2) as made:
        yield made


async def two_runs(base: Path, barrier: Barrier, table: str) -> list[tuple[RunState, str]]:
    bare = bare_repo(base)
    root = base / "project"
    command = f'BARE="{bare}" BARRIER={barrier.port} bash "$CORRAL_AGENT_DIR/run.sh"'
    root.mkdir()
    store = await open_store(f"sqlite:///{root / 'state.db'}")
    try:
        async with running_fleet(
            root,
            store,
            {"dev": {"command": command, "scale": 2, "timeout": 60}},
            project_toml='[state]\nurl = "sqlite:///state.db"\n',
            tables={"dev": table},
        ) as f:
            (root / "agents" / "dev" / "run.sh").write_text(RUN_SH)
            (root / "shared").mkdir()
            (root / "shared" / "conventions.md").write_text("tabs-not-spaces\n")
            await f.trigger("dev")
            await f.trigger("dev")
            runs = await f.finished("dev", 2, timeout=60)
            found = []
            for run in runs:
                report = f.scheduler.executor.workdir(run.id) / "report"
                log = f.scheduler.executor.log_path(run.id).read_text()
                text = report.read_text() if report.exists() else ""
                found.append((run.state, f"{run.id}|{text}|{log}"))
    finally:
        await store.close()
    return found


def assert_private(found: list[tuple[RunState, str]]) -> None:
    assert len(found) == 2
    for state, text in found:
        run_id, report, log = text.split("|", 2)
        assert state is RunState.SUCCEEDED, (report, log)
        assert "clone failed" not in report, report
        seen = next(line for line in report.splitlines() if line.startswith("seen: "))
        assert seen.split() == ["seen:", f"marker-{run_id}"], report
        # /app/static: the agent's files and shared/, read-only, usable as a directory.
        static = next(line for line in report.splitlines() if line.startswith("static: "))
        assert static.split() == ["static:", "tabs-not-spaces", *STATIC_LISTING], report
        assert "static is writable" not in report


async def test_concurrent_host_runs_each_have_their_own_tmp(base: Path, barrier: Barrier) -> None:
    if mount_support().unshare is None:
        pytest.skip(f"no mount namespace for host runs here: {mount_support().why_not}")
    found = await two_runs(base, barrier, '[runtime]\ntype = "host"\n')
    assert_private(found)
    for _, text in found:  # TMPDIR is the run's own directory, whatever /tmp is
        assert "/.corral/tmp" in text.split("|")[1]


async def test_concurrent_sandboxed_runs_each_have_their_own_tmp(
    base: Path, barrier: Barrier
) -> None:
    require_sandbox()
    assert_private(await two_runs(base, barrier, '[runtime]\ntype = "sandbox"\n'))
