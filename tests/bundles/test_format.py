"""The bundle format: deterministic, content-addressed, and nothing leaves the project that
must not."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from corral.bundles import (
    MAX_FILE_BYTES,
    BundleError,
    agent_archive,
    bundle_hash,
    normalize_hash,
    pack,
    read_entries,
    unpack,
)
from tests.scheduler.helpers import write_project


def _project(root: Path) -> Path:
    write_project(root, {"dev": {"command": "echo dev"}, "qa": {"command": "echo qa"}})
    (root / "shared").mkdir()
    (root / "shared" / "context.md").write_text("how we work\n")
    (root / "agents" / "dev" / "tools").mkdir()
    script = root / "agents" / "dev" / "tools" / "lint.sh"
    script.write_text("#!/bin/sh\necho lint\n")
    script.chmod(0o755)
    return root


def test_the_same_tree_gives_the_same_hash_whatever_its_times_and_modes(
    tmp_path: Path,
) -> None:
    first = pack(_project(tmp_path / "a"))
    second_root = _project(tmp_path / "b")
    for path in second_root.rglob("*"):
        os.utime(path, (1_000_000, 1_000_000))
    (second_root / "shared" / "context.md").chmod(0o600)  # read bits are not kept
    second = pack(second_root)
    assert first.hash == second.hash and first.data == second.data
    assert first.hash.startswith("sha256:") and first.hash == bundle_hash(first.data)
    assert set(first.agents) == {"dev", "qa"} and first.agents == second.agents

    (second_root / "agents" / "qa" / "SKILL.md").write_text("---\nname: qa\n---\n# v2\n")
    third = pack(second_root)
    assert third.hash != first.hash
    assert third.agents["dev"] == first.agents["dev"]  # only qa's own bundle changed
    assert third.agents["qa"] != first.agents["qa"]


def test_entries_are_sorted_with_fixed_metadata_and_round_trip(tmp_path: Path) -> None:
    packed = pack(_project(tmp_path / "p"))
    with tarfile.open(fileobj=io.BytesIO(packed.data)) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names)
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.uname == "" for m in members)
    modes = {m.name: m.mode for m in members}
    assert modes["agents/dev/tools/lint.sh"] == 0o755
    assert modes["shared/context.md"] == 0o644

    target = tmp_path / "out"
    unpack(packed.data, target, expect=packed.hash)
    assert (target / "shared" / "context.md").read_text() == "how we work\n"
    assert os.access(target / "agents" / "dev" / "tools" / "lint.sh", os.X_OK)
    assert pack(target).hash == packed.hash


def test_an_agent_bundle_holds_the_project_files_and_that_agent_only(tmp_path: Path) -> None:
    packed = pack(_project(tmp_path / "p"))
    cut = agent_archive(read_entries(packed.data), "dev")
    assert bundle_hash(cut) == packed.agents["dev"]
    paths = {e.path for e in read_entries(cut)}
    assert "config.toml" in paths and "shared/context.md" in paths
    assert "agents/dev/SKILL.md" in paths and not any(p.startswith("agents/qa/") for p in paths)
    with pytest.raises(BundleError, match="no agent 'nobody'"):
        agent_archive(read_entries(packed.data), "nobody")


def test_local_state_vcs_secrets_and_caches_do_not_travel(tmp_path: Path) -> None:
    root = _project(tmp_path / "p")
    dev = root / "agents" / "dev"
    leaks = [
        root / ".corral" / "state.db",
        root / ".env.toml",
        root / "agents" / ".git" / "config",
        dev / ".git" / "HEAD",
        dev / ".env",
        dev / ".env.local",
        dev / "server.pem",
        dev / "deploy.key",
        dev / "id_ed25519",
        dev / ".netrc",
        dev / "credentials.json",
        dev / "__pycache__" / "x.cpython-311.pyc",
        root / "shared" / "notes.md~",
        root / "README.md",  # outside config.toml, agents/ and shared/
    ]
    for path in leaks:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("secret")
    packed = pack(root)
    paths = {e.path for e in packed.entries}
    assert not any("secret" == e.data.decode() for e in packed.entries), paths
    assert "agents/dev/.env" in packed.skipped and "agents/dev/.git/" in packed.skipped
    assert "shared/context.md" in paths
    assert packed.hash == pack(_project(tmp_path / "clean")).hash


def test_a_symbolic_link_out_of_the_project_is_refused(tmp_path: Path) -> None:
    root = _project(tmp_path / "p")
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("not yours")
    (root / "shared" / "leak.txt").symlink_to(outside)
    with pytest.raises(BundleError, match=r"shared/leak.txt: a symbolic link that leads out"):
        pack(root)
    (root / "shared" / "leak.txt").unlink()
    (root / "shared" / "dangling").symlink_to(tmp_path / "missing")
    with pytest.raises(BundleError, match=r"shared/dangling: a symbolic link that leads nowhere"):
        pack(root)
    (root / "shared" / "dangling").unlink()
    # A link that stays inside travels as the file it points at.
    (root / "agents" / "qa" / "context.md").symlink_to(root / "shared" / "context.md")
    packed = pack(root)
    inside = {e.path: e.data for e in packed.entries}
    assert inside["agents/qa/context.md"] == b"how we work\n"


def test_a_file_over_the_size_limit_is_named(tmp_path: Path) -> None:
    root = _project(tmp_path / "p")
    big = root / "shared" / "dump.bin"
    with big.open("wb") as handle:
        handle.truncate(MAX_FILE_BYTES + 1)
    with pytest.raises(BundleError, match=r"shared/dump.bin is \d+ bytes, over the bundle's"):
        pack(root)


def test_bytes_that_are_not_a_safe_bundle_are_refused(tmp_path: Path) -> None:
    packed = pack(_project(tmp_path / "p"))
    with pytest.raises(BundleError, match="damaged"):
        read_entries(packed.data[:-1] + b"x", expect=packed.hash)
    for name in ("../escape", "/etc/passwd", "agents/../../x", "elsewhere/file", "shared"):
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as tar:
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
        with pytest.raises(BundleError, match="bundle entry"):
            unpack(out.getvalue(), tmp_path / "never")
    assert not (tmp_path / "escape").exists()
    # A file where the next entry needs a directory.
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name in ("shared/a", "shared/a/b"):
            info = tarfile.TarInfo(name)
            tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(BundleError, match="cannot be written"):
        unpack(out.getvalue(), tmp_path / "clash")
    with pytest.raises(BundleError, match="not a bundle hash"):
        normalize_hash("sha256:xyz")
    assert normalize_hash(packed.hash.removeprefix("sha256:").upper()) == packed.hash
