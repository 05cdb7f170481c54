"""The walking skeleton as a new user meets it: new, run, runs, config, doctor, db."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from tests.cli.conftest import Corral
from tests.processes import alive, corral_process, wait_until


def set_agent_option(project: Path, text: str) -> None:
    path = project / "agents" / "hello" / "config.toml"
    path.write_text(path.read_text() + "\n" + text + "\n")


def set_command(project: Path, command: str) -> None:
    path = project / "agents" / "hello" / "config.toml"
    lines = [ln for ln in path.read_text().splitlines() if not ln.startswith("command =")]
    lines.append(f"command = {json.dumps(command)}")
    path.write_text("\n".join(lines) + "\n")


def runs(corral: Corral, project: Path) -> list[dict[str, object]]:
    result = corral("runs", "--json", cwd=project)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_new_scaffolds_a_project_that_runs(corral: Corral, project: Path) -> None:
    for rel in [
        "config.toml",
        "agents/hello/SKILL.md",
        "agents/hello/config.toml",
        "shared",
        ".gitignore",
    ]:
        assert (project / rel).exists(), rel

    result = corral("run", "hello", cwd=project)

    assert result.returncode == 0, result.stderr
    assert "of agent hello (trigger: manual)" in result.stdout
    assert "instructions: # Hello agent" in result.stdout
    assert '<agent-config>\n  | {"greeting":"hello"}\n  | </agent-config>' in result.stdout
    assert "You have been triggered manually." in result.stdout
    assert "succeeded" in result.stderr
    [run] = runs(corral, project)
    assert run["agent"] == "hello"
    assert run["trigger"] == "manual"
    assert run["state"] == "succeeded"
    assert run["exitCode"] == 0
    assert run["startedAt"] and run["endedAt"]
    report = project / ".corral" / "runs" / str(run["id"]) / "report.md"
    assert "- conventions.md" in report.read_text()
    log = project / ".corral" / "logs" / f"{run['id']}.log"
    assert log.read_text() == result.stdout


def test_a_prompt_becomes_the_user_prompt_block(corral: Corral, project: Path) -> None:
    result = corral("run", "hello", "fix issue #42", cwd=project)
    assert result.returncode == 0, result.stderr
    assert "<user-prompt>\n  | fix issue #42\n  | </user-prompt>" in result.stdout
    assert "You have been given a specific task." in result.stdout


def test_prompt_from_stdin(corral: Corral, project: Path) -> None:
    result = corral("run", "hello", "-", cwd=project, input="from a pipe\n")
    assert result.returncode == 0, result.stderr
    assert "  | from a pipe" in result.stdout


def test_a_failing_agent_fails_the_command_with_its_exit_code(
    corral: Corral, project: Path
) -> None:
    set_command(project, "echo working; exit 7")
    result = corral("run", "hello", cwd=project)
    assert result.returncode == 7
    assert "working" in result.stdout
    [run] = runs(corral, project)
    assert (run["state"], run["exitCode"]) == ("failed", 7)


def test_a_run_past_its_timeout_is_stopped_and_recorded(corral: Corral, project: Path) -> None:
    path = project / "agents" / "hello" / "config.toml"
    path.write_text(path.read_text().replace("timeout = 300", "timeout = 1"))
    set_command(project, "sleep 30")
    began = time.monotonic()
    result = corral("run", "hello", cwd=project)
    assert time.monotonic() - began < 20
    assert result.returncode == 124, result.stderr
    [run] = runs(corral, project)
    assert (run["state"], run["exitCode"]) == ("timed_out", 124)
    assert run["error"] == "timed out after 1 s"


def test_a_missing_program_is_recorded_as_failed(corral: Corral, project: Path) -> None:
    path = project / "agents" / "hello" / "config.toml"
    lines = [ln for ln in path.read_text().splitlines() if not ln.startswith("command =")]
    path.write_text("\n".join([*lines, 'command = ["/no/such/agent-cli"]']) + "\n")
    result = corral("run", "hello", cwd=project)
    assert result.returncode == 1
    [run] = runs(corral, project)
    assert run["state"] == "failed"
    assert run["error"] == "could not start '/no/such/agent-cli': No such file or directory"


def test_a_typo_in_a_config_key_names_file_line_and_fix(corral: Corral, project: Path) -> None:
    path = project / "agents" / "hello" / "config.toml"
    text = path.read_text()
    line = text.splitlines().index("scale = 1") + 1
    path.write_text(text.replace("scale = 1", "scael = 1"))
    result = corral("run", "hello", cwd=project)
    assert result.returncode == 2
    assert (
        f"agents/hello/config.toml:{line}: unknown key 'scael' in agents/hello/config.toml: "
        "did you mean 'scale'?"
    ) in result.stderr
    assert "Traceback" not in result.stderr
    # Every command that reads the project refuses it the same way.
    assert corral("runs", cwd=project).returncode == 2


def test_unknown_agent_suggests_the_closest(corral: Corral, project: Path) -> None:
    result = corral("run", "helo", cwd=project)
    assert result.returncode == 2
    assert "unknown agent 'helo': did you mean 'hello'?" in result.stderr


def test_a_disabled_agent_is_refused_with_the_reason(corral: Corral, project: Path) -> None:
    path = project / "agents" / "hello" / "config.toml"
    path.write_text(path.read_text().replace("scale = 1", "scale = 0"))
    result = corral("run", "hello", cwd=project)
    assert result.returncode == 2
    assert "agent 'hello' is disabled (scale = 0 in agents/hello/config.toml)" in result.stderr


def test_new_never_overwrites(corral: Corral, project: Path) -> None:
    result = corral("new", "demo")
    assert result.returncode == 2
    assert "already exists and is not empty" in result.stderr


def test_outside_a_project_the_error_says_what_to_do(corral: Corral, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = corral("runs", cwd=empty)
    assert result.returncode == 2
    assert "no corral project here" in result.stderr
    assert "corral new DIR" in result.stderr


def test_project_flag_and_history_filters(corral: Corral, project: Path, tmp_path: Path) -> None:
    for prompt in ["one", "two", "three"]:
        assert corral("--project", str(project), "run", "hello", prompt, "-q").returncode == 0
    result = corral("-p", str(project), "runs", "--json", "--limit", "2")
    listed = json.loads(result.stdout)
    assert len(listed) == 2
    assert listed[0]["createdAt"] >= listed[1]["createdAt"]
    table = corral("-p", str(project), "runs", "--agent", "hello")
    assert table.returncode == 0
    assert table.stdout.count("hello-") == 3


def test_config_shows_each_value_with_its_source(corral: Corral, project: Path) -> None:
    result = corral("config", "--json", cwd=project)
    assert result.returncode == 0, result.stderr
    values = {v["key"]: (v["value"], v["source"]) for v in json.loads(result.stdout)}
    assert values["workQueueSize"] == (100, "project")
    assert values["maxCallDepth"] == (3, "project")
    assert values["agents.hello.scale"] == (1, "agent")


def test_doctor_reports_project_store_and_runtimes(corral: Corral, project: Path) -> None:
    result = corral("doctor", "--json", cwd=project)
    checks = {c["name"]: c for c in json.loads(result.stdout)}
    assert checks["project"]["status"] == "ok"
    assert checks["store"]["status"] in {"ok", "warn"}
    assert checks["runtime host"]["status"] == "ok"
    assert "runtime sandbox" in checks
    assert result.returncode == 0


def test_doctor_fails_on_a_broken_project(corral: Corral, project: Path) -> None:
    set_agent_option(project, 'schedule = "not cron"')
    result = corral("doctor", cwd=project)
    assert result.returncode == 1
    assert "FAIL" in result.stdout
    assert "schedule" in result.stdout


def test_db_migrate_and_status(corral: Corral, project: Path) -> None:
    assert corral("db", "migrate", cwd=project).returncode == 0
    again = corral("db", "migrate", cwd=project)
    assert "up to date" in again.stdout
    status = json.loads(corral("db", "status", "--json", cwd=project).stdout)
    assert status["dialect"] == "sqlite"
    assert status["current"] == status["latest"] >= 1
    assert status["pending"] == []


def test_interrupting_a_run_kills_its_processes_and_records_it(
    corral: Corral, project: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "child.pid"
    set_command(project, f"sleep 60 & echo $! > {marker}; wait")
    with corral_process("run", "hello", cwd=project, home=tmp_path / "home") as proc:
        wait_until(lambda: marker.exists() and marker.read_text().strip(), 15)
        child = int(marker.read_text())
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "recorded as killed" in err
    wait_until(lambda: not alive(child), 5)
    [run] = runs(corral, project)
    assert run["state"] == "killed"


def test_the_skeleton_on_both_stores(corral: Corral, project: Path, store_url: str) -> None:
    env = {"CORRAL_STATE_URL": store_url}
    assert corral("run", "hello", "-q", cwd=project, env=env).returncode == 0
    set_command(project, "exit 3")
    assert corral("run", "hello", "-q", cwd=project, env=env).returncode == 3
    listed = json.loads(corral("runs", "--json", cwd=project, env=env).stdout)
    assert [(r["state"], r["exitCode"]) for r in listed] == [("failed", 3), ("succeeded", 0)]
    status = json.loads(corral("db", "status", "--json", cwd=project, env=env).stdout)
    assert status["dialect"] == ("sqlite" if store_url.startswith("sqlite") else "postgresql")
    # Nothing was written to the default SQLite file when another store was named.
    assert store_url.startswith("sqlite") or not (project / ".corral" / "state.db").exists()


def test_a_run_without_a_network_reaches_the_gateway_without_a_scheduler(
    corral: Corral, project: Path
) -> None:
    # `corral run` with no scheduler serves the agent API itself; a sandboxed run with
    # network = "none" must reach it over the Unix socket, as it reaches `corral start`.
    from tests.runtime.conftest import require_sandbox

    require_sandbox()
    set_command(project, "al-status 'offline and talking' && rlock k://offline")
    set_agent_option(project, '[runtime]\ntype = "sandbox"\nnetwork = "none"')
    result = corral("run", "hello", cwd=project)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert '"ok": true' in result.stdout or '"ok":true' in result.stdout, result.stdout
    [run] = runs(corral, project)
    assert run["state"] == "succeeded"
    assert not list((project / ".corral").glob("gateway-*.sock"))  # removed after
