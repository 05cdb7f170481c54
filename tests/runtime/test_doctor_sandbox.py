"""`corral doctor`'s sandbox checks: bubblewrap, network namespaces, limit mechanisms."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from corral.doctor import check_sandbox, check_sandbox_limits, check_sandbox_walls
from corral.project import Project, load_project
from corral.runtime._limits import detect_limits
from corral.runtime.sandbox import INSTALL_HINT
from corral.scheduler.prepare import RUN_ID_BASE
from tests.runtime.conftest import require_sandbox


def sandbox_project(root: Path) -> Project:
    (root / "agents" / "dev").mkdir(parents=True)
    (root / "config.toml").write_text(f'[state]\nurl = "sqlite:///{root / "state.db"}"\n')
    (root / "agents" / "dev" / "SKILL.md").write_text("---\nname: dev\n---\nwork\n")
    (root / "agents" / "dev" / "config.toml").write_text(
        '[harness]\ncommand = ["true"]\n[runtime]\ntype = "sandbox"\nnetwork = "none"\n'
    )
    return load_project(root)


async def test_bubblewrap_works_here_with_and_without_a_network(tmp_path: Path) -> None:
    require_sandbox()
    check = await check_sandbox(sandbox_project(tmp_path))
    assert check.status == "ok", check
    assert check.detail.startswith("bubblewrap ")
    assert "with and without a network (used by dev)" in check.detail


@pytest.mark.parametrize("with_project", [False, True])
async def test_missing_bubblewrap_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_project: bool
) -> None:
    project = sandbox_project(tmp_path / "p") if with_project else None
    monkeypatch.setenv("PATH", str(tmp_path))
    check = await check_sandbox(project)
    # Only a project that uses the sandbox makes its absence a failure.
    assert check.status == ("fail" if with_project else "warn")
    assert "bubblewrap (bwrap), which is not installed" in check.detail
    assert check.fix == INSTALL_HINT


def test_the_limit_mechanisms_are_named(tmp_path: Path) -> None:
    support = detect_limits()
    check = check_sandbox_limits(sandbox_project(tmp_path))
    assert check.name == "sandbox limits"
    assert support.memory_mechanism in check.detail
    if support.cpu is not None:
        assert check.status == "ok" and support.cpu.describe("cpu") in check.detail
    else:
        assert check.status == "warn" and "cpus NOT enforced" in check.detail
        assert check.fix is not None


async def test_doctor_says_what_keeps_runs_out_of_corral_state(tmp_path: Path) -> None:
    require_sandbox()
    check = await check_sandbox_walls(sandbox_project(tmp_path))
    assert check.name == "sandbox walls"
    if os.geteuid() == 0:
        # It really switched a sandboxed process to a uid of the documented range.
        assert check.status == "ok", check
        assert f"uid of its own ({RUN_ID_BASE}-" in check.detail
    else:
        assert check.status == "warn" and "only hidden paths" in check.detail
        assert check.fix is not None and "root" in check.fix
