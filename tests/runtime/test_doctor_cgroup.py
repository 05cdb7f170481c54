"""`corral doctor`'s word on how fast a run's processes enter their cgroups: cgroup2
without ``favordynmods`` makes every move wait for an RCU grace period."""

from __future__ import annotations

from pathlib import Path

from corral.doctor import cgroup_moves_check, check_cgroup_moves
from corral.runtime._contain import contain_support
from corral.runtime._direct import direct_status
from corral.runtime._limits import parse_cgroup_mounts

PLAIN = "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
FAVOURED = "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,favordynmods\n"
OTHER = "50 31 0:40 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
BASE = Path("/sys/fs/cgroup/unified/system.slice/corral-runs")


def test_the_hierarchy_options_of_a_cgroup2_mount_are_read() -> None:
    (plain,) = parse_cgroup_mounts(PLAIN)
    (favoured,) = parse_cgroup_mounts(FAVOURED)
    assert "favordynmods" not in plain.options and "favordynmods" in favoured.options


def test_without_favordynmods_doctor_names_the_wait_and_the_remount() -> None:
    check = cgroup_moves_check(BASE, parse_cgroup_mounts(OTHER + PLAIN))
    assert check is not None and check.status == "ok"
    assert "RCU grace period" in check.detail
    assert "mount -o remount,favordynmods /sys/fs/cgroup/unified" in check.detail


def test_started_inside_their_cgroups_doctor_says_nothing_waits() -> None:
    check = cgroup_moves_check(BASE, parse_cgroup_mounts(PLAIN), (True, "clone3 helper"))
    assert check is not None and check.status == "ok"
    assert "start inside their cgroups (clone3 helper)" in check.detail
    assert "RCU grace period" not in check.detail


def test_with_favordynmods_doctor_says_moves_do_not_wait() -> None:
    check = cgroup_moves_check(BASE, parse_cgroup_mounts(FAVOURED))
    assert check is not None and "without waiting" in check.detail


def test_runs_outside_any_cgroup2_mount_get_no_word() -> None:
    assert cgroup_moves_check(Path("/elsewhere/corral-runs"), parse_cgroup_mounts(PLAIN)) is None


def test_the_check_here_follows_this_machine_s_mount() -> None:
    """On this machine the check reads the real mount that holds corral's runs: unless
    processes start straight inside their cgroups, it speaks of waiting exactly when that
    cgroup2 hierarchy lacks favordynmods. (How long a move
    waits depends on the kernel's state, not only on the option: it is measured in
    docs/benchmarks.md, not asserted here.)"""
    support = contain_support()
    check = check_cgroup_moves()
    if support.kind != "cgroup2" or support.base is None:
        assert check is None
        return
    assert check is not None and check.status == "ok"
    if direct_status()[0]:  # started inside their cgroups: nothing moves, nothing waits
        assert "start inside their cgroups" in check.detail
        assert "RCU grace period" not in check.detail
        return
    mountinfo = Path("/proc/self/mountinfo").read_text()
    favoured = any(
        "favordynmods" in m.options
        for m in parse_cgroup_mounts(mountinfo)
        if m.version == 2 and support.base.is_relative_to(m.mountpoint)
    )
    assert ("without waiting" in check.detail) == favoured
    assert ("RCU grace period" in check.detail) == (not favoured)
