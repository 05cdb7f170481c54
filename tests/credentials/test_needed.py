"""What a project needs: `corral doctor`'s credentials check, and the keys a command-harness
run is given for its models."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from corral.credentials import CredentialStore
from corral.doctor.credentials import check_credentials, needed_credentials
from corral.project import load_project

from .keys import token

PROJECT = """\
[models.sonnet]
provider = "anthropic"
model = "claude-test"

[models.local]
provider = "openai"
model = "gpt-test"
authType = "pi_auth"

[webhooks.gh]
type = "github"
credential = "MyOrg"

[webhooks.plain]
type = "generic"
"""


def make_project(root: Path, agents: dict[str, str]) -> Path:
    (root / "agents").mkdir(parents=True)
    (root / "config.toml").write_text(PROJECT)
    for name, config in agents.items():
        (root / "agents" / name).mkdir()
        (root / "agents" / name / "SKILL.md").write_text(f"---\nname: {name}\n---\nWork.\n")
        (root / "agents" / name / "config.toml").write_text(config)
    return root


AGENTS = {
    "dev": 'models = ["sonnet", "local"]\ncredentials = ["github_token"]\n'
    '[[webhooks]]\nsource = "gh"\n',
    "ops": 'credentials = ["env:SENTRY_TOKEN"]\n[harness]\ncommand = "true"\n'
    '[[webhooks]]\nsource = "plain"\n',
}


def test_doctor_names_every_missing_credential_with_its_command(
    tmp_path: Path, store: CredentialStore
) -> None:
    project = load_project(make_project(tmp_path / "p", AGENTS))
    assert [(str(n.ref), n.why, n.users) for n in needed_credentials(project)] == [
        ("github_token", "named", ["dev"]),
        ("anthropic_key", "model", ["dev"]),  # not openai_key: pi_auth needs none
        ("env:SENTRY_TOKEN", "named", ["ops"]),
        ("webhook_secret:MyOrg", "webhook", ["[webhooks.gh]"]),
    ]
    check = check_credentials(project, store)
    assert check.status == "fail"
    assert check.detail.splitlines()[1:] == [
        "  github_token (named by agent dev): not stored; add it with "
        "`corral creds add github_token`",
        "  anthropic_key (the model key of agent dev): not stored; add it with "
        "`corral creds add anthropic_key`",
        "  env:SENTRY_TOKEN (named by agent ops): not stored; add it with "
        "`corral creds add env:SENTRY_TOKEN`",
        "  webhook_secret:MyOrg (the signing secret of [webhooks.gh]): not stored; add it "
        "with `corral creds add webhook_secret:MyOrg`",
        "  [webhooks.plain] has no signing secret: its deliveries are refused",
    ]

    for ref, field in (("github_token", "token"), ("env:SENTRY_TOKEN", "value")):
        type_name, _, instance = ref.partition(":")
        store.add(type_name, instance or "default", {field: token()})
    store.add("webhook_secret", "MyOrg", {"secret": token()})
    (tmp_path / "p" / "config.toml").write_text(PROJECT + "allowUnsigned = true\n")
    check = check_credentials(load_project(tmp_path / "p"), store)
    # Only the implied model key is left: a warning, as a local server may need none.
    assert check.status == "warn", check.detail
    assert "anthropic_key" in check.detail and check.fix == (
        "add it with `corral creds add anthropic_key`"
    )
    store.add("anthropic_key", "default", {"token": token("sk-ant-")})
    assert check_credentials(load_project(tmp_path / "p"), store).status == "ok"


def test_a_command_harness_run_gets_its_models_key_in_the_environment(tmp_path: Path) -> None:
    key = token("sk-ant-")
    digest = hashlib.sha256(key.encode()).hexdigest()
    command = 'printf %s "$ANTHROPIC_API_KEY" | sha256sum'
    agents = {"coder": f'models = ["sonnet"]\n[harness]\ncommand = {command!r}\n'}
    root = make_project(tmp_path / "p", agents)
    home = tmp_path / "home"
    CredentialStore(home / "credentials").add("anthropic_key", "default", {"token": key})
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env.update({"CORRAL_HOME": str(home), "HOME": str(tmp_path)})
    result = subprocess.run(
        [sys.executable, "-m", "corral", "run", "coder"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert digest in result.stdout
    assert key not in result.stdout + result.stderr


def test_a_preset_gets_the_key_its_cli_reads_without_models(tmp_path: Path) -> None:
    """`preset = "claude-code"` and no models: the run still gets ANTHROPIC_API_KEY (a stand-in
    `claude` on PATH, a real program, reports what it was given)."""
    key = token("sk-ant-")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    claude = bin_dir / "claude"
    claude.write_text('#!/bin/sh\nprintf %s "$ANTHROPIC_API_KEY" | sha256sum\n')
    claude.chmod(0o755)
    root = make_project(tmp_path / "p", {"coder": '[harness]\npreset = "claude-code"\n'})
    project = load_project(root)
    assert [(str(n.ref), n.why) for n in needed_credentials(project)] == [
        ("anthropic_key", "model")
    ]
    home = tmp_path / "home"
    CredentialStore(home / "credentials").add("anthropic_key", "default", {"token": key})
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env.update(
        {"CORRAL_HOME": str(home), "HOME": str(tmp_path), "PATH": f"{bin_dir}:{env['PATH']}"}
    )
    result = subprocess.run(
        [sys.executable, "-m", "corral", "run", "coder"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(key.encode()).hexdigest() in result.stdout


def test_doctor_strict_exits_non_zero_on_a_warning(tmp_path: Path) -> None:
    """A missing implied key only warns: `corral doctor` passes it, `--strict` does not."""
    root = make_project(tmp_path / "p", {"coder": 'models = ["sonnet"]\n'})
    (root / "config.toml").write_text(PROJECT.split("[webhooks.gh]")[0])
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env.update({"CORRAL_HOME": str(tmp_path / "home"), "HOME": str(tmp_path)})

    def doctor(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "corral", "doctor", *args],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    plain = doctor("--json")
    statuses = {c["name"]: c["status"] for c in json.loads(plain.stdout)}
    assert statuses["credentials"] == "warn"
    # Other checks depend on the machine (a sandbox, a store to migrate): the exit codes
    # follow from what they all say.
    assert plain.returncode == (1 if "fail" in statuses.values() else 0)
    strict = doctor("--strict")
    assert strict.returncode == 1
    assert "warn  credentials: 1 problem(s)" in strict.stdout
    assert "anthropic_key (the model key of agent coder): not stored" in strict.stdout
