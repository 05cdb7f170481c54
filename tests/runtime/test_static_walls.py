"""``/app/static`` cannot be turned against the host: real runs through the real scheduler
and sandbox (an attacker's findings, reproduced).

- a run cannot redirect its own ``/app/static`` between its processes (no view directory
  in the run's writable directory is followed at the next launch);
- an agent-folder entry that is a symlink is a symlink in the run, not a bind of its
  target: it leads nowhere the run's uid could not go anyway;
- a host whose ``/app`` exists without ``/app/static`` (a Docker image with WORKDIR /app)
  still runs sandboxed runs;
- a host run whose agent folder links under ``/tmp`` works (falls back to the host's /tmp).

The projects live under /var/tmp, not /tmp (a sandbox's private /tmp would hide them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.errors import RunError
from corral.runtime import LaunchSpec
from corral.runtime._private import MountSupport, make_static, namespace_prefix
from corral.runtime.sandbox import SandboxRuntime
from corral.store import RunState, open_store
from tests.gateway.fleet import running_fleet
from tests.runtime.conftest import require_sandbox
from tests.scheduler.helpers import write_project

pytestmark = pytest.mark.slow

SECRET = "victim-secret-4f1c"
SANDBOX = '[runtime]\ntype = "sandbox"\n'
CORRAL = str(Path(sys.executable).with_name("corral"))


@pytest.fixture
def base() -> Iterator[Path]:
    made = Path(tempfile.mkdtemp(prefix="corral-static-", dir="/var/tmp"))
    made.chmod(0o755)
    try:
        yield made
    finally:
        shutil.rmtree(made, ignore_errors=True)


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("a sandboxed run is a uid of its own only when corral runs as root")


def private_secret(base: Path) -> Path:
    """Another project's agent folder, behind a directory only root may enter."""
    victim = base / "private" / "p2" / "agents" / "victim"
    victim.mkdir(parents=True)
    (base / "private").chmod(0o700)
    (victim / "secrets.env").write_text(f"TOKEN={SECRET}\n")
    for name in ("SKILL.md", "config.toml"):  # as any agent folder has
        (victim / name).write_text("victim\n")
    return victim


async def one_run(root: Path, command: str, table: str) -> tuple[RunState, str]:
    """Run agent ``dev`` once; its state and its log."""
    root.mkdir(parents=True, exist_ok=True)
    store = await open_store(f"sqlite:///{root / 'state.db'}")
    try:
        async with running_fleet(
            root,
            store,
            {"dev": {"command": command, "timeout": 60}},
            project_toml='[state]\nurl = "sqlite:///state.db"\n',
            tables={"dev": table},
        ) as f:
            await f.trigger("dev")
            (run,) = await f.finished("dev", 1, timeout=60)
            return run.state, f.scheduler.executor.log_path(run.id).read_text()
    finally:
        await store.close()


async def test_a_run_cannot_swap_its_app_static_for_another_projects_files(base: Path) -> None:
    """Finding 2: the pre hook (any earlier process of the run) replaces whatever view
    corral left in the run's own directory with a link to another project's folder; the
    agent, launched after it, still sees its own files at /app/static."""
    require_sandbox()
    needs_root()
    victim = private_secret(base)
    swap = (
        "cd /tmp/work/.corral && mv static static.old 2>/dev/null; "
        f"ln -sfn {victim} static; mkdir -p static.d; echo hooked"
    )
    table = f'{SANDBOX}[hooks]\npre = ["{swap}"]\n'
    state, log = await one_run(
        base / "project", "ls /app/static; cat /app/static/secrets.env; true", table
    )
    assert state is RunState.SUCCEEDED, log
    assert "hooked" in log, log
    assert SECRET not in log, log
    assert "SKILL.md" in log and "config.toml" in log, log


async def test_an_agent_folder_symlink_is_a_symlink_in_the_sandbox(base: Path) -> None:
    """Finding 3: ``leak -> <a file behind a root-only directory>`` in the agent folder
    is that link in the sandbox: the run's uid cannot follow it (it was a bind of the
    target, made as root, so the run read it)."""
    require_sandbox()
    needs_root()
    secret = private_secret(base) / "secrets.env"
    root = base / "project"
    (root / "agents" / "dev").mkdir(parents=True)
    (root / "agents" / "dev" / "leak").symlink_to(secret)
    (root / "agents" / "dev" / "notes").symlink_to("SKILL.md")  # within the folder: works
    command = (
        'echo "link=$(readlink /app/static/leak)"; cat /app/static/leak; '
        'echo "notes=$(head -c 3 /app/static/notes)"; true'
    )
    state, log = await one_run(root, command, SANDBOX)
    assert state is RunState.SUCCEEDED, log
    assert f"link={secret}" in log, log
    assert SECRET not in log, log
    assert "notes=---" in log, log


def test_a_sandbox_runs_where_app_exists_without_app_static(base: Path) -> None:
    """Finding 7: in a private mount namespace (the real host untouched), /app is a
    directory holding only ``code``: a sandboxed run still sees its files at /app/static,
    and /app's own entries."""
    require_sandbox()
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare to simulate a host's /app")
    root = base / "project"
    command = 'echo "listing=$(ls /app/static | tr "\\n" " ")app=$(ls /app | tr "\\n" " ")"'
    write_project(root, {"dev": {"command": command, "timeout": 60}}, "", {"dev": SANDBOX})
    script = (
        f'mount -t tmpfs app-sim /app && mkdir /app/code && cd "{root}" && exec "{CORRAL}" run dev'
    )
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "listing=SKILL.md config.toml app=code static" in out, out


async def test_a_host_run_with_an_agent_entry_linking_under_tmp_works(base: Path) -> None:
    """Finding 8: ``data -> /tmp/...`` in the agent folder: the host run keeps the host's
    /tmp (the fallback, as for any path the run needs under /tmp) and reads it."""
    if os.geteuid() != 0:
        pytest.skip("a private /tmp for host runs needs root")
    under_tmp = Path(tempfile.mkdtemp(prefix="corral-static-data-", dir="/tmp"))
    try:
        (under_tmp / "x.txt").write_text("from-tmp\n")
        root = base / "project"
        (root / "agents" / "dev").mkdir(parents=True)
        (root / "agents" / "dev" / "data").symlink_to(under_tmp)
        state, log = await one_run(root, "cat /app/static/data/x.txt", '[runtime]\ntype = "host"\n')
    finally:
        shutil.rmtree(under_tmp, ignore_errors=True)
    assert state is RunState.SUCCEEDED, log
    assert "from-tmp" in log, log


def test_a_source_changed_since_planning_is_refused_at_launch(base: Path) -> None:
    """Sources are resolved once, when the run is planned: a folder swapped since (for a
    link, or another directory) is refused by both runtimes rather than shown."""
    agent = base / "agents" / "dev"
    (agent / "docs").mkdir(parents=True)
    view = make_static(agent, None)
    (agent / "docs").rename(agent / "docs.old")
    (agent / "docs").symlink_to(base)
    spec = LaunchSpec(argv=("true",), cwd=base, env={}, static=view)
    with pytest.raises(RunError, match="changed since the run was planned"):
        SandboxRuntime(require_sandbox()).argv(spec)
    support = MountSupport("/usr/bin/unshare", static=True)
    with pytest.raises(RunError, match="changed since the run was planned"):
        namespace_prefix(support, base, view, None)
    (agent / "docs").unlink()
    (agent / "docs").mkdir()  # another directory at the same path: another inode
    with pytest.raises(RunError, match="changed since the run was planned"):
        SandboxRuntime(require_sandbox()).argv(spec)
