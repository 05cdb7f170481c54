"""What a stranger can do to the webhook intake, over real HTTP against a running gateway,
on both stores: bad bytes get a 4xx with a receipt, a web page cannot post a delivery, and
refused deliveries grow the store by a small bounded amount however many are sent."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
import sqlite3
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import psycopg
import pytest

from corral.credentials import CredentialStore
from corral.store import NewReceipt, ReceiptOutcome, Store, new_receipt_id
from corral.store._webhooks import (
    REFUSED_BODY_CAP,
    REFUSED_HEADERS_CAP,
    REFUSED_PER_HOUR,
    REFUSED_RETENTION,
)
from tests.store.conftest import Clock
from tests.webhooks.helpers import fixture, fixture_json
from tests.webhooks.signing import SECRET, sign_generic, sign_github
from tests.webhooks.test_intake import Intake, intake

__all__: list[str] = []


@pytest.fixture
def credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CredentialStore:
    monkeypatch.setenv("CORRAL_HOME", str(tmp_path / "home"))
    creds = CredentialStore()
    creds.add("webhook_secret", "gh", {"secret": SECRET})
    return creds


@pytest.fixture
def clock(store: Store) -> Clock:
    ticking = Clock()
    store.clock = ticking
    return ticking


@pytest.fixture
async def hook(tmp_path: Path, store: Store, credentials: CredentialStore) -> AsyncIterator[Intake]:
    async with intake(tmp_path / "p", store) as running:
        yield running


# -- item 8: a lone surrogate is bad input, not a crash -------------------------------------

LONE = b'{"event": "deploy", "title": "a \\ud800 b", "repo": "acme/api"}'
#: A surrogate pair is a real character (U+1F600), not bad input.
PAIR = b'{"event": "deploy", "title": "smile \\ud83d\\ude00", "repo": "acme/api"}'


async def test_a_lone_surrogate_in_a_signed_body_is_400_with_a_receipt(hook: Intake) -> None:
    title = json.dumps(fixture_json("issues")["issue"]["title"]).encode()
    body = fixture("issues").replace(title, b'"a \\ud800 b"', 1)
    assert body != fixture("issues")
    headers = sign_github(body, SECRET, event="issues", delivery_id="d-lone")
    response = await hook.post(body, headers)
    assert response.status_code == 400, response.text
    answer = response.json()
    assert "surrogate" in answer["error"] and "'issue.title'" in answer["error"]
    receipt = await hook.store.get_receipt(answer["receiptId"])
    assert receipt is not None and receipt.outcome is ReceiptOutcome.INVALID
    assert receipt.body == body
    assert await hook.store.list_items() == []


async def test_a_lone_surrogate_anywhere_in_an_unsigned_body_is_400(hook: Intake) -> None:
    json_headers = {"Content-Type": "application/json"}
    for body in (
        LONE,
        b'{"event": "deploy", "labels": ["ok", "\\udfff"]}',
        b'{"event": "deploy", "extra": {"\\ud800key": 1}}',
    ):
        response = await hook.post(body, json_headers, source="open")
        assert response.status_code == 400, (body, response.text)
        receipt = await hook.store.get_receipt(response.json()["receiptId"])
        assert receipt is not None and receipt.outcome is ReceiptOutcome.INVALID
    response = await hook.post(PAIR, json_headers, source="open")
    assert response.status_code == 202, response.text
    (run,) = await hook.fleet.finished("ops", 1)
    assert run.trigger_detail is not None and run.trigger_detail["title"] == "smile \U0001f600"


# -- item 12: a web page cannot deliver to an unsigned source -------------------------------

OPEN_BODY = json.dumps({"event": "deploy", "title": "from a page"}).encode()


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "text/plain"},
        {"Content-Type": "text/plain;charset=UTF-8"},
        {"Content-Type": "application/x-www-form-urlencoded"},
        {"Content-Type": "multipart/form-data; boundary=x"},
        {},  # no content type at all (a fetch() with a Blob body)
        {"Content-Type": "application/json", "Origin": "https://evil.example"},
        {"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"},
        {"Content-Type": "application/json", "Origin": "null"},
    ],
    ids=["text", "text-charset", "form", "multipart", "none", "origin", "fetch-site", "null"],
)
async def test_a_cross_site_post_to_an_unsigned_source_is_refused(
    hook: Intake, headers: dict[str, str]
) -> None:
    response = await hook.post(OPEN_BODY, headers, source="open")
    assert response.status_code == 403, response.text
    answer = response.json()
    assert "allowUnsigned" in answer["error"]
    receipt = await hook.store.get_receipt(answer["receiptId"])
    assert receipt is not None and receipt.outcome is ReceiptOutcome.REFUSED
    assert await hook.store.list_items() == []


async def test_a_signed_delivery_takes_any_content_type_and_origin(hook: Intake) -> None:
    """A signature proves the sender; a browser cannot make one."""
    body = fixture("issues")
    headers = sign_github(body, SECRET) | {"Content-Type": "text/plain", "Origin": "https://x.y"}
    response = await hook.post(body, headers)
    assert response.status_code == 202, response.text
    # A source that allows unsigned deliveries has no secret to check one with: a
    # signature proves nothing there, so the same rules apply to it.
    signed = sign_generic(OPEN_BODY, "any-secret-0123456789") | {"Content-Type": "text/plain"}
    assert (await hook.post(OPEN_BODY, signed, source="open")).status_code == 403


async def test_a_server_to_server_post_to_an_unsigned_source_is_accepted(hook: Intake) -> None:
    headers = {"Content-Type": "application/json; charset=utf-8", "Sec-Fetch-Site": "none"}
    response = await hook.post(OPEN_BODY, headers, source="open")
    assert response.status_code == 202, response.text


# -- item 6: refused deliveries grow the store by a small bounded amount --------------------

#: The bound asserted below: what any number of refused deliveries may add to the store.
GROWTH_BOUND = 1024 * 1024


def _store_bytes(store_url: str, dialect: str) -> int:
    """The store's size: the SQLite database's pages (the file once the WAL is checkpointed),
    or PostgreSQL's receipts table with its indexes and TOAST."""
    if dialect == "sqlite":
        path = store_url.removeprefix("sqlite:///")
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            (pages,) = conn.execute("PRAGMA page_count").fetchone()
            (size,) = conn.execute("PRAGMA page_size").fetchone()
            return int(pages) * int(size)
    with psycopg.connect(store_url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_total_relation_size('corral_webhook_receipts')").fetchone()
        assert row is not None
        return int(row[0])


async def _refused_burst(url: str, count: int) -> list[int]:
    """``count`` refused deliveries of every kind a stranger can send, as fast as they go:
    wrong signatures, unknown sources (a new name each time), oversized bodies, with many
    large headers and a 60 KiB body."""
    # Random text: PostgreSQL compresses what it stores, and a repeated byte to nothing.
    headers = {f"X-Pad-{i}": secrets.token_urlsafe(675) for i in range(40)}  # 36 KiB
    body = secrets.token_urlsafe(45 * 1024).encode()  # 60 KiB
    statuses: list[int] = []
    limits = httpx.Limits(max_connections=8)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http:

        async def one(i: int) -> None:
            kind = i % 3
            sent = dict(headers)
            if kind == 0:
                sent |= sign_github(body, "not-the-secret-0123456789")
                response = await http.post("/webhooks/gh", content=body, headers=sent)
            elif kind == 1:
                response = await http.post(f"/webhooks/nope-{i}", content=body, headers=sent)
            else:
                sent["Content-Length"] = str(200_000)
                big = body + secrets.token_urlsafe(150_000).encode()[: 200_000 - len(body)]
                response = await http.post("/webhooks/gh", content=big, headers=sent)
            statuses.append(response.status_code)

        for start in range(0, count, 8):
            await asyncio.gather(*(one(i) for i in range(start, min(start + 8, count))))
    return statuses


@pytest.mark.slow
async def test_refused_deliveries_grow_the_store_by_a_bounded_amount(
    hook: Intake, store_url: str, dialect: str
) -> None:
    before = _store_bytes(store_url, dialect)
    statuses = await _refused_burst(hook.fleet.url, 450)
    assert set(statuses) <= {401, 404, 413}, set(statuses)
    grown = _store_bytes(store_url, dialect) - before
    assert grown < GROWTH_BOUND, f"{len(statuses)} refused deliveries grew the store {grown} B"
    # Every refusal is still accounted for: the receipts count their repeats.
    receipts = await hook.store.list_receipts(outcome=ReceiptOutcome.REFUSED, limit=1000)
    assert sum(1 + r.repeats for r in receipts) == len(statuses)
    assert len(receipts) < 100
    for receipt in receipts:
        assert len(receipt.body) <= 1024
        assert len(json.dumps(receipt.headers)) <= 4096


def _send_huge_header(host: str, port: int) -> bytes:
    """Send a header up to 32 MiB long; what the server answered before it hung up."""
    answer = b""
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"POST /webhooks/gh HTTP/1.1\r\nHost: x\r\nX-Big: ")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for _ in range(32 * 16):  # 64 KiB at a time
                sock.sendall(b"a" * 65536)
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                answer += chunk
    return answer


def _send_many_headers(host: str, port: int, count: int) -> bytes:
    many = "".join(f"X-H{i}: v\r\n" for i in range(count))
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(f"POST /webhooks/gh HTTP/1.1\r\nHost: x\r\n{many}\r\n".encode())
        return sock.recv(100)


@pytest.mark.slow
async def test_a_huge_header_is_refused_at_the_http_layer(
    hook: Intake, store_url: str, dialect: str
) -> None:
    before = _store_bytes(store_url, dialect)
    host, port = hook.fleet.url.removeprefix("http://").split(":")
    for _ in range(3):
        answer = await asyncio.to_thread(_send_huge_header, host, int(port))
        assert answer == b"" or answer.startswith(b"HTTP/1.1 431"), answer[:100]
    answer = await asyncio.to_thread(_send_many_headers, host, int(port), 500)
    assert answer.startswith(b"HTTP/1.1 431"), answer
    assert _store_bytes(store_url, dialect) - before < 64 * 1024
    assert await hook.store.list_receipts(limit=10) == []
    async with httpx.AsyncClient(base_url=hook.fleet.url) as http:
        body = fixture("issues")
        ok = await http.post("/webhooks/gh", content=body, headers=sign_github(body, SECRET))
        assert ok.status_code == 202


# -- item 6, in the store: a stranger's receipts are small, aggregated, and kept a day ------


def _stranger(n: int, source: str = "gh", key: str = "refused:gh") -> NewReceipt:
    return NewReceipt(
        id=new_receipt_id(),
        source=source,
        outcome=ReceiptOutcome.REFUSED,
        headers={f"x-pad-{i}": "v" * 2000 for i in range(60)} | {"cookie": "c"},
        body=b"z" * 70_000,
        body_size=70_000,
        verified=False,
        verification="signature does not match",
        error="signature does not match",
        repeat_key=key,
    )


async def test_a_strangers_receipts_are_small_aggregated_and_pruned_in_a_day(
    store: Store, clock: Clock
) -> None:
    first, _ = await store.record_delivery(_stranger(0))
    assert len(first.body) == REFUSED_BODY_CAP and first.body_truncated
    assert first.body_size == 70_000
    assert "cookie" not in first.headers
    assert len(json.dumps(first.headers)) <= REFUSED_HEADERS_CAP
    stored = await store.get_receipt(first.id)
    assert stored is not None and stored.body == first.body and stored.headers == first.headers

    ids = [first.id]
    for n in range(1, REFUSED_PER_HOUR + 15):
        clock.advance(1)
        got, _ = await store.record_delivery(_stranger(n))
        ids.append(got.id)
    distinct = list(dict.fromkeys(ids))
    assert len(distinct) == REFUSED_PER_HOUR  # the rest are counted on the last one
    last = await store.get_receipt(distinct[-1])
    assert last is not None and last.repeats == 15 and last.last_repeat_at == clock.now
    # Another kind of stranger has its own count.
    other, _ = await store.record_delivery(_stranger(99, "nope-1", "refused:unknown source"))
    assert other.id not in distinct and other.repeats == 0

    # An hour later there is room again.
    clock.advance(3600)
    later, _ = await store.record_delivery(_stranger(100))
    assert later.id not in distinct

    # A day on, a stranger's receipts are gone (an accepted one stays its 14 days).
    accepted = NewReceipt(
        id=new_receipt_id(),
        source="gh",
        outcome=ReceiptOutcome.ACCEPTED,
        headers={},
        body=b"{}",
        body_size=2,
        verified=True,
    )
    await store.record_delivery(accepted)
    clock.advance(REFUSED_RETENTION.total_seconds() + 3600)
    assert await store.prune_receipts(clock.now - timedelta(days=14)) == REFUSED_PER_HOUR + 2
    assert [r.id for r in await store.list_receipts()] == [accepted.id]
    # And recording one prunes them as well, with no scheduler to do it.
    await store.record_delivery(_stranger(200))
    clock.advance(REFUSED_RETENTION.total_seconds() + 1)
    await store.record_delivery(_stranger(201))
    assert len(await store.list_receipts(outcome=ReceiptOutcome.REFUSED)) == 1
