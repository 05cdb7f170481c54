"""The dashboard in a real browser: Debian's chromium driven by playwright, against a
real scheduler and gateway. Pages load, live updates arrive without a reload, the buttons
change the store, the fleet's pages draw their chart and resolve anomalies, the log tails
live, a phone's width needs no sideways scrolling, and a visitor without the token sees
nothing but the login form.

One browser for the session; each test gets a fresh browser context (its own cookies).
Without chromium (or the playwright package) these tests are skipped, unless
``CORRAL_REQUIRE_BROWSER=1`` (CI) makes that a failure.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
import pytest_asyncio

from corral.engine import fleet
from corral.engine.token import hash_token
from corral.store import (
    AnomalyKind,
    NewItem,
    NewRunner,
    Runner,
    RunnerState,
    RunState,
    TriggerKind,
    open_store,
)
from corral.tasks._model import TaskSpec, TaskStatus
from tests.dashboard.support import TOKEN, DashFleet, dashboard_fleet
from tests.scheduler.helpers import wait_for

if TYPE_CHECKING:
    from playwright.async_api import Browser, ConsoleMessage, Dialog, Page, ViewportSize

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]

CHROMIUM = "/usr/bin/chromium"
PHONE: ViewportSize = {"width": 375, "height": 800}
DESKTOP: ViewportSize = {"width": 1200, "height": 900}


def require_browser() -> None:
    """Skip (or, with CORRAL_REQUIRE_BROWSER=1, fail) without playwright and chromium."""
    problem = None
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        problem = "the playwright package is missing (pip install -e '.[dev]')"
    if problem is None and not os.access(CHROMIUM, os.X_OK):
        problem = f"{CHROMIUM} is missing (apt-get install -y chromium; `make services` does)"
    if problem is None:
        return
    if os.environ.get("CORRAL_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{problem} (CORRAL_REQUIRE_BROWSER=1 demands the browser tests run)")
    pytest.skip(problem)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    require_browser()
    from playwright.async_api import async_playwright

    async with async_playwright() as driver:
        launched = await driver.chromium.launch(executable_path=CHROMIUM)
        yield launched
        await launched.close()


@pytest_asyncio.fixture(loop_scope="session")
async def live(tmp_path: Path) -> AsyncIterator[DashFleet]:
    async with await open_store(f"sqlite:///{tmp_path / 'state.db'}") as store:
        async with dashboard_fleet(tmp_path / "p", store) as running:
            yield running


@dataclass
class Tab:
    """A browser tab on the dashboard, and what went wrong in it."""

    page: Page
    url: str
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    async def open(self, path: str) -> None:
        await self.page.goto(self.url + path)

    async def sign_in(self, path: str = "/dashboard", token: str = TOKEN) -> None:
        await self.open(path)
        await self.page.fill("#token", token)
        await self.page.click("button[type=submit]")
        await self.page.wait_for_url(f"**{path}")
        await self.page.wait_for_selector("main")

    async def overflow(self) -> int:
        """How many pixels the page is wider than the window (0: no sideways scroll)."""
        width = await self.page.evaluate(
            "Math.max(document.documentElement.scrollWidth, document.body.scrollWidth)"
        )
        return int(width) - int(await self.page.evaluate("window.innerWidth"))


async def _tab(browser: Browser, live: DashFleet, viewport: ViewportSize) -> AsyncIterator[Tab]:
    context = await browser.new_context(viewport=viewport)
    page = await context.new_page()
    page.set_default_timeout(10_000)
    tab = Tab(page, live.url)

    def console(message: ConsoleMessage) -> None:
        if message.type == "error":
            tab.errors.append(message.text)

    async def accept(dialog: Dialog) -> None:  # hx-confirm's questions
        tab.dialogs.append(f"{dialog.type}: {dialog.message}")
        await dialog.accept()

    page.on("pageerror", lambda error: tab.errors.append(str(error)))
    page.on("console", console)
    page.on("dialog", accept)
    try:
        yield tab
    finally:
        await context.close()  # closes its event streams before the fleet stops
    # Pages answered 401 (a stream after logging out) or 404 (a missing agent) are meant;
    # anything else (a script error, a refusal by the Content-Security-Policy) is not.
    expected = ("status of 401", "status of 404")
    unexpected = [e for e in tab.errors if not any(word in e for word in expected)]
    assert unexpected == [], unexpected
    assert not any(d.startswith("alert") for d in tab.dialogs), tab.dialogs


@pytest_asyncio.fixture(loop_scope="session")
async def tab(browser: Browser, live: DashFleet) -> AsyncIterator[Tab]:
    async for made in _tab(browser, live, DESKTOP):
        yield made


@pytest_asyncio.fixture(loop_scope="session")
async def phone(browser: Browser, live: DashFleet) -> AsyncIterator[Tab]:
    async for made in _tab(browser, live, PHONE):
        yield made


async def test_log_in_and_the_fleet_page_loads(tab: Tab) -> None:
    await tab.open("/dashboard")
    assert "/dashboard/login" in tab.page.url
    await tab.page.fill("#token", "not-the-token")
    await tab.page.click("button[type=submit]")
    assert "not a valid operator token" in await tab.page.inner_text("form")
    await tab.sign_in()
    rows = tab.page.locator("#agents tbody tr")
    assert await rows.count() == 5
    assert await tab.page.inner_text("tr[data-agent='hooked']") != ""
    for link, heading in [("Queue", "Queue"), ("Locks", "Locks"), ("Calls", "Calls")]:
        await tab.page.click(f"nav >> text={link}")
        assert await tab.page.inner_text("h1") == heading
    await tab.page.click("nav >> text=Webhooks")
    assert await tab.page.inner_text("h1") == "Webhook receipts"


async def test_a_run_started_elsewhere_appears_without_a_reload(tab: Tab, live: DashFleet) -> None:
    await tab.sign_in()
    await tab.page.evaluate("window.stayedHere = true")
    await live.trigger("dev")
    run = await live.running("dev")
    row = tab.page.locator(f"#running tr[data-run='{run.id}']")
    await row.locator(".status-text:text-is('step <b>one</b>')").wait_for()
    live.out("stop").touch()
    await row.wait_for(state="detached")
    assert await tab.page.evaluate("window.stayedHere") is True  # never reloaded


async def test_pause_scale_and_trigger_from_the_agent_page(tab: Tab, live: DashFleet) -> None:
    await tab.sign_in("/dashboard/agents/hooked")
    await tab.page.click("#agent button:text-is('Pause')")
    await tab.page.wait_for_selector("#flash .ok:has-text('Paused hooked')")
    assert await _agent(live, "hooked") == (True, 1)
    await tab.page.wait_for_selector("#agent button:text-is('Resume')")  # pushed live
    await tab.page.fill("textarea[name=prompt]", "look at <this>")
    await tab.page.click("form.trigger button")
    await tab.page.wait_for_selector("#flash .ok:has-text('Queued a run of hooked')")
    [item] = await live.store.list_items(agent="hooked")
    assert item.prompt == "look at <this>"
    assert await tab.page.input_value("textarea[name=prompt]") == ""  # cleared once queued
    await tab.page.fill("#agent input[name=scale]", "3")
    await tab.page.click("#agent form.scale button")
    await tab.page.wait_for_selector("#flash .ok:has-text('up to 3 at once')")
    assert await _agent(live, "hooked") == (True, 3)
    await tab.page.click("#agent button:text-is('Resume')")
    await tab.page.wait_for_selector("#flash .ok:has-text('Resumed hooked')")
    await wait_for(lambda: _ran(live, "hooked"))
    await tab.page.locator("#runs tr[data-run]").first.wait_for()  # the run, pushed live
    await tab.open("/dashboard/agents/nobody")
    assert "no agent" in await tab.page.inner_text("main")


async def _agent(live: DashFleet, name: str) -> tuple[bool, int]:
    [state] = [a for a in await live.store.agent_states() if a.agent == name]
    return state.paused, state.scale


async def _ran(live: DashFleet, name: str) -> bool:
    return any(r.state.is_terminal for r in await live.store.list_runs(agent=name))


async def test_the_run_page_tails_the_log_and_kills(tab: Tab, live: DashFleet) -> None:
    await live.trigger("dev")
    run = await live.running("dev")
    await tab.sign_in(f"/dashboard/runs/{run.id}")
    log = tab.page.locator("#log")
    assert '<script>alert("from the log")</script>' in await log.inner_text()
    live.say("live line <b>bold?</b>\n")
    await tab.page.wait_for_selector("#log:has-text('live line <b>bold?</b>')")
    assert await tab.page.locator("#log b, #log script").count() == 0  # text, not markup
    live.say("and another\n")
    await tab.page.wait_for_selector("#log:has-text('and another')")
    await tab.page.click("#run-status button:text-is('Kill')")
    await tab.page.wait_for_selector(f"#flash .ok:has-text('Asked run {run.id} to stop')")
    await tab.page.wait_for_selector("#run-outcome .b-killed")  # pushed live
    current = await live.store.get_run(run.id)
    assert current is not None and current.state is RunState.KILLED
    assert any(d.startswith("confirm") for d in tab.dialogs)


async def test_filter_the_runs_list_and_open_a_run(tab: Tab, live: DashFleet) -> None:
    await live.trigger("hooked", prompt="find <me>")
    await wait_for(lambda: _ran(live, "hooked"))
    await tab.sign_in("/dashboard/runs")
    await tab.page.select_option("#run-filter select[name=agent]", "dev")
    await tab.page.click("#run-filter button[type=submit]")
    await tab.page.wait_for_url("**/dashboard/runs?agent=dev&*")
    await tab.page.wait_for_selector("#runs-none")
    # A run of dev appears without a reload, its duration bar growing while it runs.
    await tab.page.evaluate("window.stayedHere = true")
    await live.trigger("dev")
    run = await live.running("dev")
    row = tab.page.locator(f"#runs tr[data-run='{run.id}']")
    await row.wait_for()
    bar = row.locator("meter.took")
    first = float(await bar.evaluate("m => m.value"))

    async def grew() -> bool:
        return float(await bar.evaluate("m => m.value")) > first

    await wait_for(grew)  # ticked by the page's script, between pushes
    live.out("stop").touch()
    await tab.page.wait_for_selector(f"#runs tr[data-run='{run.id}'][data-state='succeeded']")
    assert await tab.page.evaluate("window.stayedHere") is True
    live.out("stop").unlink()
    # Search for the other agent's run by its prompt, and open it.
    await tab.page.select_option("#run-filter select[name=agent]", "")
    await tab.page.fill("#run-filter input[name=q]", "FIND <me>")
    await tab.page.click("#run-filter button[type=submit]")
    await tab.page.wait_for_url("**/dashboard/runs?*q=FIND+%3Cme%3E")
    rows = tab.page.locator("#runs tr[data-run]")
    assert await rows.count() == 1
    hooked = (await live.store.list_runs(agent="hooked"))[0]
    await rows.first.locator(f"a:text-is('{hooked.id}')").click()
    await tab.page.wait_for_url(f"**/dashboard/runs/{hooked.id}")
    assert await tab.page.inner_text("h1") == hooked.id
    await tab.page.click("#run-prompt summary")
    assert "<user-prompt>\nfind <me>\n</user-prompt>" in await tab.page.inner_text(
        "#run-prompt pre"
    )


async def test_force_release_and_replay(tab: Tab, live: DashFleet) -> None:
    await live.trigger("locker")
    await live.running("locker")
    await tab.sign_in("/dashboard/locks")
    await tab.page.click("tr[data-key='deploy://api-prod'] button")
    await tab.page.wait_for_selector("#flash .ok:has-text('Released deploy://api-prod')")
    assert await live.store.list_locks() == []
    await tab.page.wait_for_selector("text=No lock is held.")  # pushed live
    async with httpx.AsyncClient(base_url=live.url) as http:
        body = b'{"title": "<b>hi</b>"}'
        json_type = {"Content-Type": "application/json"}
        sent = await http.post("/webhooks/open", content=body, headers=json_type)
    original = sent.json()["receiptId"]
    await tab.open("/dashboard/receipts")
    await tab.page.click(f"tr[data-receipt='{original}'] button:text-is('Replay')")
    await tab.page.wait_for_selector(f"#flash .ok:has-text('Replayed {original}')")
    assert (await live.store.list_receipts())[0].replay_of == original
    await tab.open(f"/dashboard/receipts/{original}")
    assert '{"title": "<b>hi</b>"}' in await tab.page.inner_text("#body")


async def test_a_phone_needs_no_sideways_scrolling(phone: Tab, live: DashFleet) -> None:
    await live.trigger("dev", prompt="a-long-prompt-" * 30)
    await live.trigger("locker")
    await live.trigger("off")  # a refusal, with its long reason
    run = await live.running("dev")
    await live.running("locker")
    await phone.sign_in()
    await phone.page.locator(f"tr[data-run='{run.id}']").wait_for()
    assert await phone.overflow() <= 0
    for path in (
        "/dashboard/agents/dev",
        "/dashboard/runs",
        f"/dashboard/runs/{run.id}",
        "/dashboard/queue",
        "/dashboard/locks",
        "/dashboard/calls",
        "/dashboard/receipts",
    ):
        await phone.open(path)
        assert await phone.overflow() <= 0, path


async def test_without_the_token_every_page_is_the_login_page(tab: Tab, live: DashFleet) -> None:
    await live.trigger("dev")
    run = await live.running("dev")
    for path in (
        "/dashboard",
        "/dashboard/queue",
        "/dashboard/locks",
        "/dashboard/calls",
        "/dashboard/receipts",
        "/dashboard/agents/dev",
        "/dashboard/runs",
        f"/dashboard/runs/{run.id}",
    ):
        await tab.open(path)
        assert tab.page.url.startswith(f"{live.url}/dashboard/login?next=/dashboard"), path
        # what the visitor asked for comes back only as where to go after logging in
        assert await tab.page.input_value("input[name=next]") == path
        await tab.page.evaluate("document.querySelector('input[name=next]').remove()")
        html = await tab.page.content()
        for secret in (run.id, "step", "locker", "hooked", "deploy://"):
            assert secret not in html, (path, secret)
    # a session that ends while a page is open: its stream ends at the next check, the
    # reconnect is refused, and the page goes to the login form
    token = "crl_browser-test-bob-0123456789"
    await live.store.create_operator_token("bob", hash_token(token), actor="test")
    live.dashboard.recheck = 0.3
    await tab.sign_in("/dashboard/queue", token)
    before = len(tab.errors)
    await live.store.revoke_operator_token("bob", actor="test")
    live.app.state.tokens.forget()
    await tab.page.wait_for_url("**/dashboard/login?next=/dashboard/queue")
    del tab.errors[before:]  # htmx reports the refused stream (401) on the console


async def test_a_live_update_keeps_what_is_being_typed(tab: Tab, live: DashFleet) -> None:
    await tab.sign_in("/dashboard/agents/hooked")
    await live.store.set_paused("hooked", True)  # queued items stay queued
    queued = "#agent .facts div:has(dt:text-is('Queued')) dd"
    field = "#agent input[name=scale]"
    await tab.page.fill(field, "7")
    # A change elsewhere is pushed into the fragment that holds the field being edited.
    await live.store.enqueue(NewItem(agent="hooked", trigger=TriggerKind.MANUAL))
    live.scheduler.wake()
    await tab.page.wait_for_selector(f"{queued}:text-is('1')")
    assert await tab.page.input_value(field) == "7"
    assert await tab.page.evaluate("document.activeElement.name") == "scale"


async def test_the_fleet_pages_chart_buttons_and_resolving(
    tab: Tab, phone: Tab, live: DashFleet
) -> None:
    store = live.store
    await live.trigger("hooked")
    await wait_for(lambda: _ran(live, "hooked"))
    token, _ = await fleet.create_token(store, actor="test")
    box = await store.redeem_fleet_token(
        hash_token(token),
        hash_token(fleet.new_runner_credential()),
        NewRunner(name="box-<1>", hostname="box.lan", labels=("gpu",), version="0.0.1"),
    )
    assert isinstance(box, Runner)
    found = await store.record_anomaly(AnomalyKind.TOKEN_REUSED, "tok-x", {"address": "10.0.0.9"})
    await tab.sign_in("/dashboard/runners")
    bar = tab.page.locator("#throughput-chart svg rect").first
    drawn = await bar.bounding_box()
    assert drawn is not None and drawn["height"] > 0 and drawn["width"] > 0
    assert "hooked" in await tab.page.inner_text("#throughput-chart figcaption")
    row = tab.page.locator(f"tr[data-runner='{box.id}']")
    assert "box-<1>" in await row.inner_text()
    await row.locator("button:text-is('Cordon')").click()
    await tab.page.wait_for_selector("#flash .ok:has-text('cordoned')")
    assert (await store.get_runner(box.id)).state is RunnerState.CORDONED  # type: ignore[union-attr]
    await tab.page.click("nav >> text=Anomalies")
    assert await tab.page.inner_text("h1") == "Anomalies"
    await tab.page.fill(f"#note-{found.id}", "a second install; minted another token")
    await tab.page.click(f"tr[data-anomaly='{found.id}'] button:text-is('Resolve')")
    await tab.page.wait_for_selector(f"#flash .ok:has-text('Resolved anomaly {found.id}')")
    assert await store.list_anomalies() == []
    await store.record_anomaly(AnomalyKind.RUNNER_OFFLINE, box.id, {"hostname": "x" * 200})
    await phone.sign_in("/dashboard/runners")
    assert await phone.overflow() <= 0
    await phone.open("/dashboard/anomalies")
    assert await phone.overflow() <= 0


async def test_the_scaling_page_loads_with_its_log_and_filter(
    tab: Tab, phone: Tab, live: DashFleet
) -> None:
    store = live.store
    await store.record_fleet_decision(
        "test",
        size=0,
        desired=2,
        policy="reactive",
        reason="queue <2> waiting",
        inputs={"queued": 2, "error": "x" * 300},
    )
    await tab.sign_in()
    await tab.page.click("nav >> text=Scaling")
    assert await tab.page.inner_text("h1") == "Scaling"
    assert "No agent has a pool" in await tab.page.inner_text("#scaling-live")
    row = tab.page.locator("#decision-log tr[data-agent=':fleet']")
    assert "queue <2> waiting" in await row.inner_text()
    assert "0 → 2" in await row.inner_text()
    await tab.page.select_option("#decision-filter select[name=agent]", "dev")
    await tab.page.click("#decision-filter button")
    await tab.page.wait_for_selector("#decisions-none:has-text('No decision recorded for dev')")
    await phone.sign_in("/dashboard/scaling")
    assert await phone.overflow() <= 0


async def test_the_task_board_renders_and_updates_live(
    tab: Tab, phone: Tab, live: DashFleet
) -> None:
    store = live.store
    hostile = "<img src=x onerror=alert(1)> fix <b>it</b>"
    await store.add_tasks(
        [
            TaskSpec(id="base", project="web", title="the base", priority=9),
            TaskSpec(id="top", project="web", title=hostile, labels=("ui",), requires=("base",)),
        ]
    )
    await tab.sign_in()
    await tab.page.click("nav >> text=Tasks")
    assert await tab.page.inner_text("h1") == "Tasks"
    await tab.page.evaluate("window.stayedHere = true")
    open_column = tab.page.locator("section.column[data-status='open']")
    top = open_column.locator("article[data-task='web/top']")
    assert hostile in await top.inner_text()  # shown as text, never run
    assert "blocked by base" in await top.inner_text()
    claimed = await store.claim_task(claimer="alice", project="web")
    assert claimed is not None and claimed.id == "base"
    card = tab.page.locator("section.column[data-status='claimed'] article[data-task='web/base']")
    await card.locator("text=alice").wait_for()  # pushed live
    await store.finish_task("web", "base", claimed.token, TaskStatus.DONE)
    await tab.page.locator(
        "section.column[data-status='done'] article[data-task='web/base']"
    ).wait_for()
    assert "blocked by" not in await top.inner_text()
    assert await tab.page.evaluate("window.stayedHere") is True  # never reloaded
    # Filters are a bookmark; the task's page changes the priority.
    await tab.page.fill("#task-filter input[name=label]", "ui")
    await tab.page.click("#task-filter button")
    await tab.page.wait_for_url("**/dashboard/tasks?*label=ui*")
    assert await tab.page.locator("article[data-task]").count() == 1
    await top.locator("a.mono").click()
    await tab.page.wait_for_url("**/dashboard/tasks/web/top")
    await tab.page.fill("#task-actions input[name=priority]", "8")
    await tab.page.click("#task-actions button:text-is('Set priority')")
    await tab.page.wait_for_selector("#flash .ok:has-text('has priority 8')")
    await tab.page.wait_for_selector("#task-priority:text-is('8')")  # the page, live
    task = await store.get_task("web", "top")
    assert task is not None and task.spec.priority == 8
    await phone.sign_in("/dashboard/tasks")  # the columns stack on a phone
    assert await phone.overflow() <= 0
    await phone.open("/dashboard/tasks/web/top")
    assert await phone.overflow() <= 0
