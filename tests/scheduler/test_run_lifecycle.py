"""A run's whole life through the executor: pre hooks, dynamic context, credentials,
the agent, post hooks, the log (redacted, capped), presets. Real processes, both stores."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from corral.credentials import CredentialStore
from corral.project import Project
from corral.scheduler.executor import RunExecutor
from corral.store import RunState, Store
from tests.scheduler.test_executor import Collect, claim, make_project

TOKEN = "ghp_" + "Zq7" * 12  # a realistic-looking token value


def executor(project: Project, store: Store, tmp_path: Path, **options: object) -> RunExecutor:
    creds = CredentialStore(tmp_path / "home" / "credentials")
    return RunExecutor(project, store, credentials=creds, **options)  # type: ignore[arg-type]


def hooks(pre: list[str] | None = None, post: list[str] | None = None) -> str:
    return f"\n[hooks]\npre = {json.dumps(pre or [])}\npost = {json.dumps(post or [])}\n"


async def test_pre_hooks_run_in_order_before_the_agent(tmp_path: Path, store: Store) -> None:
    pre = [
        'echo "one $CORRAL_RUN_ID" > staged.txt',
        "echo two >> staged.txt; echo hook-output",
    ]
    project = make_project(tmp_path, 'cat staged.txt; echo "agent in $PWD"', hooks(pre))
    out = Collect()
    result = await executor(project, store, tmp_path).execute(await claim(store, project), out)
    run = result.run
    assert run.state is RunState.SUCCEEDED, run.error
    text = out.data.decode()
    assert f"one {run.id}\ntwo\n" in text and "hook-output" in text
    assert f"agent in {tmp_path / 'proj' / '.corral' / 'runs' / run.id}" in text
    first, second = text.index("[corral] pre hook 1"), text.index("[corral] pre hook 2")
    assert first < second < text.index(f"one {run.id}\n")


async def test_a_failing_pre_hook_aborts_the_run(tmp_path: Path, store: Store) -> None:
    pre = ["echo first", "echo broke >&2; exit 3", "touch never"]
    project = make_project(tmp_path, "touch agent-ran", hooks(pre))
    ex = executor(project, store, tmp_path)
    run = (await ex.execute(await claim(store, project))).run
    assert run.state is RunState.FAILED and run.exit_code == 3
    assert (
        run.error
        == "pre hook 2 (`echo broke >&2; exit 3`) exited with code 3; its output is in the run log"
    )
    workdir = ex.workdir(run.id)
    assert not (workdir / "agent-ran").exists() and not (workdir / "never").exists()
    log = ex.log_path(run.id).read_text()
    assert "broke" in log and "first" in log


async def test_a_pre_hook_that_hangs_is_stopped(tmp_path: Path, store: Store) -> None:
    project = make_project(tmp_path, "true", hooks(["sleep 30"]))
    run = (
        await executor(project, store, tmp_path, hook_timeout=0.5).execute(
            await claim(store, project)
        )
    ).run
    assert run.state is RunState.FAILED and run.error is not None
    assert "timed out after 0.5 s" in run.error


async def test_post_hooks_run_after_a_failure_and_their_failure_is_only_logged(
    tmp_path: Path, store: Store
) -> None:
    post = ["exit 9", 'echo "post saw $CORRAL_AGENT" > post.txt']
    project = make_project(tmp_path, "echo working; exit 2", hooks(post=post))
    ex = executor(project, store, tmp_path)
    run = (await ex.execute(await claim(store, project))).run
    assert run.state is RunState.FAILED and run.exit_code == 2
    assert run.error == "exited with code 2"  # the post hook's failure changes nothing
    assert (ex.workdir(run.id) / "post.txt").read_text() == "post saw hello\n"
    log = ex.log_path(run.id).read_text()
    assert "post hook 1 (`exit 9`) exited with code 9" in log
    assert log.index("working") < log.index("post hook 1")


async def test_dynamic_context_fills_the_system_prompt(tmp_path: Path, store: Store) -> None:
    project = make_project(tmp_path, 'cat "$CORRAL_SYSTEM_PROMPT_FILE"', hooks(["echo 42 > n"]))
    skill = project.root / "agents" / "hello" / "SKILL.md"
    skill.write_text(
        "---\nname: hello\n---\n"
        'Count: !`cat n`. Shared: !`cat "$CORRAL_SHARED_DIR/notes.md"`.\n'
        "Broken: !`cat /nonexistent/file`.\n"
        "Big: !`head -c 100000 /dev/zero | tr '\\0' x`\n"
    )
    (project.root / "shared").mkdir(exist_ok=True)
    (project.root / "shared" / "notes.md").write_text("use tabs\n")
    from corral.project import load_project

    project = load_project(project.root)
    out = Collect()
    run = (
        await executor(project, store, tmp_path, log_limit=10**7).execute(
            await claim(store, project), out
        )
    ).run
    assert run.state is RunState.SUCCEEDED
    text = out.data.decode()
    assert "Count: 42. Shared: use tabs." in text
    assert "Broken: [Error: cat: /nonexistent/file: No such file or directory]" in text
    assert "x" * 65536 + "\n[output cut at 65536 bytes; 34464 more bytes dropped]" in text


async def test_credentials_reach_the_run_and_never_its_log(tmp_path: Path, store: Store) -> None:
    creds = CredentialStore(tmp_path / "home" / "credentials")
    creds.add("github_token", "default", {"token": TOKEN})
    command = (
        'echo "env=$GITHUB_TOKEN gh=$GH_TOKEN"; '
        'cat "$CORRAL_WORKDIR/.corral/credentials/github_token/default/token"; echo; '
        'grep -c "GITHUB_TOKEN" "$CORRAL_PROMPT_FILE"'
    )
    project = make_project(
        tmp_path,
        command,
        "\n[harness.env]\n",
    )
    config = project.root / "agents" / "hello" / "config.toml"
    config.write_text('credentials = ["github_token"]\n' + config.read_text())
    from corral.project import load_project

    project = load_project(project.root)
    out = Collect()
    ex = RunExecutor(project, store, credentials=creds)
    run = (await ex.execute(await claim(store, project), out)).run
    assert run.state is RunState.SUCCEEDED, run.error
    streamed = out.data.decode()
    stored = ex.log_path(run.id).read_text()
    for text in (streamed, stored):
        assert TOKEN not in text
        assert "env=[REDACTED] gh=[REDACTED]" in text
    prompt = (ex.workdir(run.id) / ".corral" / "prompt.md").read_text()
    assert "<credential-context>" in prompt and TOKEN not in prompt


async def test_a_missing_credential_fails_the_run_before_it_starts(
    tmp_path: Path, store: Store
) -> None:
    project = make_project(tmp_path, "touch started")
    config = project.root / "agents" / "hello" / "config.toml"
    config.write_text('credentials = ["github_token", "env:SENTRY_TOKEN"]\n' + config.read_text())
    from corral.project import load_project

    project = load_project(project.root)
    ex = executor(project, store, tmp_path)
    run = (await ex.execute(await claim(store, project))).run
    assert run.state is RunState.FAILED and run.started_at is None
    assert run.error is not None
    assert "corral creds add github_token" in run.error
    assert "corral creds add env:SENTRY_TOKEN" in run.error
    assert not (ex.workdir(run.id) / "started").exists()


async def test_the_log_is_capped_with_a_marker(tmp_path: Path, store: Store) -> None:
    project = make_project(tmp_path, "head -c 5000 /dev/zero | tr '\\0' y; echo; echo tail")
    ex = executor(project, store, tmp_path, log_limit=1000)
    out = Collect()
    run = (await ex.execute(await claim(store, project), out)).run
    assert run.state is RunState.SUCCEEDED
    log = ex.log_path(run.id).read_bytes()
    assert log.startswith(b"y" * 1000)
    assert log.endswith(
        b"[corral: the log was cut at 1000 bytes; 4006 more bytes of output were not kept]\n"
    )
    assert out.data.endswith(b"tail\n")  # the live stream is not cut


async def test_a_preset_runs_its_exact_command_line(tmp_path: Path, store: Store) -> None:
    fake = tmp_path / "bin" / "claude"
    fake.parent.mkdir()
    record = tmp_path / "claude.json"
    recorder = (
        "import json, sys; "
        f"json.dump({{'argv': sys.argv[1:], 'stdin': sys.stdin.read()}}, open('{record}', 'w'))"
    )
    fake.write_text(f'#!/bin/sh\npython3 -c "{recorder}" "$@"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    project = make_project(tmp_path, "unused")
    config = project.root / "agents" / "hello" / "config.toml"
    text = "\n".join(ln for ln in config.read_text().splitlines() if not ln.startswith("command ="))
    config.write_text(text + '\npreset = "claude-code"\n')
    from corral.project import load_project

    project = load_project(project.root)
    path = os.environ["PATH"]
    os.environ["PATH"] = f"{fake.parent}:{path}"
    try:
        run = (await executor(project, store, tmp_path).execute(await claim(store, project))).run
    finally:
        os.environ["PATH"] = path
    assert run.state is RunState.SUCCEEDED, run.error
    seen = json.loads(record.read_text())
    system = (project.root / "agents" / "hello" / "SKILL.md").read_text().split("---\n", 2)[2]
    assert seen["argv"] == [
        "-p",
        "--verbose",
        "--output-format",
        "stream-json",
        "--dangerously-skip-permissions",
        "--append-system-prompt",
        system.rstrip("\n"),
    ]
    assert seen["stdin"].startswith("<agent-config>")
