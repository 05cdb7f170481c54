"""Text from outside never drives the operator's terminal or forges log lines.

Stored rows (a run's ``al-status`` text, lock keys, webhook source names and headers,
token names, rejection reasons, a run's log) carry terminal escapes (OSC 52 clipboard,
OSC 8 hyperlinks, OSC 0 title, CSI screen control, C1 controls), bidi overrides,
zero-width characters, newlines and rich markup; the real CLI, in a subprocess that
believes it writes to a terminal (FORCE_COLOR), prints them all as visible text. The
scheduler's log writes one line per record for a webhook whose source name holds %0a.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest

from corral.project import load_project
from corral.scheduler.service import sync_config
from corral.store import NewItem, NewReceipt, ReceiptOutcome, TriggerKind, open_store
from corral.store.records import AgentResult
from tests.cli.conftest import Corral
from tests.cli.test_walking_skeleton import set_command
from tests.conftest import UrlFactory
from tests.processes import wait_until
from tests.scheduler.procs import SchedulerProcess

pytestmark = pytest.mark.slow

#: Everything a terminal would act on, all in one text.
EVIL = (
    "ok\x1b]52;c;cm0gLXJmIH4=\x07"  # OSC 52: set the clipboard
    "\x1b]8;;https://evil.example/\x1b\\click\x1b]8;;\x1b\\"  # OSC 8: a hyperlink
    "\x1b]0;pwned\x07"  # OSC 0: the window title
    "\x1b[2J\x1b[1;1H"  # CSI: clear the screen, move the cursor
    "\x9b31m"  # C1 CSI
    "\u202egnp.exe\u200b\x7f\x08"  # bidi override, zero-width space, DEL, backspace
    "\nFORGED LINE\r"  # a line of its own
    "[red]x[/red][link=https://evil.example]y[/link]"  # rich markup
)
#: What may reach the terminal besides text: rich's own colours and styles (SGR).
SGR = re.compile(r"\x1b\[[0-9;]*m")
#: What must not: controls but newline, C1, bidi, zero-width, separators.
UNSAFE = re.compile(
    "[\x00-\x09\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2028\u2029\u2066-\u2069]"
)
TERMINAL = {"FORCE_COLOR": "1", "TERM": "xterm-256color"}


def assert_inert(output: str, where: str) -> None:
    bad = UNSAFE.findall(SGR.sub("", output))
    assert not bad, f"{where} printed {bad!r}:\n{output!r}"
    assert "FORGED LINE" not in [line.strip() for line in output.splitlines()], where


def raw_sql(url: str, sql: str, params: tuple[str, ...]) -> None:
    """Write into the store as a bug, an older version or a hand would: under the API."""
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            conn.execute(sql.replace("%s", "?"), params)
        return
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.encode(), params)


async def seed(project: Path, url: str) -> str:
    """A running run with an evil status, lock and log; an evil refused delivery, token
    and rejected item. Returns the run's id."""
    async with await open_store(url) as store:
        await sync_config(store, load_project(project))
        await store.enqueue(NewItem(agent="hello", trigger=TriggerKind.MANUAL))
        (claim,) = await store.claim("test-owner", lease_seconds=600, limit=1)
        run = claim.run
        await store.mark_run_running(run.id, pid=None, host=None)
        await store.set_run_status(run.id, EVIL)
        await store.acquire_lock("plain-key", run.id, ttl_seconds=600)
        await store.enqueue(NewItem(agent=EVIL, trigger=TriggerKind.MANUAL))  # rejected
        await store.record_delivery(
            NewReceipt(
                id="wr_evil",
                source=EVIL,
                outcome=ReceiptOutcome.ACCEPTED,
                headers={"x-evil": EVIL},
                body=EVIL.encode(),
                body_size=len(EVIL.encode()),
                verified=True,
                verification=EVIL,
                event=EVIL,
                delivery_id=EVIL,
                results=(AgentResult("hello", False, EVIL),),
            )
        )
        await store.create_operator_token(EVIL, "0" * 64, actor=EVIL)
    raw_sql(url, "UPDATE corral_locks SET key = %s WHERE key = %s", (EVIL, "plain-key"))
    logs = project / ".corral" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    (logs / f"{run.id}.log").write_bytes(
        b"plain \x1b[1;32mgreen\x1b[0m line\n" + EVIL.encode() + b"\nlast line\r\n"
    )
    return run.id


def test_every_view_of_stored_text_is_inert(
    corral: Corral, project: Path, make_store_url: UrlFactory
) -> None:
    url = make_store_url()
    run_id = asyncio.run(seed(project, url))
    env = {"CORRAL_STATE_URL": url, **TERMINAL}
    views = [
        ("stat",),
        ("top", "--once"),
        ("runs",),
        ("locks",),
        ("webhook", "receipts"),
        ("webhook", "receipt", "wr_evil", "--body"),
        ("token", "ls"),
        ("logs", run_id),
        ("logs", "hello"),
        ("config",),
    ]
    for args in views:
        result = corral(*args, cwd=project, env=env)
        assert result.returncode == 0, (args, result.stderr)
        assert_inert(result.stdout + result.stderr, " ".join(args))
        if args[0] in ("stat", "top", "locks", "webhook"):
            # shown, escaped, and not taken for markup
            assert "\\x1b]52;c;" in result.stdout, args
            assert "[red]x[/red]" in result.stdout, args
    for args in [("stat",), ("locks",), ("webhook", "receipts"), ("token", "ls"), ("runs",)]:
        result = corral(*args, "--json", cwd=project, env=env)
        assert result.returncode == 0, (args, result.stderr)
        assert_inert(result.stdout, " ".join(args) + " --json")
        json.loads(result.stdout)  # still JSON, with the texts as \\u escapes
    stat = json.loads(corral("stat", "--json", cwd=project, env=env).stdout)
    assert stat["running"][0]["status"] == EVIL  # the data itself is kept as it was
    assert stat["locks"][0]["key"] == EVIL

    logs = corral("logs", run_id, cwd=project, env=env).stdout
    assert "\x1b[1;32mgreen\x1b[0m" in logs  # a run's colours stay
    assert "\\x1b]52;c;" in logs and "\\x1b[2J" in logs and "\\u202e" in logs
    assert "FORGED LINE\\r" in logs and "last line" in logs


def test_a_foreground_run_streams_its_output_inert(corral: Corral, project: Path) -> None:
    set_command(project, r"printf 'start \033]52;c;eA==\007 \033[31mred\033[0m \033]0;t\007\n'")
    result = corral("run", "hello", cwd=project, env=TERMINAL)
    assert result.returncode == 0, result.stderr
    assert "\x1b[31mred\x1b[0m" in result.stdout
    assert "\\x1b]52;c;eA==\\x07" in result.stdout
    assert_inert(result.stdout + result.stderr, "corral run")


def test_the_scheduler_log_has_one_line_per_record(project: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{project / '.corral' / 'state.db'}"
    log = tmp_path / "scheduler.log"
    with SchedulerProcess(project, url, log) as scheduler:
        wait_until(lambda: "started; gateway on" in scheduler.output(), 30)
        gateway = re.search(r"gateway on (http://\S+)", scheduler.output())
        assert gateway is not None
        name = "src%0a2026-01-01%2000:00:00,000%20INFO%20corral:%20FORGED%1b]0;pwned%07%e2%80%ae"
        request = urllib.request.Request(
            f"{gateway.group(1)}/webhooks/{name}", data=b"{}", method="POST"
        )
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(request, timeout=10)
        wait_until(lambda: "FORGED" in scheduler.output(), 15)
        assert scheduler.stop() == 0
    text = log.read_text()
    (line,) = [line for line in text.splitlines() if "FORGED" in line]
    assert line.startswith("20") and "webhook src\\n2026-01-01" in line, line
    assert "\\x1b]0;pwned\\x07\\u202e" in line, line
    assert not UNSAFE.findall(text.replace("\n", "")), text
