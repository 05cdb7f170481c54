"""A run's processes start straight inside their cgroup (clone3 with CLONE_INTO_CGROUP):
no stub moves them, they are in the run's cgroup from their first instruction, and the
stub remains the way when the kernel refuses. Real processes, real cgroups."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.doctor import check_cgroup_moves
from corral.runtime import Isolation, LaunchSpec, _direct
from corral.runtime._contain import ContainSupport, contain_support
from corral.runtime._direct import CgroupPopen, direct_status, open_cgroup, uses_direct
from corral.runtime._limits import parse_cgroup_mounts
from corral.runtime.host import _popen, contain_for, start_process
from corral.runtime.sandbox import SandboxRuntime
from tests.runtime.conftest import require_sandbox

PATH = {"PATH": "/usr/bin:/bin"}


def cgroup2() -> ContainSupport:
    support = contain_support()
    if support.kind != "cgroup2" or support.base is None:
        pytest.fail(f"these tests need runs contained by cgroup2 here: {support.describe()}")
    return support


def v2_name(path: Path) -> str:
    """How /proc/<pid>/cgroup names the cgroup2 directory ``path``."""
    mounts = parse_cgroup_mounts(Path("/proc/self/mountinfo").read_text())
    mount = max(
        (m for m in mounts if m.version == 2 and path.is_relative_to(m.mountpoint)),
        key=lambda m: len(m.mountpoint.parts),
    )
    return "/" + str(path.relative_to(mount.mountpoint))


def own_v2_line(text: str) -> str:
    return next(line[3:] for line in text.splitlines() if line.startswith("0::"))


@pytest.fixture
def run_cgroup() -> Iterator[Path]:
    support = cgroup2()
    assert support.base is not None
    path = support.base / f"test-direct.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    path.mkdir()
    yield path
    for pid in (path / "cgroup.procs").read_text().split():
        os.kill(int(pid), 9)
    for _ in range(200):
        try:
            path.rmdir()
            break
        except OSError:
            time.sleep(0.01)


@pytest.fixture
def forget_refusal() -> Iterator[None]:
    """A test that makes the kernel refuse must not leave this process using the stub."""
    yield
    _direct._refused = ""


def test_the_helper_is_built_and_used_here() -> None:
    # `make install` builds corral.runtime._clone; this machine is Linux 6.x with cgroup2.
    ready, how = direct_status()
    assert ready, how
    assert uses_direct(cgroup2().kind)


def test_the_first_instruction_of_the_process_is_already_in_its_cgroup(run_cgroup: Path) -> None:
    # The program itself (no shell, no stub) reads its own membership.
    fd = open_cgroup(run_cgroup)
    try:
        child = CgroupPopen(
            ["cat", "/proc/self/cgroup"],
            cgroup_fd=fd,
            env=PATH,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
        )
    finally:
        os.close(fd)
    out, _ = child.communicate(timeout=10)
    assert child.returncode == 0
    assert own_v2_line(out.decode()) == v2_name(run_cgroup)
    # and corral itself never left its own cgroup
    assert own_v2_line(Path("/proc/self/cgroup").read_text()) != v2_name(run_cgroup)


def test_the_child_gets_the_fds_cwd_env_and_session_asked_for(
    run_cgroup: Path, tmp_path: Path
) -> None:
    keep_r, keep_w = os.pipe()
    stray_r, stray_w = os.pipe()
    os.set_inheritable(stray_w, True)  # inheritable, but not passed: must be closed
    script = textwrap.dedent(f"""\
        import os, sys
        print(os.getcwd())
        environ = open("/proc/self/environ", "rb").read().split(b"\\0")
        print(sorted(v.decode() for v in environ if v))  # as exec'd
        print(os.getsid(0) == os.getpid())
        os.write({keep_w}, b"kept")
        try:
            os.fstat({stray_w})
            print("stray open")
        except OSError:
            print("stray closed")
        print(sys.stdin.read())
        print("to-stderr", file=sys.stderr)
        """)
    fd = open_cgroup(run_cgroup)
    try:
        child = CgroupPopen(
            [sys.executable, "-u", "-c", script],
            cgroup_fd=fd,
            cwd=tmp_path,
            env={**PATH, "ONLY": "this"},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            pass_fds=(keep_w,),
        )
    finally:
        os.close(fd)
        os.close(keep_w)
        os.close(stray_w)
    out, _ = child.communicate(b"the prompt", timeout=20)
    lines = out.decode().splitlines()
    assert child.returncode == 0, out
    assert lines[0] == str(tmp_path)
    assert lines[1] == str(sorted(["ONLY=this", f"PATH={PATH['PATH']}"]))
    assert lines[2:] == ["True", "stray closed", "the prompt", "to-stderr"]
    assert os.read(keep_r, 10) == b"kept"
    os.close(keep_r)
    os.close(stray_r)


def test_signal_dispositions_and_mask_are_those_subprocess_gives(run_cgroup: Path) -> None:
    # Python ignores SIGPIPE and SIGXFSZ; a program it starts gets the defaults back, and
    # no signal blocked (the helper blocks all of them around the clone, in its thread).
    argv = ["grep", "-E", "^Sig(Ign|Blk|Cgt)", "/proc/self/status"]
    fd = open_cgroup(run_cgroup)
    try:
        direct = CgroupPopen(argv, cgroup_fd=fd, env=PATH, stdout=subprocess.PIPE)
    finally:
        os.close(fd)
    plain = subprocess.Popen(argv, env=PATH, stdout=subprocess.PIPE)
    assert direct.communicate(timeout=10)[0] == plain.communicate(timeout=10)[0]
    assert direct.returncode == plain.returncode == 0


@pytest.mark.parametrize(
    ("argv", "cwd", "error"),
    [
        (["no-such-program-here"], "/", FileNotFoundError),
        (["true"], "/no/such/directory", FileNotFoundError),
        (["./not-executable"], "/tmp", PermissionError),
    ],
)
def test_a_child_that_cannot_start_raises_as_subprocess_would(
    run_cgroup: Path, argv: list[str], cwd: str, error: type[OSError], tmp_path: Path
) -> None:
    if cwd == "/tmp":  # a file without execute permission (for root too: no x bit at all)
        cwd = str(tmp_path)
        (tmp_path / "not-executable").write_text("echo\n")
    fd = open_cgroup(run_cgroup)
    try:
        with pytest.raises(error) as raised:
            CgroupPopen(argv, cgroup_fd=fd, cwd=cwd, env=PATH, stdin=subprocess.DEVNULL)
    finally:
        os.close(fd)
    assert raised.value.filename in (argv[0], cwd)
    assert (run_cgroup / "cgroup.procs").read_text() == ""  # reaped, nothing left


async def test_a_run_s_process_is_started_without_the_stub_and_in_its_cgroup(
    tmp_path: Path,
) -> None:
    cgroup2()
    env = {**PATH, "CORRAL_RUN_ID": f"test-{uuid.uuid4().hex[:12]}"}
    containment = contain_for(env)
    assert containment.path is not None
    proc = await start_process(
        ["cat", "/proc/self/cgroup"],
        cwd=tmp_path,
        env=env,
        stdin=None,
        containment=containment,
    )
    popen = proc._transport.get_extra_info("subprocess")  # type: ignore[attr-defined]
    out, _ = await asyncio.wait_for(proc.communicate(), 10)
    assert isinstance(popen, CgroupPopen)
    assert popen.args == ["cat", "/proc/self/cgroup"]  # no /bin/sh stub in front
    assert own_v2_line(out.decode()) == v2_name(containment.path)
    await containment.kill()


def test_when_the_kernel_refuses_the_stub_starts_it_and_doctor_says_why(
    run_cgroup: Path, tmp_path: Path, forget_refusal: None
) -> None:
    # A descriptor that is not a cgroup2 directory: clone3 refuses it (EBADF), for real.
    not_a_cgroup = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    stub = [
        "/bin/sh",
        "-c",
        'echo $$ >"$0" || exit 126; exec "$@"',
        str(run_cgroup / "cgroup.procs"),
    ]

    def command(direct: bool) -> list[str]:
        return ["cat", "/proc/self/cgroup"] if direct else [*stub, "cat", "/proc/self/cgroup"]

    options = {"env": PATH, "stdin": subprocess.DEVNULL, "stdout": subprocess.PIPE}
    try:
        child = _popen(command, not_a_cgroup, options)
    finally:
        os.close(not_a_cgroup)
    out, _ = child.communicate(timeout=10)
    assert not isinstance(child, CgroupPopen)
    assert own_v2_line(out.decode()) == v2_name(run_cgroup)  # the stub moved it in
    ready, why = direct_status()
    assert not ready and "refused clone3" in why and "EBADF" in why
    check = check_cgroup_moves()
    assert check is not None and "moved into their cgroups by a stub" in check.detail
    assert "EBADF" in check.detail


def test_doctor_says_processes_start_inside_their_cgroups() -> None:
    cgroup2()
    check = check_cgroup_moves()
    assert check is not None and check.status == "ok"
    assert "start inside their cgroups" in check.detail
    assert "CLONE_INTO_CGROUP" in check.detail


def test_a_pids_limit_still_stops_a_fork_bomb_started_straight_into_a_cgroup(
    run_cgroup: Path, tmp_path: Path
) -> None:
    """The pids controller is on cgroup v1 on this (hybrid) machine: a process started into
    a cgroup2 directory keeps its parent's v1 cgroups, so their limits hold it from its
    first instruction. A parent in a v1 pids cgroup with pids.max = 12 starts a fork bomb
    straight into the run's cgroup2 directory; the bomb stays under 12 processes."""
    pids_root = Path("/sys/fs/cgroup/pids")
    if not (pids_root / "cgroup.procs").exists():
        pytest.skip("no cgroup v1 pids hierarchy here to hold the limit")
    limit = pids_root / f"corral-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    limit.mkdir()
    (limit / "pids.max").write_text("12")
    bomb = tmp_path / "bomb.sh"
    bomb.write_text(
        "#!/bin/sh\nn=0\nwhile [ $n -lt 200 ]; do sleep 30 & n=$((n+1)); done 2>/dev/null\n"
        "echo started\nwait\n"
    )
    bomb.chmod(0o755)
    parent = textwrap.dedent(f"""\
        import os, subprocess, sys
        from corral.runtime._direct import CgroupPopen, open_cgroup
        open({str(limit / "cgroup.procs")!r}, "w").write(str(os.getpid()))
        fd = open_cgroup({str(run_cgroup)!r})
        child = CgroupPopen([{str(bomb)!r}], cgroup_fd=fd, env={PATH!r},
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        print(child.pid, flush=True)
        sys.stdin.read()
        """)
    runner = subprocess.Popen(
        [sys.executable, "-c", parent],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert runner.stdout is not None
        bomb_pid = int(runner.stdout.readline())
        # The bomb's shell is in the run's cgroup2 directory and in the v1 limit.
        text = Path(f"/proc/{bomb_pid}/cgroup").read_text()
        assert own_v2_line(text) == v2_name(run_cgroup)
        end = time.monotonic() + 10
        while time.monotonic() < end and int((limit / "pids.events").read_text().split()[1]) == 0:
            time.sleep(0.05)
        in_run = (run_cgroup / "cgroup.procs").read_text().split()
        assert int((limit / "pids.events").read_text().split()[1]) > 0  # forks were refused
        assert 1 <= len(in_run) <= 12
        assert int((limit / "pids.current").read_text()) <= 12
    finally:
        for pid in (run_cgroup / "cgroup.procs").read_text().split():
            os.kill(int(pid), 9)
        runner.kill()
        runner.communicate()
        for _ in range(200):
            try:
                limit.rmdir()
                break
            except OSError:
                time.sleep(0.02)


async def test_a_sandboxed_run_starts_in_its_cgroup_and_sees_it_as_its_root(
    tmp_path: Path,
) -> None:
    """bubblewrap itself is started inside the run's cgroup (no stub before it), so the
    cgroup namespace it makes for the run is rooted there: the run sees ``0::/``."""
    cgroup2()
    runtime = SandboxRuntime(require_sandbox())
    env = {**PATH, "CORRAL_RUN_ID": f"test-{uuid.uuid4().hex[:12]}"}
    spec = LaunchSpec(["cat", "/proc/self/cgroup"], Path("/"), env, None, Isolation())
    process = await runtime.launch(spec)
    popen = process._proc._transport.get_extra_info("subprocess")  # type: ignore[attr-defined]
    assert isinstance(popen, CgroupPopen)
    assert any(arg.endswith("bwrap") for arg in popen.args)
    assert not any("cgroup.procs" in arg for arg in popen.args)  # no stub in front
    assert process.containment is not None and process.containment.path is not None
    host_view = own_v2_line(Path(f"/proc/{process.pid}/cgroup").read_text())
    out = bytearray()

    async def sink(chunk: bytes) -> None:
        out.extend(chunk)

    code = await asyncio.wait_for(process.pump(sink), 60)
    assert code == 0, out
    assert own_v2_line(out.decode()) == "/"
    assert host_view == v2_name(process.containment.path)


async def test_corral_spawn_direct_0_starts_through_the_stub_still_inside_the_cgroup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cgroup2()
    monkeypatch.setenv(_direct.OFF_ENV, "0")
    assert direct_status() == (False, "turned off by CORRAL_SPAWN_DIRECT=0")
    env = {**PATH, "CORRAL_RUN_ID": f"test-{uuid.uuid4().hex[:12]}"}
    containment = contain_for(env)
    assert containment.path is not None
    proc = await start_process(
        ["cat", "/proc/self/cgroup"], cwd=tmp_path, env=env, stdin=None, containment=containment
    )
    popen = proc._transport.get_extra_info("subprocess")  # type: ignore[attr-defined]
    out, _ = await asyncio.wait_for(proc.communicate(), 10)
    assert not isinstance(popen, CgroupPopen)
    assert str(containment.path / "cgroup.procs") in popen.args  # the stub's target
    assert own_v2_line(out.decode()) == v2_name(containment.path)
    await containment.kill()
