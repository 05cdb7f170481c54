"""The key credentials an agent's models imply, and the shapes taken from Action Llama."""

from __future__ import annotations

import subprocess
from pathlib import Path

from corral.credentials import (
    MODEL_KEY_VARIABLES,
    CredentialStore,
    credential_type,
    implied_credentials,
    model_key_type,
    parse_ref,
)

from .keys import fake_key, token


def test_each_provider_has_a_key_type_and_variable() -> None:
    assert MODEL_KEY_VARIABLES == {
        "anthropic": "ANTHROPIC_API_KEY",
        "openai": "OPENAI_API_KEY",
        "groq": "GROQ_API_KEY",
        "google": "GEMINI_API_KEY",
        "xai": "XAI_API_KEY",
        "mistral": "MISTRAL_API_KEY",
        "openrouter": "OPENROUTER_API_KEY",
        "custom": "CUSTOM_API_KEY",
    }
    for provider in MODEL_KEY_VARIABLES:
        # Action Llama's shape: PROVIDER_key with one field, token.
        assert credential_type(model_key_type(provider)).field_names == ("token",)


def test_models_imply_their_providers_keys_once_in_order() -> None:
    models = [("openai", "api_key"), ("anthropic", "oauth_token"), ("openai", "api_key")]
    assert [str(r) for r in implied_credentials(models)] == ["openai_key", "anthropic_key"]


def test_pi_auth_needs_no_key() -> None:
    assert implied_credentials([("anthropic", "pi_auth")]) == []


def test_a_key_the_agent_names_itself_is_not_implied_again() -> None:
    models = [("openai", "api_key"), ("anthropic", "api_key"), ("groq", "api_key")]
    explicit = ["openai_key:work", "env:ANTHROPIC_API_KEY", "github_token"]
    assert implied_credentials(models, explicit) == [parse_ref("groq_key")]


def test_keys_stored_under_corrals_old_field_name_are_renamed_and_read(
    store: CredentialStore,
) -> None:
    value = token("sk-")
    directory = store.root / "openai_key" / "default"
    directory.mkdir(parents=True, mode=0o700)
    store.root.chmod(0o700)
    (store.root / "openai_key").chmod(0o700)
    (directory / "api_key").write_text(value + "\n")
    (directory / "api_key").chmod(0o600)
    (loaded,) = store.resolve(["openai_key"])
    assert loaded.values == {"token": value}
    assert loaded.env == {"OPENAI_API_KEY": value}
    assert sorted(p.name for p in directory.iterdir()) == ["token"]


def test_old_field_names_are_accepted_when_adding(store: CredentialStore) -> None:
    key = fake_key()
    stored = store.add("git_ssh", "deploy", {"private_key": key})
    assert stored.fields == ("id_rsa",)
    assert (stored.path / "id_rsa").read_text() == key


def test_git_ssh_sets_the_git_identity_git_uses(store: CredentialStore, tmp_path: Path) -> None:
    store.add(
        "git_ssh",
        "default",
        {"id_rsa": fake_key(), "username": "Dev Bot", "email": "dev-bot@example.com"},
    )
    (loaded,) = store.resolve(["git_ssh"])
    assert {k: v for k, v in loaded.env.items() if k.startswith("GIT_") and "SSH" not in k} == {
        "GIT_AUTHOR_NAME": "Dev Bot",
        "GIT_COMMITTER_NAME": "Dev Bot",
        "GIT_AUTHOR_EMAIL": "dev-bot@example.com",
        "GIT_COMMITTER_EMAIL": "dev-bot@example.com",
    }
    # The identity is not secret: it is not redacted from a run's output.
    assert "Dev Bot" not in loaded.secrets()
    assert "GIT_AUTHOR_NAME" in loaded.context_line()
    # A real commit, with no git config at all, is made as that identity.
    repo = tmp_path / "repo"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "GIT_CONFIG_NOSYSTEM": "1"}
    env.update(loaded.env)
    subprocess.run(["git", "init", "-q", str(repo)], check=True, env=env)
    subprocess.run(
        ["git", "-C", str(repo), "commit", "-q", "--allow-empty", "-m", "x"], check=True, env=env
    )
    shown = subprocess.run(
        ["git", "-C", str(repo), "log", "-1", "--format=%an <%ae> / %cn <%ce>"],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert shown == "Dev Bot <dev-bot@example.com> / Dev Bot <dev-bot@example.com>"


def test_git_ssh_without_identity_sets_no_identity(store: CredentialStore) -> None:
    store.add("git_ssh", "default", {"id_rsa": fake_key()})
    (loaded,) = store.resolve(["git_ssh"])
    assert list(loaded.env) == ["GIT_SSH_COMMAND"]
    assert "GIT_AUTHOR" not in loaded.context_line()


def test_optional_fields_of_other_types_set_their_variable_only_when_given(
    store: CredentialStore,
) -> None:
    store.add("aws", "default", {"access_key_id": token("AKIA"), "secret_access_key": token()})
    (loaded,) = store.resolve(["aws"])
    assert sorted(loaded.env) == ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]


def test_missing_ok_leaves_out_only_what_is_not_stored(store: CredentialStore) -> None:
    store.add("openai_key", "default", {"token": token("sk-")})
    loaded = store.resolve(["openai_key", "anthropic_key"], missing_ok=True)
    assert [str(c.ref) for c in loaded] == ["openai_key"]
