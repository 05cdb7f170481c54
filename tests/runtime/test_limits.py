"""Finding where sandboxed runs' limits can be enforced: /proc parsing and the knobs."""

from __future__ import annotations

from pathlib import Path

from corral.runtime._limits import (
    CgroupMount,
    _knobs,
    _own_dir,
    detect_limits,
    parse_cgroup_mounts,
    parse_proc_cgroup,
)

HYBRID_CGROUP = """\
9:name=systemd:/
4:memory:/process_api/0d87
2:cpu,cpuacct:/
0::/
"""

HYBRID_MOUNTINFO = """\
30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate
34 30 0:30 / /sys/fs/cgroup/memory rw,nosuid shared:14 - cgroup cgroup rw,memory
35 30 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:15 - cgroup cgroup rw,cpu,cpuacct
36 30 0:32 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
40 25 8:1 / /var/lib/with\\040space rw - ext4 /dev/sda1 rw
"""

V2_CONTAINER_MOUNTINFO = """\
612 611 0:29 /docker/abc /sys/fs/cgroup ro,nosuid,nodev,noexec - cgroup2 cgroup rw,nsdelegate
"""


def test_proc_self_cgroup_maps_each_controller_to_its_path() -> None:
    assert parse_proc_cgroup(HYBRID_CGROUP) == {
        "name=systemd": "/",
        "memory": "/process_api/0d87",
        "cpu": "/",
        "cpuacct": "/",
        "": "/",
    }


def test_cgroup_mounts_are_read_from_mountinfo() -> None:
    mounts = parse_cgroup_mounts(HYBRID_MOUNTINFO)
    assert [(m.version, str(m.mountpoint)) for m in mounts] == [
        (2, "/sys/fs/cgroup/unified"),
        (1, "/sys/fs/cgroup/memory"),
        (1, "/sys/fs/cgroup/cpu,cpuacct"),
        (1, "/sys/fs/cgroup/systemd"),
    ]
    assert {"cpu", "cpuacct"} <= mounts[2].controllers
    assert "memory" not in mounts[2].controllers


def test_own_cgroup_directory_under_a_mount() -> None:
    memory = CgroupMount(1, Path("/sys/fs/cgroup/memory"), "/", frozenset({"memory"}))
    assert _own_dir(memory, "/process_api/0d87") == Path("/sys/fs/cgroup/memory/process_api/0d87")
    assert _own_dir(memory, "/") == Path("/sys/fs/cgroup/memory")
    # A container that sees /docker/abc mounted as its /sys/fs/cgroup.
    [v2] = parse_cgroup_mounts(V2_CONTAINER_MOUNTINFO)
    assert v2.root == "/docker/abc"
    assert _own_dir(v2, "/docker/abc") == Path("/sys/fs/cgroup")
    assert _own_dir(v2, "/docker/abc/sub") == Path("/sys/fs/cgroup/sub")
    assert _own_dir(v2, "/docker/other") is None


def test_the_knobs_for_each_version() -> None:
    assert _knobs(2, "memory", 1 << 30) == [("memory.max", "1073741824"), ("memory.swap.max?", "0")]
    assert _knobs(1, "memory", 1 << 30) == [
        ("memory.limit_in_bytes", "1073741824"),
        ("memory.memsw.limit_in_bytes?", "1073741824"),
    ]
    assert _knobs(2, "cpu", 1.5) == [("cpu.max", "150000 100000")]
    assert _knobs(1, "cpu", 0.25) == [
        ("cpu.cfs_period_us", "100000"),
        ("cpu.cfs_quota_us", "25000"),
    ]
    assert _knobs(2, "cpu", 0.001) == [("cpu.max", "1000 100000")]  # the kernel's minimum


def test_detection_here_names_a_usable_base_or_a_reason() -> None:
    support = detect_limits()
    for controller, base in (("memory", support.memory), ("cpu", support.cpu)):
        if base is None:
            assert support.why_not[controller]
        else:
            assert base.path.is_dir() and base.path.name == "corral"
            assert controller not in support.why_not


def test_detection_without_proc_says_why(tmp_path: Path) -> None:
    support = detect_limits(tmp_path)
    assert support.memory is None and support.cpu is None
    assert "cannot read this process's cgroups" in support.why_not["cpu"]
    assert support.memory_mechanism.startswith("RLIMIT_AS")
