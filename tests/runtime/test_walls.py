"""Walls between projects: a sandboxed run reads no corral state of any project on the host,
and corral's state is private (directories 0700, files 0600).

The projects live side by side OUTSIDE /tmp (under /var/tmp), in a world-readable
directory as projects on a shared host would: under /tmp the sandbox's private /tmp
would hide them whatever corral does, and the tests would prove nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from corral.credentials import CredentialStore
from corral.engine.token import local_token
from corral.errors import RunError
from corral.gateway.server import bind_unix, unix_socket_path
from corral.runtime import Bind, Isolation, LaunchSpec
from corral.runtime.sandbox import SandboxRuntime
from corral.scheduler import prepare
from corral.store import RunState, open_store
from tests.gateway.fleet import running_fleet
from tests.runtime.conftest import require_sandbox
from tests.scheduler.helpers import write_project

pytestmark = pytest.mark.slow

TOKEN_A = "ghp_" + "Aa1b" * 9
TOKEN_B = "ghp_" + "Bb2c" * 9
SANDBOX = '[runtime]\ntype = "sandbox"\nnetwork = "none"\n'
PY = "/usr/bin/python3"


@pytest.fixture
def walls() -> Iterator[Path]:
    """A world-readable directory outside /tmp holding the projects; removed after."""
    base = Path(tempfile.mkdtemp(prefix="corral-walls-", dir="/var/tmp"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@contextlib.asynccontextmanager
async def other_project(root: Path) -> AsyncIterator[dict[str, Path]]:
    """Project B with its state made the normal way: token, store, gateway socket, a log."""
    project = write_project(root, {"dev": {"command": "true"}})
    local_token(project.root)
    store = await open_store(project.state_url)
    sock = bind_unix(unix_socket_path(project.root))
    state = project.root / ".corral"
    try:
        yield {
            "token": state / "operator-token",
            "db": state / "state.db",
            "socket": unix_socket_path(project.root),
            "state": state,
        }
    finally:
        sock.close()
        await store.close()


def probe(name: str, command: str) -> str:
    """Run ``command`` in the run; record ``name=<exit code>`` and what it printed."""
    return (
        f'out=$({command} 2>&1); echo "{name}=$? $(printf %s "$out" | head -c 200 | '
        f'tr "\\n" " ")" >> "$CORRAL_WORKDIR/report"; '
    )


def connect(path: Path) -> str:
    code = f"import socket; socket.socket(socket.AF_UNIX).connect({str(path)!r})"
    return f"{PY} -c {json.dumps(code)}"


def results(report: Path) -> dict[str, tuple[int, str]]:
    found: dict[str, tuple[int, str]] = {}
    for line in report.read_text().splitlines():
        name, _, rest = line.partition("=")
        code, _, text = rest.partition(" ")
        found[name] = (int(code), text)
    return found


@pytest.mark.parametrize("mode", ["own-uid", "corral-user"])
async def test_a_sandboxed_run_reads_nothing_of_another_project(
    walls: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """``own-uid``: corral is root, so each run is a uid of its own and B's state is out of
    reach by its modes alone (B never ran from this home: nothing hides it).

    ``corral-user``: what holds when corral is not root. The run is then corral's own user
    and owns every state file, as uid 0 without capabilities owns root's here; only the
    hidden paths keep it out, among them the state of every project run from this corral
    home (B ran once: it is listed).
    """
    require_sandbox()
    home = walls / "home"
    monkeypatch.setenv("CORRAL_HOME", str(home))
    if mode == "corral-user":
        monkeypatch.setattr(prepare, "run_ids", lambda project, run, key=None: None)
    creds = CredentialStore(home / "credentials")
    creds.add("github_token", "default", {"token": TOKEN_A})
    creds.add("github_token", "bproject", {"token": TOKEN_B})
    root_a = walls / "a"
    root_a.mkdir()
    (root_a / "config.toml").write_text('[state]\nurl = "sqlite:///state.db"\n')
    async with other_project(walls / "b") as b:
        if mode == "corral-user":
            prepare.known_state_dirs(b["state"])  # as B's own sandboxed runs did
        store = await open_store(f"sqlite:///{root_a / 'state.db'}")
        try:
            script = (
                probe("token_b", f"cat {b['token']}")
                + probe("db_b", f"head -c 16 {b['db']}")
                + probe("list_b", f"ls -A {b['state']}")
                + probe("socket_b", connect(b["socket"]))
                + probe("store_a", f"head -c 16 {root_a / 'state.db'}")
                + probe("token_a", f"cat {root_a / '.corral' / 'operator-token'}")
                + probe("creds_b", f"cat {home}/credentials/github_token/bproject/token")
                + probe("creds_all", f"ls -A {home}/credentials")
                + probe("creds_own", 'cat "$GITHUB_TOKEN_FILE" || printf %s "$GITHUB_TOKEN"')
                + probe("status_own", "al-status walls")
                + probe("lock_own", "rlock walls://key")
            )
            agents: dict[str, dict[str, object]] = {
                "dev": {"command": script, "credentials": ["github_token"]}
            }
            async with running_fleet(
                root_a,
                store,
                agents,
                project_toml='[state]\nurl = "sqlite:///state.db"\n',
                tables={"dev": SANDBOX},
            ) as f:
                await f.trigger("dev")
                (run,) = await f.finished("dev", 1)
                workdir = f.scheduler.executor.workdir(run.id)
                log = f.scheduler.executor.log_path(run.id).read_text()
            assert run.state is RunState.SUCCEEDED, (run.error, log)
            found = results(workdir / "report")
        finally:
            await store.close()
    # The run's own gateway, over its own socket, and its own credential work ...
    assert found["status_own"][0] == 0, found
    assert found["lock_own"][0] == 0 and '"ok":true' in found["lock_own"][1], found["lock_own"]
    assert found["creds_own"][0] == 0, found
    # ... and nothing of another project, its own store or other credentials is reachable.
    for name in ("token_b", "db_b", "socket_b", "store_a", "token_a", "creds_b"):
        assert found[name][0] != 0, (name, found[name])
    assert found["list_b"][0] != 0 or found["list_b"][1] == "", found["list_b"]  # or empty
    assert TOKEN_B not in json.dumps(found)
    assert "SQLite" not in json.dumps(found)
    listed = found["creds_all"]
    assert listed[0] != 0 or "bproject" not in listed[1], listed


async def test_a_project_behind_a_private_directory_still_runs_sandboxed(walls: Path) -> None:
    # With a uid of its own the run could not enter a 0700 directory on the way to its
    # agent folder or in-run commands (a project under /root, say): corral covers that
    # directory with an empty tmpfs holding just what the run needs.
    require_sandbox()
    private = walls / "private"
    private.mkdir(mode=0o700)
    root = private / "p"
    script = (
        probe("skill", 'cat "$CORRAL_AGENT_DIR/SKILL.md"')
        + probe("status", "al-status behind")
        + probe("sibling", f"ls {private}")
    )
    store = await open_store(f"sqlite:///{root / '.corral' / 'state.db'}")
    try:
        async with running_fleet(
            root, store, {"dev": {"command": script}}, tables={"dev": SANDBOX}
        ) as f:
            (private / "other").mkdir()
            await f.trigger("dev")
            (run,) = await f.finished("dev", 1)
            workdir = f.scheduler.executor.workdir(run.id)
            log = f.scheduler.executor.log_path(run.id).read_text()
    finally:
        await store.close()
    assert run.state is RunState.SUCCEEDED, (run.error, log)
    found = results(workdir / "report")
    assert found["skill"][0] == 0 and "# dev" in found["skill"][1], found
    assert found["status"][0] == 0, found
    if os.geteuid() == 0:  # only the project's own folders are in the covered directory
        assert "other" not in found["sibling"][1], found


async def test_shared_pointing_at_the_state_is_refused(
    walls: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_sandbox()
    monkeypatch.setenv("CORRAL_HOME", str(walls / "home"))
    root = walls / "d"
    root.mkdir()
    (root / ".corral").mkdir(mode=0o700)
    (root / "shared").symlink_to(root / ".corral")
    store = await open_store(f"sqlite:///{root / '.corral' / 'state.db'}")
    try:
        script = probe("via_shared", f"cat {root / 'shared' / 'operator-token'}")
        async with running_fleet(
            root, store, {"dev": {"command": script}}, tables={"dev": SANDBOX}
        ) as f:
            await f.trigger("dev")
            (run,) = await f.finished("dev", 1)
            workdir = f.scheduler.executor.workdir(run.id)
    finally:
        await store.close()
    assert run.state is RunState.FAILED
    assert "shared" in (run.error or "") and ".corral" in (run.error or ""), run.error
    assert not (workdir / "report").exists()


async def test_a_bind_that_would_show_a_hidden_path_is_a_run_error(walls: Path) -> None:
    # At the runtime itself, whoever builds the isolation: a bind whose source (symlinks
    # resolved) is, or contains, a hidden path is refused before anything starts.
    sandbox = SandboxRuntime(require_sandbox())
    state = walls / "p" / ".corral"
    state.mkdir(parents=True)
    (walls / "p" / "shared").symlink_to(state)
    for source in (walls / "p" / "shared", walls / "p"):
        iso = Isolation(binds=(Bind(source, Path("/tmp/x")),), hide=(state,))
        spec = LaunchSpec(argv=("true",), cwd=Path("/"), env={}, isolation=iso)
        with pytest.raises(RunError, match="hidden"):
            await sandbox.launch(spec)


def _modes(root: Path, skip: tuple[Path, ...] = ()) -> list[tuple[str, str]]:
    """Every directory not 0700 and regular file not 0600 under ``root``."""
    wrong: list[tuple[str, str]] = []
    for path in [root, *root.rglob("*")]:
        if any(path == s or path.is_relative_to(s) for s in skip):
            continue
        info = path.lstat()
        mode = stat.S_IMODE(info.st_mode)
        if stat.S_ISDIR(info.st_mode) and mode != 0o700:
            wrong.append((str(path), oct(mode)))
        elif stat.S_ISREG(info.st_mode) and mode != 0o600:
            wrong.append((str(path), oct(mode)))
    return wrong


async def test_every_state_directory_is_0700_and_every_file_0600(
    walls: Path, monkeypatch: pytest.MonkeyPatch, dialect: str, make_store_url: Callable[[], str]
) -> None:
    require_sandbox()
    monkeypatch.setenv("CORRAL_HOME", str(walls / "home"))
    CredentialStore(walls / "home" / "credentials").add(
        "github_token", "default", {"token": TOKEN_A}
    )
    previous = os.umask(0o022)  # what a default login shell has
    try:
        root = walls / "m"
        root.mkdir()
        url = f"sqlite:///{root / 'state.db'}" if dialect == "sqlite" else make_store_url()
        config = f"[state]\nurl = {json.dumps(url)}\n"
        (root / "config.toml").write_text(config)
        local_token(root)
        store = await open_store(url)
        try:
            script = "setenv WALLS 1 && echo hello && al-status fine"
            agents: dict[str, dict[str, object]] = {
                "dev": {"command": script, "credentials": ["github_token"]},
                "host": {"command": "setenv WALLS 1 && echo hello"},
            }
            async with running_fleet(
                root,
                store,
                agents,
                project_toml=config,
                tables={"dev": SANDBOX},
            ) as f:
                await f.trigger("dev")
                await f.trigger("host")
                runs = [*await f.finished("dev", 1), *await f.finished("host", 1)]
                workdirs = [f.scheduler.executor.workdir(run.id) for run in runs]
                logs = [f.scheduler.executor.log_path(run.id).read_text() for run in runs]
                assert all(run.state is RunState.SUCCEEDED for run in runs), (runs, logs)
                assert all((w / ".corral" / "env.sh").exists() for w in workdirs)
                state_files = [p for p in root.glob("state.db*") if p.is_file()]
                assert bool(state_files) is (dialect == "sqlite")
                wrong = [
                    (str(p), oct(stat.S_IMODE(p.stat().st_mode)))
                    for p in state_files
                    if stat.S_IMODE(p.stat().st_mode) != 0o600
                ]
                # The agents' own files in their work directories are theirs; corral's
                # files there (prompt, setenv file, credentials) are private.
                skip = (*workdirs, root / ".corral" / "bin")
                wrong += _modes(root / ".corral", skip)
                for w in workdirs:
                    wrong += _modes(w / ".corral")
                    mode = stat.S_IMODE(w.stat().st_mode)
                    if mode != 0o700:
                        wrong.append((str(w), oct(mode)))
                wrong += _modes(walls / "home")
        finally:
            await store.close()
    finally:
        os.umask(previous)
    assert wrong == []


@pytest.mark.parametrize("link", ["files", "directory"])
async def test_links_a_run_plants_are_never_written_through(walls: Path, link: str) -> None:
    # The run's own .corral belongs to its uid, and its pre hooks run before corral
    # writes the prompt files there. A link planted under those names (or in place of
    # the directory) must never make corral (root) write, chmod or chown another file.
    require_sandbox()
    victim = walls / "victim"
    victim.mkdir(mode=0o700)
    token = victim / "operator-token"
    token.write_text("the real token\n")
    token.chmod(0o600)
    if link == "files":
        hooks = [
            f"ln -sf {token} /tmp/work/.corral/system-prompt.md",
            f"ln -sf {token} /tmp/work/.corral/prompt.md",
        ]
    else:
        hooks = [f"mv /tmp/work/.corral /tmp/work/moved && ln -s {victim} /tmp/work/.corral"]
    table = SANDBOX + "[hooks]\npre = " + json.dumps(hooks) + "\n"
    root = walls / "a"
    store = await open_store(f"sqlite:///{root / '.corral' / 'state.db'}")
    try:
        async with running_fleet(
            root, store, {"dev": {"command": "true"}}, tables={"dev": table}
        ) as f:
            await f.trigger("dev")
            (run,) = await f.finished("dev", 1)
    finally:
        await store.close()
    assert token.read_text() == "the real token\n"
    info = token.stat()
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (os.geteuid(), 0o600)
    assert sorted(p.name for p in victim.iterdir()) == ["operator-token"]
    if link == "files":  # the planted links were replaced by the real prompt files
        assert run.state is RunState.SUCCEEDED, run.error
    else:  # a run directory that is not a plain directory ends the run, clearly
        assert run.state is RunState.FAILED, run.error
        assert "not a plain directory" in (run.error or ""), run.error
