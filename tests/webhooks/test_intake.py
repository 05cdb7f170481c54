"""POST /webhooks/{source} over real HTTP against a running scheduler and gateway, on both
stores: signed fixtures are recorded and run, everything else is refused and recorded."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from corral.credentials import CredentialStore
from corral.store import ItemState, ReceiptOutcome, RunState, Store
from corral.store._webhooks import REFUSED_BODY_CAP
from corral.webhooks import Delivery, parse, with_receipt
from tests.gateway import test_metrics
from tests.gateway.fleet import Fleet, running_fleet
from tests.webhooks.helpers import fixture, fixture_json
from tests.webhooks.signing import SECRET, sign_generic, sign_github

#: A small cap for the size tests, far above every fixture.
CAP = 100_000
PROJECT = f"""
[webhooks.gh]
type = "github"
credential = "gh"
maxBodyBytes = {CAP}

[webhooks.open]
type = "generic"
allowUnsigned = true
"""
# dev: GitHub issues; ops: any generic event; off (scale 0): GitHub issues too.
TABLES = {
    "dev": '[[webhooks]]\nsource = "gh"\nevents = ["issues"]\n',
    "reviewer": '[[webhooks]]\nsource = "gh"\nevents = ["pull_request"]\n',
    "ops": '[[webhooks]]\nsource = "open"\n',
    "off": '[[webhooks]]\nsource = "gh"\nevents = ["issues"]\n',
}
RECORD_PROMPT = 'cat "$CORRAL_PROMPT_FILE" > "$OUT/prompt-$CORRAL_RUN_ID.txt"'
AGENTS: dict[str, dict[str, object]] = {
    "dev": {"command": RECORD_PROMPT},
    "reviewer": {"command": RECORD_PROMPT},
    "ops": {"command": RECORD_PROMPT},
    "off": {"scale": 0, "command": "true"},
}


@dataclass
class Intake:
    fleet: Fleet
    http: httpx.AsyncClient

    @property
    def store(self) -> Store:
        return self.fleet.store

    async def post(
        self, body: bytes, headers: dict[str, str], source: str = "gh"
    ) -> httpx.Response:
        return await self.http.post(f"/webhooks/{source}", content=body, headers=headers)


@pytest.fixture
def credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CredentialStore:
    """The gateway's credential store (CORRAL_HOME in the test's directory), with the
    signing secret of source ``gh``."""
    monkeypatch.setenv("CORRAL_HOME", str(tmp_path / "home"))
    creds = CredentialStore()
    creds.add("webhook_secret", "gh", {"secret": SECRET})
    return creds


@contextlib.asynccontextmanager
async def intake(root: Path, store: Store) -> AsyncIterator[Intake]:
    async with (
        running_fleet(root, store, AGENTS, PROJECT, TABLES) as fleet,
        httpx.AsyncClient(base_url=fleet.url, timeout=30) as http,
    ):
        yield Intake(fleet, http)


@pytest.fixture
async def hook(tmp_path: Path, store: Store, credentials: CredentialStore) -> AsyncIterator[Intake]:
    async with intake(tmp_path / "p", store) as running:
        yield running


async def test_a_signed_delivery_is_recorded_queued_and_run(hook: Intake) -> None:
    body = fixture("issues")
    headers = sign_github(body, SECRET, event="issues", delivery_id="d-issue-1")

    before = datetime.now(UTC)
    response = await hook.post(body, headers)
    after = datetime.now(UTC)

    assert response.status_code == 202, response.text
    answer = response.json()
    receipt_id = answer["receiptId"]
    assert answer["ok"] is True and receipt_id.startswith("wh_")
    assert (answer["event"], answer["deliveryId"], answer["queued"]) == (
        "issues",
        "d-issue-1",
        ["dev"],
    )
    by_agent = {a["agent"]: a for a in answer["agents"]}
    assert set(by_agent) == {"dev", "off", "reviewer"}  # every agent subscribed to gh
    assert by_agent["dev"]["state"] == "queued" and by_agent["dev"]["itemId"] is not None
    assert by_agent["reviewer"]["matched"] is False
    assert "'issues' not in events" in by_agent["reviewer"]["reason"]
    # A matching agent with scale = 0 is recorded as not queued, with the reason.
    assert by_agent["off"]["matched"] is True and by_agent["off"]["state"] == "rejected"
    assert "scale = 0" in by_agent["off"]["why"]

    (run,) = await hook.fleet.finished("dev", 1)
    assert run.state is RunState.SUCCEEDED, run.error
    assert run.item_id == by_agent["dev"]["itemId"]
    # The trigger's timestamp is the time the delivery was received (ISO 8601, UTC).
    assert run.trigger_detail is not None
    stamp = run.trigger_detail["timestamp"]
    received = datetime.fromisoformat(stamp)
    assert stamp.endswith("Z") and before - timedelta(seconds=0.001) <= received <= after
    source = hook.fleet.scheduler.project.config.webhooks["gh"]
    event = parse(source, Delivery("gh", headers, body, received))
    assert run.trigger_detail == with_receipt(event.trigger, receipt_id)
    assert run.trigger_detail is not None and run.trigger_detail["receiptId"] == receipt_id
    prompt = hook.fleet.out(f"prompt-{run.id}.txt").read_text()
    assert "<webhook-trigger>" in prompt and receipt_id in prompt
    assert fixture_json("issues")["issue"]["title"] in prompt

    receipt = await hook.store.get_receipt(receipt_id)
    assert receipt is not None and receipt.outcome is ReceiptOutcome.ACCEPTED
    assert receipt.verified and receipt.verification == "valid signature"
    assert receipt.body == body and not receipt.body_truncated
    assert receipt.headers["x-hub-signature-256"] == headers["X-Hub-Signature-256"]
    assert receipt.queued == ["dev"] and receipt.item_ids == [
        by_agent["dev"]["itemId"],
        by_agent["off"]["itemId"],
    ]
    assert [r.to_json() for r in receipt.results] == answer["agents"]


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"X-Hub-Signature-256": "sha256=" + "0" * 64}, "signature does not match"),
        ({"X-Hub-Signature-256": "sha1=abc"}, "malformed X-Hub-Signature-256 header"),
        ({"X-Hub-Signature-256": None}, "no X-Hub-Signature-256 header"),
    ],
    ids=["wrong", "malformed", "missing"],
)
async def test_a_bad_or_missing_signature_is_refused_recorded_and_queues_nothing(
    hook: Intake, change: dict[str, str | None], error: str
) -> None:
    body = fixture("issues")
    headers = sign_github(body, SECRET, delivery_id="d-forged")
    headers["Authorization"] = "Bearer some-proxy-credential"
    for name, value in change.items():
        if value is None:
            del headers[name]
        else:
            headers[name] = value

    response = await hook.post(body, headers)

    assert response.status_code == 401
    answer = response.json()
    assert answer["ok"] is False and error in answer["error"]
    receipt = await hook.store.get_receipt(answer["receiptId"])
    assert receipt is not None and receipt.outcome is ReceiptOutcome.REFUSED
    assert not receipt.verified and error in (receipt.verification or "")
    # A stranger's receipt keeps only the start of the body (and its size).
    assert receipt.body == body[:REFUSED_BODY_CAP] and receipt.body_size == len(body)
    assert receipt.results == ()
    assert "authorization" not in receipt.headers
    assert await hook.store.list_items() == []
    # The forged delivery id took nothing: the genuine delivery is accepted afterwards.
    genuine = await hook.post(body, sign_github(body, SECRET, delivery_id="d-forged"))
    assert genuine.status_code == 202


async def test_a_body_signed_with_another_secret_is_refused(hook: Intake) -> None:
    body = fixture("issues")
    response = await hook.post(body, sign_github(body, "another-secret-0123456789"))
    assert response.status_code == 401
    assert await hook.store.list_items() == []


async def test_an_unsigned_source_accepts_unsigned_deliveries(hook: Intake) -> None:
    body = json.dumps({"event": "deploy", "title": "deploy api", "repo": "acme/api"}).encode()
    response = await hook.post(body, {"Content-Type": "application/json"}, source="open")
    assert response.status_code == 202, response.text
    answer = response.json()
    assert answer["queued"] == ["ops"] and answer["event"] == "deploy"
    receipt = await hook.store.get_receipt(answer["receiptId"])
    assert receipt is not None and receipt.verified
    assert receipt.verification is not None and "allowUnsigned" in receipt.verification
    (run,) = await hook.fleet.finished("ops", 1)
    assert run.state is RunState.SUCCEEDED
    assert run.trigger_detail is not None and run.trigger_detail["title"] == "deploy api"
    # Signed with some secret it has not got: still accepted (nothing to check it with).
    signed = sign_generic(body, "whatever-secret-0123456789")
    assert (await hook.post(body, signed, source="open")).status_code == 202


async def test_a_redelivery_is_answered_as_a_duplicate_and_queues_nothing(hook: Intake) -> None:
    body = fixture("issues")
    headers = sign_github(body, SECRET, delivery_id="d-again")
    first = await hook.post(body, headers)
    assert first.status_code == 202

    again = await hook.post(body, headers)

    assert again.status_code == 200
    answer = again.json()
    assert answer["ok"] is True and answer["duplicate"] is True
    assert answer["duplicateOf"] == first.json()["receiptId"]
    receipt = await hook.store.get_receipt(answer["receiptId"])
    assert receipt is not None and receipt.outcome is ReceiptOutcome.DUPLICATE
    items = await hook.store.list_items(agent="dev")
    assert len(items) == 1


async def test_concurrent_redeliveries_queue_once(hook: Intake) -> None:
    body = fixture("issues")
    headers = sign_github(body, SECRET, delivery_id="d-burst")
    # Separate clients (connections), all at once.
    clients = [httpx.AsyncClient(base_url=hook.fleet.url, timeout=30) for _ in range(12)]
    try:
        responses = await asyncio.gather(
            *(c.post("/webhooks/gh", content=body, headers=headers) for c in clients)
        )
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))

    assert Counter(r.status_code for r in responses) == {202: 1, 200: 11}
    accepted = next(r.json() for r in responses if r.status_code == 202)
    assert {r.json().get("duplicateOf") for r in responses if r.status_code == 200} == {
        accepted["receiptId"]
    }
    assert len(await hook.store.list_items(agent="dev")) == 1
    runs = await hook.fleet.finished("dev", 1)
    await asyncio.sleep(0.3)  # nothing else starts
    assert len(await hook.store.list_runs(agent="dev")) == len(runs) == 1


async def test_a_ping_is_answered_and_queues_nothing(hook: Intake) -> None:
    body = fixture("ping")
    response = await hook.post(body, sign_github(body, SECRET, event="ping"))
    assert response.status_code == 200
    answer = response.json()
    assert answer["ok"] is True and answer["pong"] is True
    receipt = await hook.store.get_receipt(answer["receiptId"])
    assert receipt is not None and receipt.outcome is ReceiptOutcome.PING
    assert receipt.event == "ping" and receipt.results == ()
    assert await hook.store.list_items() == []


async def test_an_unknown_source_is_404_and_recorded(hook: Intake) -> None:
    body = fixture("issues")
    response = await hook.post(body, sign_github(body, SECRET), source="gitlab")
    assert response.status_code == 404
    answer = response.json()
    assert answer["ok"] is False
    assert answer["error"] == (
        "unknown webhook source 'gitlab': the project's config.toml has no [webhooks.gitlab]"
    )
    receipt = await hook.store.get_receipt(answer["receiptId"])
    assert receipt is not None and receipt.outcome is ReceiptOutcome.REFUSED
    assert receipt.source == "gitlab"
    assert await hook.store.list_items() == []


async def test_a_signed_body_that_is_not_the_promised_payload_is_400(hook: Intake) -> None:
    body = b'["not", "an", "object"]'
    response = await hook.post(body, sign_github(body, SECRET, delivery_id="d-bad"))
    assert response.status_code == 400
    answer = response.json()
    assert answer["ok"] is False and "JSON object" in answer["error"]
    receipt = await hook.store.get_receipt(answer["receiptId"])
    assert receipt is not None and receipt.outcome is ReceiptOutcome.INVALID
    assert receipt.verified and receipt.delivery_id == "d-bad" and receipt.error
    assert await hook.store.list_items() == []


async def test_a_declared_oversized_body_is_refused_unread(hook: Intake) -> None:
    """Content-Length over the cap: 413 before a byte of the body is sent."""
    host, port = hook.fleet.url.removeprefix("http://").split(":")
    declared = 50 * 1024 * 1024
    head = (
        f"POST /webhooks/gh HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"X-GitHub-Event: issues\r\nX-GitHub-Delivery: d-huge\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    ).encode()
    status, headers, answer = await asyncio.to_thread(_send_head_only, host, int(port), head)

    assert status == 413
    assert headers.get("connection") == "close"
    assert answer["error"] == (
        f"payload is {declared} bytes; the limit for source gh is {CAP} (maxBodyBytes)"
    )
    receipt = await hook.store.get_receipt(answer["receiptId"])
    assert receipt is not None and receipt.outcome is ReceiptOutcome.REFUSED
    assert (receipt.body, receipt.body_size, receipt.body_truncated) == (b"", declared, True)
    assert receipt.delivery_id == "d-huge"  # as the headers claimed it: not verified


async def test_a_streamed_oversized_body_is_cut_off_at_the_cap(hook: Intake) -> None:
    """A chunked body with no length: answered 413 as soon as it passes the cap; the
    server neither waits for nor buffers the rest, and closes the connection."""
    host, port = hook.fleet.url.removeprefix("http://").split(":")
    status, answer, sent = await asyncio.to_thread(_stream_until_answered, host, int(port))

    assert status == 413
    assert answer["error"] == (
        f"payload is more than {CAP} bytes; the limit for source gh is {CAP} (maxBodyBytes)"
    )
    assert CAP < sent <= CAP + 4 * CHUNK  # answered right after the cap, not at the end
    receipt = await hook.store.get_receipt(answer["receiptId"])
    assert receipt is not None and receipt.outcome is ReceiptOutcome.REFUSED
    assert receipt.body_truncated and CAP < receipt.body_size <= sent
    assert await hook.store.list_items() == []


async def test_a_body_at_the_cap_is_accepted(hook: Intake) -> None:
    payload = fixture_json("issues")
    payload["issue"]["body"] = ""
    padding = CAP - len(json.dumps(payload).encode())
    payload["issue"]["body"] = "x" * padding
    body = json.dumps(payload).encode()
    assert len(body) == CAP
    response = await hook.post(body, sign_github(body, SECRET))
    assert response.status_code == 202, response.text
    receipt = await hook.store.get_receipt(response.json()["receiptId"])
    assert receipt is not None and receipt.body_size == CAP and receipt.body_truncated
    assert len(receipt.body) == 64 * 1024  # the receipt keeps its first 64 KiB


async def test_the_secret_is_read_once_and_a_missing_one_is_a_clear_refusal(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_HOME", str(tmp_path / "home"))
    async with intake(tmp_path / "p", store) as hook:
        body = fixture("issues")
        refused = await hook.post(body, sign_github(body, SECRET))
        assert refused.status_code == 503
        assert "webhook_secret:gh" in refused.json()["error"]
        receipt = await hook.store.get_receipt(refused.json()["receiptId"])
        assert receipt is not None and receipt.outcome is ReceiptOutcome.REFUSED
        # Stored afterwards: found by the next delivery (a failure is not remembered).
        CredentialStore().add("webhook_secret", "gh", {"secret": SECRET})
        assert (await hook.post(body, sign_github(body, SECRET))).status_code == 202
        # Read once: removing it now changes nothing for this gateway.
        CredentialStore().remove("webhook_secret", "gh")
        assert (await hook.post(body, sign_github(body, SECRET))).status_code == 202
    items = await store.list_items(agent="dev", states=[ItemState.QUEUED, ItemState.CLAIMED])
    assert len(items) <= 2


# -- raw sockets, for what an HTTP client library would hide ------------------------------

CHUNK = 16 * 1024


def _read_answer(sock: socket.socket) -> tuple[int, dict[str, str], dict[str, object]]:
    data = b""
    while b"\r\n\r\n" not in data:
        got = sock.recv(65536)
        if not got:
            break
        data += got
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        got = sock.recv(65536)
        if not got:
            break
        rest += got
    return status, headers, json.loads(rest[:length])


def _send_head_only(
    host: str, port: int, head: bytes
) -> tuple[int, dict[str, str], dict[str, object]]:
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(head)
        status, headers, answer = _read_answer(sock)
        sock.settimeout(5)
        assert sock.recv(1) == b""  # the server closed the connection
        return status, headers, answer


def _stream_until_answered(host: str, port: int) -> tuple[int, dict[str, object], int]:
    """Send a chunked body 16 KiB at a time until an answer is readable; return it and the
    number of body bytes sent by then."""
    head = (
        f"POST /webhooks/gh HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\nX-GitHub-Event: issues\r\n\r\n"
    ).encode()
    sent = 0
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(head)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            sock.sendall(b"%x\r\n" % CHUNK + b"x" * CHUNK + b"\r\n")
            sent += CHUNK
            sock.settimeout(0.05)
            try:
                first = sock.recv(1, socket.MSG_PEEK)
            except TimeoutError:
                continue
            sock.settimeout(10)
            assert first, "the server closed the connection without an answer"
            status, _, answer = _read_answer(sock)
            return status, answer, sent
        raise AssertionError(f"no answer after {sent} bytes")


async def test_deliveries_are_counted_in_the_metrics_by_outcome(hook: Intake) -> None:
    async def count(outcome: str, source: str = "gh") -> float:
        samples = await test_metrics.scrape(hook.http)
        found = test_metrics.value(
            samples, "corral_webhook_deliveries_total", source=source, outcome=outcome
        )
        return found or 0.0

    before = {o: await count(o) for o in ("accepted", "duplicate", "refused", "invalid")}
    unknown_before = await count("unknown_source", source="unknown")
    body = fixture("issues")
    signed = sign_github(body, SECRET, event="issues", delivery_id="d-metrics-1")
    assert (await hook.post(body, signed)).status_code == 202
    assert (await hook.post(body, signed)).status_code == 200  # the same delivery id
    assert (await hook.post(body + b" ", signed)).status_code == 401
    junk = b"[1, 2]"
    assert (await hook.post(junk, sign_github(junk, SECRET, event="issues"))).status_code == 400
    assert (await hook.post(body, signed, source="nope")).status_code == 404
    for outcome in ("accepted", "duplicate", "refused", "invalid"):
        assert await count(outcome) == before[outcome] + 1, outcome
    assert await count("unknown_source", source="unknown") == unknown_before + 1


async def test_a_rotated_secret_is_used_within_the_secret_ttl(
    hook: Intake, credentials: CredentialStore
) -> None:
    intake = hook.fleet.app.state.webhook_intake
    intake.secret_ttl = 0.3
    body = fixture("issues")
    old = sign_github(body, SECRET, event="issues", delivery_id="d-rotate-1")
    assert (await hook.post(body, old)).status_code == 202
    credentials.add("webhook_secret", "gh", {"secret": "rotated"}, replace=True)
    await asyncio.sleep(0.4)
    stale = sign_github(body, SECRET, event="issues", delivery_id="d-rotate-2")
    assert (await hook.post(body, stale)).status_code == 401
    new = sign_github(body, "rotated", event="issues", delivery_id="d-rotate-3")
    assert (await hook.post(body, new)).status_code == 202


async def test_odd_but_signed_deliveries_get_the_same_answer_on_both_stores(
    hook: Intake,
) -> None:
    # A NUL in a field (PostgreSQL's text and jsonb refuse U+0000) is kept as U+FFFD; a
    # delivery id too long to index is refused 400 with a receipt, never 503 forever.
    payload = fixture_json("issues")
    payload["issue"]["title"] = "nul \u0000 here"
    body = json.dumps(payload).encode()
    accepted = await hook.post(body, sign_github(body, SECRET, event="issues"))
    assert accepted.status_code == 202, accepted.text
    assert await hook.store.get_receipt(accepted.json()["receiptId"]) is not None
    (item,) = [a for a in accepted.json()["agents"] if a["agent"] == "dev"]
    queued = await hook.store.get_item(item["itemId"])
    assert queued is not None and queued.trigger_detail is not None
    assert queued.trigger_detail["title"] in ("nul \u0000 here", "nul \ufffd here")

    plain = fixture("issues")
    long_id = sign_github(plain, SECRET, event="issues", delivery_id="d" * 6000)
    refused = await hook.post(plain, long_id)
    assert refused.status_code == 400, refused.text
    assert "delivery id is 6000 characters long; corral takes at most 200" in refused.text
    receipt = await hook.store.get_receipt(refused.json()["receiptId"])
    assert receipt is not None and receipt.outcome is ReceiptOutcome.INVALID
