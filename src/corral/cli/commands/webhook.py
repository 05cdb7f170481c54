"""Webhook receipts for operators: `corral webhook receipts`, `receipt ID`, `replay ID`."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from corral.cli._context import CliContext
from corral.cli._main import cli
from corral.cli._render import (
    cell,
    console,
    err_console,
    fmt_time,
    print_json,
    safe,
    safe_lines,
)
from corral.engine.deliveries import ReplayRefused, replay_receipt
from corral.errors import UsageError
from corral.store import EnqueueResult, Receipt, ReceiptOutcome
from corral.views import iso_time

__all__ = ["parse_since", "receipt_json"]

_OUTCOME_STYLE = {
    ReceiptOutcome.ACCEPTED: "green",
    ReceiptOutcome.PING: "cyan",
    ReceiptOutcome.DUPLICATE: "dim",
    ReceiptOutcome.REFUSED: "red",
    ReceiptOutcome.INVALID: "yellow",
}
_AGO = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``30m``, ``2h``, ``1d`` (that long ago) or an ISO-8601 time (UTC unless it says)."""
    found = _AGO.match(text.strip().lower())
    if found:
        seconds = float(found.group(1)) * _UNITS[found.group(2)]
        return (now or datetime.now(UTC)) - timedelta(seconds=seconds)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"--since {text!r} is neither a duration (30m, 2h, 1d, 1w) nor an ISO-8601 time "
            "(2024-05-01T12:00:00)"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _body_json(receipt: Receipt) -> dict[str, Any]:
    try:
        return {"body": receipt.body.decode("utf-8"), "bodyBase64": None}
    except UnicodeDecodeError:
        return {"body": None, "bodyBase64": base64.b64encode(receipt.body).decode("ascii")}


def receipt_json(receipt: Receipt, *, body: bool = False) -> dict[str, Any]:
    """A receipt as JSON (camelCase keys); the stored body only with ``body``."""
    answer: dict[str, Any] = {
        "id": receipt.id,
        "source": receipt.source,
        "event": receipt.event,
        "deliveryId": receipt.delivery_id,
        "receivedAt": iso_time(receipt.received_at),
        "outcome": receipt.outcome.value,
        "verified": receipt.verified,
        "verification": receipt.verification,
        "error": receipt.error,
        "bodySize": receipt.body_size,
        "bodyTruncated": receipt.body_truncated,
        "replayOf": receipt.replay_of,
        "duplicateOf": receipt.duplicate_of,
        # a stranger's receipt: more deliveries like it, counted here rather than stored
        "repeats": receipt.repeats,
        "lastRepeatAt": iso_time(receipt.last_repeat_at),
        "agents": [r.to_json() for r in receipt.results],
        "queued": receipt.queued,
        "itemIds": receipt.item_ids,
        "headers": receipt.headers,
    }
    if body:
        answer |= _body_json(receipt)
    return answer


def _agents_cell(receipt: Receipt) -> str:
    if receipt.outcome is ReceiptOutcome.DUPLICATE:
        return f"duplicate of {receipt.duplicate_of}"
    if receipt.outcome in (ReceiptOutcome.REFUSED, ReceiptOutcome.INVALID):
        more = f" (and {receipt.repeats} more like it)" if receipt.repeats else ""
        return (receipt.error or "-") + more
    if not receipt.results:
        return "-" if receipt.outcome is ReceiptOutcome.PING else "no agent subscribes"
    parts = []
    for result in receipt.results:
        if not result.matched:
            continue
        parts.append(result.agent if result.queued else f"{result.agent} ({result.state})")
    others = len(receipt.results) - len(parts)
    shown = ", ".join(parts) if parts else "none matched"
    return shown + (f"; {others} not matched" if others and parts else "")


def _outcome_cell(receipt: Receipt) -> Text:
    style = _OUTCOME_STYLE[receipt.outcome]
    text = receipt.outcome.value + (" (replay)" if receipt.replay_of else "")
    return cell(text, style=style)


@cli.group("webhook")
def webhook_group() -> None:
    """Webhook deliveries: every one has a receipt, whatever became of it."""


@webhook_group.command("receipts")
@click.option("--source", help="Only deliveries to this source ([webhooks.NAME]).")
@click.option(
    "--outcome",
    type=click.Choice([o.value for o in ReceiptOutcome]),
    help="Only deliveries with this outcome.",
)
@click.option("--since", help="Only deliveries since then: 30m, 2h, 1d, or an ISO-8601 time.")
@click.option(
    "--limit", type=click.IntRange(min=1), default=50, show_default=True, help="At most this many."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def receipts_cmd(
    obj: CliContext,
    source: str | None,
    outcome: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List webhook deliveries, newest first: what came in and what it queued."""
    project = obj.project()
    after = None if since is None else parse_since(since)

    async def go() -> list[Receipt]:
        async with await obj.store(project) as store:
            return await store.list_receipts(
                source=source, outcome=outcome, since=after, limit=limit
            )

    receipts = asyncio.run(go())
    if as_json:
        print_json([receipt_json(r) for r in receipts])
        return
    if not receipts:
        console.print(
            "no webhook deliveries recorded" + (" that match" if source or outcome or since else "")
        )
        return
    table = Table("receipt", "received", "source", "event", "outcome", "agents", box=None)
    for receipt in receipts:
        table.add_row(
            cell(receipt.id),
            fmt_time(receipt.received_at),
            cell(receipt.source),
            cell(receipt.event or "-"),
            _outcome_cell(receipt),
            cell(_agents_cell(receipt)),
        )
    console.print(table)


@webhook_group.command("receipt")
@click.argument("receipt_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--body", "with_body", is_flag=True, help="Also print the stored body.")
@click.pass_obj
def receipt_cmd(obj: CliContext, receipt_id: str, as_json: bool, with_body: bool) -> None:
    """Show one delivery in full: headers, verification, outcome, each agent's result."""
    project = obj.project()

    async def go() -> Receipt | None:
        async with await obj.store(project) as store:
            return await store.get_receipt(receipt_id)

    receipt = asyncio.run(go())
    if receipt is None:
        raise UsageError(f"no webhook receipt {receipt_id!r}; `corral webhook receipts` lists them")
    if as_json:
        print_json(receipt_json(receipt, body=with_body))
        return
    _show(receipt, with_body)


def _show(receipt: Receipt, with_body: bool) -> None:
    verified = f"{'yes' if receipt.verified else 'no'}: {receipt.verification or '-'}"
    cut = f", stored {len(receipt.body)} (truncated)" if receipt.body_truncated else ""
    console.print(f"[bold]{'receipt':>12}[/]  {safe(receipt.id)}")
    console.print(
        Text.assemble(Text(f"{'outcome':>12}", style="bold"), "  ", _outcome_cell(receipt))
    )
    plain = [
        ("received", f"{fmt_time(receipt.received_at)} ({iso_time(receipt.received_at)})"),
        ("source", receipt.source),
        ("event", receipt.event or "-"),
        ("delivery", receipt.delivery_id or "-"),
        ("verified", verified),
        ("error", receipt.error),
        ("replay of", receipt.replay_of),
        ("duplicate of", receipt.duplicate_of),
        ("body", f"{receipt.body_size} bytes{cut}"),
    ]
    for name, value in plain:
        if value is not None:
            console.print(f"[bold]{name:>12}[/]  {safe(value)}")
    if receipt.results:
        table = Table("agent", "matched", "why", "item", "state", box=None, title="agents")
        for r in receipt.results:
            why = r.reason if r.why is None else f"{r.reason}; {r.why}"
            table.add_row(
                cell(r.agent),
                "yes" if r.matched else "no",
                cell(why),
                cell(r.item_id),
                cell(r.state),
            )
        console.print(table)
    console.print("[bold]headers[/]")
    for name, value in sorted(receipt.headers.items()):
        console.print(f"  {safe(name)}: {safe(value)}")
    if with_body:
        console.print("[bold]body[/]")
        text = _body_json(receipt)["body"]
        if text is None:
            console.print(f"  (not UTF-8; {len(receipt.body)} bytes; use --json for base64)")
            return
        try:
            text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
        except ValueError:
            pass
        console.print(safe_lines(text), soft_wrap=True)


@webhook_group.command("replay")
@click.argument("receipt_id", metavar="RECEIPT")
@click.option("--json", "as_json", is_flag=True, help="Print the new receipt as JSON.")
@click.pass_obj
def replay_cmd(obj: CliContext, receipt_id: str, as_json: bool) -> None:
    """Deliver a recorded delivery again, matched against the configuration as it is now.

    Its stored body is parsed again and routed to the agents whose filters match today;
    their runs are queued (a running scheduler picks them up; none needs to run now) and
    a new receipt records the replay. Deliveries that failed verification, or whose
    body was too large to keep whole, cannot be replayed.
    """
    project = obj.project()

    async def go() -> tuple[Receipt, list[EnqueueResult]]:
        async with await obj.store(project) as store:
            try:
                return await replay_receipt(project, store, receipt_id)
            except ReplayRefused as exc:
                raise UsageError(str(exc)) from None

    receipt, enqueued = asyncio.run(go())
    if as_json:
        print_json(receipt_json(receipt))
        return
    for result in enqueued:
        for dropped in result.dropped:
            why = safe(dropped.reason or "")
            err_console.print(f"[yellow]warning:[/] dropped queue item {dropped.id}: {why}")
    console.print(f"replayed {safe(receipt_id)} as {safe(receipt.id)} ({receipt.outcome.value})")
    for r in receipt.results:
        if r.queued:
            console.print(f"  {safe(r.agent)}: queued (item {r.item_id})")
        elif r.matched:
            console.print(
                f"  {safe(r.agent)}: {safe(r.state)} (item {r.item_id}): {safe(r.why or '')}"
            )
        else:
            console.print(f"  {safe(r.agent)}: not matched: {safe(r.reason)}")
    if not receipt.results and receipt.outcome is ReceiptOutcome.ACCEPTED:
        console.print("  no agent subscribes to this source now")
