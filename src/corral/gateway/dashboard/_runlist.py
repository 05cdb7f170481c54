"""The runs list: every run of every agent, newest first, a page at a time.

What it shows is named by the query string alone (agent, state, trigger, since, until,
q, before, limit), so a filtered page is a link to share. Pages are keyset pages on
(created_at, id) (``Store.page_runs``): the next page starts after the last run shown,
so a page costs the rows it reads however long the history, and runs that arrive while
someone reads do not shift the pages after. The table is a live fragment: it is rendered
again from the store whenever the shared snapshot changes (a run started, changed its
status, ended), once per snapshot and filter however many browsers show it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from starlette.datastructures import QueryParams

from corral.gateway.dashboard._context import Dashboard
from corral.gateway.dashboard._feed import Snapshot
from corral.gateway.dashboard._views import LiveView
from corral.store import Run, RunCursor, RunFilter, RunState, TriggerKind
from corral.views import SEARCH_MAX, run_filter

__all__ = [
    "PAGE",
    "PAGE_MAX",
    "STATE_CHOICES",
    "TRIGGER_CHOICES",
    "WINDOWS",
    "BadQuery",
    "RunList",
    "render_runs",
    "run_rows",
    "runs_view",
    "trigger_summary",
]

#: Runs per page, unless ``limit`` says otherwise (at most ``PAGE_MAX``).
PAGE = 50
PAGE_MAX = 200
#: The time windows the filter form offers (any ``since`` works in a link).
WINDOWS = (("", "any time"), ("1h", "last hour"), ("24h", "last day"), ("7d", "last week"))
_FIELDS = ("agent", "state", "trigger", "since", "until", "q")
_TEXT_MAX = {"agent": 64, "since": 64, "until": 64, "q": SEARCH_MAX, "before": 200}


class BadQuery(ValueError):
    """A query string value the runs list cannot use; the message says which and why."""


@dataclass(frozen=True)
class RunList:
    """One view of the runs list, as its query string names it."""

    agent: str = ""
    states: tuple[str, ...] = ()
    triggers: tuple[str, ...] = ()
    since: str = ""
    until: str = ""
    q: str = ""
    before: str = ""
    limit: int = PAGE
    where: RunFilter = field(default_factory=RunFilter, compare=False)
    cursor: RunCursor | None = field(default=None, compare=False)

    @classmethod
    def parse(cls, params: QueryParams) -> RunList:
        """The view a query string names; BadQuery saying what is wrong otherwise."""
        text: dict[str, str] = {}
        for name, most in _TEXT_MAX.items():
            value = (params.get(name) or "").strip()
            if len(value) > most:
                raise BadQuery(f"{name} is {len(value)} characters long; at most {most}")
            text[name] = value
        states = tuple(s for s in params.getlist("state") if s)
        triggers = tuple(t for t in params.getlist("trigger") if t)
        limit_text = params.get("limit") or str(PAGE)
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= PAGE_MAX:
            raise BadQuery(f"limit={limit_text[:20]!r}: give a whole number from 1 to {PAGE_MAX}")
        try:
            where = run_filter(
                agent=text["agent"],
                states=states,
                triggers=triggers,
                since=text["since"],
                until=text["until"],
                search=text["q"],
            )
            cursor = RunCursor.parse(text["before"]) if text["before"] else None
        except ValueError as exc:
            raise BadQuery(str(exc)) from None
        return cls(
            agent=text["agent"],
            states=states,
            triggers=triggers,
            since=text["since"],
            until=text["until"],
            q=text["q"],
            before=text["before"],
            limit=int(limit_text),
            where=where,
            cursor=cursor,
        )

    @property
    def key(self) -> tuple[str, ...]:
        """What a rendered page of this view is memoised under (one per snapshot)."""
        return ("runs", self.query())

    def query(self, *, before: str | None = "") -> str:
        """This view's query string (only what is set); ``before`` replaces the cursor
        (None: the first page)."""
        pairs: list[tuple[str, str]] = []
        for name in _FIELDS:
            if name == "state":
                pairs += [("state", s) for s in self.states]
            elif name == "trigger":
                pairs += [("trigger", t) for t in self.triggers]
            elif getattr(self, name):
                pairs.append((name, getattr(self, name)))
        cursor = self.before if before == "" else before
        if cursor:
            pairs.append(("before", cursor))
        if self.limit != PAGE:
            pairs.append(("limit", str(self.limit)))
        return urlencode(pairs)

    @property
    def filtered(self) -> bool:
        return any(
            getattr(self, name) for name in ("agent", "states", "triggers", "since", "until", "q")
        )


def trigger_summary(run: Run) -> str:
    """One line on what started the run: the webhook event, the caller, the prompt."""
    detail = run.trigger_detail or {}
    if run.trigger is TriggerKind.WEBHOOK:
        where = str(detail.get("repo") or "")
        if detail.get("number") is not None:
            where += f"#{detail['number']}"
        words = [
            str(detail.get("sourceName") or detail.get("source") or ""),
            str(detail.get("event") or ""),
            str(detail.get("action") or ""),
            where,
        ]
        head = " ".join(word for word in words if word)
        title = str(detail.get("title") or "")
        return f"{head}: {title}" if head and title else head or title or "webhook"
    if run.trigger is TriggerKind.CALL:
        return f"called by {detail.get('caller', '?')}: {detail.get('context', '')}"
    if run.prompt:
        return run.prompt
    return run.trigger.value


def run_rows(runs: list[Run], now: datetime) -> tuple[list[dict[str, Any]], float]:
    """The rows of a page of runs (each with its duration so far) and the longest."""
    rows: list[dict[str, Any]] = []
    longest = 0.0
    for run in runs:
        start = run.started_at
        live = not run.state.is_terminal
        if start is None:
            took = 0.0
        elif run.ended_at is not None:
            took = (run.ended_at - start).total_seconds()
        else:
            took = (now - start).total_seconds()
        took = max(took, 0.0)
        longest = max(longest, took)
        rows.append({"run": run, "took": took, "live": live and start is not None})
    return rows, longest


async def render_runs(dash: Dashboard, view: RunList, now: datetime) -> str:
    page = await dash.scheduler.store.page_runs(view.where, before=view.cursor, limit=view.limit)
    rows, longest = run_rows(page.runs, now)
    context = {
        "rows": rows,
        "longest": longest,
        "now": now,
        "view": view,
        "next": None if page.next is None else view.query(before=page.next.token()),
        "first": view.query(before=None) if view.before else None,
        "summary": trigger_summary,
    }
    return dash.renderer.render("_runs.html", context)


def runs_view(dash: Dashboard, view: RunList) -> LiveView:
    """The list as a live fragment: rendered again from the store on every snapshot."""

    async def render(snap: Snapshot) -> str:
        return await render_runs(dash, view, snap.at)

    return LiveView("runs", view.key, render)


#: The states and triggers the filter form offers.
STATE_CHOICES = tuple(state.value for state in RunState)
TRIGGER_CHOICES = tuple(kind.value for kind in TriggerKind)
