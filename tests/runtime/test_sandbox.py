"""The sandbox runtime: real bubblewrap, real processes, checked from both sides.

A fake project lives outside /tmp (under /var/tmp), because the sandbox's /tmp
is a private tmpfs: a host directory under /tmp would be invisible inside
whether or not it is hidden or bound, and the tests would prove nothing.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from corral.errors import RunError
from corral.runtime import Bind, Isolation, LaunchSpec, runtime_for
from corral.runtime._limits import LimitSupport, limit_support
from corral.runtime.sandbox import SandboxRuntime, SandboxSupport, probe_sandbox
from tests.processes import alive

PATH = "/usr/local/bin:/usr/bin:/bin"
WORK = Path("/tmp/work")

# The interpreter itself, not a virtualenv under /tmp (a private tmpfs in the sandbox).
PYTHON = os.path.realpath(sys.executable)


class Collect:
    def __init__(self) -> None:
        self.data = b""

    async def __call__(self, chunk: bytes) -> None:
        self.data += chunk

    @property
    def text(self) -> str:
        return self.data.decode(errors="replace")


@dataclass
class Project:
    """A project as the executor lays it out, outside /tmp."""

    root: Path

    @property
    def state_dir(self) -> Path:
        return self.root / ".corral"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.db"

    @property
    def workdir(self) -> Path:
        return self.state_dir / "runs" / "mine"

    @property
    def other_run(self) -> Path:
        return self.state_dir / "runs" / "other"

    @property
    def shared(self) -> Path:
        return self.root / "shared"

    @property
    def bin_dir(self) -> Path:
        return self.state_dir / "bin"

    def isolation(
        self, *, network: bool = True, memory_bytes: int | None = None, cpus: float | None = None
    ) -> Isolation:
        """Hide the state; bind the work dir writable, shared/ and the bin dir read-only."""
        binds = (
            Bind(self.workdir, WORK, writable=True),
            Bind(self.shared, self.shared),
            Bind(self.bin_dir, self.bin_dir),
        )
        return Isolation(binds, (self.state_dir,), network, memory_bytes, cpus)


@pytest.fixture
def host_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="corral-sandbox-test-", dir="/var/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def project(host_dir: Path) -> Project:
    p = Project(host_dir / "project")
    p.workdir.mkdir(parents=True)
    p.other_run.mkdir(parents=True)
    p.shared.mkdir(parents=True)
    p.bin_dir.mkdir(parents=True)
    p.state_file.write_text("STATE-SECRET\n")
    (p.other_run / "notes.txt").write_text("OTHER-RUN-SECRET\n")
    (p.shared / "readme.txt").write_text("shared text\n")
    hello = p.bin_dir / "al-hello"
    hello.write_text("#!/bin/sh\necho hello from the bin dir\n")
    hello.chmod(0o755)
    return p


def sh(
    script: str, iso: Isolation | None, *, cwd: Path = WORK, stdin: bytes | None = None
) -> LaunchSpec:
    return LaunchSpec(["/bin/sh", "-c", script], cwd, {"PATH": PATH}, stdin, iso)


async def run(runtime: SandboxRuntime, spec: LaunchSpec) -> tuple[int, str]:
    out = Collect()
    process = await runtime.launch(spec)
    code = await asyncio.wait_for(process.pump(out), 60)
    return code, out.text


def group_members(pgid: int) -> list[int]:
    """Host pids of the live (not zombie) processes in process group ``pgid``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


async def wait_for_file(path: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        await asyncio.sleep(0.02)


# --- filesystem ----------------------------------------------------------------


async def test_the_root_filesystem_is_read_only(
    sandbox: SandboxRuntime, project: Project, host_dir: Path
) -> None:
    target = host_dir / "host-file.txt"
    target.write_text("original\n")
    script = (
        f"echo changed > {target}; echo write=$?; "
        f"touch {host_dir}/new-file; echo touch=$?; "
        # Even uid 0 in the sandbox has no capability to make the root writable again.
        "mount -o remount,rw / 2>/dev/null; echo remount=$?; "
        f"echo changed > {target}; echo write-after-remount=$?"
    )
    code, out = await run(sandbox, sh(script, project.isolation()))
    assert code == 0, out
    assert "Read-only file system" in out
    assert "write=2" in out and "touch=1" in out
    assert "remount=0" not in out and "write-after-remount=2" in out
    assert target.read_text() == "original\n"
    assert not (host_dir / "new-file").exists()


async def test_the_work_dir_is_writable_and_tmp_is_private(
    sandbox: SandboxRuntime, project: Project
) -> None:
    host_tmp_file = Path(tempfile.mkstemp(prefix="corral-host-only-")[1])
    scratch = f"corral-scratch-{os.getpid()}-{time.monotonic_ns()}"
    script = (
        "pwd; echo result > result.txt && echo wrote-work; "
        f"echo scratch > /tmp/{scratch} && echo wrote-tmp; "
        f"test -e {host_tmp_file} && echo host-tmp-visible; ls -A /tmp"
    )
    try:
        code, out = await run(sandbox, sh(script, project.isolation()))
    finally:
        host_tmp_file.unlink()
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] == str(WORK)
    assert "wrote-work" in lines and "wrote-tmp" in lines
    assert (project.workdir / "result.txt").read_text() == "result\n"
    assert not Path("/tmp", scratch).exists()  # the sandbox's /tmp is not the host's
    assert "host-tmp-visible" not in out
    assert sorted(lines[3:]) == sorted([scratch, "work"])


async def test_hidden_paths_cannot_be_read(sandbox: SandboxRuntime, project: Project) -> None:
    script = (
        f"cat {project.state_file}; cat {project.other_run}/notes.txt; "
        f"echo listing: $(ls -A {project.state_dir}); "
        f"touch {project.state_dir}/planted; echo plant=$?"
    )
    # The same script without hiding sees everything: the test can tell.
    code, out = await run(sandbox, sh(script, Isolation(), cwd=Path("/")))
    assert "STATE-SECRET" in out and "OTHER-RUN-SECRET" in out
    assert "listing: bin runs state.db" in out

    code, out = await run(sandbox, sh(script, project.isolation()))
    assert code == 0
    assert "STATE-SECRET" not in out and "OTHER-RUN-SECRET" not in out
    assert out.count("No such file or directory") == 2
    # An empty tmpfs, but for the mount point of the bin dir bound back in; read-only.
    assert "listing: bin\n" in out
    assert "plant=1" in out and not (project.state_dir / "planted").exists()


async def test_a_hidden_file_cannot_be_opened(
    sandbox: SandboxRuntime, project: Project, host_dir: Path
) -> None:
    secret = host_dir / "token.txt"
    secret.write_text("TOKEN-SECRET\n")
    iso = Isolation(hide=(secret, host_dir / "does-not-exist"))
    code, out = await run(sandbox, sh(f"cat {secret}; echo cat=$?", iso, cwd=Path("/")))
    assert "TOKEN-SECRET" not in out
    assert "cat=1" in out
    assert code == 0


async def test_read_only_binds_are_readable_but_not_writable(
    sandbox: SandboxRuntime, project: Project
) -> None:
    readme = project.shared / "readme.txt"
    script = (
        f"cat {readme}; echo changed > {readme}; echo write=$?; "
        # the bin dir lives in the hidden state dir, bound back read-only
        f"al-hello; touch {project.bin_dir}/planted; echo plant=$?"
    )
    spec = LaunchSpec(
        argv=["/bin/sh", "-c", script],
        cwd=WORK,
        env={"PATH": f"{project.bin_dir}:{PATH}"},
        isolation=project.isolation(),
    )
    code, out = await run(sandbox, spec)
    assert code == 0, out
    assert "shared text" in out and "write=2" in out
    assert "hello from the bin dir" in out and "plant=1" in out
    assert readme.read_text() == "shared text\n"
    assert not (project.bin_dir / "planted").exists()


async def test_a_bind_may_go_to_a_new_top_level_directory(
    sandbox: SandboxRuntime, project: Project, host_dir: Path
) -> None:
    creds = host_dir / "credentials" / "github"
    creds.mkdir(parents=True)
    (creds / "token").write_text("gh-token\n")
    base = project.isolation()
    target = Path("/credentials/github/default")
    iso = Isolation(binds=(*base.binds, Bind(creds, target)), hide=base.hide)
    script = (
        f"cat {target}/token; echo x > {target}/token; echo write=$?; "
        "mkdir /credentials/other; echo mkdir=$?; touch /planted; echo root=$?; ls /credentials"
    )
    code, out = await run(sandbox, sh(script, iso))
    assert code == 0, out
    assert "gh-token" in out and "write=2" in out and "mkdir=1" in out and "root=1" in out
    assert out.splitlines()[-1] == "github"
    assert not Path("/credentials").exists() and not Path("/planted").exists()


async def test_a_bind_target_in_a_read_only_host_directory_is_a_run_error(
    sandbox: SandboxRuntime, project: Project
) -> None:
    iso = Isolation(binds=(Bind(project.shared, Path("/usr/corral-no-such-dir/shared")),))
    with pytest.raises(RunError, match="cannot bind at /usr/corral-no-such-dir/shared"):
        await sandbox.launch(sh("true", iso, cwd=Path("/")))
    # Under a read-only bind only what its source has can be a mount point.
    shared = Bind(project.shared, Path("/tmp/shared"))
    iso = Isolation(binds=(shared, Bind(project.bin_dir, Path("/tmp/shared/bin"))))
    with pytest.raises(RunError, match="cannot bind at /tmp/shared/bin"):
        await sandbox.launch(sh("true", iso, cwd=Path("/")))
    readme = Bind(project.bin_dir / "al-hello", Path("/tmp/shared/readme.txt"))
    iso = Isolation(binds=(shared, readme))
    code, out = await run(sandbox, sh("cat /tmp/shared/readme.txt", iso, cwd=Path("/")))
    assert code == 0 and "hello from the bin dir" in out


async def test_a_missing_bind_source_is_a_run_error(
    sandbox: SandboxRuntime, project: Project
) -> None:
    missing = project.root / "no-such-dir"
    iso = Isolation(binds=(Bind(missing, Path("/tmp/x")),))
    with pytest.raises(RunError, match=f"cannot bind {missing} into the sandbox"):
        await sandbox.launch(sh("true", iso))


async def test_relative_paths_are_a_run_error(sandbox: SandboxRuntime) -> None:
    with pytest.raises(RunError, match="must be an absolute path"):
        await sandbox.launch(sh("true", Isolation(hide=(Path("relative"),))))
    with pytest.raises(RunError, match=r"working directory .* absolute"):
        await sandbox.launch(sh("true", None, cwd=Path("work")))


# --- processes, environment, exit codes -------------------------------------------


async def test_the_environment_is_exactly_spec_env(
    sandbox: SandboxRuntime, project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_TEST_LEAK", "secret")
    for env in (
        {"PATH": PATH, "ONLY": "this", "SPACED": "a b  c"},
        {"PATH": PATH, "PWD": "/somewhere/else"},
        {},
    ):
        spec = LaunchSpec(["/usr/bin/env"], cwd=WORK, env=env, isolation=project.isolation())
        code, out = await run(sandbox, spec)
        assert code == 0, out
        seen = dict(line.split("=", 1) for line in out.splitlines())
        assert seen == env


async def test_stdin_is_fed_stderr_merged_and_the_exit_code_returned(
    sandbox: SandboxRuntime, project: Project
) -> None:
    spec = sh("cat; echo oops >&2; exit 3", project.isolation(), stdin=b"the prompt\n")
    assert await run(sandbox, spec) == (3, "the prompt\noops\n")
    assert (await run(sandbox, sh("exit 0", project.isolation())))[0] == 0


async def test_large_stdin_to_a_child_that_ignores_it(
    sandbox: SandboxRuntime, project: Project
) -> None:
    big = b"x" * 4_000_000
    for iso in (project.isolation(), project.isolation(memory_bytes=1 << 30)):
        code, _ = await run(sandbox, LaunchSpec(["true"], WORK, {"PATH": PATH}, big, iso))
        assert code == 0
        code, out = await run(sandbox, LaunchSpec(["wc", "-c"], WORK, {"PATH": PATH}, big, iso))
        assert (code, out.strip()) == (0, "4000000")


async def test_a_missing_program_fails_the_run_with_127(
    sandbox: SandboxRuntime, project: Project
) -> None:
    spec = LaunchSpec(["/no/such/agent"], cwd=WORK, env={}, isolation=project.isolation())
    code, out = await run(sandbox, spec)
    assert code == 127
    assert "/no/such/agent" in out and "No such file or directory" in out


async def test_the_run_sees_only_its_own_processes_and_hostname(
    sandbox: SandboxRuntime, project: Project
) -> None:
    script = (
        f"test -e /proc/{os.getpid()} && echo host-process-visible; "
        "cat /proc/sys/kernel/hostname; echo $$"
    )
    code, out = await run(sandbox, sh(script, project.isolation()))
    assert code == 0
    assert out.split() == ["corral", "2"]  # pid 1 is bwrap's reaper


async def test_sigterm_reaches_the_run_which_may_finish_within_the_grace(
    sandbox: SandboxRuntime, project: Project
) -> None:
    script = "trap 'echo got TERM > termed; exit 7' TERM; touch ready; while :; do sleep 0.05; done"
    process = await sandbox.launch(sh(script, project.isolation()))
    pump = asyncio.create_task(process.pump(Collect()))
    await wait_for_file(project.workdir / "ready")
    began = time.monotonic()
    await process.stop(grace=10.0)
    code = await asyncio.wait_for(pump, 10)
    assert time.monotonic() - began < 5  # it ended on TERM, not at the end of the grace
    assert (project.workdir / "termed").read_text() == "got TERM\n"
    assert code == 7


async def test_stop_kills_the_whole_sandboxed_tree_after_the_grace(
    sandbox: SandboxRuntime, project: Project
) -> None:
    script = (
        "(trap '' TERM; while :; do sleep 0.05; done) & "
        "trap '' TERM; touch ready; while :; do sleep 0.05; done"
    )
    process = await sandbox.launch(sh(script, project.isolation()))
    pump = asyncio.create_task(process.pump(Collect()))
    await wait_for_file(project.workdir / "ready")
    members = group_members(process.pid)
    shells = [pid for pid in members if comm(pid) == "sh"]
    assert process.pid in members and len(shells) == 2, members

    loop = asyncio.get_running_loop()
    began = loop.time()
    stopping = asyncio.create_task(process.stop(grace=0.6))
    await asyncio.sleep(0.3)
    assert not stopping.done()
    assert all(alive(pid) for pid in [process.pid, *shells])  # TERM was ignored
    await stopping
    code = await asyncio.wait_for(pump, 10)
    assert code == -signal.SIGKILL
    assert loop.time() - began >= 0.6
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in members) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert [pid for pid in members if alive(pid)] == []
    assert group_members(process.pid) == []


# --- network ---------------------------------------------------------------------

NET_PROBE = """
import socket, sys
port, unix_path = int(sys.argv[1]), sys.argv[2]
try:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        print("tcp:", s.recv(100).decode().strip())
except OSError as exc:
    print("tcp: failed:", type(exc).__name__)
with socket.socket(socket.AF_UNIX) as s:
    s.settimeout(3)
    s.connect(unix_path)
    s.sendall(b"ping\\n")
    print("unix:", s.recv(100).decode().strip())
"""


@pytest.mark.parametrize("network", [False, True])
async def test_network_none_cuts_tcp_but_a_bound_unix_socket_works(
    sandbox: SandboxRuntime, project: Project, network: bool
) -> None:
    async def tcp(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"hello over tcp\n")
        await w.drain()
        w.close()

    async def unix(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if await r.readline() == b"ping\n":
            w.write(b"pong\n")
            await w.drain()
        w.close()

    # Where the executor's gateway socket is: in the hidden state dir, bound back in.
    sock = project.state_dir / "gateway.sock"
    tcp_server = await asyncio.start_server(tcp, "127.0.0.1", 0)
    unix_server = await asyncio.start_unix_server(unix, str(sock))
    port = tcp_server.sockets[0].getsockname()[1]
    base = project.isolation()
    iso = Isolation(binds=(*base.binds, Bind(sock, sock)), hide=base.hide, network=network)
    spec = LaunchSpec(
        argv=[PYTHON, "-c", NET_PROBE, str(port), str(sock)],
        cwd=WORK,
        env={"PATH": PATH},
        isolation=iso,
    )
    try:
        code, out = await run(sandbox, spec)
    finally:
        tcp_server.close()
        unix_server.close()
    assert code == 0, out
    assert "unix: pong" in out
    if network:
        assert "tcp: hello over tcp" in out
    else:
        assert "tcp: failed: ConnectionRefusedError" in out


async def test_network_none_where_it_cannot_be_made_is_a_run_error(
    sandbox: SandboxRuntime, project: Project
) -> None:
    support = SandboxSupport(sandbox.support.bwrap, sandbox.support.env, "no netns here")
    with pytest.raises(RunError, match=r'network = "none" needs .* no netns here'):
        await SandboxRuntime(support).launch(sh("true", project.isolation(network=False)))


# --- limits ------------------------------------------------------------------------

ALLOCATE = "s = 'x' * (512 << 20); print('allocated', len(s))"
SPIN = """
import time
began, cpu = time.monotonic(), time.process_time()
while time.monotonic() - began < 1.0:
    pass
print(f"cpu {time.process_time() - cpu:.3f}")
"""


def python(code: str, iso: Isolation) -> LaunchSpec:
    return LaunchSpec([PYTHON, "-c", code], cwd=WORK, env={"PATH": PATH}, isolation=iso)


async def test_a_memory_limit_stops_a_run_that_allocates_past_it(
    sandbox: SandboxRuntime, project: Project
) -> None:
    code, out = await run(sandbox, python(ALLOCATE, project.isolation()))
    assert (code, out.strip()) == (0, f"allocated {512 << 20}")
    code, out = await run(sandbox, python(ALLOCATE, project.isolation(memory_bytes=128 << 20)))
    assert code != 0 and "allocated" not in out
    if limit_support().memory is not None:
        assert code == 128 + signal.SIGKILL  # the cgroup's OOM killer


async def test_without_a_cgroup_memory_falls_back_to_rlimit_as_and_cpu_is_reported(
    sandbox: SandboxRuntime, project: Project
) -> None:
    none = LimitSupport(None, None, {"memory": "no cgroup (test)", "cpu": "no cgroup (test)"})
    iso = project.isolation(memory_bytes=128 << 20, cpus=0.5)
    out = Collect()
    process = await sandbox._launch_limited(python(ALLOCATE, iso), iso, none)
    code = await process.pump(out)
    lines = out.text.splitlines()
    assert lines[0].startswith("corral: memory limit 134217728 bytes applied as RLIMIT_AS")
    assert lines[1].startswith("corral: warning: cpus = 0.5 is NOT enforced")
    assert "no cgroup (test)" in lines[1]
    assert code == 1 and "MemoryError" in out.text

    out = Collect()
    process = await sandbox._launch_limited(sh("ulimit -v", iso), iso, none)
    assert await process.pump(out) == 0
    assert out.text.splitlines()[-1] == str(128 << 10)  # KiB

    # CPU alone, where only a cgroup could limit it: the run starts, and says so.
    cpus_only = project.isolation(cpus=2.0)
    out = Collect()
    process = await sandbox._launch_limited(sh("echo ran", cpus_only), cpus_only, none)
    assert await process.pump(out) == 0
    assert out.text.splitlines()[0].startswith("corral: warning: cpus = 2 is NOT enforced")
    assert out.text.splitlines()[1:] == ["ran"]


async def test_a_cpu_limit_throttles_the_run(sandbox: SandboxRuntime, project: Project) -> None:
    if limit_support().cpu is None:
        pytest.skip(f"no cgroup for CPU limits here: {limit_support().why_not.get('cpu')}")
    code, out = await run(sandbox, python(SPIN, project.isolation(cpus=0.2)))
    assert code == 0, out
    used = float(out.split()[-1])
    assert used < 0.5, out  # 0.2 CPU for 1 s of wall time, with room for noise


async def test_the_run_cgroup_holds_the_run_and_is_removed_after(
    sandbox: SandboxRuntime, project: Project
) -> None:
    support = limit_support()
    if support.memory is None:
        pytest.skip(f"no cgroup for memory limits here: {support.why_not.get('memory')}")
    spec = sh("touch ready; sleep 30", project.isolation(memory_bytes=256 << 20))
    process = await sandbox.launch(spec)
    pump = asyncio.create_task(process.pump(Collect()))
    await wait_for_file(project.workdir / "ready")
    [cgroup] = list(support.memory.path.glob(f"run-{os.getpid()}-*"))
    deadline = time.monotonic() + 10
    while True:  # "ready" is there before sh has forked and exec'd sleep
        inside = {int(p) for p in (cgroup / "cgroup.procs").read_text().split()}
        if {"sh", "sleep"} <= {comm(pid) for pid in inside} or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.02)
    assert {"sh", "sleep"} <= {comm(pid) for pid in inside}
    assert process.pid not in inside  # bwrap's monitor stays outside
    limit = "memory.max" if support.memory.version == 2 else "memory.limit_in_bytes"
    assert int((cgroup / limit).read_text()) == 256 << 20
    await process.stop(grace=0.5)
    await pump
    deadline = time.monotonic() + 10
    while cgroup.exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not cgroup.exists()


# --- availability -------------------------------------------------------------------


def test_runtime_for_sandbox_without_bwrap_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap here
    with pytest.raises(
        RunError, match=r"bubblewrap .* not installed.*apt-get install -y bubblewrap"
    ):
        runtime_for("sandbox")


def test_runtime_for_sandbox_with_a_broken_bwrap_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(RunError, match="cannot create a sandbox here: bwrap: No permissions"):
        probe_sandbox(str(tmp_path))


def test_runtime_for_sandbox_works_here(sandbox: SandboxRuntime) -> None:
    runtime = runtime_for("sandbox")
    assert isinstance(runtime, SandboxRuntime) and runtime.name == "sandbox"
    assert runtime.support.network_error is None


def test_the_sandbox_works_for_an_unprivileged_user(
    sandbox: SandboxRuntime, project: Project, host_dir: Path
) -> None:
    """The same command line, run as nobody (bubblewrap then makes a user namespace)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to switch to an unprivileged user")
    for path in (host_dir, project.root, project.state_dir, project.state_dir / "runs"):
        path.chmod(0o755)
    for path in (project.shared, project.bin_dir):
        path.chmod(0o755)
    project.workdir.chmod(0o777)
    script = (
        "id -u; grep CapEff /proc/self/status; touch /etc/corral-x; "
        f"cat {project.state_file}; echo made > made.txt && echo wrote"
    )
    argv = sandbox.argv(sh(script, project.isolation(network=False)))
    unprivileged = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
    done = subprocess.run(
        unprivileged + argv, env={"PATH": PATH}, capture_output=True, text=True, timeout=30
    )
    if "namespace" in done.stderr and done.returncode != 0:
        pytest.skip(f"no user namespaces for unprivileged users here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split("\n")
    assert lines[0] == "65534"
    assert lines[1].split() == ["CapEff:", "0000000000000000"]
    assert "Read-only file system" in done.stderr and "STATE-SECRET" not in done.stdout
    assert "wrote" in lines
    assert (project.workdir / "made.txt").stat().st_uid == 65534
