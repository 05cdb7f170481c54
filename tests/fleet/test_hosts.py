"""The simulated hosts that fleet tests run on: reachability, partitions, freezing, cleanup."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.hosts import Host, hosts, require_netns
from tests.processes import alive, wait_until

# A client run inside a host: connect to ADDR:PORT within TIMEOUT, print what happened.
_PROBE = """
import socket, sys
addr, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
try:
    with socket.create_connection((addr, port), timeout=timeout) as s:
        print("answer:" + s.recv(64).decode())
except socket.timeout:
    print("timeout")
except OSError as exc:
    print("error:" + type(exc).__name__)
"""


def _probe(host: Host, address: str, port: int, timeout: float = 2.0) -> str:
    done = host.run([sys.executable, "-c", _PROBE, address, str(port), str(timeout)], timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _start_server(server: socket.socket, seen: list[str]) -> None:
    def loop() -> None:
        server.settimeout(0.1)
        while True:
            try:
                conn, peer = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            seen.append(peer[0])
            with conn:
                conn.sendall(b"hello")

    threading.Thread(target=loop, daemon=True).start()


def test_a_host_reaches_the_control_plane_and_nothing_else() -> None:
    require_netns()
    with hosts("a", "b") as made:
        a, b = made["a"], made["b"]
        server = socket.create_server((a.peer, 0))
        port = server.getsockname()[1]
        seen: list[str] = []
        _start_server(server, seen)
        local = socket.create_server(("127.0.0.1", 0))
        try:
            assert _probe(a, a.peer, port) == "answer:hello"
            assert seen == [a.address]  # the control plane sees the host's own address
            # the host's loopback is its own: the test's 127.0.0.1 is not reachable
            assert _probe(a, "127.0.0.1", local.getsockname()[1]).startswith("error:")
            # nothing is routed between hosts
            across = _probe(b, a.peer, port, timeout=1.0)
            assert across == "timeout" or across.startswith("error:"), across
            assert seen == [a.address]
        finally:
            server.close()
            local.close()


def test_a_cut_link_drops_packets_until_mended() -> None:
    require_netns()
    with hosts("a") as made:
        a = made["a"]
        server = socket.create_server((a.peer, 0))
        port = server.getsockname()[1]
        _start_server(server, [])
        try:
            a.cut()
            started = time.monotonic()
            outcome = _probe(a, a.peer, port, timeout=1.5)
            # a partition is silence or an unreachable network, never an answer
            assert not outcome.startswith("answer"), outcome
            assert outcome == "timeout" or outcome.startswith("error:"), outcome
            assert time.monotonic() - started < 20
            a.mend()
            wait_until(lambda: _probe(a, a.peer, port) == "answer:hello", timeout=10)
        finally:
            server.close()


def test_freeze_stops_every_process_of_the_host_and_thaw_resumes_them(tmp_path: Path) -> None:
    require_netns()
    counter = tmp_path / "count"
    ticker = (
        "import time, sys\n"
        "n = 0\n"
        "while True:\n"
        "    n += 1\n"
        "    open(sys.argv[1], 'w').write(str(n))\n"
        "    time.sleep(0.02)\n"
    )
    with hosts("a") as made:
        a = made["a"]
        proc = a.popen([sys.executable, "-c", ticker, str(counter)])
        wait_until(lambda: counter.exists() and counter.read_text() != "", timeout=10)
        assert proc.pid in a.pids()
        stopped = a.freeze()
        assert proc.pid in stopped

        def state(pid: int) -> str:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]

        wait_until(lambda: state(proc.pid) == "T", timeout=5)
        frozen_at = counter.read_text()
        time.sleep(0.3)
        assert counter.read_text() == frozen_at  # its clock stopped
        a.thaw()
        wait_until(lambda: counter.read_text() != frozen_at, timeout=5)
        proc.kill()
        proc.wait(timeout=5)


def test_the_hosts_and_their_processes_are_gone_after_the_block() -> None:
    require_netns()
    with hosts("a", "b") as made:
        names = [host.netns for host in made.values()]
        links = [host.link for host in made.values()]
        sleeper = made["a"].popen(["sleep", "600"])
        made["b"].freeze()
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for name in names:
        assert name not in namespaces
    shown = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    for link in links:
        assert f" {link}:" not in shown and f" {link}@" not in shown
    wait_until(lambda: not alive(sleeper.pid), timeout=5)
    sleeper.wait(timeout=5)


def test_kill_ends_every_process_of_the_host() -> None:
    require_netns()
    with hosts("a") as made:
        a = made["a"]
        procs = [a.popen(["sleep", "600"]) for _ in range(3)]
        wait_until(lambda: all(p.pid in a.pids() for p in procs), timeout=5)
        killed = a.kill()
        assert {p.pid for p in procs} <= set(killed)
        for p in procs:
            assert p.wait(timeout=5) == -9
