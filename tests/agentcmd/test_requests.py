"""The client's side of the agent API: what each command sends for its arguments."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from tests.agentcmd.conftest import SECRET, Gateway, Run

CASES: list[tuple[str, list[str], bytes | None, str, str, Any]] = [
    ("rlock", ["repo/main"], None, "POST", "/agent/locks/acquire", {"key": "repo/main"}),
    (
        "rlock",
        ["k", "--wait"],
        None,
        "POST",
        "/agent/locks/acquire",
        {"key": "k", "wait": True},
    ),
    (
        "rlock",
        ["--wait", "--timeout", "60", "k"],
        None,
        "POST",
        "/agent/locks/acquire",
        {"key": "k", "wait": True, "timeout": 60},
    ),
    (
        "rlock",
        ["--timeout=1.5", "k", "--wait"],
        None,
        "POST",
        "/agent/locks/acquire",
        {"key": "k", "wait": True, "timeout": 1.5},
    ),
    (
        "rlock",
        ["--wait", "--timeout", "007", "--", "-dash-key"],
        None,
        "POST",
        "/agent/locks/acquire",
        {"key": "-dash-key", "wait": True, "timeout": 7},
    ),
    ("runlock", ["k"], None, "POST", "/agent/locks/release", {"key": "k"}),
    ("rlock-heartbeat", ["k"], None, "POST", "/agent/locks/heartbeat", {"key": "k"}),
    (
        "al-subagent",
        ["reviewer"],
        b"please review PR 7\n",
        "POST",
        "/agent/calls",
        {"agent": "reviewer", "context": "please review PR 7\n"},
    ),
    (
        "al-subagent",
        ["reviewer"],
        None,
        "POST",
        "/agent/calls",
        {"agent": "reviewer", "context": ""},
    ),
    ("al-subagent-check", ["c-123"], None, "GET", "/agent/calls/c-123", None),
    ("al-subagent-check", ["a/b c?d"], None, "GET", "/agent/calls/a%2Fb%20c%3Fd", None),
    (
        "al-subagent-wait",
        ["c1"],
        None,
        "POST",
        "/agent/calls/wait",
        {"callIds": ["c1"], "timeout": 900},
    ),
    (
        "al-subagent-wait",
        ["c1", "--timeout", "0", "c2", "c3"],
        None,
        "POST",
        "/agent/calls/wait",
        {"callIds": ["c1", "c2", "c3"], "timeout": 0},
    ),
    ("al-return", ["all", "done", "!"], None, "POST", "/agent/return", {"value": "all done !"}),
    ("al-return", [], b"line 1\nline 2\n", "POST", "/agent/return", {"value": "line 1\nline 2\n"}),
    ("al-return", [""], b"ignored", "POST", "/agent/return", {"value": ""}),
    ("al-return", ["--help"], None, "POST", "/agent/return", {"value": "--help"}),
    ("al-status", ["50%", "of", "files"], None, "POST", "/agent/status", {"text": "50% of files"}),
    ("al-rerun", [], None, "POST", "/agent/rerun", {}),
    ("al-exit", [], None, "POST", "/agent/exit", {"code": 15}),
    ("al-exit", ["0"], None, "POST", "/agent/exit", {"code": 0}),
    ("al-exit", ["255"], None, "POST", "/agent/exit", {"code": 255}),
    (
        "al-shutdown",
        [],
        None,
        "POST",
        "/agent/shutdown",
        {"reason": "agent requested shutdown"},
    ),
    (
        "al-shutdown",
        ["exfiltration detected"],
        None,
        "POST",
        "/agent/shutdown",
        {"reason": "exfiltration detected"},
    ),
    (
        "al-shutdown",
        ["token", 'in "a" comment'],
        None,
        "POST",
        "/agent/shutdown",
        {"reason": 'token in "a" comment'},
    ),
    ("task-claim", [], None, "POST", "/agent/tasks/claim", {"labels": []}),
    (
        "task-claim",
        ["--label", "api", "--project=web", "--label=db"],
        None,
        "POST",
        "/agent/tasks/claim",
        {"labels": ["api", "db"], "project": "web"},
    ),
    (
        "task-claim",
        ["--lease", "900", "--project", "web"],
        None,
        "POST",
        "/agent/tasks/claim",
        {"labels": [], "project": "web", "lease": 900},
    ),
    (
        "task-claim",
        ["--min-priority", "7", "--project", "web"],
        None,
        "POST",
        "/agent/tasks/claim",
        {"labels": [], "project": "web", "minPriority": 7},
    ),
    ("task-heartbeat", ["T-1"], None, "POST", "/agent/tasks/heartbeat", {"id": "T-1"}),
    (
        "task-complete",
        ["T-1", "--result", 'merged "#4"'],
        None,
        "POST",
        "/agent/tasks/complete",
        {"id": "T-1", "result": 'merged "#4"'},
    ),
    (
        "task-fail",
        ["--project", "web", "T-1", "--reason=flaky"],
        None,
        "POST",
        "/agent/tasks/fail",
        {"id": "T-1", "project": "web", "reason": "flaky"},
    ),
    ("task-release", ["T-1"], None, "POST", "/agent/tasks/release", {"id": "T-1"}),
]


@pytest.mark.parametrize(("command", "args", "stdin", "method", "path", "body"), CASES)
def test_request_for_each_command(
    run: Run,
    gateway: Gateway,
    command: str,
    args: list[str],
    stdin: bytes | None,
    method: str,
    path: str,
    body: Any,
) -> None:
    result = run(command, *args, input=stdin)
    assert result.returncode == 0, result
    assert result.stdout == b'{"ok":true}\n'
    assert len(gateway.script.requests) == 1
    request = gateway.script.last
    assert (request.method, request.path, request.body) == (method, path, body)
    assert request.headers["authorization"] == f"Bearer {SECRET}"
    assert request.headers["connection"].lower() == "close"
    if body is None:
        assert request.raw == b""
        assert "content-length" not in request.headers
    else:
        assert request.headers["content-type"] == "application/json"
        assert int(request.headers["content-length"]) == len(request.raw)


TRICKY = [
    'say "hi"',
    "back\\slash \\n not a newline",
    "two\nlines\r\nand\ttab",
    "bell\x07 esc\x1b unit\x1f del\x7f",
    "émoji 😀 中文 ✓",
    "",
    '</script>{"ok":true}',
]


@pytest.mark.parametrize("text", TRICKY)
def test_json_escaping_round_trips_arguments(run: Run, gateway: Gateway, text: str) -> None:
    result = run("al-status", text)
    assert result.returncode == 0, result
    assert gateway.script.last.body == {"text": text}
    # The gateway parses it strictly as UTF-8 JSON (no surrogates, no raw controls).
    raw = gateway.script.last.raw.decode("utf-8")
    assert not any(ord(c) < 0x20 for c in raw)


def test_every_control_character_and_non_ascii_from_stdin(run: Run, gateway: Gateway) -> None:
    context = "".join(chr(c) for c in range(0x20)) + ' "\\ é 😀 \U0010ffff end'
    result = run("al-subagent", "helper", input=context.encode())
    assert result.returncode == 0, result
    assert gateway.script.last.body == {"agent": "helper", "context": context}
    assert "\\u0000" in gateway.script.last.raw.decode()
    assert "😀".encode() in gateway.script.last.raw  # non-ASCII passes through as UTF-8


def test_one_mebibyte_context_from_stdin(run: Run, gateway: Gateway) -> None:
    unit = 'line with "quotes", a \\ backslash, a\ttab and ünïcödé ✓\n'
    context = (unit * (1024 * 1024 // len(unit.encode()) + 1)).encode()[: 1024 * 1024]
    context = context.decode("utf-8", "ignore").encode()
    result = run("al-subagent", "helper", input=context)
    assert result.returncode == 0, result
    assert gateway.script.last.body["context"].encode() == context


def test_bytes_that_are_not_utf8_become_replacement_characters(run: Run, gateway: Gateway) -> None:
    result = run("al-return", input=b"ok \xff\xfe bytes")
    assert result.returncode == 0, result
    assert gateway.script.last.body == {"value": "ok \ufffd\ufffd bytes"}
    result = run("al-status", os.fsdecode(b"arg \xff"))
    assert result.returncode == 0, result
    assert gateway.script.last.body == {"text": "arg \ufffd"}


def test_terminal_stdin_is_an_empty_context(run: Run, gateway: Gateway) -> None:
    leader, follower = os.openpty()
    try:
        result = run("al-subagent", "helper", stdin=follower)
    finally:
        os.close(leader)
        os.close(follower)
    assert result.returncode == 0, result
    assert gateway.script.last.body == {"agent": "helper", "context": ""}


USAGE_ERRORS = [
    ("rlock", []),
    ("rlock", [""]),
    ("rlock", ["a", "b"]),
    ("rlock", ["k", "--timeout", "5"]),
    ("rlock", ["k", "--wait", "--timeout"]),
    ("rlock", ["k", "--wait", "--timeout", "-1"]),
    ("rlock", ["k", "--wait", "--timeout", "abc"]),
    ("rlock", ["k", "--wait", "--timeout", "1e3"]),
    ("rlock", ["k", "--wait", "--timeout", "5."]),
    ("rlock", ["k", "--force"]),
    ("runlock", []),
    ("runlock", ["a", "b"]),
    ("rlock-heartbeat", []),
    ("al-subagent", []),
    ("al-subagent", ["a", "b"]),
    ("al-subagent-check", []),
    ("al-subagent-wait", []),
    ("al-subagent-wait", ["--timeout", "5"]),
    ("al-subagent-wait", ["c1", "--timeout", "soon"]),
    ("al-status", []),
    ("al-rerun", ["now"]),
    ("al-exit", ["256"]),
    ("al-exit", ["-1"]),
    ("al-exit", ["abc"]),
    ("al-exit", ["1.5"]),
    ("al-exit", ["1", "2"]),
    ("task-claim", ["--label"]),
    ("task-claim", ["--label="]),
    ("task-claim", ["T-1"]),
    ("task-claim", ["--owner", "me"]),
    ("task-claim", ["--lease", "ten"]),
    ("task-claim", ["--lease", "-5"]),
    ("task-claim", ["--lease", "1.5"]),
    ("task-claim", ["--lease", "9999999999"]),
    ("task-claim", ["--min-priority", "high"]),
    ("task-claim", ["--min-priority", "-1"]),
    ("task-claim", ["--min-priority", "9999999999"]),
    ("task-heartbeat", []),
    ("task-complete", ["a", "b"]),
    ("task-complete", ["a", "--reason", "x"]),
    ("task-fail", ["a", "--result", "x"]),
    ("task-release", []),
]


@pytest.mark.parametrize(("command", "args"), USAGE_ERRORS)
def test_usage_errors(run: Run, gateway: Gateway, command: str, args: list[str]) -> None:
    result = run(command, *args)
    assert result.returncode == 9, result
    answer = json.loads(result.stdout)
    assert answer["ok"] is False
    assert (answer["error"] + " ").startswith(f"usage: {command} ")
    assert result.stdout.count(b"\n") == 1
    assert gateway.script.requests == []


def test_usage_lines(run: Run) -> None:
    answer = json.loads(run("rlock").stdout)
    assert answer == {
        "ok": False,
        "error": "usage: rlock <resourceKey> [--wait [--timeout SECONDS]]",
    }
    answer = json.loads(run("al-subagent-check").stdout)
    assert answer == {
        "ok": False,
        "status": "error",
        "error": "usage: al-subagent-check <callId>",
    }
    assert json.loads(run("al-rerun", "x").stdout)["error"] == "usage: al-rerun"


def test_usage_errors_need_no_gateway(run: Run) -> None:
    result = run("runlock", env={"GATEWAY_URL": None, "CORRAL_RUN_SECRET": None})
    assert result.returncode == 9


def test_task_claim_without_a_filter_uses_the_board_triggers(run: Run, gateway: Gateway) -> None:
    """A run started by a [[tasks]] trigger: plain ``task-claim`` claims with its filter;
    any --project, --label or --min-priority given replaces the trigger's filter whole."""
    env: dict[str, str | None] = {
        "CORRAL_TASK_PROJECT": "web",
        "CORRAL_TASK_LABELS": "api,db",
        "CORRAL_TASK_MIN_PRIORITY": "6",
    }
    web = {"labels": ["api", "db"], "project": "web", "minPriority": 6}
    assert run("task-claim", env=env).returncode == 0
    assert gateway.script.last.body == web
    assert run("task-claim", "--lease", "60", env=env).returncode == 0
    assert gateway.script.last.body == web | {"lease": 60}
    assert run("task-claim", "--label", "ui", env=env).returncode == 0
    assert gateway.script.last.body == {"labels": ["ui"]}
    assert run("task-claim", "--min-priority", "2", env=env).returncode == 0
    assert gateway.script.last.body == {"labels": [], "minPriority": 2}
    env["CORRAL_TASK_MIN_PRIORITY"] = "1"
    assert run("task-claim", env=env).returncode == 0
    assert gateway.script.last.body == {"labels": ["api", "db"], "project": "web"}
