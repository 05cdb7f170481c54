"""`corral creds import`: an Action Llama credential store copied into corral's."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from corral.credentials import CredentialError, CredentialStore, parse_ref
from corral.credentials.importer import import_store

from .conftest import Cli
from .keys import fake_key, token


def al_store(root: Path, entries: dict[str, dict[str, str]], file_mode: int = 0o600) -> Path:
    """``root/credentials/TYPE/INSTANCE/FIELD`` as Action Llama writes it (echo > file),
    each file private unless ``file_mode`` says otherwise."""
    for ref, fields in entries.items():
        type_name, instance = ref.split(":")
        directory = root / "credentials" / type_name / instance
        directory.mkdir(parents=True)
        for name, value in fields.items():
            (directory / name).write_text(value)
            (directory / name).chmod(file_mode)
    return root


def test_import_maps_types_and_fields_and_never_shows_values(
    cli: Cli, home: Path, tmp_path: Path
) -> None:
    values = {
        "github": token(),
        "key": fake_key(),
        "openai": token("sk-proj-"),
        "secret": token("whsec_"),
        "gateway": token("gw_"),
    }
    source = al_store(
        tmp_path / "al",
        {
            "github_token:default": {"token": values["github"] + "\n"},
            "git_ssh:default": {
                "id_rsa": values["key"],
                "username": "Dev Bot\n",
                "email": "dev-bot@example.com\n",
            },
            "openai_key:default": {"token": values["openai"] + "\n"},
            "github_webhook_secret:MyOrg": {"secret": values["secret"] + "\n"},
            "gateway_api_key:default": {"key": values["gateway"]},
            "x_twitter_api:default": {"api_key": token()},
        },
    )

    dry = cli("import", "--from", str(source), "--dry-run")
    assert dry.returncode == 1, dry.stderr  # two are skipped, for reasons it gives
    assert not (home / "credentials").exists()  # nothing written
    lines = dry.stdout.splitlines()
    assert "would import github_token:default (fields: token)" in lines
    assert "would import git_ssh:default (fields: email, id_rsa, username)" in lines
    assert (
        "would import github_webhook_secret:MyOrg as webhook_secret:MyOrg (fields: secret)" in lines
    )
    assert lines[-1] == f"4 of 6 would be imported into {home / 'credentials'}"

    done = cli("import", "--from", str(source))
    assert done.returncode == 1
    out = done.stdout + done.stderr
    for value in values.values():
        assert value.strip() not in out
    assert "imported openai_key:default (fields: token)" in out
    assert "skipped gateway_api_key:default: Action Llama's gateway key" in out
    assert "skipped x_twitter_api:default: x_twitter_api has no field api_key" in out
    creds = home / "credentials"
    assert (creds / "github_token" / "default" / "token").read_text() == values["github"]
    assert (creds / "git_ssh" / "default" / "id_rsa").read_text() == values["key"]
    assert (creds / "git_ssh" / "default" / "username").read_text() == "Dev Bot"
    assert (creds / "webhook_secret" / "MyOrg" / "secret").read_text() == values["secret"]
    assert os.stat(creds / "openai_key" / "default" / "token").st_mode & 0o777 == 0o600

    # A second import leaves what is stored alone, unless told to replace it.
    again = cli("import", "--from", str(source), "--json")
    entries = {e["source"]: e for e in json.loads(again.stdout)}
    assert entries["openai_key:default"]["action"] == "skipped"
    assert "stored already (--force replaces it)" in entries["openai_key:default"]["reason"]
    forced = cli("import", "--from", str(source), "--force", "--json")
    entries = {e["source"]: e for e in json.loads(forced.stdout)}
    assert entries["openai_key:default"]["action"] == "imported"


def test_import_from_a_place_without_credentials_says_so(cli: Cli, tmp_path: Path) -> None:
    result = cli("import", "--from", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert "no credentials directory at" in result.stderr
    assert "give Action Llama's home with --from" in result.stderr


def test_symbolic_links_are_not_followed_and_each_is_reported(
    store: CredentialStore, tmp_path: Path
) -> None:
    """A link in ~/.action-llama could lead to any file the user can read (another
    program's secret): neither a linked field file nor a linked instance or type
    directory is read; each is named as skipped."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "token").write_text(token("ghp_") + "\n")
    source = al_store(tmp_path / "al", {"anthropic_key:default": {"token": token("sk-ant-")}})
    creds = source / "credentials"
    (creds / "github_token" / "viaslink").mkdir(parents=True)
    (creds / "github_token" / "viaslink" / "token").symlink_to(outside / "token")
    (creds / "github_token" / "dirlink").symlink_to(outside)
    (creds / "openai_key").symlink_to(outside)
    entries = {e.source: e for e in import_store(source, store)}
    assert entries["anthropic_key:default"].action == "imported"
    for label in ("github_token:viaslink", "github_token:dirlink", "openai_key"):
        assert entries[label].action == "skipped", label
        assert "is a symbolic link" in entries[label].reason, label
        assert "links are not followed" in entries[label].reason
    assert not store.exists(parse_ref("github_token:viaslink"))
    assert not store.exists(parse_ref("github_token:dirlink"))


def test_a_source_file_open_to_others_is_imported_with_a_warning(
    store: CredentialStore, tmp_path: Path
) -> None:
    source = al_store(tmp_path / "al", {"github_token:default": {"token": token()}}, 0o644)
    (entry,) = import_store(source, store)
    assert entry.action == "imported"
    assert "warning: token (mode 0644) in the source could be read by group or others" in (
        entry.line()
    )
    assert "rotate" in entry.reason


def test_a_dry_run_writes_nothing_anywhere(
    store: CredentialStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dry run checked each credential by storing it in a scratch store on disk: the
    values were written to files under $TMPDIR. Now nothing is opened for writing."""
    source = al_store(tmp_path / "al", {"github_token:default": {"token": token()}})
    writes: list[str] = []
    watching = [True]

    def hook(event: str, args: tuple[object, ...]) -> None:
        if watching and event == "open" and isinstance(args[2], int) and args[2] & 0o3:
            writes.append(str(args[0]))

    sys.addaudithook(hook)  # cannot be removed: it stops recording once the test ends
    try:
        entries = import_store(source, store, dry_run=True)
    finally:
        watching.clear()
    assert [e.line() for e in entries] == ["would import github_token:default (fields: token)"]
    assert writes == []
    assert not store.root.exists()


def test_git_ssh_with_an_identity_alone_is_imported_and_sets_no_ssh_command(
    store: CredentialStore, tmp_path: Path
) -> None:
    """Action Llama's "use system SSH config" stores git_ssh with username and email and
    no key: corral refused it. It is taken now; GIT_SSH_COMMAND is set only with a key."""
    source = al_store(
        tmp_path / "al",
        {"git_ssh:default": {"username": "Octo Cat\n", "email": "octo@example.com\n"}},
    )
    (entry,) = import_store(source, store)
    assert entry.line() == "imported git_ssh:default (fields: email, username)"
    (loaded,) = store.resolve(["git_ssh"])
    assert loaded.env == {
        "GIT_AUTHOR_NAME": "Octo Cat",
        "GIT_COMMITTER_NAME": "Octo Cat",
        "GIT_AUTHOR_EMAIL": "octo@example.com",
        "GIT_COMMITTER_EMAIL": "octo@example.com",
    }
    assert "GIT_SSH_COMMAND" not in loaded.context_line()
    assert "system's SSH configuration" in loaded.context_line()
    # With neither a key nor an identity it is still refused, saying what is missing.
    with pytest.raises(CredentialError, match="no value for id_rsa"):
        store.add("git_ssh", "empty", {"known_hosts": "github.com ssh-ed25519 AAAA"})
