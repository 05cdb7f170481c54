"""``[webhooks.NAME]``: each type's defaults, what a generic source may set, and names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from corral.errors import ConfigError
from corral.project import load_project
from tests.webhooks.helpers import source, write_project


def scheme(**table: Any) -> tuple[object, ...]:
    found = source(**table)
    return (
        found.signature_header,
        found.algorithm,
        found.signature_prefix,
        found.event_header,
        found.delivery_header,
    )


def test_each_type_has_its_senders_scheme() -> None:
    assert scheme(type="github") == (
        "X-Hub-Signature-256",
        "sha256",
        "sha256=",
        "X-GitHub-Event",
        "X-GitHub-Delivery",
    )
    assert scheme(type="generic") == ("X-Signature-256", "sha256", "sha256=", None, "X-Delivery-Id")
    assert scheme(type="sentry") == (
        "Sentry-Hook-Signature",
        "sha256",
        "",
        "Sentry-Hook-Resource",
        "Request-ID",
    )
    assert scheme(type="linear") == ("Linear-Signature", "sha256", "", None, "Linear-Delivery")
    assert scheme(type="mintlify") == (
        "X-Mintlify-Signature",
        "sha256",
        "sha256=",
        None,
        "X-Delivery-Id",
    )


def test_a_generic_source_sets_its_own_scheme() -> None:
    assert scheme(type="generic", algorithm="sha512") == (
        "X-Signature-256",
        "sha512",
        "sha512=",  # the prefix follows the algorithm
        None,
        "X-Delivery-Id",
    )
    assert scheme(
        type="generic",
        signatureHeader="X-Hook-Sig",
        algorithm="sha1",
        signaturePrefix="",
        eventHeader="X-Hook-Event",
        deliveryHeader="X-Hook-Id",
    ) == ("X-Hook-Sig", "sha1", "", "X-Hook-Event", "X-Hook-Id")


def test_body_size_limit_defaults_to_one_mebibyte() -> None:
    assert source().max_body_bytes == 1_048_576
    assert source(type="generic", maxBodyBytes=4096).max_body_bytes == 4096


def test_sources_know_their_names_and_explain_their_values(tmp_path: Path) -> None:
    sources = '[webhooks.my-github]\ntype = "github"\n\n[webhooks.ci]\ntype = "generic"\n'
    sources += 'algorithm = "sha1"\n'
    project = write_project(tmp_path, sources, {})
    assert {name: s.name for name, s in project.config.webhooks.items()} == {
        "my-github": "my-github",
        "ci": "ci",
    }
    values = {v.key: (v.value, v.source) for v in project.explain()}
    assert values["webhooks.ci.algorithm"] == ("sha1", "project")
    assert values["webhooks.ci.signaturePrefix"] == ("sha1=", "default")
    assert values["webhooks.my-github.maxBodyBytes"] == (1_048_576, "default")


@pytest.mark.parametrize(
    "credential", ["MyOrg", "webhook_secret", "webhook_secret:MyOrg", "linear_webhook_secret:x"]
)
def test_a_source_credential_is_a_signing_secret(tmp_path: Path, credential: str) -> None:
    sources = f'[webhooks.my-github]\ntype = "github"\ncredential = "{credential}"\n'
    project = write_project(tmp_path, sources, {})
    assert project.config.webhooks["my-github"].credential == credential


def test_an_overlay_may_not_give_github_a_generic_setting(tmp_path: Path) -> None:
    write_project(tmp_path, '[webhooks.gh]\ntype = "github"\n', {})
    (tmp_path / ".env.toml").write_text('[webhooks.gh]\neventHeader = "X-Event"\n')
    with pytest.raises(ConfigError) as caught:
        load_project(tmp_path)
    (issue,) = caught.value.issues
    assert issue.field == "webhooks.gh"
    assert issue.message.startswith(
        "'webhooks.gh' sets 'eventHeader', which a github source does not take"
    )
    assert issue.message.endswith('remove it (a type = "generic" source takes it)')
