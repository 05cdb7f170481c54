"""The task board's pages, on both stores, against a real scheduler and gateway: the board
in columns by status with its cards (priority, labels, assignee with the run, what blocks
a task, its age), filtered by the query string, escaped; a task's page; the two buttons;
the live stream, fed by the store's ``tasks`` notices, showing a task claimed through the
store and one claimed by a run's ``task-claim``."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from markupsafe import escape

from corral.gateway.dashboard import _taskboard
from corral.store import Store
from corral.store._notify import TASKS
from corral.tasks._model import TaskSpec, TaskStatus
from tests.dashboard.support import ACTOR, DashFleet, Events, dashboard_fleet, login

Client = tuple[httpx.AsyncClient, dict[str, str]]

XSS = '<script>alert("title")</script><img src=x onerror=alert(1)>'
#: Claims the first open "ui" task, then waits for $OUT/stop.
CLAIMER = (
    'task-claim --label ui > "$OUT/claim.json"; al-status claimed; '
    'while [ ! -e "$OUT/stop" ]; do sleep 0.05; done'
)


def spec(task_id: str, project: str = "web", **fields: object) -> TaskSpec:
    fields.setdefault("title", f"do {task_id}")
    return TaskSpec(id=task_id, project=project, **fields)  # type: ignore[arg-type]


async def seed(store: Store) -> None:
    """A board with a task in each status, a blocked one, and a hostile title."""
    await store.add_tasks(
        [
            spec("schema", priority=9, labels=("api",), description="the tables"),
            spec(
                "endpoints",
                priority=7,
                labels=("api",),
                requires=("schema",),
                acceptance=("returns 200", "<b>documented</b>"),
                description="line one\n<i>line two</i>",
            ),
            spec("evil", priority=3, labels=("ui",), title=XSS),
            spec("logo", priority=2, labels=("ui",)),
            spec("old", priority=1),
            spec("flaky", priority=1),
            spec("other-thing", project="ops", priority=5, labels=("api",)),
        ]
    )
    claimed = await store.claim_task(claimer="alice", project="web", labels=("api",))
    assert claimed is not None and claimed.id == "schema"
    done = await store.claim_task(claimer="bob", project="web", labels=())
    assert done is not None and done.id == "evil"
    await store.finish_task("web", "evil", done.token, TaskStatus.DONE, result="shipped")
    flaky = await store.claim_task(claimer="carol", project="web")
    assert flaky is not None and flaky.id == "logo"
    await store.finish_task("web", "logo", flaky.token, TaskStatus.FAILED, result="broke")
    await store.cancel_task("web", "old", actor="test")


def columns(page: str) -> dict[str, list[str]]:
    """The task keys (project/id) of each column, in order."""
    found: dict[str, list[str]] = {}
    for status, body in re.findall(
        r'<section class="column" data-status="(\w+)".*?>(.*?)</section>', page, re.S
    ):
        found[status] = re.findall(r'data-task="([^"]+)"', body)
    return found


def card(page: str, key: str) -> str:
    match = re.search(
        rf'<article class="task" data-task="{re.escape(key)}">(.*?)</article>', page, re.S
    )
    assert match is not None, key
    return match.group(1)


async def test_the_board_shows_a_column_per_status_and_escapes_titles(
    fleet: DashFleet, signed_in: Client
) -> None:
    http, _ = signed_in
    await seed(fleet.store)
    page = (await http.get("/dashboard/tasks")).text
    assert columns(page) == {
        "open": ["web/endpoints", "ops/other-thing", "web/flaky"],  # by priority
        "claimed": ["web/schema"],
        "done": ["web/evil"],
        "failed": ["web/logo"],
        "cancelled": ["web/old"],
    }
    # The hostile title is text, never markup, on the board and on its page.
    assert "<script>alert" not in page and "<img src=x" not in page
    assert str(escape(XSS)) in card(page, "web/evil")
    claimed = card(page, "web/schema")
    assert "p9" in claimed and ">api<" in claimed and "alice" in claimed
    assert "blocked by" not in claimed
    blocked = card(page, "web/endpoints")
    assert "blocked by" in blocked and "/dashboard/tasks/web/schema" in blocked
    assert "(claimed)" in blocked  # what the requirement is doing now
    assert "blocked by" not in card(page, "web/flaky")
    assert "<time" in blocked and "created" in blocked
    assert 'href="/dashboard/tasks" aria-current="page"' in page
    # Every page of the dashboard links to the board.
    fleet_page = (await http.get("/dashboard")).text
    assert 'href="/dashboard/tasks"' in fleet_page


async def test_filters_come_from_the_query_string(fleet: DashFleet, signed_in: Client) -> None:
    http, _ = signed_in
    await seed(fleet.store)

    async def board(query: str) -> tuple[dict[str, list[str]], str]:
        answer = await http.get(f"/dashboard/tasks?{query}")
        assert answer.status_code == 200, answer.text
        shown = {k: v for k, v in columns(answer.text).items() if v}
        return shown, answer.text

    shown, page = await board("project=ops")
    assert shown == {"open": ["ops/other-thing"]}
    assert 'sse-connect="/dashboard/tasks/events?project=ops"' in page  # the stream too
    assert 'name="project" value="ops"' in page
    shown, _ = await board("label=api")
    assert shown == {"open": ["web/endpoints", "ops/other-thing"], "claimed": ["web/schema"]}
    shown, _ = await board("label=api&project=web")
    assert shown == {"open": ["web/endpoints"], "claimed": ["web/schema"]}
    shown, _ = await board("assignee=carol")
    assert shown == {"failed": ["web/logo"]}
    shown, _ = await board("q=TABLES")  # the description, case aside
    assert shown == {"claimed": ["web/schema"]}
    shown, page = await board("q=%3Cscript%3E")
    assert shown == {"done": ["web/evil"]}
    assert 'value="&lt;script&gt;"' in page
    shown, _ = await board("q=nothing-like-this")
    assert shown == {}

    bad = await http.get("/dashboard/tasks?label=no%20spaces")
    assert bad.status_code == 400
    assert "the label filter" in bad.text and "not valid" in bad.text
    unknown = await http.get("/dashboard/tasks?status=open")
    assert unknown.status_code == 400 and "unknown filter status" in unknown.text
    long = await http.get("/dashboard/tasks?q=" + "x" * 201)
    assert long.status_code == 400 and "the q filter is 201 characters" in long.text
    assert (await http.get("/dashboard/tasks/events?label=a%20b")).status_code == 400


async def test_a_tasks_page_shows_its_text_dependencies_and_history(
    fleet: DashFleet, signed_in: Client
) -> None:
    http, _ = signed_in
    await seed(fleet.store)
    page = (await http.get("/dashboard/tasks/web/endpoints")).text
    assert "line one\n&lt;i&gt;line two&lt;/i&gt;" in page
    assert '<li class="wrap">&lt;b&gt;documented&lt;/b&gt;</li>' in page
    deps = re.search(r'<dl class="config" id="task-deps">(.*?)</dl>', page, re.S)
    assert deps is not None
    assert "/dashboard/tasks/web/schema" in deps.group(1) and "b-claimed" in deps.group(1)
    schema = (await http.get("/dashboard/tasks/web/schema")).text
    blocks = re.search(r"<dt>Blocks</dt><dd>(.*?)</dd>", schema, re.S)
    assert blocks is not None and "/dashboard/tasks/web/endpoints" in blocks.group(1)
    history = re.search(r'<table class="t" id="task-history">(.*?)</table>', schema, re.S)
    assert history is not None
    assert re.findall(r'<td data-label="What">([^<]+)</td>', history.group(1)) == [
        "created",
        "claimed",
    ]
    assert "alice" in history.group(1) and "token 1" in schema
    evil = (await http.get("/dashboard/tasks/web/evil")).text
    assert "<script>alert" not in evil and "shipped" in evil
    missing = await http.get("/dashboard/tasks/web/nope")
    assert missing.status_code == 404 and "no task &#39;nope&#39;" in missing.text
    assert (await http.get("/dashboard/tasks/web/nope/events")).status_code == 404


async def test_the_buttons_cancel_and_set_the_priority(fleet: DashFleet, signed_in: Client) -> None:
    http, headers = signed_in
    await seed(fleet.store)
    refused = await http.post("/dashboard/tasks/web/flaky/cancel")
    assert refused.status_code == 403  # no CSRF token: not from this dashboard's page
    assert (await fleet.store.get_task("web", "flaky")).status is TaskStatus.OPEN  # type: ignore[union-attr]

    answer = await http.post(
        "/dashboard/tasks/web/flaky/priority", data={"priority": "10"}, headers=headers
    )
    assert answer.status_code == 200 and "has priority 10" in answer.text
    for bad in ("0", "11", "high", ""):
        wrong = await http.post(
            "/dashboard/tasks/web/flaky/priority", data={"priority": bad}, headers=headers
        )
        assert wrong.status_code == 400 and "from 1 to 10" in wrong.text
    answer = await http.post("/dashboard/tasks/web/flaky/cancel", headers=headers)
    assert answer.status_code == 200 and "Cancelled task flaky" in answer.text
    task = await fleet.store.get_task("web", "flaky")
    assert task is not None and task.status is TaskStatus.CANCELLED and task.spec.priority == 10
    history = await fleet.store.task_history("web", "flaky")
    assert [(e.kind, e.actor) for e in history][-2:] == [("edited", ACTOR), ("cancelled", ACTOR)]
    again = await http.post("/dashboard/tasks/web/flaky/cancel", headers=headers)
    assert again.status_code == 409 and "already cancelled" in again.text
    nobody = await http.post("/dashboard/tasks/web/ghost/cancel", headers=headers)
    assert nobody.status_code == 404


async def test_the_store_notifies_the_tasks_topic_after_each_change(store: Store) -> None:
    """Every change of a task wakes this process's watchers of ``tasks``; a claim that
    finds nothing does not."""

    async def notified(change: object) -> bool:
        watch = store.changes.watch([TASKS])
        await change  # type: ignore[misc]
        return watch.fired

    assert await notified(store.add_tasks([spec("a"), spec("b", requires=("a",))]))
    assert await notified(store.edit_task("web", "a", priority=8))
    claim = store.claim_task(claimer="x", project="web")
    watch = store.changes.watch([TASKS])
    task = await claim
    assert task is not None and watch.fired
    assert await notified(store.heartbeat_task("web", "a", task.token)) is False  # no card changes
    assert await notified(store.finish_task("web", "a", task.token, TaskStatus.DONE))
    again = await store.claim_task(claimer="x", project="web")
    assert again is not None and again.id == "b"
    assert await notified(store.release_task("web", "b", again.token))
    assert await notified(store.claim_task(claimer="x", project="nowhere")) is False
    assert await notified(store.cancel_task("web", "b"))


@pytest.fixture
def no_polling(monkeypatch: pytest.MonkeyPatch, fleet: DashFleet) -> None:
    """Streams look again only on a notice: what they show came through ``tasks`` (or a
    run's end), not through the poll for other processes' changes."""
    monkeypatch.setattr(_taskboard, "BOARD_TICK", 3600.0)
    fleet.dashboard.recheck = 3600.0


async def test_the_board_stream_shows_a_claim_through_the_store(
    fleet: DashFleet, signed_in: Client, no_polling: None
) -> None:
    http, _ = signed_in
    await fleet.store.add_tasks([spec("first", title=XSS, labels=("ui",)), spec("second")])
    async with http.stream("GET", "/dashboard/tasks/events?project=web") as stream:
        events = Events(stream)
        first = await events.until("tasks", 'data-task="web/first"')
        assert columns(first)["open"] == ["web/first", "web/second"]
        assert "<script>alert" not in first
        await fleet.store.claim_task(claimer="alice", project="web", labels=("ui",))
        claimed = await events.until("tasks", "alice")
        assert columns(claimed)["claimed"] == ["web/first"]
        await fleet.store.add_tasks([spec("third")])
        added = await events.until("tasks", 'data-task="web/third"')
        assert columns(added)["open"] == ["web/second", "web/third"]
        await fleet.store.add_tasks([spec("elsewhere", project="ops")])  # filtered out
        await fleet.store.cancel_task("web", "second")
        cancelled = await events.until("tasks", "web/second")
        assert columns(cancelled)["cancelled"] == ["web/second"]
        assert "elsewhere" not in cancelled


async def test_the_board_stream_shows_a_claim_by_a_runs_task_claim(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = {"claimer": {"command": CLAIMER}}
    monkeypatch.setattr(_taskboard, "BOARD_TICK", 3600.0)  # only notices wake the streams
    async with dashboard_fleet(tmp_path / "p", store, extra) as fleet:
        fleet.dashboard.recheck = 3600.0
        async with httpx.AsyncClient(base_url=fleet.url, timeout=15) as http:
            await login(http)
            await store.add_tasks([spec("button", labels=("ui",)), spec("api", labels=("api",))])
            async with http.stream("GET", "/dashboard/tasks/events") as stream:
                events = Events(stream)
                await events.until("tasks", 'data-task="web/button"')
                await fleet.trigger("claimer")
                run = await fleet.running("claimer")
                claimed = await events.until("tasks", f"/dashboard/runs/{run.id}")
                assert columns(claimed)["claimed"] == ["web/button"]
                assert "claimer" in card(claimed, "web/button")
                # The task's own page streams too.
                async with http.stream("GET", "/dashboard/tasks/web/button/events") as one:
                    detail = await Events(one).until("task", "b-claimed")
                    assert f"/dashboard/runs/{run.id}" in detail
                fleet.out("stop").touch()  # the run ends: its claim goes back to open
                while columns(await events.until("tasks"))["claimed"]:
                    pass
                released = events.seen[-1][1]
                assert columns(released)["open"] == ["web/api", "web/button"]


@pytest.mark.parametrize("path", ["/dashboard/tasks/web/a/events", "/dashboard/tasks/events"])
async def test_without_a_session_streams_get_401_and_pages_the_login(
    fleet: DashFleet, path: str
) -> None:
    async with httpx.AsyncClient(base_url=fleet.url) as http:
        answer = await http.get(path)
        assert answer.status_code == 401
        page = await http.get("/dashboard/tasks?label=x")
    assert page.status_code == 303
    assert "next=/dashboard/tasks%3Flabel%3Dx" in page.headers["location"]
