"""A source's signing secret comes from the credential store, and only from there."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.credentials import CredentialError, CredentialStore, parse_ref
from corral.errors import CorralError
from corral.webhooks import signing_secret
from tests.webhooks.helpers import source
from tests.webhooks.signing import SECRET


@pytest.fixture
def store(tmp_path: Path) -> CredentialStore:
    return CredentialStore(tmp_path / "credentials")


def test_a_source_without_a_credential_has_no_secret(store: CredentialStore) -> None:
    assert signing_secret(source(), store) is None


@pytest.mark.parametrize(
    "written", ["MyOrg", "webhook_secret:MyOrg", "github_webhook_secret:MyOrg"]
)
def test_the_credential_names_a_webhook_secret_instance(
    store: CredentialStore, written: str
) -> None:
    store.add("webhook_secret", "MyOrg", {"secret": SECRET})
    assert signing_secret(source(credential=written), store) == SECRET


def test_the_described_systems_type_names_store_the_same_credential(
    store: CredentialStore,
) -> None:
    ref = parse_ref("github_webhook_secret:MyOrg")
    stored = store.add(ref.type, ref.instance, {"secret": SECRET})
    assert stored.path == store.root / "webhook_secret" / "MyOrg"
    assert signing_secret(source(credential="webhook_secret:MyOrg"), store) == SECRET


def test_the_default_instance(store: CredentialStore) -> None:
    store.add("webhook_secret", "default", {"secret": SECRET})
    assert signing_secret(source(credential="webhook_secret"), store) == SECRET


def test_a_missing_secret_names_the_source_and_the_command(store: CredentialStore) -> None:
    with pytest.raises(CredentialError) as caught:
        signing_secret(source(credential="MyOrg"), store)
    assert isinstance(caught.value, CorralError)
    assert str(caught.value) == (
        "webhook_secret:MyOrg: not stored (the signing secret of webhook source "
        "'my-github'); add it with `corral creds add webhook_secret:MyOrg`"
    )


def test_an_unsafe_secret_is_refused_with_the_fix(store: CredentialStore) -> None:
    stored = store.add("webhook_secret", "MyOrg", {"secret": SECRET})
    stored.path.chmod(0o755)
    with pytest.raises(CredentialError) as caught:
        signing_secret(source(credential="MyOrg"), store)
    text = str(caught.value)
    assert "(the signing secret of webhook source 'my-github')" in text
    assert "chmod -R go-rwx" in text


def test_a_webhook_secret_sets_nothing_in_a_run(store: CredentialStore) -> None:
    store.add("webhook_secret", "MyOrg", {"secret": SECRET})
    (loaded,) = store.resolve(["webhook_secret:MyOrg"])
    assert loaded.env == {}
    assert loaded.type.given_to_runs is False
