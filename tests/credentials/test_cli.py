"""`corral creds` through the real command line, in a subprocess. No output holds a value."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from corral.cli.commands import creds
from corral.credentials import (
    CredentialError,
    CredentialField,
    CredentialType,
    EnvVar,
    parse_ref,
)

from .conftest import Cli
from .keys import fake_key, token


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stderr
    return result


def refused(result: subprocess.CompletedProcess[str], *phrases: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr
    return result.stderr


def outputs(*results: subprocess.CompletedProcess[str]) -> str:
    return "".join(r.stdout + r.stderr for r in results)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_add_from_stdin_force_ls_rm(cli: Cli, home: Path) -> None:
    first, second, sentry = token(), token(), token("sntrys_")
    path = home / "credentials" / "github_token" / "default"
    empty = ok(cli("ls"))
    assert "no credentials are stored" in empty.stdout and "corral creds add" in empty.stdout

    added = ok(cli("add", "github_token", input=first + "\n"))
    assert added.stdout.strip() == f"stored github_token in {path} (fields: token)"
    assert (path / "token").read_text() == first  # the one trailing newline is dropped
    assert mode(path / "token") == 0o600
    assert mode(home / "credentials") == mode(path.parent) == mode(path) == 0o700

    again = cli("add", "github_token", input=second)
    refused(again, "already stored", "corral creds add github_token --force")
    assert (path / "token").read_text() == first
    replaced = ok(cli("add", "github_token", "--force", input=second))
    assert (path / "token").read_text() == second

    env = ok(cli("add", "env:SENTRY_TOKEN", input=sentry))
    listing = ok(cli("ls"))
    lines = listing.stdout.splitlines()
    assert lines[0].split() == ["type", "instance", "fields", "path", "status"]
    sentry_path = home / "credentials" / "env" / "SENTRY_TOKEN"
    assert lines[1].split() == ["env", "SENTRY_TOKEN", "value", str(sentry_path), "ok"]
    assert lines[2].split() == ["github_token", "default", "token", str(path), "ok"]
    as_json = ok(cli("ls", "--json"))
    assert json.loads(as_json.stdout)[1] == {
        "ref": "github_token",
        "type": "github_token",
        "instance": "default",
        "fields": ["token"],
        "path": str(path),
        "problems": [],
    }

    removed = ok(cli("rm", "github_token"))
    assert removed.stdout.strip() == f"removed github_token ({path})"
    assert not path.exists()
    absent = cli("rm", "github_token")
    refused(absent, "github_token: not stored", "corral creds ls")
    assert (home / "credentials" / "env" / "SENTRY_TOKEN" / "value").read_text() == sentry

    everything = outputs(empty, added, again, replaced, env, listing, as_json, removed, absent)
    for value in (first, second, sentry):
        assert value not in everything


def test_add_from_files(cli: Cli, home: Path, tmp_path: Path) -> None:
    key, hosts = fake_key(), "github.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6\n"
    (tmp_path / "key").write_text(key)
    (tmp_path / "known").write_text(hosts)
    path = home / "credentials" / "git_ssh" / "deploy"
    added = ok(
        cli(
            "add",
            "git_ssh:deploy",
            "--file",
            f"id_rsa={tmp_path / 'key'}",
            "--file",
            f"known_hosts={tmp_path / 'known'}",
        )
    )
    assert added.stdout.strip() == (
        f"stored git_ssh:deploy in {path} (fields: id_rsa, known_hosts)"
    )
    assert (path / "id_rsa").read_text() == key
    assert (path / "known_hosts").read_text() == hosts
    assert mode(path / "id_rsa") == mode(path / "known_hosts") == 0o600

    # A key piped in: the one required field comes from stdin, the optional one is left out.
    piped = ok(cli("add", "git_ssh", input=key))
    assert (home / "credentials" / "git_ssh" / "default" / "id_rsa").read_text() == key
    assert not (home / "credentials" / "git_ssh" / "default" / "known_hosts").exists()

    unknown = cli("add", "git_ssh:other", "--file", f"key={tmp_path / 'key'}")
    refused(
        unknown, "git_ssh has no field 'key'", "its fields are id_rsa, username, email, known_hosts"
    )
    (tmp_path / "empty").write_text("\n")
    empty = cli("add", "git_ssh:other", "--file", f"id_rsa={tmp_path / 'empty'}")
    refused(empty, "the file", "is empty")
    assert not (home / "credentials" / "git_ssh" / "other").exists()

    everything = outputs(added, piped, unknown, empty)
    assert not any(line in everything for line in key.splitlines())


def test_bad_input_is_refused_with_what_to_do(cli: Cli, home: Path) -> None:
    results = [
        refused(cli("add", "github_token"), "nothing on stdin for token", "< FILE", "`ps`"),
        refused(cli("add", "github_token", input="\n"), "nothing on stdin"),
        refused(cli("add", "github_token", input="abc"), "shorter than 4 characters"),
        refused(cli("add", "githb_token", input=token()), 'did you mean "github_token"'),
        refused(cli("add", "env:PATH", input=token()), "PATH cannot be set"),
    ]
    assert not (home / "credentials").exists()
    assert all(result.startswith("error: ") for result in results)


def test_types(cli: Cli) -> None:
    table = ok(cli("types")).stdout
    for text in (
        "github_token",
        "GITHUB_TOKEN",
        "GH_TOKEN",
        "git_ssh",
        "id_rsa (multi-line)",
        "known_hosts (optional,",  # the table wraps it where the terminal is narrow
        "webhook_secret",
        "GIT_SSH_COMMAND = ssh -i <id_rsa file>",
        "ANTHROPIC_API_KEY",
        "OPENAI_API_KEY",
        "<INSTANCE>",
    ):
        assert text in table, text
    types = {t["name"]: t for t in json.loads(ok(cli("types", "--json")).stdout)}
    assert list(types) == [
        "github_token",
        "git_ssh",
        "anthropic_key",
        "openai_key",
        "groq_key",
        "google_key",
        "xai_key",
        "mistral_key",
        "openrouter_key",
        "custom_key",
        "sentry_token",
        "linear_token",
        "linear_oauth",
        "bugsnag_token",
        "netlify_token",
        "mintlify_token",
        "slack_bot_token",
        "discord_bot",
        "x_twitter_api",
        "reddit_oauth",
        "aws",
        "env",
        "webhook_secret",
        "operator_token",
    ]
    # A signing secret sets nothing in a run: it never reaches one.
    assert types["webhook_secret"]["env"] == []
    assert types["operator_token"]["env"] == []
    assert types["github_token"]["env"] == [
        {"name": "GITHUB_TOKEN", "value": "<token>"},
        {"name": "GH_TOKEN", "value": "<token>"},
    ]
    assert types["git_ssh"]["fields"][3] == {
        "name": "known_hosts",
        "description": types["git_ssh"]["fields"][3]["description"],
        "required": False,
        "multiline": True,
        "secret": False,
    }
    assert types["env"]["instanceIsEnvName"] is True


def test_stdin_gives_one_value_only(monkeypatch: pytest.MonkeyPatch) -> None:
    pair = CredentialType(
        name="pair",
        description="two values",
        fields=(CredentialField("user", "user"), CredentialField("password", "password")),
        env=(EnvVar("PAIR_USER", "{user}"), EnvVar("PAIR_PASSWORD", "{password}")),
        context="`PAIR_USER`",
    )
    ref = parse_ref("github_token")
    with pytest.raises(CredentialError) as caught:
        creds._from_stdin(ref, pair, pair.fields)
    message = str(caught.value)
    assert "pair needs user, password" in message
    assert "--file user=PATH --file password=PATH" in message
    assert "not taken as command-line arguments" in message


def test_file_options_are_checked(tmp_path: Path) -> None:
    ref = parse_ref("git_ssh")
    ctype = creds.credential_type("git_ssh")
    key = tmp_path / "key"
    key.write_text(fake_key())
    cases = {
        f"id_rsa={tmp_path / 'nope'}": "cannot read",
        "id_rsa": "is not FIELD=PATH",
        "id_rsa=": "is not FIELD=PATH",
    }
    for option, message in cases.items():
        with pytest.raises(CredentialError, match=message):
            creds._values_from_files(ref, ctype, [option])
    with pytest.raises(CredentialError, match="gives id_rsa twice"):
        creds._values_from_files(ref, ctype, [f"id_rsa={key}"] * 2)
    (tmp_path / "binary").write_bytes(b"\xff\xfe")
    with pytest.raises(CredentialError, match="not UTF-8"):
        creds._values_from_files(ref, ctype, [f"id_rsa={tmp_path / 'binary'}"])
    assert creds._values_from_files(ref, ctype, [f"id_rsa={key}"]) == {"id_rsa": key.read_text()}
