"""Signature checks: GitHub's scheme, generic schemes, allowUnsigned, and what never passes."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.webhooks import Delivery, Verification, verify
from tests.webhooks.helpers import delivery_for, fixture, source
from tests.webhooks.signing import SECRET, github_signature, sign_generic, sign_github

BODY = fixture("issues")


def github(headers: dict[str, str], body: bytes = BODY) -> Delivery:
    return Delivery("my-github", headers, body)


def with_signature(value: str | None, body: bytes = BODY) -> Delivery:
    headers = sign_github(body, SECRET)
    del headers["X-Hub-Signature-256"]
    if value is not None:
        headers["X-Hub-Signature-256"] = value
    return github(headers, body)


def test_a_valid_github_signature_passes() -> None:
    assert verify(source(), SECRET, delivery_for("issues")) == Verification(True, "valid signature")


def test_header_names_are_matched_in_any_case() -> None:
    headers = {k.upper(): v for k, v in sign_github(BODY, SECRET).items()}
    delivery = github(headers)
    assert set(delivery.headers) == {k.lower() for k in headers}
    assert verify(source(), SECRET, delivery).ok


def test_upper_case_hex_digits_are_the_same_signature() -> None:
    value = github_signature(BODY, SECRET)
    assert verify(source(), SECRET, with_signature("sha256=" + value[7:].upper())).ok


def test_a_missing_signature_is_refused_by_name() -> None:
    found = verify(source(), SECRET, with_signature(None))
    assert found == Verification(False, "no X-Hub-Signature-256 header")


@pytest.mark.parametrize(
    "value",
    [
        "sha1=" + hmac.new(SECRET.encode(), BODY, hashlib.sha1).hexdigest(),  # GitHub's old header
        hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest(),  # no prefix
        "sha256=" + "z" * 64,  # not hex
        "sha256=" + "ab" * 31,  # too short
        "sha256=" + "ab" * 33,  # too long
        "sha256=",
        "",
        "sha256=é" + "a" * 63,  # not ASCII: must not reach compare_digest
    ],
)
def test_a_malformed_signature_is_refused_and_says_what_was_expected(value: str) -> None:
    found = verify(source(), SECRET, with_signature(value))
    assert not found.ok
    assert found.detail == (
        'malformed X-Hub-Signature-256 header: expected "sha256=<64 hex digits>" '
        "(SHA256 HMAC of the body)"
    )


def test_a_signature_made_with_another_secret_does_not_match() -> None:
    value = github_signature(BODY, "another-secret-value")
    assert verify(source(), SECRET, with_signature(value)) == Verification(
        False, "signature does not match"
    )


def test_a_body_changed_by_one_byte_does_not_match() -> None:
    value = github_signature(BODY, SECRET)
    altered = BODY.replace(b'"number": 42', b'"number": 43')
    assert altered != BODY and len(altered) == len(BODY)
    assert not verify(source(), SECRET, with_signature(value, altered)).ok
    flipped = bytes([BODY[0] ^ 1]) + BODY[1:]
    assert verify(source(), SECRET, with_signature(value, flipped)).detail == (
        "signature does not match"
    )


def test_allow_unsigned_accepts_a_delivery_without_a_signature() -> None:
    lenient = source(allowUnsigned=True)
    found = verify(lenient, SECRET, with_signature(None))
    assert found == Verification(True, "unsigned; allowed by allowUnsigned", signed=False)


def test_allow_unsigned_never_accepts_a_wrong_signature() -> None:
    lenient = source(allowUnsigned=True)
    wrong = github_signature(BODY, "another-secret-value")
    assert verify(lenient, SECRET, with_signature(wrong)).detail == "signature does not match"
    assert not verify(lenient, SECRET, with_signature("sha1=abc")).ok
    assert verify(lenient, SECRET, delivery_for("issues")).detail == "valid signature"


def test_without_a_secret_only_allow_unsigned_accepts() -> None:
    strict = verify(source(), None, delivery_for("issues"))
    assert not strict.ok
    assert strict.detail == (
        "source 'my-github' has no signing secret (set credential = \"INSTANCE\" in "
        "[webhooks.my-github] and store it with `corral creds add webhook_secret:INSTANCE`, "
        "or set allowUnsigned = true)"
    )
    assert not verify(source(), "", delivery_for("issues")).ok  # an empty secret is none
    lenient = source(allowUnsigned=True)
    assert verify(lenient, None, with_signature(None)).detail == (
        "unsigned; allowed by allowUnsigned"
    )
    unchecked = verify(lenient, None, delivery_for("issues"))
    assert unchecked == Verification(
        True, "signature not checked (no signing secret); allowed by allowUnsigned", signed=False
    )


@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "sha512"])
def test_generic_sources_sign_with_their_algorithm_and_prefix(algorithm: str) -> None:
    generic = source("deploys", type="generic", algorithm=algorithm)
    assert generic.signature_prefix == f"{algorithm}="
    body = b'{"event": "deploy"}'
    signed = Delivery("deploys", sign_generic(body, SECRET, algorithm=algorithm), body)
    assert verify(generic, SECRET, signed) == Verification(True, "valid signature")
    other = "sha1" if algorithm != "sha1" else "sha256"
    mixed = Delivery("deploys", sign_generic(body, SECRET, algorithm=other), body)
    found = verify(generic, SECRET, mixed)
    assert not found.ok and found.detail.startswith("malformed X-Signature-256 header")


def test_a_generic_source_may_take_a_bare_hex_digest_in_its_own_header() -> None:
    generic = source("deploys", type="generic", signatureHeader="X-Deploy-Sig", signaturePrefix="")
    body = b'{"event": "deploy"}'
    headers = sign_generic(body, SECRET, header="X-Deploy-Sig", prefix="")
    assert not headers["X-Deploy-Sig"].startswith("sha256=")
    assert verify(generic, SECRET, Delivery("deploys", headers, body)).ok
    prefixed = sign_generic(body, SECRET, header="X-Deploy-Sig")
    assert not verify(generic, SECRET, Delivery("deploys", prefixed, body)).ok
    assert verify(generic, SECRET, Delivery("deploys", {}, body)).detail == (
        "no X-Deploy-Sig header"
    )


@pytest.mark.parametrize(
    ("kind", "header"),
    [("sentry", "Sentry-Hook-Signature"), ("linear", "Linear-Signature")],
)
def test_sentry_and_linear_sign_with_a_bare_hex_digest(kind: str, header: str) -> None:
    known = source(kind, type=kind)
    body = b'{"action": "created"}'
    headers = sign_generic(body, SECRET, header=header, prefix="")
    assert verify(known, SECRET, Delivery(kind, headers, body)).ok


# --- properties ---------------------------------------------------------------------

secrets_ = st.text(min_size=1, max_size=40)
bodies = st.binary(max_size=512)


@settings(max_examples=300, deadline=None)
@given(body=bodies, secret=secrets_, other=secrets_, value=st.text(max_size=80))
def test_only_the_secrets_own_signature_of_this_body_passes(
    body: bytes, secret: str, other: str, value: str
) -> None:
    expected = github_signature(body, secret)
    found = verify(source(), secret, with_signature(value, body))
    assert found.ok == (value.strip().lower() == expected)
    forged = github_signature(body, other)
    assert verify(source(), secret, with_signature(forged, body)).ok == (forged == expected)


@settings(max_examples=300, deadline=None)
@given(body=bodies, tampered=bodies, secret=secrets_)
def test_a_signature_of_another_body_never_passes(
    body: bytes, tampered: bytes, secret: str
) -> None:
    value = github_signature(body, secret)
    lenient = source(allowUnsigned=True)
    assert verify(lenient, secret, with_signature(value, tampered)).ok == (body == tampered)


headers_ = st.dictionaries(
    st.one_of(
        st.text(max_size=30),
        st.sampled_from(["X-Hub-Signature-256", "x-signature-256", "X-GitHub-Event"]),
    ),
    st.text(max_size=200),
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(
    headers=headers_,
    body=bodies,
    secret=st.one_of(st.none(), secrets_),
    kind=st.sampled_from(["github", "generic", "sentry", "linear", "mintlify"]),
    unsigned=st.booleans(),
)
def test_verify_never_raises_on_what_a_sender_sends(
    headers: dict[str, str], body: bytes, secret: str | None, kind: str, unsigned: bool
) -> None:
    found = verify(
        source("s", type=kind, allowUnsigned=unsigned), secret, Delivery("s", headers, body)
    )
    assert isinstance(found, Verification) and found.detail
