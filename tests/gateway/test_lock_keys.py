"""Lock keys hold no whitespace, control, bidi or invisible characters: every character
of Unicode categories Z* and C* is refused, by its code point, with 400 / exit 4."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.agentcmd import install
from corral.gateway.agent_api import AgentApiError, validate_key
from tests.gateway._agent_gateway import AgentGateway, agent_gateway
from tests.scheduler.helpers import write_project

REFUSED = {
    "\u0085": "control character",
    "\u2028": "LINE SEPARATOR",
    "\u00a0": "NO-BREAK SPACE",
    "\u202e": "RIGHT-TO-LEFT OVERRIDE",
    "\u200b": "ZERO WIDTH SPACE",
    "\u2029": "PARAGRAPH SEPARATOR",
    "\ufeff": "ZERO WIDTH NO-BREAK SPACE",
    "\u3000": "IDEOGRAPHIC SPACE",
    " ": "SPACE",
    "\t": "",
    "\x00": "",
    "\x7f": "",
    "\ue000": "",  # private use
    "\u0378": "",  # unassigned
    "\ud800": "",  # a lone surrogate
}


def refusal(key: str) -> str:
    with pytest.raises(AgentApiError) as caught:
        validate_key(key)
    assert caught.value.status == 400
    message = str(caught.value.body["error"])
    message.encode("utf-8")  # the answer can be sent: no lone surrogate echoed
    return message


@pytest.mark.parametrize("char", list(REFUSED), ids=[f"U+{ord(c):04X}" for c in REFUSED])
def test_each_invisible_or_space_character_is_refused_by_code_point(char: str) -> None:
    message = refusal(f"github://acme/app/issues/4{char}2")
    assert f"U+{ord(char):04X}" in message and "at position 26" in message
    assert REFUSED[char] in message
    assert message.isprintable()


def test_ordinary_keys_are_accepted() -> None:
    for key in ["github://acme/app/issues/42", "deploy://api-prod", "x:y", "doc://café/ü/日本"]:
        assert validate_key(key) == key


_SCHEMES = st.from_regex(r"[A-Za-z][A-Za-z0-9+.-]{0,8}:", fullmatch=True)
_SHOWN = st.characters(exclude_categories=("Zs", "Zl", "Zp", "Cc", "Cf", "Co", "Cn", "Cs"))
_HIDDEN = st.characters(categories=("Zs", "Zl", "Zp", "Cc", "Cf", "Co", "Cn", "Cs"))


@given(_SCHEMES, st.text(_SHOWN, min_size=1, max_size=50))
def test_any_key_of_shown_characters_is_accepted(scheme: str, rest: str) -> None:
    assert validate_key(scheme + rest) == scheme + rest


@given(_SCHEMES, st.text(_SHOWN, max_size=20), _HIDDEN, st.text(max_size=20))
def test_any_hidden_character_is_refused_and_named(
    scheme: str, before: str, hidden: str, after: str
) -> None:
    key = scheme + before + hidden + after
    message = refusal(key)
    assert f"U+{ord(hidden):04X}" in message
    assert f"at position {len(scheme + before)}" in message
    assert unicodedata.category(hidden)[0] in "ZC"


@pytest.fixture
def gateway(tmp_path: Path, store_url: str) -> Iterator[AgentGateway]:
    root = tmp_path / "p"
    write_project(root, {"dev": {"command": "true"}})
    with agent_gateway(store_url, root, install(tmp_path / "bin")) as served:
        yield served


def test_the_gateway_refuses_such_keys_and_rlock_exits_4(gateway: AgentGateway) -> None:
    for char in ["\u0085", "\u2028", "\u00a0", "\u202e", "\u200b"]:
        for command in ["rlock", "runlock", "rlock-heartbeat"]:
            done = gateway.command(command, f"github://acme/app/issues/42{char}")
            assert done.returncode == 4, (command, char, done.stdout)
            assert f"U+{ord(char):04X}" in json.loads(done.stdout)["error"]
    # A lone surrogate (only JSON can carry one) is a 400 too, never a 500.
    headers = {"Authorization": f"Bearer {gateway.secret}", "Content-Type": "application/json"}
    raw = b'{"key": "github://acme/\\ud800"}'
    for path in ["/agent/locks/acquire", "/agent/locks/release", "/agent/locks/heartbeat"]:
        answer = httpx.post(gateway.url + path, content=raw, headers=headers)
        assert answer.status_code == 400 and answer.json()["ok"] is False, answer.text
    assert gateway.command("rlock", "github://acme/app/issues/42").returncode == 0


def test_a_key_holding_the_runs_secret_is_refused(gateway: AgentGateway) -> None:
    # A lock key is shown to operators and cannot be redacted without becoming another key.
    done = gateway.command("rlock", f"leak://{gateway.secret}")
    assert done.returncode == 4 and gateway.secret.encode() not in done.stdout
    assert "secret" in json.loads(done.stdout)["error"]


def test_booleans_are_not_numbers_in_agent_requests(gateway: AgentGateway) -> None:
    # JSON's true is not 1: an exit code or a wait given as a boolean is refused, by name.
    headers = {"Authorization": f"Bearer {gateway.secret}", "Content-Type": "application/json"}
    cases = [
        ("/agent/exit", {"code": True}, "code"),
        ("/agent/locks/acquire", {"key": "k://bool", "wait": True, "timeout": True}, "timeout"),
        ("/agent/calls/wait", {"callIds": ["1"], "timeout": False}, "timeout"),
    ]
    for path, body, field in cases:
        answer = httpx.post(gateway.url + path, json=body, headers=headers)
        assert answer.status_code == 400, (path, answer.status_code, answer.text)
        assert f"{field} must be" in answer.text and "boolean" in answer.text, answer.text
    # The run is still going: a refused request changed nothing.
    assert gateway.command("rlock", "k://still-mine").returncode == 0
