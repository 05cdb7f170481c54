"""`corral creds add` in a terminal (a real pseudo-terminal): values are asked for, not shown."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

from .keys import fake_key, token


class Terminal:
    """`corral creds ARGS` with a pseudo-terminal as its stdin, stdout and stderr."""

    def __init__(self, tmp_path: Path, home: Path, *args: str) -> None:
        self.master, slave = pty.openpty()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
        env.update({"HOME": str(tmp_path / "home"), "CORRAL_HOME": str(home), "COLUMNS": "200"})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "corral", "creds", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=tmp_path,
            env=env,
            start_new_session=True,  # no controlling terminal: getpass uses stdin
        )
        os.close(slave)
        self.screen = b""

    def wait_for(self, text: bytes, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.screen:
            left = deadline - time.monotonic()
            assert left > 0, f"{text!r} never came; the terminal shows {self.screen!r}"
            if select.select([self.master], [], [], left)[0]:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # the child closed the terminal
                    chunk = b""
                assert chunk or text in self.screen, f"{text!r} never came: {self.screen!r}"
                self.screen += chunk

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def finish(self) -> int:
        code = self.proc.wait(timeout=20)
        try:
            while chunk := os.read(self.master, 4096):
                self.screen += chunk
        except OSError:
            pass
        os.close(self.master)
        return code


def test_values_are_asked_for_without_echo(tmp_path: Path, home: Path) -> None:
    value = token()
    term = Terminal(tmp_path, home, "add", "github_token:work")
    term.wait_for(b"token (")
    term.type(value + "\n")
    assert term.finish() == 0, term.screen
    assert b"stored github_token:work in" in term.screen
    assert value.encode() not in term.screen
    stored = home / "credentials" / "github_token" / "work" / "token"
    assert stored.read_text() == value


def test_a_pasted_key_ends_at_an_empty_line(tmp_path: Path, home: Path) -> None:
    key = fake_key()
    term = Terminal(tmp_path, home, "add", "git_ssh")
    term.wait_for(b"then an empty line")
    term.type(key + "\n")  # pasted at once, then the empty line
    term.wait_for(b"username")
    term.type("Dev Bot\n")  # not secret, but asked for like the rest
    term.wait_for(b"email")
    term.type("\n")  # optional: skipped
    term.wait_for(b"known_hosts")
    term.type("\n")  # optional: skipped
    assert term.finish() == 0, term.screen
    directory = home / "credentials" / "git_ssh" / "default"
    assert (directory / "id_rsa").read_text() == key
    assert (directory / "username").read_text() == "Dev Bot"
    assert not (directory / "known_hosts").exists()
    assert not (directory / "email").exists()
    for line in key.splitlines():
        assert line.encode() not in term.screen, term.screen


def test_git_ssh_with_an_identity_alone_can_be_added_in_a_terminal(
    tmp_path: Path, home: Path
) -> None:
    """Skipping the key leaves SSH to the system's configuration, as Action Llama allows."""
    term = Terminal(tmp_path, home, "add", "git_ssh:identity")
    term.wait_for(b"then an empty line")
    term.type("\n")  # no key
    term.wait_for(b"username")
    term.type("Dev Bot\n")
    term.wait_for(b"email")
    term.type("bot@example.com\n")
    term.wait_for(b"known_hosts")
    term.type("\n")
    assert term.finish() == 0, term.screen
    directory = home / "credentials" / "git_ssh" / "identity"
    assert not (directory / "id_rsa").exists()
    assert (directory / "email").read_text() == "bot@example.com"


def test_git_ssh_with_nothing_is_refused_in_a_terminal(tmp_path: Path, home: Path) -> None:
    term = Terminal(tmp_path, home, "add", "git_ssh:empty")
    for prompt in (b"then an empty line", b"username", b"email", b"known_hosts"):
        term.wait_for(prompt)
        term.type("\n")
    assert term.finish() != 0, term.screen
    assert b"no value for id_rsa (or one of username, email); nothing was stored" in term.screen
    assert not (home / "credentials" / "git_ssh" / "empty").exists()
