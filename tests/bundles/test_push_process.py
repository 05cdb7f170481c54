"""`corral push` against a real `corral start`: the control plane applies the pushed
project without a restart, the next run uses it and records its bundle, and a bad bundle
leaves the running project untouched."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from corral.bundles import pack
from corral.store import open_store
from tests.scheduler.helpers import write_project
from tests.scheduler.procs import SchedulerProcess, wait_until
from tests.scheduler.test_reload import HOOKED, PROJECT, enqueue, finished, log_of

SHOW_SKILL = 'cat "$CORRAL_AGENT_DIR/SKILL.md"'


def corral(
    root: Path, url: str, *args: str, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env.update({"CORRAL_STATE_URL": url, "HOME": str(root.parent)})
    if token is not None:
        env["CORRAL_OPERATOR_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "corral", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def skill(root: Path, text: str) -> None:
    (root / "agents" / "dev" / "SKILL.md").write_text(f"---\nname: dev\n---\n{text}\n")


async def _publish_raw(url: str, root: Path) -> str:
    packed = pack(root)
    async with await open_store(url) as store:
        await store.publish_bundle(packed.hash, packed.data, packed.manifest(), actor="test")
    return packed.hash


@pytest.mark.slow
def test_push_reaches_a_running_control_plane(tmp_path: Path, store_url: str) -> None:
    root = tmp_path / "p"
    write_project(root, {"dev": {"command": SHOW_SKILL}})
    skill(root, "skill version one")
    with SchedulerProcess(root, store_url, tmp_path / "s.log") as scheduler:
        wait_until(lambda: "started; gateway on" in scheduler.output(), 30)
        before = finished(store_url, enqueue(store_url, "dev"))
        assert "skill version one" in log_of(root, before) and before.bundle is None

        # An invalid project is refused with the loader's errors; nothing is published.
        (root / "agents" / "dev" / "config.toml").write_text("scale = [\n")
        refused = corral(root, store_url, "push")
        assert refused.returncode != 0 and "agents/dev/config.toml" in refused.stderr
        assert "[]" in corral(root, store_url, "bundles", "ls", "--json").stdout

        # A changed SKILL.md, pushed: the next run uses it and records the bundle.
        write_project(root, {"dev": {"command": SHOW_SKILL}})
        skill(root, "skill version two")
        pushed = corral(root, store_url, "push", "--note", "v2", "--json")
        assert pushed.returncode == 0, pushed.stderr
        hash_two = json.loads(pushed.stdout)["bundle"]["hash"]
        wait_until(lambda: f"running bundle {hash_two}" in scheduler.output(), 30)
        run = finished(store_url, enqueue(store_url, "dev"))
        assert "skill version two" in log_of(root, run)
        assert run.bundle == hash_two
        assert json.loads(corral(root, store_url, "runs", "--json").stdout)[0]["bundle"] == (
            hash_two
        )
        shown_run = corral(root, store_url, "runs", "show", run.id)
        assert shown_run.returncode == 0 and f"bundle   {hash_two}" in shown_run.stdout

        # The same tree again: a no-op that says so.
        again = corral(root, store_url, "push")
        assert again.returncode == 0 and "already current: nothing changed" in again.stdout

        # Edits of the directory alone no longer change what runs: the store's head does.
        skill(root, "skill version three, not pushed")
        run = finished(store_url, enqueue(store_url, "dev"))
        assert "skill version two" in log_of(root, run)

        # A bad bundle written to the store behind push's back never replaces the project.
        (root / "agents" / "dev" / "config.toml").write_text("scale = [\n")
        bad = asyncio.run(_publish_raw(store_url, root))
        wait_until(lambda: f"bundle {bad} does not load" in scheduler.output(), 30)
        run = finished(store_url, enqueue(store_url, "dev"))
        assert "skill version two" in log_of(root, run) and run.bundle == hash_two

        # A rollback to the first pushed bundle by a prefix of its hash.
        write_project(root, {"dev": {"command": SHOW_SKILL}})
        skill(root, "skill version four")
        assert corral(root, store_url, "push").returncode == 0
        rolled = corral(root, store_url, "bundles", "apply", hash_two[:19])
        assert rolled.returncode == 0, rolled.stderr
        wait_until(lambda: scheduler.output().count(f"running bundle {hash_two}") >= 2, 30)
        run = finished(store_url, enqueue(store_url, "dev"))
        assert "skill version two" in log_of(root, run) and run.bundle == hash_two
        shown = corral(root, store_url, "bundles", "show", hash_two[:19])
        assert "(current)" in shown.stdout and "note     v2" in shown.stdout
        assert scheduler.stop() == 0


@pytest.mark.slow
def test_push_through_the_control_api(tmp_path: Path, store_url: str) -> None:
    """With an environment that names the gateway, push uploads over the control API with
    an operator token, and the control plane applies it."""
    root = tmp_path / "p"
    write_project(root, {"dev": {"command": SHOW_SKILL}})
    skill(root, "from the directory")
    with SchedulerProcess(root, store_url, tmp_path / "s.log") as scheduler:
        wait_until(lambda: "started; gateway on" in scheduler.output(), 30)
        found = re.search(r"gateway on (http://\S+)", scheduler.output())
        assert found is not None
        environments = tmp_path / ".corral" / "environments"
        environments.mkdir(parents=True, exist_ok=True)
        (environments / "remote.toml").write_text(f'[gateway]\nurl = "{found.group(1)}"\n')
        made = corral(root, store_url, "token", "create", "pusher", "--json")
        token = json.loads(made.stdout)["token"]

        skill(root, "pushed over http")
        refused = corral(root, store_url, "-E", "remote", "push", token="wrong")
        assert refused.returncode != 0 and "refused the operator token" in refused.stderr
        pushed = corral(root, store_url, "-E", "remote", "push", "--json", token=token)
        assert pushed.returncode == 0, pushed.stderr
        answer = json.loads(pushed.stdout)
        assert answer["stored"] and answer["bundle"]["createdBy"] == "token:pusher"
        hash_ = answer["bundle"]["hash"]
        wait_until(lambda: f"running bundle {hash_}" in scheduler.output(), 30)
        run = finished(store_url, enqueue(store_url, "dev"))
        assert "pushed over http" in log_of(root, run) and run.bundle == hash_
        listed = corral(root, store_url, "-E", "remote", "bundles", "ls", "--json", token=token)
        assert json.loads(listed.stdout)["current"]["hash"] == hash_
        assert scheduler.stop() == 0


def test_a_project_that_loads_only_with_what_does_not_travel_is_refused(
    tmp_path: Path, store_url: str
) -> None:
    """An agent listening to a webhook source that only the local .env.toml defines: the
    directory loads, the bundle would not; push says so and publishes nothing."""
    root = tmp_path / "p"
    write_project(root, {"dev": {"command": "true"}})
    (root / ".env.toml").write_text(PROJECT)
    with (root / "agents" / "dev" / "config.toml").open("a") as config:
        config.write(HOOKED)
    refused = corral(root, store_url, "push")
    assert refused.returncode == 2, refused.stderr
    assert "loads from its directory but not as a bundle" in refused.stderr
    assert "agents/dev/config.toml" in refused.stderr
    assert json.loads(corral(root, store_url, "bundles", "ls", "--json").stdout)["bundles"] == []
