"""`corral creds import`: an Action Llama credential store copied into corral's."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .conftest import Cli
from .keys import fake_key, token


def al_store(root: Path, entries: dict[str, dict[str, str]]) -> Path:
    """``root/credentials/TYPE/INSTANCE/FIELD`` as Action Llama writes it (echo > file)."""
    for ref, fields in entries.items():
        type_name, instance = ref.split(":")
        directory = root / "credentials" / type_name / instance
        directory.mkdir(parents=True)
        for name, value in fields.items():
            (directory / name).write_text(value)
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
