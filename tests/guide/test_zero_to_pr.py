"""docs/guide.md, walked offline: from `corral new` to a pushed branch and `gh pr create`.

The project's files are taken out of the guide as written (its code blocks marked
``file=PATH``), so the guide and this test cannot drift apart. What the test stands in
for, and nothing else:

- GitHub's git server: a bare repository served by `git daemon` on loopback, reached
  through a `url.<local>.insteadOf` rule in the HOME's git config, so the guide's
  clone URL (with the token in it) is used as written. A git daemon rather than a
  ``file://`` path, so the push works whichever runtime the run gets (the sandbox's
  root is read-only);
- `claude`: a program on PATH that does what SKILL.md asks, the way Claude Code does
  it (each step a `bash -c`): reads the trigger from the prompt on stdin, takes the
  lock, branches, edits, commits, pushes, runs `gh pr create`, releases the lock;
- `gh`: a program on PATH that answers `issue view` and `pr create`, and says whether
  the run's `GH_TOKEN` is the token that was stored;
- GitHub's webhook: an `issues` `labeled` delivery signed with the stored secret,
  POSTed over HTTP to the real gateway of a real `corral start`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.processes import wait_until
from tests.webhooks.helpers import fixture
from tests.webhooks.signing import sign_github

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "guide.md"
GITHUB_TOKEN = "github_pat_guide0123456789abcdefABCDEF"
ANTHROPIC_KEY = "sk-ant-guide-0123456789abcdef"
WEBHOOK_SECRET = "whsec-guide-0123456789abcdef0123"
CLONE_URL = f"https://x-access-token:{GITHUB_TOKEN}@github.com/acme/widgets.git"

Corral = Callable[..., subprocess.CompletedProcess[str]]

FAKE_CLAUDE = r"""#!/usr/bin/env python3
# Stands in for Claude Code: does what SKILL.md asks, one `bash -c` per step.
import json, os, re, subprocess, sys

argv = sys.argv[1:]
system = argv[argv.index("--append-system-prompt") + 1]
prompt = sys.stdin.read()
print("claude argv:", " ".join(a for a in argv if a != system))
print("system prompt:", next(line for line in system.splitlines() if line.startswith("# ")))
key_ok = os.environ.get("ANTHROPIC_API_KEY") == "@KEY@"
print("ANTHROPIC_API_KEY:", "stored key" if key_ok else "wrong")

def block(tag):
    return json.loads(re.search(rf"<{tag}>\s*(.*?)\s*</{tag}>", prompt, re.S).group(1))

trigger, config = block("webhook-trigger"), block("agent-config")
repo, number = trigger["repo"], trigger["number"]
assert repo == config["repo"], (repo, config)
key = f"github://{repo}/issues/{number}"
branch = f"agent/issue-{number}"

def sh(command):
    print("$", command, flush=True)
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True)
    print(done.stdout + done.stderr, end="", flush=True)
    if done.returncode != 0:
        sys.exit(done.returncode)
    return done.stdout

lock = json.loads(sh(f'rlock "{key}"'))
assert lock["ok"], lock
sh(f"gh issue view {number} --repo {repo}")
sh(f"cd repo && git checkout -q -b {branch} && printf 'Fixed on Safari.\\n' >> README.md")
sh(f"cd repo && git commit -q -am 'Make the login button work on Safari\n\nFixes #{number}'")
sh(f"cd repo && git push -q origin {branch}")
sh(f"cd repo && gh pr create --repo {repo} --base main --head {branch} "
   f"--title 'Make the login button work on Safari' --body 'Fixes #{number}'")
sh(f'runlock "{key}"')
"""

FAKE_GH = r"""#!/bin/sh
# Stands in for GitHub's CLI.
if [ "$GH_TOKEN" = "@TOKEN@" ]; then token="stored token"; else token="wrong"; fi
case "$1 $2" in
  "issue view") echo "title: Login button broken on Safari"; echo "GH_TOKEN: $token" ;;
  "pr create") echo "gh pr create: $*"; echo "GH_TOKEN: $token"
               echo "https://github.com/acme/widgets/pull/43" ;;
  *) echo "fake gh: unexpected: $*" >&2; exit 1 ;;
esac
"""


def guide_files() -> list[tuple[str, bool, str]]:
    """(path, append?, text) of every code block of the guide marked ``file=PATH``."""
    blocks = re.findall(r"^```\w+ file=(\S+)( append)?\n(.*?)^```$", GUIDE.read_text(), re.M | re.S)
    return [(path, bool(append), text) for path, append, text in blocks]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def git(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture
def base() -> Iterator[Path]:
    """A directory outside /tmp (the sandbox's /tmp is its own) that a run of another
    uid can enter: everything of the test lives in it."""
    path = Path(tempfile.mkdtemp(prefix="corral-guide-", dir="/var/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def github(base: Path) -> Iterator[str]:
    """acme/widgets with a main branch, served by a git daemon on loopback; the URL."""
    served = base / "git"
    served.mkdir()
    git("init", "-q", "--bare", "-b", "main", str(served / "widgets.git"))
    seed = base / "seed"
    git("init", "-q", "-b", "main", str(seed))
    (seed / "README.md").write_text("# widgets\n")
    git("add", "README.md", cwd=seed)
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "init", cwd=seed)
    git("push", "-q", str(served / "widgets.git"), "main", cwd=seed)
    port = free_port()
    daemon = subprocess.Popen(
        ["git", "daemon", "--listen=127.0.0.1", f"--port={port}", "--reuseaddr",
         "--export-all", "--enable=receive-pack", f"--base-path={served}", str(served)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"git://127.0.0.1:{port}/widgets.git"
    try:
        wait_until(lambda: daemon.poll() is not None or _serves(url), 15)
        assert daemon.poll() is None, "`git daemon` did not start (Debian ships it with git)"
        yield url
    finally:
        daemon.terminate()
        daemon.wait(10)


@pytest.fixture
def home(base: Path, github: str) -> Path:
    """The user's HOME: its git config sends the guide's clone URL to the local server."""
    home = base / "home"
    home.mkdir()
    (home / ".gitconfig").write_text(f'[url "{github}"]\n\tinsteadOf = {CLONE_URL}\n')
    return home


@pytest.fixture
def path(base: Path) -> str:
    """PATH with the fake `claude` and `gh` first."""
    bin_dir = base / "bin"
    bin_dir.mkdir()
    executable(bin_dir / "claude", FAKE_CLAUDE.replace("@KEY@", ANTHROPIC_KEY))
    executable(bin_dir / "gh", FAKE_GH.replace("@TOKEN@", GITHUB_TOKEN))
    python = Path(sys.executable).parent  # `python3` for the fake claude
    return os.pathsep.join([str(bin_dir), str(python), "/usr/local/bin", "/usr/bin", "/bin"])


@pytest.fixture
def corral(home: Path, path: str) -> Corral:
    """The `corral` command line, as the guide's user runs it: the project's default store
    (SQLite; the store suites cover PostgreSQL, and this walk is slow enough once)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env.update({"HOME": str(home), "CORRAL_HOME": str(home / ".corral"), "PATH": path})

    def invoke(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "corral", *args],
            cwd=cwd, input=stdin, capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip

    invoke.env = env  # type: ignore[attr-defined]
    return invoke


def follow_the_guide(corral: Corral, base: Path) -> Path:
    """Steps 2-5: the project, the guide's files, the credentials."""
    assert corral("new", "widgets-fleet", cwd=base).returncode == 0
    project = base / "widgets-fleet"
    shutil.rmtree(project / "agents" / "hello")
    files = guide_files()
    assert [p for p, _, _ in files] == [
        "config.toml",
        "agents/dev/config.toml",
        "agents/dev/SKILL.md",
    ]
    for rel, append, text in files:
        target = project / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text((target.read_text() + "\n" if append else "") + text)
    for name, value in [
        ("github_token", GITHUB_TOKEN),
        ("anthropic_key", ANTHROPIC_KEY),
        ("webhook_secret:MyOrg", WEBHOOK_SECRET),
    ]:
        added = corral("creds", "add", name, cwd=project, stdin=value + "\n")
        assert added.returncode == 0, added.stderr
    return project


def labeled_issue() -> bytes:
    """GitHub's `issues` `labeled` delivery: acme/widgets#42 gets the label `agent`."""
    payload = json.loads(fixture("issues"))
    assert payload["repository"]["full_name"] == "acme/widgets"
    assert (payload["action"], payload["label"]["name"], payload["issue"]["number"]) == (
        "labeled", "agent", 42,
    )  # fmt: skip
    return json.dumps(payload).encode()


def test_a_labelled_issue_becomes_a_pushed_branch_and_a_pull_request(
    corral: Corral, base: Path, github: str
) -> None:
    project = follow_the_guide(corral, base)

    doctor = corral("doctor", "--json", cwd=project)
    checks = {c["name"]: c for c in json.loads(doctor.stdout)}
    assert checks["project"]["status"] == "ok", checks["project"]
    assert checks["agent CLIs"]["status"] == "ok", checks["agent CLIs"]
    assert f"claude (preset of dev): {base / 'bin' / 'claude'}" in checks["agent CLIs"]["detail"]

    port = free_port()
    log = base / "scheduler.log"
    with log.open("wb") as out:
        scheduler = subprocess.Popen(
            [sys.executable, "-m", "corral", "start", "--headless", "--port", str(port)],
            cwd=project, env=corral.env, stdout=out, stderr=subprocess.STDOUT,  # type: ignore[attr-defined]
        )  # fmt: skip
    gateway = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _healthy(gateway) or scheduler.poll() is not None, 30)
        assert scheduler.poll() is None, log.read_text()

        body = labeled_issue()
        answer = httpx.post(
            f"{gateway}/webhooks/github", content=body, headers=sign_github(body, WEBHOOK_SECRET)
        )
        assert answer.status_code == 202, answer.text
        assert answer.json()["queued"] == ["dev"], answer.text

        # The operator's view of the fleet: the control API, with the project's local token.
        token = (project / ".corral" / "operator-token").read_text().strip()
        with httpx.Client(base_url=f"{gateway}/control", headers=_bearer(token)) as control:
            wait_until(lambda: _ended(control), 60)
            [run] = control.get("/runs").json()["runs"]
            locks = control.get("/locks").json()["locks"]
        run_log = (project / ".corral" / "logs" / f"{run['id']}.log").read_text()
        assert (run["trigger"], run["state"]) == ("webhook", "succeeded"), run_log

        # The branch reached the server with the agent's commit on top of main.
        heads = git("ls-remote", "--heads", github)
        assert "refs/heads/agent/issue-42" in heads, heads
        checkout = base / "check"
        git("clone", "-q", "-b", "agent/issue-42", github, str(checkout))
        assert git("log", "-1", "--format=%an|%s", cwd=checkout).strip() == (
            "widgets dev agent|Make the login button work on Safari"
        )
        assert git("log", "-1", "--format=%b", cwd=checkout).strip() == "Fixes #42"
        assert (checkout / "README.md").read_text() == "# widgets\nFixed on Safari.\n"
        assert git("rev-list", "--count", "origin/main..HEAD", cwd=checkout).strip() == "1"

        # What the agent was given and did, in the run's log.
        assert "claude argv: -p --verbose --output-format stream-json" in run_log
        assert "system prompt: # Developer agent" in run_log
        assert "ANTHROPIC_API_KEY: stored key" in run_log
        assert '"ok":true,"key":"github://acme/widgets/issues/42"' in run_log.replace(" ", "")
        assert (
            "gh pr create: pr create --repo acme/widgets --base main --head agent/issue-42"
            in run_log
        )
        assert run_log.count("GH_TOKEN: stored token") == 2
        assert GITHUB_TOKEN not in run_log  # the clone URL is redacted in the log
        assert locks == []  # released by the agent's runlock
    finally:
        scheduler.terminate()
        scheduler.wait(30)


def _serves(url: str) -> bool:
    return subprocess.run(["git", "ls-remote", url], capture_output=True).returncode == 0


def _healthy(gateway: str) -> bool:
    try:
        return httpx.get(f"{gateway}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _ended(control: httpx.Client) -> bool:
    runs = control.get("/runs").json()["runs"]
    return bool(runs) and all(r["state"] not in {"queued", "starting", "running"} for r in runs)
