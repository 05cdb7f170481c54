"""The error mapping, without a server."""

from __future__ import annotations

import time
from email.utils import formatdate

import httpx
import pytest

from corral.errors import CorralError
from corral.llm import errors
from corral.llm.errors import error_for_status, provider_message, retry_after

WHERE = errors.WhereKw(provider="p", model="m", url="http://x")


def test_every_error_is_a_corral_error() -> None:
    for name in errors.__all__:
        obj = getattr(errors, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, CorralError), name


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            '{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}',
            ("overloaded_error", "Overloaded"),
        ),
        (
            '{"error":{"message":"bad key","type":"invalid_request_error","code":"x"}}',
            ("invalid_request_error", "bad key"),
        ),
        ('{"error":"plain string"}', ("", "plain string")),
        ('{"detail":"nope"}', ("", "nope")),
        ("<html>502</html>", ("", "<html>502</html>")),
        ("[1]", ("", "[1]")),
    ],
)
def test_provider_message(body: str, expected: tuple[str, str]) -> None:
    assert provider_message(body) == expected


def test_retry_after_forms() -> None:
    assert retry_after(httpx.Headers({"retry-after": "3"})) == 3.0
    assert retry_after(httpx.Headers({"retry-after-ms": "250"})) == 0.25
    assert retry_after(httpx.Headers({})) is None
    assert retry_after(httpx.Headers({"retry-after": "soon"})) is None
    later = retry_after(httpx.Headers({"retry-after": formatdate(time.time() + 30, usegmt=True)}))
    assert later is not None and 25 <= later <= 31


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (401, errors.AuthFailed),
        (403, errors.AuthFailed),
        (429, errors.RateLimited),
        (529, errors.Overloaded),
        (503, errors.Overloaded),
        (400, errors.BadRequest),
        (404, errors.BadRequest),
        (413, errors.BadRequest),
        (422, errors.BadRequest),
        (408, errors.Unavailable),
        (500, errors.Unavailable),
        (504, errors.Unavailable),
    ],
)
def test_status_mapping(status: int, cls: type[errors.ProviderError]) -> None:
    err = error_for_status(status, "{}", httpx.Headers(), **WHERE)
    assert type(err) is cls
    assert str(err).startswith("p model 'm' at http://x: HTTP ")


def test_empty_body_is_said() -> None:
    err = error_for_status(500, "", httpx.Headers(), **WHERE)
    assert "(empty body)" in str(err)
