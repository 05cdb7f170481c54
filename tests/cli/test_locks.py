"""`corral locks` and `corral locks release KEY --force` against a real `corral start`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.conftest import Corral
from tests.cli.test_fleet import runs, started
from tests.cli.test_walking_skeleton import set_command
from tests.processes import wait_until

pytestmark = pytest.mark.slow

KEY = "github://acme/app/issues/7"


def locks(corral: Corral, project: Path) -> list[dict[str, object]]:
    result = corral("locks", "--json", cwd=project)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_list_and_force_release(corral: Corral, project: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    # The first run holds the key; the second waits for it, then says when it got it.
    set_command(
        project,
        f'if [ -e "{out}/first" ]; then rlock --wait --timeout 60 "{KEY}" > "{out}/second.json";'
        f' else touch "{out}/first"; rlock "{KEY}" > /dev/null; fi; sleep 30',
    )
    scale = project / "agents" / "hello" / "config.toml"
    # scale 2, and no schedule: a cron tick must not add a third run to this story
    config = scale.read_text().replace("scale = 1", "scale = 2")
    scale.write_text(config.replace('schedule = "0 0 1 1 *"', ""))
    with started(corral, project, tmp_path):
        assert corral("locks", cwd=project).stdout.strip() == "no locks are held"
        assert corral("run", "hello", cwd=project).returncode == 0
        wait_until(lambda: len(locks(corral, project)) == 1)
        assert corral("run", "hello", cwd=project).returncode == 0
        wait_until(lambda: locks(corral, project)[0]["waiting"] != [])
        (held,) = locks(corral, project)
        first = str(held["holder"])
        assert held["key"] == KEY and held["agent"] == "hello" and held["expired"] is False
        table = corral("locks", cwd=project).stdout
        assert KEY in table and first in table and "expires in" in table

        refused = corral("locks", "release", KEY, cwd=project)
        assert refused.returncode != 0 and "--force" in refused.stderr
        missing = corral("locks", "release", "deploy://nothing", "--force", cwd=project)
        assert missing.returncode != 0 and "no lock on" in missing.stderr

        released = corral("locks", "release", KEY, "--force", cwd=project)
        assert released.returncode == 0, released.stderr
        assert f"held by run {first}" in released.stdout
        # The waiting run is handed the lock at once and its rlock --wait answers.
        wait_until(lambda: (out / "second.json").exists() and (out / "second.json").stat().st_size)
        answer = json.loads((out / "second.json").read_text())
        assert answer["ok"] is True and answer["key"] == KEY
        (now_held,) = locks(corral, project)
        assert now_held["holder"] != first
        assert int(str(now_held["token"])) > int(str(held["token"]))
        assert corral("stop", "--now", cwd=project).returncode == 0
    assert all(r["state"] == "killed" for r in runs(corral, project))


def test_a_run_retrying_a_refused_rlock_is_listed(
    corral: Corral, project: Path, tmp_path: Path
) -> None:
    """A plain `rlock` refused and retried in a loop (how skills written for Action Llama
    wait) shows as retrying the key, beside the holder and apart from `--wait` waiters."""
    out = tmp_path / "out"
    out.mkdir()
    set_command(
        project,
        f'if [ -e "{out}/first" ]; then'
        f'  for i in 1 2 3; do rlock "{KEY}" > /dev/null || sleep 1; done; touch "{out}/gave-up";'
        f' else touch "{out}/first"; rlock "{KEY}" > /dev/null; fi; sleep 60',
    )
    scale = project / "agents" / "hello" / "config.toml"
    config = scale.read_text().replace("scale = 1", "scale = 2")
    scale.write_text(config.replace('schedule = "0 0 1 1 *"', ""))
    with started(corral, project, tmp_path):
        assert corral("run", "hello", cwd=project).returncode == 0
        wait_until(lambda: len(locks(corral, project)) == 1)
        assert corral("run", "hello", cwd=project).returncode == 0
        wait_until(lambda: locks(corral, project)[0]["wanting"] != [])
        (held,) = locks(corral, project)
        (retrying,) = held["wanting"]  # type: ignore[misc]
        assert retrying != held["holder"] and held["waiting"] == []
        table = corral("locks", cwd=project).stdout
        assert "retrying" in table
        wait_until(lambda: (out / "gave-up").exists())
        assert corral("stop", "--now", cwd=project).returncode == 0
