"""What the commands print and exit with for each answer (or no answer) of the gateway."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from tests.agentcmd.conftest import SECRET, Gateway, Run

STATUS_EXITS = [
    (200, 0),
    (409, 1),
    (404, 2),
    (403, 3),
    (400, 4),
    (413, 4),
    (422, 4),
    (503, 5),
    (502, 10),
    (504, 11),
    (500, 12),
    (410, 13),
    (201, 7),
    (204, 7),
    (401, 7),
    (418, 7),
    (202, 7),
]


@pytest.mark.parametrize(("status", "code"), STATUS_EXITS)
def test_status_to_exit_code(run: Run, gateway: Gateway, status: int, code: int) -> None:
    body = json.dumps({"ok": status == 200, "status": status})
    gateway.script.answer(status, body)
    result = run("rlock", "k")
    assert result.returncode == code
    assert result.stdout == body.encode() + b"\n"  # verbatim, newline-terminated


def test_answer_printed_verbatim(run: Run, gateway: Gateway) -> None:
    held = '{"ok": false, "holder": "run-01", "heldSince": "2025-01-01T00:00:00Z"}\n'
    gateway.script.answer(409, held)
    result = run("rlock", "k")
    assert (result.returncode, result.stdout, result.stderr) == (1, held.encode(), b"")
    unicode = '{"ok":true,"text":"ünï ✓ 😀"}'
    gateway.script.answer(200, unicode)
    assert run("al-status", "x").stdout == unicode.encode() + b"\n"


def test_wait_timed_out_is_exit_8_with_the_map(run: Run, gateway: Gateway) -> None:
    pending = '{"c1":{"status":"completed","returnValue":"42"},"c2":{"status":"running"}}'
    gateway.script.answer(202, pending)
    result = run("al-subagent-wait", "c1", "c2", "--timeout", "1")
    assert result.returncode == 8
    assert json.loads(result.stdout)["c2"] == {"status": "running"}
    gateway.script.answer(200, '{"c1":{"status":"completed","returnValue":"42"}}')
    assert run("al-subagent-wait", "c1").returncode == 0


@pytest.mark.parametrize("size", [0, 5, 7, 8, 100_000])
def test_chunked_answer(run: Run, gateway: Gateway, size: int) -> None:
    body = json.dumps({"ok": True, "pad": "x" * size})
    gateway.script.answer(200, body, chunked=True)
    result = run("al-subagent-check", "c1")
    assert result.returncode == 0
    assert result.stdout == body.encode() + b"\n"


def test_answer_that_is_not_json_is_reported_as_json(run: Run, gateway: Gateway) -> None:
    gateway.script.answer(502, "<html>Bad Gateway</html>", content_type="text/html")
    result = run("rlock", "k")
    assert result.returncode == 10
    answer = json.loads(result.stdout)
    assert answer["ok"] is False
    assert "HTTP 502" in answer["error"]
    assert "Bad Gateway" in answer["error"]
    gateway.script.answer(200, "")
    result = run("runlock", "k")
    assert result.returncode == 7  # never a silent success
    assert json.loads(result.stdout) == {
        "ok": False,
        "error": "the gateway answered HTTP 200 with no body",
    }


def test_path_prefix_and_host_header(run: Run, gateway: Gateway) -> None:
    result = run("rlock-heartbeat", "k", env={"GATEWAY_URL": gateway.url + "/corral/"})
    assert result.returncode == 0, result
    assert gateway.script.last.path == "/corral/agent/locks/heartbeat"
    assert gateway.script.last.headers["host"] == gateway.url.removeprefix("http://")


def test_localhost_name(run: Run, gateway: Gateway) -> None:
    url = gateway.url.replace("127.0.0.1", "localhost")
    result = run("al-rerun", env={"GATEWAY_URL": url})
    assert result.returncode == 0, result


def test_unix_socket_gateway(run: Run, unix_gateway: Gateway) -> None:
    unix_gateway.script.answer(200, '{"ok":true,"callId":"c-9"}')
    result = run("al-subagent", "helper", input=b"ctx", env={"GATEWAY_URL": unix_gateway.url})
    assert result.returncode == 0, result
    assert result.stdout == b'{"ok":true,"callId":"c-9"}\n'
    request = unix_gateway.script.last
    assert (request.method, request.path) == ("POST", "/agent/calls")
    assert request.headers["host"] == "corral"
    assert request.headers["authorization"] == f"Bearer {SECRET}"
    assert request.body == {"agent": "helper", "context": "ctx"}


# -- no gateway ----------------------------------------------------------------------------


def failure(result: object) -> str:
    """The error of a client-side failure: one line of JSON with ok false."""
    stdout: bytes = result.stdout  # type: ignore[attr-defined]
    assert stdout.count(b"\n") == 1 and stdout.endswith(b"\n")
    answer = json.loads(stdout)
    assert answer["ok"] is False
    assert SECRET.encode() not in stdout + result.stderr  # type: ignore[attr-defined]
    error: str = answer["error"]
    return error


@pytest.mark.parametrize("url", [None, ""])
def test_gateway_url_unset(run: Run, url: str | None) -> None:
    result = run("rlock", "k", env={"GATEWAY_URL": url})
    assert result.returncode == 5
    assert failure(result) == (
        "GATEWAY_URL is not set: corral's in-run commands only work inside a corral run"
    )


def test_secret_unset(run: Run, gateway: Gateway) -> None:
    result = run("al-rerun", env={"CORRAL_RUN_SECRET": None})
    assert result.returncode == 5
    assert "CORRAL_RUN_SECRET is not set" in failure(result)
    assert gateway.script.requests == []


@pytest.mark.parametrize(
    "url",
    [
        "https://gw.example:443",
        "127.0.0.1:8080",
        "http://",
        "http://host:port",
        "http://host:99999",
        "http://host:",
        "unix:relative/path",
        "http://user:pw@host:1",
    ],
)
def test_malformed_gateway_url(run: Run, url: str) -> None:
    result = run("runlock", "k", env={"GATEWAY_URL": url})
    assert result.returncode == 5
    assert "GATEWAY_URL" in failure(result) and "malformed" in failure(result)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_connection_refused(run: Run) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = run("al-subagent-check", "c1", env={"GATEWAY_URL": url})
    assert result.returncode == 6
    answer = json.loads(result.stdout)
    assert answer["status"] == "error"  # al-subagent-check's documented error shape
    assert failure(result) == f"cannot reach the corral gateway at {url}: connection refused"


@pytest.mark.parametrize(
    "url",
    [
        "http://" + "x" * 300 + ":80",
        os.fsdecode(b"http://bad\xffhost:80"),
        os.fsdecode(b"unix:/nonexistent/\xff.sock"),
    ],
)
def test_unresolvable_or_odd_hosts(run: Run, url: str) -> None:
    result = run("rlock", "k", env={"GATEWAY_URL": url})
    assert result.returncode == 6, result
    assert failure(result).startswith("cannot reach the corral gateway at ")


def test_missing_unix_socket(run: Run, tmp_path: object) -> None:
    url = f"unix:{tmp_path}/nope.sock"
    result = run("rlock", "k", env={"GATEWAY_URL": url})
    assert result.returncode == 6
    assert failure(result).startswith(f"cannot reach the corral gateway at {url}: ")


@contextlib.contextmanager
def raw_server(behave: Callable[[socket.socket], None]) -> Iterator[str]:
    """A TCP server that treats each connection with ``behave``; yields its URL."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                if not stop.is_set():
                    behave(conn)

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        with contextlib.suppress(OSError):
            socket.create_connection(listener.getsockname(), timeout=1).close()
        thread.join()
        listener.close()


def read_head(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def close_at_once(conn: socket.socket) -> None:
    pass


def close_after_reading(conn: socket.socket) -> None:
    read_head(conn)


def half_an_answer(conn: socket.socket) -> None:
    read_head(conn)
    conn.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"ok":tr')


def half_a_head(conn: socket.socket) -> None:
    read_head(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Len")


def broken_chunks(conn: socket.socket) -> None:
    read_head(conn)
    conn.sendall(b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"ok\r\n')


def not_http(conn: socket.socket) -> None:
    read_head(conn)
    conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")


@pytest.mark.parametrize(
    "behave",
    [close_at_once, close_after_reading, half_an_answer, half_a_head, broken_chunks, not_http],
)
def test_gateway_that_breaks_off(run: Run, behave: Callable[[socket.socket], None]) -> None:
    with raw_server(behave) as url:
        result = run("rlock", "k", env={"GATEWAY_URL": url})
    assert result.returncode == 6, result
    assert failure(result).startswith(f"cannot reach the corral gateway at {url}: ")


def interim_then_answer(conn: socket.socket) -> None:
    read_head(conn)
    conn.sendall(
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b'HTTP/1.1 409 Conflict\r\ncontent-length: 13\r\n\r\n{"ok":false}\n'
    )


def answer_without_length(conn: socket.socket) -> None:
    read_head(conn)
    conn.sendall(b'HTTP/1.0 200 OK\r\n\r\n{"ok":true}')


def test_interim_answer_and_answer_until_eof(run: Run) -> None:
    with raw_server(interim_then_answer) as url:
        result = run("rlock", "k", env={"GATEWAY_URL": url})
    assert (result.returncode, result.stdout) == (1, b'{"ok":false}\n')
    with raw_server(answer_without_length) as url:
        result = run("rlock", "k", env={"GATEWAY_URL": url})
    assert (result.returncode, result.stdout) == (0, b'{"ok":true}\n')


def test_early_answer_to_a_big_body_is_still_read(run: Run) -> None:
    def too_large(conn: socket.socket) -> None:
        # Answers after the head and closes with most of the body unread, as a gateway
        # enforcing a size limit may: the client's send fails, the answer is still read.
        read_head(conn)
        # One write: a close with unread input sends a reset and drops unsent output.
        conn.sendall(
            b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 31\r\n\r\n"
            b'{"ok":false,"error":"too big"}\n'
        )

    with raw_server(too_large) as url:
        result = run("al-return", input=b"x" * (4 << 20), env={"GATEWAY_URL": url})
    assert (result.returncode, result.stdout) == (4, b'{"ok":false,"error":"too big"}\n')


def test_secret_never_printed(run: Run, gateway: Gateway) -> None:
    gateway.script.answer(403, '{"ok":false,"error":"bad token"}')
    results = [
        run("rlock", "k"),
        run("rlock"),
        run("runlock", "k", env={"GATEWAY_URL": "http://127.0.0.1:1"}),
        run("runlock", "k", env={"GATEWAY_URL": "ftp://x"}),
        run("al-exit", "x"),
        run("setenv", "1", "x"),
    ]
    for result in results:
        assert SECRET.encode() not in result.stdout + result.stderr
    assert results[0].returncode == 3


def test_secret_with_a_line_break_is_refused(run: Run, gateway: Gateway) -> None:
    result = run("al-rerun", env={"CORRAL_RUN_SECRET": "abc\r\nX-Evil: 1"})
    assert result.returncode == 5
    assert "abc" not in failure(result)
    assert gateway.script.requests == []
