"""Credential types and references: names, instances, the generic env type's checks."""

from __future__ import annotations

import pytest

from corral.credentials import (
    CredentialError,
    CredentialRef,
    credential_type,
    credential_types,
    parse_ref,
    webhook_secret_ref,
)
from corral.errors import RunError, UsageError


def test_the_built_in_types() -> None:
    names = [ctype.name for ctype in credential_types()]
    assert names == [
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
    ssh = credential_type("git_ssh")
    assert [(f.name, f.multiline, f.required) for f in ssh.fields] == [
        ("id_rsa", True, True),
        ("username", False, False),
        ("email", False, False),
        ("known_hosts", True, False),
    ]
    assert credential_type("github_token").env_names("default") == ("GITHUB_TOKEN", "GH_TOKEN")
    assert credential_type("env").env_names("SENTRY_TOKEN") == ("SENTRY_TOKEN",)


def test_unknown_type_lists_the_known_ones_and_suggests_a_close_one() -> None:
    with pytest.raises(CredentialError) as caught:
        credential_type("githb_token")
    text = str(caught.value)
    assert 'unknown credential type "githb_token"' in text
    assert 'did you mean "github_token"?' in text
    for name in ("github_token", "git_ssh", "anthropic_key", "openai_key", "env"):
        assert name in text
    with pytest.raises(CredentialError) as caught:
        credential_type("zzzz")
    assert "did you mean" not in str(caught.value)
    # A usage error for the command line (exit 2); a run error when a run cannot start.
    assert isinstance(caught.value, UsageError) and isinstance(caught.value, RunError)


def test_references_and_their_default_instance() -> None:
    assert parse_ref("github_token") == CredentialRef("github_token", "default")
    assert parse_ref("github_token:MyOrg") == CredentialRef("github_token", "MyOrg")
    assert parse_ref("git_ssh:deploy.key-2") == CredentialRef("git_ssh", "deploy.key-2")
    assert str(parse_ref("github_token:default")) == "github_token"
    assert str(parse_ref("github_token:MyOrg")) == "github_token:MyOrg"
    assert parse_ref("github_token").add_command == "corral creds add github_token"


@pytest.mark.parametrize(
    "text",
    [
        "GitHub_token",
        "github token",
        "github_token:..",
        "github_token:.hidden",
        "github_token:",
        "github_token:a/b",
        ":x",
        "",
    ],
)
def test_bad_references_are_refused(text: str) -> None:
    with pytest.raises(CredentialError):
        parse_ref(text)


def test_env_type_instance_is_the_variable_name() -> None:
    assert parse_ref("env:SENTRY_TOKEN") == CredentialRef("env", "SENTRY_TOKEN")
    assert parse_ref("env:_private2") == CredentialRef("env", "_private2")
    with pytest.raises(CredentialError, match="write env:NAME"):
        parse_ref("env")
    with pytest.raises(CredentialError, match="write env:NAME"):
        parse_ref("env:")


@pytest.mark.parametrize("name", ["1TOKEN", "SENTRY-TOKEN", "SENTRY.TOKEN", "A B"])
def test_env_type_refuses_invalid_variable_names(name: str) -> None:
    with pytest.raises(CredentialError, match="not a valid environment variable name"):
        parse_ref(f"env:{name}")


@pytest.mark.parametrize(
    "name", ["PATH", "HOME", "path", "CORRAL_RUN_SECRET", "LD_PRELOAD", "LC_ALL", "GATEWAY_URL"]
)
def test_env_type_refuses_variables_corral_or_the_system_own(name: str) -> None:
    with pytest.raises(CredentialError, match="cannot be set from a credential"):
        parse_ref(f"env:{name}")


def test_env_descriptions_for_humans() -> None:
    ssh, *identity = credential_type("git_ssh").env
    assert [(v.describe(), v.shown_value(), v.when) for v in identity] == [
        ("GIT_AUTHOR_NAME", "<username>", "username"),
        ("GIT_COMMITTER_NAME", "<username>", "username"),
        ("GIT_AUTHOR_EMAIL", "<email>", "email"),
        ("GIT_COMMITTER_EMAIL", "<email>", "email"),
    ]
    assert ssh.describe() == (
        "GIT_SSH_COMMAND = ssh -i <id_rsa file> -o IdentitiesOnly=yes "
        "-o StrictHostKeyChecking=accept-new [-o UserKnownHostsFile=<known_hosts file>]"
    )
    assert [v.describe() for v in credential_type("github_token").env] == [
        "GITHUB_TOKEN",
        "GH_TOKEN",
    ]
    assert [v.describe() for v in credential_type("env").env] == ["<INSTANCE>"]


def test_webhook_secret_is_for_the_gateway_only() -> None:
    ctype = credential_type("webhook_secret")
    assert ctype.field_names == ("secret",)
    assert ctype.env == () and ctype.env_names("MyOrg") == ()
    assert ctype.given_to_runs is False
    kept = {"webhook_secret", "operator_token"}
    assert all(t.given_to_runs for t in credential_types() if t.name not in kept)


def test_an_operator_token_is_for_the_cli_only() -> None:
    ctype = credential_type("operator_token")
    assert ctype.field_names == ("token",) and ctype.env == ()
    assert ctype.given_to_runs is False


@pytest.mark.parametrize(
    "alias",
    [
        "github_webhook_secret",
        "sentry_client_secret",
        "linear_webhook_secret",
        "mintlify_webhook_secret",
    ],
)
def test_the_described_systems_secret_types_are_webhook_secret(alias: str) -> None:
    assert credential_type(alias) is credential_type("webhook_secret")
    assert parse_ref(f"{alias}:MyOrg") == CredentialRef("webhook_secret", "MyOrg")
    assert parse_ref(alias) == CredentialRef("webhook_secret")


def test_a_webhook_sources_credential() -> None:
    assert webhook_secret_ref("MyOrg") == CredentialRef("webhook_secret", "MyOrg")
    assert webhook_secret_ref("webhook_secret") == CredentialRef("webhook_secret")
    assert webhook_secret_ref("webhook_secret:a.b-c") == CredentialRef("webhook_secret", "a.b-c")
    assert webhook_secret_ref("github_webhook_secret") == CredentialRef("webhook_secret")
    with pytest.raises(CredentialError) as caught:
        webhook_secret_ref("github_token:MyOrg")
    assert str(caught.value) == (
        "github_token:MyOrg: a github_token credential cannot sign webhooks; name a "
        'webhook_secret credential: its instance alone ("MyOrg" is webhook_secret:MyOrg) or '
        "webhook_secret:INSTANCE"
    )
    with pytest.raises(CredentialError, match="not valid"):
        webhook_secret_ref(".hidden")
