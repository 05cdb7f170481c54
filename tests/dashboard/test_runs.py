"""The runs list (/dashboard/runs and GET /control/runs) and the run page, on both stores:
filters and search in the query string, keyset pages that reach every run once, live
updates, what started a run and what it did, and text from outside kept inert."""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from corral.store import CallState, NewRun, Run, RunState, Store, TriggerKind, open_store
from tests.dashboard.support import TOKEN, DashFleet, Events
from tests.scheduler.helpers import wait_for

Client = tuple[httpx.AsyncClient, dict[str, str]]
AUTH = {"Authorization": f"Bearer {TOKEN}"}

_ROW = re.compile(r'<tr data-run="([^"]+)"')
_NEXT = re.compile(r'<a rel="next" href="([^"]+)"')
_FIRST = re.compile(r'<a rel="first" href="([^"]+)"')

#: Text a run, a webhook sender or a caller wrote: markup, a clipboard-setting escape
#: (OSC 52), a colour, a bidi override.
HOSTILE = '<script>alert("x")</script>\x1b]52;c;cm0gLXJmIH4=\x07\x1b[31mred\u202eevil'


@pytest.fixture
async def other(store_url: str) -> AsyncIterator[Store]:
    """A second handle on the fleet's store, with a clock of its own (history is seeded
    through it, so the scheduler's clock is never moved)."""
    async with await open_store(store_url) as opened:
        yield opened


async def _seed(store: Store) -> list[Run]:
    """Eight runs of ``off`` (an agent that never runs), newest last: four an hour apart
    two days ago, four a second apart just now; the webhook ones carry a title."""
    now = datetime.now(UTC)
    runs = []
    for i in range(8):
        at = (
            now - timedelta(days=2) + timedelta(hours=i)
            if i < 4
            else now - timedelta(seconds=8 - i)
        )
        store.clock = lambda at=at: at  # type: ignore[misc]
        webhook = i % 2 == 1
        run = await store.create_run(
            NewRun(
                agent="off",
                trigger=TriggerKind.WEBHOOK if webhook else TriggerKind.MANUAL,
                trigger_detail={"title": f"Deploy number {i}", "receiptId": f"wh_{i}"}
                if webhook
                else None,
                prompt=None if webhook else f"task {i}",
            )
        )
        if i in (2, 5):
            run = await store.finish_run(run.id, state=RunState.FAILED, exit_code=3)
        elif i < 6:
            run = await store.finish_run(run.id, state=RunState.SUCCEEDED, exit_code=0)
        runs.append(run)
    store.clock = lambda: datetime.now(UTC)
    return runs


def _rows(page: str) -> list[str]:
    return _ROW.findall(page)


async def _page(http: httpx.AsyncClient, url: str, status: int = 200) -> str:
    answer = await http.get(url)
    assert answer.status_code == status, answer.text
    return answer.text


async def test_the_runs_list_filters_searches_and_pages(
    fleet: DashFleet, signed_in: Client, other: Store
) -> None:
    http, _ = signed_in
    runs = await _seed(other)
    ids = [run.id for run in runs]
    newest_first = ids[::-1]

    page = await _page(http, "/dashboard/runs")
    assert _rows(page) == newest_first
    assert 'sse-connect="/dashboard/events/runs"' in page
    assert "Deploy number 7" in page and "task 6" in page  # the trigger's summary
    assert page.count('<meter class="took"') == 8 and 'aria-current="page">Runs' in page

    assert _rows(await _page(http, "/dashboard/runs?agent=off")) == newest_first
    assert _rows(await _page(http, "/dashboard/runs?agent=dev")) == []
    assert _rows(await _page(http, "/dashboard/runs?state=failed")) == [ids[5], ids[2]]
    both = "/dashboard/runs?state=failed&state=starting"
    assert _rows(await _page(http, both)) == [ids[7], ids[6], ids[5], ids[2]]
    assert _rows(await _page(http, "/dashboard/runs?trigger=webhook")) == [
        ids[7], ids[5], ids[3], ids[1]
    ]  # fmt: skip
    assert _rows(await _page(http, "/dashboard/runs?since=1h")) == newest_first[:4]
    assert _rows(await _page(http, "/dashboard/runs?until=1d")) == newest_first[4:]
    assert _rows(await _page(http, "/dashboard/runs?q=deploy+NUMBER+3")) == [ids[3]]
    assert _rows(await _page(http, "/dashboard/runs?q=task+4")) == [ids[4]]
    assert _rows(await _page(http, f"/dashboard/runs?q={ids[6][:10]}")) == [ids[6]]
    none = await _page(http, "/dashboard/runs?q=nothing+like+it&trigger=call")
    assert "No run matches." in none and 'href="/dashboard/runs">Clear' in none
    # The filters stay in the links: the stream's, the form's, the pages'.
    shared = await _page(http, "/dashboard/runs?trigger=webhook&limit=2")
    assert 'sse-connect="/dashboard/events/runs?trigger=webhook&amp;limit=2"' in shared
    assert '<option value="webhook" selected>' in shared

    # Pages: every run once, newest first, at every page size; the last has no Older.
    for limit in (1, 3, 4, 8):
        seen: list[str] = []
        url: str | None = f"/dashboard/runs?limit={limit}"
        while url is not None:
            page = await _page(http, url)
            rows = _rows(page)
            assert rows and len(rows) <= limit
            seen += rows
            found = _NEXT.search(page)
            url = None if found is None else html.unescape(found.group(1))
            if seen != rows:
                assert _FIRST.search(page) is not None  # back to the newest
        assert seen == newest_first, limit
    filtered = await _page(http, "/dashboard/runs?trigger=webhook&limit=3")
    older = html.unescape(_NEXT.findall(filtered)[0])
    assert "trigger=webhook" in older
    assert _rows(await _page(http, older)) == [ids[1]]


async def test_a_list_it_cannot_show_says_why(fleet: DashFleet, signed_in: Client) -> None:
    http, _ = signed_in
    for query, words in (
        ("state=asleep", "state must be one of queued"),
        ("trigger=email", "trigger must be one of schedule"),
        ("since=last+tuesday", "since=&#39;last tuesday&#39; is neither a span"),
        ("before=yesterday", "not a runs-list cursor"),
        ("limit=0", "limit=&#39;0&#39;: give a whole number from 1 to 200"),
        ("q=" + "x" * 201, "q is 201 characters long"),
    ):
        page = await _page(http, f"/dashboard/runs?{query}", status=400)
        assert "This list cannot be shown" in page and words in page, query
        stream = await http.get(f"/dashboard/events/runs?{query}")
        assert stream.status_code == 400


async def test_the_list_is_live(fleet: DashFleet, signed_in: Client) -> None:
    http, _ = signed_in
    async with http.stream("GET", "/dashboard/events/runs?agent=dev") as stream:
        events = Events(stream)
        assert "No run matches." in await events.until("runs")
        await fleet.trigger("dev")
        run = await fleet.running("dev")
        shown = await events.until("runs", f'data-run="{run.id}" data-state="running"')
        assert f'data-start="{run.started_at.isoformat() if run.started_at else ""}"' in shown
        fleet.out("stop").touch()
        ended = await events.until("runs", f'data-run="{run.id}" data-state="succeeded"')
        assert "data-seconds=" in ended and "b-succeeded" in ended


async def test_the_control_api_lists_runs_a_page_at_a_time(
    fleet: DashFleet, signed_in: Client, other: Store
) -> None:
    http, _ = signed_in
    ids = [run.id for run in await _seed(other)]

    async def listed(**params: str | int) -> dict[str, object]:
        answer = await http.get("/control/runs", params=params, headers=AUTH)
        assert answer.status_code == 200, answer.text
        body: dict[str, object] = answer.json()
        return body

    seen: list[str] = []
    cursor = None
    while True:
        body = await listed(limit=3, **({} if cursor is None else {"before": cursor}))
        seen += [run["id"] for run in body["runs"]]  # type: ignore[attr-defined,index]
        cursor = body["next"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    webhooks = await listed(trigger="webhook", state="failed", q="deploy")
    assert [run["id"] for run in webhooks["runs"]] == [ids[5]]  # type: ignore[attr-defined,index]
    assert (await listed(agent="off", since="1h", limit=10))["next"] is None
    for params, words in (
        ({"before": "junk"}, "not a runs-list cursor"),
        ({"before": "2026-03-01T12:00:00Z~run\x00"}, "not a runs-list cursor"),
        ({"since": "soon"}, "is neither a span"),
        ({"q": "a\x00b"}, "q holds a NUL character"),
        ({"agent": "\x00"}, "agent holds a NUL character"),
    ):
        answer = await http.get("/control/runs", params=params, headers=AUTH)
        assert answer.status_code == 400 and words in answer.text, answer.text
    bad_state = await http.get("/control/runs", params={"state": "asleep"}, headers=AUTH)
    assert bad_state.status_code in (400, 422)


async def test_the_run_page_shows_what_started_it_and_what_it_did(
    fleet: DashFleet, signed_in: Client, other: Store
) -> None:
    http, _ = signed_in
    # A webhook run: its payload, the trigger part of its prompt, its receipt.
    sent = await http.post("/webhooks/open", json={"title": "ship <it>", "body": "x" * 3000})
    receipt_id = sent.json()["receiptId"]
    await wait_for(lambda: _ended(fleet, "hooked"))
    (hooked,) = await fleet.store.list_runs(agent="hooked")
    page = await _page(http, f"/dashboard/runs/{hooked.id}")
    assert f'href="/dashboard/receipts/{receipt_id}"' in page
    assert '<details class="payload" id="run-payload">' in page  # a large payload: folded
    assert "ship &lt;it&gt;" in page and "&lt;webhook-trigger&gt;" in page
    assert "exit code</dt><dd>0" in page and "took</dt>" in page

    # A call: the caller's page lists it and links the callee; the callee's links back.
    await fleet.trigger("caller")

    async def answered() -> bool:
        calls = await fleet.store.list_calls()
        return bool(calls) and calls[0].state is CallState.COMPLETED

    await wait_for(answered)
    (call,) = await fleet.store.list_calls()
    assert call.callee_run_id is not None
    caller_page = await _page(http, f"/dashboard/runs/{call.caller_run_id}")
    assert (
        'id="run-calls"' in caller_page and f"/dashboard/runs/{call.callee_run_id}" in caller_page
    )
    callee_page = await _page(http, f"/dashboard/runs/{call.callee_run_id}")
    assert 'id="run-called-by"' in callee_page
    assert f'href="/dashboard/runs/{call.caller_run_id}"' in callee_page
    assert "&lt;agent-call&gt;" in callee_page and "&lt;i&gt;context&lt;/i&gt;" in callee_page

    # Reruns: the chain before and after a run.
    first = await other.create_run(NewRun(agent="off", trigger=TriggerKind.SCHEDULE))
    second = await other.create_run(
        NewRun(agent="off", trigger=TriggerKind.SCHEDULE, parent_run_id=first.id)
    )
    third = await other.create_run(
        NewRun(agent="off", trigger=TriggerKind.SCHEDULE, parent_run_id=second.id)
    )
    middle = await _page(http, f"/dashboard/runs/{second.id}")
    before = middle.split('id="run-before"')[1].split("</dd>")[0]
    after = middle.split('id="run-after"')[1].split("</dd>")[0]
    assert first.id in before and third.id in after and third.id not in before
    last = await _page(http, f"/dashboard/runs/{third.id}")
    assert first.id in last.split('id="run-before"')[1].split("</dd>")[0]  # two back

    # Locks: a live run's page says which it holds.
    await fleet.trigger("locker")
    locker = await fleet.running("locker")
    await wait_for(lambda: _holds(fleet, locker.id))
    held = await _page(http, f"/dashboard/runs/{locker.id}")
    assert "deploy://api-prod" in held.split('id="run-locks"')[1].split("</dd>")[0]
    fleet.out("stop").touch()


async def _ended(fleet: DashFleet, agent: str) -> bool:
    return any(r.state.is_terminal for r in await fleet.store.list_runs(agent=agent))


async def _holds(fleet: DashFleet, run_id: str) -> bool:
    return any(lock.run_id == run_id for lock in await fleet.store.list_locks())


async def test_text_from_outside_is_inert_in_the_list_and_on_the_run_page(
    fleet: DashFleet, signed_in: Client, other: Store
) -> None:
    http, _ = signed_in
    hook = await other.create_run(
        NewRun(
            agent="off",
            trigger=TriggerKind.WEBHOOK,
            trigger_detail={"title": HOSTILE, HOSTILE: [HOSTILE]},
        )
    )
    manual = await other.create_run(NewRun(agent="off", trigger=TriggerKind.MANUAL, prompt=HOSTILE))
    await other.set_run_status(manual.id, HOSTILE)
    called = await other.create_run(
        NewRun(
            agent="off",
            trigger=TriggerKind.CALL,
            trigger_detail={"caller": HOSTILE, "context": HOSTILE},
        )
    )
    pages = [
        await _page(http, "/dashboard/runs"),
        await _page(http, f"/dashboard/runs?q={HOSTILE[:8]}"),
        await _page(http, f"/dashboard/runs/{hook.id}"),
        await _page(http, f"/dashboard/runs/{manual.id}"),
        await _page(http, f"/dashboard/runs/{called.id}"),
    ]
    async with http.stream("GET", "/dashboard/events/runs") as stream:
        pages.append(await Events(stream).until("runs", manual.id))
    for page in pages:
        assert "<script>alert" not in page
        assert "\x1b" not in page and "\x07" not in page and "\u202e" not in page
    listed = pages[0]
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;\\x1b]52;c;" in listed  # visible
    assert "\\u202eevil" in listed
    for page in pages[2:5]:
        assert "&lt;script&gt;alert(" in page  # in JSON its quotes are escaped too
        # In the payload's JSON a control character is a \u escape; elsewhere it is shown
        # as the CLI shows it.
        assert "\\x1b[31mred" in page or "\\u001b[31mred" in page
