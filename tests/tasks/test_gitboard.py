"""The git-native board: claims as commits pushed to a coordination ref, with real git
processes and real claimer processes, against a repository whose work tree is dirty."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corral.tasks import Task, TaskSpec, TaskStatus
from corral.tasks.gitboard import DEFAULT_REF, GitBoard, GitBoardError, StaleGeneration
from corral.tasks.seedfmt import read_board_tasks, write_board

WORKER = Path(__file__).with_name("_gitboard_worker.py")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout


def _snapshot(repo: Path) -> dict[str, bytes | str]:
    """Every byte of the work tree, the index, HEAD and the branches, and git status."""
    snap: dict[str, bytes | str] = {}
    for path in sorted(repo.rglob("*")):
        rel = path.relative_to(repo).as_posix()
        if path.is_file() and not rel.startswith(".git/"):
            snap[rel] = path.read_bytes()
    for rel in (".git/index", ".git/HEAD"):
        snap[rel] = (repo / rel).read_bytes()
    snap["branches"] = git(repo, "for-each-ref", "refs/heads", "refs/tags")
    snap["status"] = git(repo, "status", "--porcelain=v2", "--untracked-files=all")
    return snap


@pytest.fixture
def dirty_repo(tmp_path: Path) -> Path:
    """A user's repository mid-work: committed files, an edit, a staged file, an
    untracked one, and a task file of their own under .agents/ edited by hand."""
    repo = tmp_path / "work"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.name", "someone")
    git(repo, "config", "user.email", "someone@example.invalid")
    (repo / "a.txt").write_text("one\n")
    mine = repo / ".agents/projects/p/tasks/T-0.toon"
    mine.parent.mkdir(parents=True)
    mine.write_text("task:\n id: T-0\n project: p\n title: mine\n priority: 1\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "start")
    (repo / "a.txt").write_text("one\ntwo (not committed)\n")
    mine.write_text(mine.read_text() + " status: blocked\n")
    (repo / "staged.txt").write_text("staged\n")
    git(repo, "add", "staged.txt")
    (repo / "untracked.txt").write_text("untracked ✓\n")
    return repo


def _specs(n: int, seed: int) -> list[TaskSpec]:
    rng = random.Random(seed)
    specs = []
    for i in range(n):
        earlier = [f"T-{j:03d}" for j in range(i)]
        requires = tuple(sorted(rng.sample(earlier, k=min(len(earlier), rng.choice([0, 0, 1, 2])))))
        specs.append(
            TaskSpec(
                id=f"T-{i:03d}",
                project="p",
                title=f"task {i} ✓",
                priority=rng.randint(1, 10),
                requires=requires,
                labels=("web",) if i % 3 == 0 else (),
            )
        )
    return specs


def _check_history(repo: Path, specs: list[TaskSpec]) -> int:
    """At every commit of the board, every claimed or done task had its requirements
    done when it was claimed. Returns the number of commits."""
    need = {s.id: set(s.requires) for s in specs}
    commits = git(repo, "rev-list", "--reverse", DEFAULT_REF).split()
    ever_claimed: set[str] = set()
    for commit in commits:
        names = git(repo, "ls-tree", "-r", "--name-only", commit).split()
        claimed = {Path(n).stem for n in names if n.startswith(".agents/claimed/")}
        done = {Path(n).stem for n in names if n.startswith(".agents/completed/")}
        for task_id in claimed - ever_claimed:
            missing = need[task_id] - done
            assert not missing, f"{task_id} claimed at {commit} before {missing} were done"
        ever_claimed |= claimed
    return len(commits)


@pytest.mark.timeout(600)
def test_eight_processes_claim_thirty_tasks_once_each(dirty_repo: Path, tmp_path: Path) -> None:
    before = _snapshot(dirty_repo)
    specs = _specs(30, seed=18)
    remote = str(dirty_repo)  # the user's own repository is the remote
    GitBoard(remote, "setup", cache=tmp_path / "cache-setup").init(specs)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), remote, f"agent-{i}", str(tmp_path / f"cache-{i}")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=dirty_repo,
            env=env,
        )
        for i in range(8)
    ]
    for p in procs:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "ready"
    started = time.monotonic()
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=400)
        assert p.returncode == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
    elapsed = time.monotonic() - started

    claims = [c for r in reports for c in r["claims"]]
    ids = [c[0] for c in claims]
    assert sorted(ids) == sorted(s.id for s in specs), "every task claimed exactly once"
    assert len(set(ids)) == len(ids)
    assert all(c[1] == 1 for c in claims), "no task needed a second claim"
    final = GitBoard(remote, "checker", cache=tmp_path / "cache-check").list()
    assert {t.id: t.status for t in final} == {s.id: TaskStatus.DONE for s in specs}
    by_id = {t.id: t for t in final}
    for r in reports:
        for task_id, _, _ in r["claims"]:
            assert by_id[task_id].result == f"done by {r['claimer']}"
    commits = _check_history(dirty_repo, specs)
    assert commits == 1 + 2 * len(specs)
    rejected = sum(r["rejections"] for r in reports)
    pushes = sum(r["pushes"] for r in reports)
    assert pushes == rejected + 2 * len(specs)
    print(
        f"\n8 claimers, {len(specs)} tasks: {elapsed:.1f} s, {pushes} pushes, "
        f"{rejected} rejected ({rejected / pushes:.0%})"
    )
    assert _snapshot(dirty_repo) == before, "the user's work tree, index or branches changed"


@pytest.fixture
def remote(tmp_path: Path) -> str:
    bare = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
    return str(bare)


def test_claim_order_filters_and_dependencies(remote: str, tmp_path: Path) -> None:
    board = GitBoard(remote, "a", cache=tmp_path / "a")
    board.init(
        [
            TaskSpec(id="low", project="p", title="low", priority=2),
            TaskSpec(id="high", project="p", title="high", priority=9, requires=("low",)),
            TaskSpec(id="mid", project="p", title="mid", priority=5, labels=("db",)),
            TaskSpec(id="other", project="q", title="other", priority=10),
            TaskSpec(id="first", project="p", title="first", priority=1, blocks=("mid",)),
        ]
    )
    assert board.claim(labels=("db",)) is None  # mid waits for first (a blocks edge)
    got = board.claim(project="p")
    assert got is not None and got.task.id == "low"  # high waits for low; mid for first
    assert got.generation == 1 and got.retries == 0
    got2 = board.claim()
    assert got2 is not None and got2.task.id == "other"
    board.complete("low", "ok")
    got3 = board.claim(project="p")
    assert got3 is not None and got3.task.id == "high"
    got4 = board.claim()
    assert got4 is not None and got4.task.id == "first"
    assert board.claim() is None
    board.complete("first")
    got5 = board.claim(labels=("db",))
    assert got5 is not None and got5.task.id == "mid"


def test_stale_generation_is_refused_after_a_stalled_release(remote: str, tmp_path: Path) -> None:
    slow = GitBoard(remote, "slow", cache=tmp_path / "slow")
    fast = GitBoard(remote, "fast", cache=tmp_path / "fast")
    slow.init([TaskSpec(id="T-1", project="p", title="one")])
    mine = slow.claim()
    assert mine is not None and mine.generation == 1
    time.sleep(0.3)
    # a fresh heartbeat keeps the claim
    slow.heartbeat("T-1")
    assert fast.release_stalled(max_age=5.0) == []
    time.sleep(0.3)
    released = fast.release_stalled(max_age=0.2)
    assert [t.id for t in released] == ["T-1"]
    theirs = fast.claim()
    assert theirs is not None and theirs.generation == 2
    with pytest.raises(StaleGeneration, match="held by fast with generation 2"):
        slow.complete("T-1", "late")
    with pytest.raises(StaleGeneration):
        slow.heartbeat("T-1")
    # the holder with an old generation number is refused too
    with pytest.raises(StaleGeneration, match="generation 1"):
        fast.complete("T-1", generation=1)
    done = fast.complete("T-1", "ok", generation=2)
    assert done.status is TaskStatus.DONE and done.result == "ok"
    (task,) = slow.list()
    assert task.status is TaskStatus.DONE and task.assignee == "fast" and task.token == 2


def test_release_and_fail(remote: str, tmp_path: Path) -> None:
    board = GitBoard(remote, "a", cache=tmp_path / "a")
    board.init(
        [
            TaskSpec(id="T-1", project="p", title="one", priority=9),
            TaskSpec(id="T-2", project="p", title="two", priority=1),
        ]
    )
    got = board.claim()
    assert got is not None and got.task.id == "T-1"
    reopened = board.release("T-1")
    assert reopened.status is TaskStatus.OPEN and reopened.assignee is None
    again = board.claim()
    assert again is not None and again.task.id == "T-1" and again.generation == 2
    failed = board.fail("T-1", "cannot")
    assert failed.status is TaskStatus.FAILED and failed.result == "cannot"
    state = {t.id: t for t in board.list()}
    assert state["T-1"].status is TaskStatus.FAILED
    with pytest.raises(StaleGeneration, match="failed"):
        board.complete("T-1")


def test_init_and_add_refuse_bad_boards(remote: str, tmp_path: Path) -> None:
    board = GitBoard(remote, "a", cache=tmp_path / "a")
    with pytest.raises(GitBoardError, match="requires T-9, which is not on the board"):
        board.init([TaskSpec(id="T-1", project="p", title="x", requires=("T-9",))])
    with pytest.raises(GitBoardError, match="cycle"):
        board.init(
            [
                TaskSpec(id="A", project="p", title="a", requires=("B",)),
                TaskSpec(id="B", project="p", title="b", requires=("A",)),
            ]
        )
    board.init([TaskSpec(id="T-1", project="p", title="x")])
    with pytest.raises(GitBoardError, match="already has a board"):
        board.init([TaskSpec(id="T-2", project="p", title="y")])
    with pytest.raises(GitBoardError, match="already on the board: p/T-1"):
        board.add([TaskSpec(id="T-1", project="p", title="x")])
    board.add([TaskSpec(id="T-2", project="p", title="y", requires=("T-1",))])
    assert sorted(t.id for t in board.list()) == ["T-1", "T-2"]
    with pytest.raises(GitBoardError, match="cannot fetch"):
        GitBoard(str(tmp_path / "nowhere.git"), "a", cache=tmp_path / "b").list()


def test_a_seed_layout_board_moves_over_with_its_state(remote: str, tmp_path: Path) -> None:
    tree = tmp_path / "seed"
    write_board(
        tree,
        [
            Task(spec=TaskSpec(id="T-1", project="p", title="done"), status=TaskStatus.DONE),
            Task(
                spec=TaskSpec(id="T-2", project="p", title="held", requires=("T-1",)),
                status=TaskStatus.CLAIMED,
                assignee="old-agent",
                token=1,
                claimed_at=time.time() - 3600,
                heartbeat_at=time.time() - 3600,
            ),
            Task(spec=TaskSpec(id="T-3", project="p", title="next", requires=("T-2",))),
        ],
    )
    board = GitBoard(remote, "mover", cache=tmp_path / "m")
    board.add(read_board_tasks(tree))
    state = {t.id: t for t in board.list()}
    assert state["T-1"].status is TaskStatus.DONE
    assert state["T-2"].status is TaskStatus.CLAIMED and state["T-2"].assignee == "old-agent"
    assert board.claim() is None
    assert [t.id for t in board.release_stalled(600)] == ["T-2"]
    got = board.claim()
    assert got is not None and got.task.id == "T-2" and got.generation == 2
