"""`corral doctor` on the programs agents expect: preset CLIs and what Dockerfiles install.

The doctor runs as a user runs it, with a PATH the test controls: only a directory of
its own, holding the programs the test puts there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from corral.doctor.tools import Installed, parse_dockerfile
from tests.cli.conftest import Corral

# agents/dev/Dockerfile of Action Llama's official agents (Action-Llama/agents), as is.
OFFICIAL_DEV_DOCKERFILE = """\
# Project base image — shared by all agents in this project.
# This extends the Action Llama base image.
#
# Examples:
#   RUN apk add --no-cache python3 py3-pip
#   RUN apk add --no-cache github-cli

FROM al-agent:latest

USER root
RUN apk add --no-cache github-cli
USER node
"""


def fake_program(bin_dir: Path, name: str) -> Path:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def doctor(corral: Corral, project: Path, bin_dir: Path) -> dict[str, dict[str, Any]]:
    bin_dir.mkdir(exist_ok=True)
    result = corral("doctor", "--json", cwd=project, env={"PATH": str(bin_dir)})
    assert result.stdout, result.stderr
    return {c["name"]: c for c in json.loads(result.stdout)}


def use_preset(project: Path, preset: str) -> None:
    path = project / "agents" / "hello" / "config.toml"
    lines = [ln for ln in path.read_text().splitlines() if not ln.startswith("command =")]
    path.write_text("\n".join([*lines, f'preset = "{preset}"']) + "\n")


def test_a_missing_preset_cli_fails_with_the_install_command(
    corral: Corral, project: Path, tmp_path: Path
) -> None:
    use_preset(project, "claude-code")
    bin_dir = tmp_path / "bin"

    checks = doctor(corral, project, bin_dir)
    cli = checks["agent CLIs"]
    assert cli["status"] == "fail"
    assert "claude (preset of hello): not on PATH" in cli["detail"]
    assert "npm install -g @anthropic-ai/claude-code" in cli["fix"]

    claude = fake_program(bin_dir, "claude")
    cli = doctor(corral, project, bin_dir)["agent CLIs"]
    assert cli["status"] == "ok"
    assert f"claude (preset of hello): {claude}" in cli["detail"]


def test_a_project_without_presets_has_no_cli_check(
    corral: Corral, project: Path, tmp_path: Path
) -> None:
    assert "agent CLIs" not in doctor(corral, project, tmp_path / "bin")


def test_a_missing_preset_cli_makes_doctor_exit_non_zero(
    corral: Corral, project: Path, tmp_path: Path
) -> None:
    use_preset(project, "codex")
    result = corral("doctor", cwd=project, env={"PATH": str(tmp_path)})
    assert result.returncode == 1
    assert "codex (preset of hello): not on PATH" in result.stdout
    assert "npm install -g @openai/codex" in result.stdout


def test_an_agent_dockerfile_lists_what_the_host_lacks(
    corral: Corral, project: Path, tmp_path: Path
) -> None:
    dockerfile = project / "agents" / "hello" / "Dockerfile"
    dockerfile.write_text(
        "FROM al-agent:latest\nUSER root\n"
        "RUN apk add --no-cache github-cli jq \\\n    ripgrep\n"
        "RUN npm install -g @anthropic-ai/claude-code@1.0.3\n"
        "USER node\n"
    )
    bin_dir = tmp_path / "bin"
    fake_program(bin_dir, "jq")

    check = doctor(corral, project, bin_dir)["Dockerfile agents/hello/Dockerfile"]
    assert check["status"] == "warn"
    assert "corral builds no images" in check["detail"]
    assert "gh (apk add github-cli, line 3)" in check["detail"]
    assert "rg (apk add ripgrep, line 3)" in check["detail"]
    assert "claude (npm install -g @anthropic-ai/claude-code, line 5)" in check["detail"]
    assert "jq" not in check["detail"]
    assert "docs/dockerfiles.md" in check["fix"]

    for name in ("gh", "rg", "claude"):
        fake_program(bin_dir, name)
    check = doctor(corral, project, bin_dir)["Dockerfile agents/hello/Dockerfile"]
    assert check["status"] == "ok"
    assert "on this host: claude, gh, jq, rg" in check["detail"]


def test_the_project_dockerfile_is_checked_too(
    corral: Corral, project: Path, tmp_path: Path
) -> None:
    (project / "Dockerfile").write_text("FROM al-agent:latest\nRUN apk add --no-cache ripgrep\n")
    check = doctor(corral, project, tmp_path / "bin")["Dockerfile Dockerfile"]
    assert check["status"] == "warn"
    assert "rg (apk add ripgrep, line 2)" in check["detail"]


def test_a_dockerfile_with_nothing_to_check_is_still_reported(
    corral: Corral, project: Path, tmp_path: Path
) -> None:
    (project / "agents" / "hello" / "Dockerfile").write_text(
        "FROM al-agent:latest\nCOPY tool /usr/local/bin/tool\n"
    )
    check = doctor(corral, project, tmp_path / "bin")["Dockerfile agents/hello/Dockerfile"]
    assert check["status"] == "warn"
    assert "found no `apk add`" in check["detail"]
    assert "install by hand" in check["fix"]


def test_parse_the_official_dev_dockerfile() -> None:
    # The commented-out examples are not installs.
    assert parse_dockerfile(OFFICIAL_DEV_DOCKERFILE) == [
        Installed("github-cli", "gh", "apk add", 11)
    ]


def test_parse_debian_npm_and_pip_lines() -> None:
    text = (
        "FROM debian:bookworm\n"
        "RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get -y install \\\n"
        "      --no-install-recommends ca-certificates curl=7.88.1-10 libssl-dev \\\n"
        "    && rm -rf /var/lib/apt/lists/*\n"
        "RUN npm i --global @openai/codex@latest typescript && npm install left-pad\n"
        "RUN python3 -m pip install --no-cache-dir 'aider-chat[browser]==0.80' requests "
        "-r requirements.txt; pipx install ruff\n"
        'RUN sudo apk add "ripgrep>=14"\n'
    )
    assert parse_dockerfile(text) == [
        Installed("ca-certificates", None, "apt-get install", 2),
        Installed("curl", "curl", "apt-get install", 2),
        Installed("libssl-dev", None, "apt-get install", 2),
        Installed("@openai/codex", "codex", "npm install -g", 5),
        Installed("typescript", "tsc", "npm install -g", 5),
        Installed("aider-chat", "aider", "pip install", 6),
        Installed("requests", None, "pip install", 6),
        Installed("ruff", "ruff", "pipx install", 6),
        Installed("ripgrep", "rg", "apk add", 7),
    ]
