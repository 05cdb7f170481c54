"""The task board for teams with no server: task files on a coordination ref of a git
remote, claimed by pushing commits.

The board's state is the tree committed on ``refs/corral/tasks`` (by default) in the
remote: the git-native framework's layout (``.agents/projects/<p>/tasks/``,
``.agents/claimed/<p>/``, ``.agents/completed/<p>/``), one TOON file per task, written
by :mod:`corral.tasks.seedfmt`. Every operation is a compare-and-swap on that ref:

1. fetch the ref into a private bare cache (never the user's repository: no work tree,
   no index, no branch of theirs is read or written);
2. build the new tree with a temporary index file (``GIT_INDEX_FILE``), ``git
   hash-object -w``, ``git write-tree`` and ``git commit-tree`` on top of the fetched
   commit;
3. ``git push --atomic --force-with-lease=REF:OLD REMOTE NEW:REF``: the push lands only
   if the remote still points at the commit the change was computed from.

A rejected push means someone else changed the board first: refetch, recompute (the
task we wanted may be gone) and retry after a sleep drawn uniformly from
``[0, min(cap, base * 2**n))`` (full jitter), where ``base`` follows the conflict rate
this claimer has seen (an exponentially weighted average of rejected pushes), so a
crowded board spreads its claimers out and a quiet one retries at once.

A claim carries a fencing generation (``claim.generation`` in the file, one more than
the task's previous claim); heartbeat, complete, fail and release check it (and the
claimer), so a claimer whose claim was released as stalled and taken by another cannot
complete the task.

Stalled claims are released by the heartbeat timestamp written in the file: it is the
claimer's wall clock, so a claimer whose clock runs behind the releaser's looks older
than it is (and one running ahead looks fresher). Keep clocks in sync (NTP), and use a
``max_age`` well above both the heartbeat interval and the worst clock skew expected.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from corral.tasks._model import Task, TaskError, TaskSpec, TaskStatus, check_id
from corral.tasks.seedfmt import board_path, read_task_state, write_task

__all__ = [
    "DEFAULT_REF",
    "ClaimResult",
    "GitBoard",
    "GitBoardError",
    "StaleGeneration",
    "eligible",
    "pick",
]

DEFAULT_REF = "refs/corral/tasks"
_SEEN = "refs/corral/seen"
_Changes = list[tuple[Task | None, Task]]
_EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"


class GitBoardError(TaskError):
    """The git board refused an operation or could not reach the remote."""


class StaleGeneration(GitBoardError):
    """The claim named is no longer the task's current claim."""


@dataclass(frozen=True)
class ClaimResult:
    task: Task
    #: The fencing generation of this claim (``task.token``).
    generation: int
    #: Pushes rejected before this claim landed.
    retries: int
    #: Seconds spent sleeping between retries.
    waited: float = 0.0


def _requirements(tasks: Sequence[Task]) -> dict[tuple[str, str], set[str]]:
    """Each task's requirements: its own ``requires`` plus every task whose ``blocks``
    names it (the same edge seen from the other end)."""
    need: dict[tuple[str, str], set[str]] = {(t.project, t.id): set(t.spec.requires) for t in tasks}
    for t in tasks:
        for other in t.spec.blocks:
            key = (t.project, other)
            if key in need:
                need[key].add(t.id)
    return need


def eligible(
    tasks: Sequence[Task], project: str | None = None, labels: Iterable[str] = ()
) -> list[Task]:
    """Tasks a claim may take, best first: open, in ``project`` if given, carrying every
    label asked for, every requirement done; by priority (10 first), then id."""
    wanted = set(labels)
    done = {(t.project, t.id) for t in tasks if t.status is TaskStatus.DONE}
    need = _requirements(tasks)
    out = [
        t
        for t in tasks
        if t.status is TaskStatus.OPEN
        and (project is None or t.project == project)
        and wanted <= set(t.spec.labels)
        and all((t.project, r) in done for r in need[(t.project, t.id)])
    ]
    out.sort(key=lambda t: (-t.spec.priority, t.project, t.id))
    return out


def pick(
    tasks: Sequence[Task], project: str | None = None, labels: Iterable[str] = ()
) -> Task | None:
    best = eligible(tasks, project, labels)
    return best[0] if best else None


def _check_graph(tasks: Sequence[Task]) -> None:
    """Every requirement names a task of the same project on the board; no cycles."""
    known = {(t.project, t.id) for t in tasks}
    need = _requirements(tasks)
    for (project, task_id), reqs in sorted(need.items()):
        missing = sorted(r for r in reqs if (project, r) not in known)
        if missing:
            raise GitBoardError(
                f"task {task_id} of {project} requires {', '.join(missing)}, which is not on "
                "the board; add it in the same import or drop the requirement"
            )
    state: dict[tuple[str, str], int] = {}
    for start in sorted(need):
        if state.get(start):
            continue
        stack: list[tuple[tuple[str, str], list[str]]] = [(start, sorted(need[start]))]
        path = [start]
        state[start] = 1
        while stack:
            node, rest = stack[-1]
            if not rest:
                state[node] = 2
                stack.pop()
                path.pop()
                continue
            nxt = (node[0], rest.pop())
            if state.get(nxt) == 1:
                cycle = [n[1] for n in path[path.index(nxt) :]] + [nxt[1]]
                raise GitBoardError(
                    f"dependency cycle in {node[0]}: {' -> '.join(cycle)}; remove one edge"
                )
            if not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append((nxt, sorted(need[nxt])))


def _default_cache(remote: str, claimer: str) -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "corral" / "gitboard"
    digest = hashlib.sha256(f"{remote}\0{claimer}".encode()).hexdigest()[:16]
    return root / digest


class GitBoard:
    """The board on a coordination ref of ``remote``, as seen by ``claimer``."""

    def __init__(
        self,
        remote: str,
        claimer: str,
        *,
        cache: Path | None = None,
        ref: str = DEFAULT_REF,
        base: float = 0.02,
        base_max: float = 0.5,
        cap: float = 2.0,
        give_up_after: float = 300.0,
        yield_after_win: bool = True,
    ) -> None:
        if not remote:
            raise GitBoardError("no remote given: pass --remote URL or set CORRAL_TASKS_GIT")
        check_id(claimer, "claimer")
        if not ref.startswith("refs/"):
            raise GitBoardError(f"ref {ref!r} must be a full ref name such as {DEFAULT_REF}")
        self.remote = remote
        self.claimer = claimer
        self.ref = ref
        self.cache = Path(cache) if cache is not None else _default_cache(remote, claimer)
        self.base_min = base
        self.base_max = base_max
        self.cap = cap
        self.give_up_after = give_up_after
        self.yield_after_win = yield_after_win
        self._won_last = False
        #: Exponentially weighted share of this claimer's pushes that were rejected.
        self.conflict_rate = 0.0
        self.pushes = 0
        self.rejections = 0
        self._held: dict[tuple[str, str], int] = {}
        self._parsed: dict[tuple[str, str], Task] = {}
        self._env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        self._env.update(
            GIT_DIR=str(self.cache),
            GIT_AUTHOR_NAME=claimer,
            GIT_AUTHOR_EMAIL=f"{claimer}@corral.invalid",
            GIT_COMMITTER_NAME=claimer,
            GIT_COMMITTER_EMAIL=f"{claimer}@corral.invalid",
            GIT_TERMINAL_PROMPT="0",
        )
        self._ensure_cache()

    # ----------------------------------------------------------------- git plumbing

    def _git(
        self,
        *args: str,
        input: str | bytes | None = None,
        env: dict[str, str] | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[bytes]:
        data = input.encode() if isinstance(input, str) else input
        proc = subprocess.run(
            ["git", *args],
            input=data,
            capture_output=True,
            env=env or self._env,
            cwd=self.cache,
        )
        if check and proc.returncode != 0:
            raise GitBoardError(
                f"git {' '.join(args[:2])} failed ({proc.returncode}): "
                f"{proc.stderr.decode(errors='replace').strip()}"
            )
        return proc

    def _ensure_cache(self) -> None:
        if (self.cache / "HEAD").exists():
            return
        self.cache.mkdir(parents=True, exist_ok=True)
        env = dict(self._env)
        subprocess.run(
            ["git", "init", "--quiet", "--bare", str(self.cache)],
            check=True,
            capture_output=True,
            env={k: v for k, v in env.items() if k != "GIT_DIR"},
        )
        # The cache is private: no hooks, no gc racing a claim.
        self._git("config", "gc.auto", "0")
        self._git("config", "core.hooksPath", os.devnull)

    def _fetch(self) -> str | None:
        """Fetch the board's ref; its commit, or None when the remote has none yet."""
        proc = self._git(
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-write-fetch-head",
            self.remote,
            f"+{self.ref}:{_SEEN}",
            check=False,
        )
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace")
            if "couldn't find remote ref" in err or "could not find remote ref" in err:
                self._git("update-ref", "-d", _SEEN, check=False)
                return None
            raise GitBoardError(f"cannot fetch {self.ref} from {self.remote}: {err.strip()}")
        return self._git("rev-parse", _SEEN).stdout.decode().strip()

    def _read(self, commit: str | None) -> list[Task]:
        if commit is None:
            return []
        listing = self._git("ls-tree", "-r", "-z", commit).stdout.decode()
        entries: list[tuple[str, str]] = []
        for item in listing.split("\0"):
            if not item:
                continue
            meta, path = item.split("\t", 1)
            _mode, kind, sha = meta.split()
            if kind == "blob" and path.endswith(".toon"):
                entries.append((sha, path))
        entries = [(sha, path) for sha, path in entries if _folder_of(path) is not None]
        wanted = [(sha, path) for sha, path in entries if (sha, path) not in self._parsed]
        if wanted:
            blob = self._git(
                "cat-file", "--batch", input="".join(f"{sha}\n" for sha, _ in wanted)
            ).stdout
            pos = 0
            for sha, path in wanted:
                header_end = blob.index(b"\n", pos)
                size = int(blob[pos:header_end].split()[2])
                body = blob[header_end + 1 : header_end + 1 + size].decode()
                pos = header_end + 1 + size + 1
                self._parsed[(sha, path)] = read_task_state(
                    body, path=f"{self.ref}:{path}", folder=_folder_of(path)
                )
        tasks = [self._parsed[(sha, path)] for sha, path in entries]
        # Keep only the files of this tree, so a long-lived claimer's cache stays small.
        self._parsed = {key: self._parsed[key] for key in entries}
        return tasks

    def _commit(
        self, old: str | None, changes: Sequence[tuple[Task | None, Task]], message: str
    ) -> str:
        """A commit on top of ``old`` with each (before, after) task written in place."""
        fd, index = tempfile.mkstemp(prefix="corral-index-", dir=self.cache)
        os.close(fd)
        os.unlink(index)
        env = dict(self._env, GIT_INDEX_FILE=index)
        try:
            self._git("read-tree", old or _EMPTY_TREE, env=env)
            lines = []
            for before, after in changes:
                new_path = board_path(after.project, after.id, after.status)
                if before is not None:
                    old_path = board_path(before.project, before.id, before.status)
                    if old_path != new_path:
                        lines.append(f"0 {'0' * 40}\t{old_path}\n")
                sha = self._git("hash-object", "-w", "--stdin", input=write_task(after))
                lines.append(f"100644 {sha.stdout.decode().strip()}\t{new_path}\n")
            self._git("update-index", "--index-info", input="".join(lines), env=env)
            tree = self._git("write-tree", env=env).stdout.decode().strip()
        finally:
            if os.path.exists(index):
                os.unlink(index)
        parents = ["-p", old] if old else []
        return self._git("commit-tree", tree, *parents, "-m", message).stdout.decode().strip()

    def _push(self, old: str | None, new: str) -> bool:
        """Move the remote's ref from ``old`` to ``new``; False if it had moved."""
        proc = self._git(
            "push",
            "--quiet",
            "--atomic",
            "--porcelain",
            f"--force-with-lease={self.ref}:{old or ''}",
            self.remote,
            f"{new}:{self.ref}",
            check=False,
        )
        self.pushes += 1
        ok = proc.returncode == 0
        self._won_last = ok
        if not ok:
            text = (proc.stdout + proc.stderr).decode(errors="replace")
            lost = (
                "stale info",
                "rejected",
                "fetch first",
                "non-fast-forward",
                "failed to lock",
                "cannot lock",
                "already exists",
                "failed to update ref",
            )
            if not any(word in text for word in lost):
                raise GitBoardError(f"cannot push to {self.remote}: {text.strip()}")
            self.rejections += 1
        self.conflict_rate = 0.8 * self.conflict_rate + 0.2 * (0.0 if ok else 1.0)
        return ok

    def _base(self) -> float:
        return self.base_min + (self.base_max - self.base_min) * self.conflict_rate

    def _backoff(self, attempt: int) -> float:
        delay = random.uniform(0.0, min(self.cap, self._base() * 2**attempt))
        time.sleep(delay)
        return delay

    def _cas(
        self,
        change: Callable[[list[Task]], _Changes | None],
        message: str,
    ) -> tuple[list[Task] | None, int, float]:
        """Retry ``change(tasks) -> [(before, after)...] | None`` until its commit lands.
        Returns the changed tasks (None if change said there was nothing to do), the
        rejected pushes and the seconds slept."""
        retries = 0
        waited = 0.0
        deadline = time.monotonic() + self.give_up_after
        while True:
            old = self._fetch()
            tasks = self._read(old)
            changes = change(tasks)
            if not changes:
                return None, retries, waited
            new = self._commit(old, changes, message.format(*[a.id for _, a in changes]))
            if self._push(old, new):
                return [after for _, after in changes], retries, waited
            retries += 1
            if time.monotonic() > deadline:
                raise GitBoardError(
                    f"gave up after {retries} rejected pushes in {self.give_up_after:.0f} s: "
                    "the board is too contended; try again or raise give_up_after"
                )
            waited += self._backoff(retries - 1)

    # ----------------------------------------------------------------- operations

    def init(self, specs: Iterable[TaskSpec | Task]) -> list[Task]:
        """Create the board with these tasks (a spec is open, a Task keeps its state).
        Refused if the remote already has the ref (:meth:`add` adds to a board)."""
        tasks = [_as_task(s) for s in specs]
        _check_graph(tasks)
        _no_duplicates(tasks)
        old = self._fetch()
        if old is not None:
            raise GitBoardError(
                f"{self.remote} already has a board at {self.ref}; add tasks with import"
            )
        new = self._commit(
            None, [(None, t) for t in tasks], f"[corral] board created with {len(tasks)} tasks"
        )
        if not self._push(None, new):
            raise GitBoardError(f"another claimer created the board at {self.ref} first")
        return tasks

    def add(self, tasks: Iterable[Task | TaskSpec]) -> list[Task]:
        """Add tasks (a Task keeps its state, so a board in the seed's layout moves over
        as it is); creates the board if the remote has none. Refuses ids already there."""
        incoming = [_as_task(t) for t in tasks]
        _no_duplicates(incoming)

        def change(current: list[Task]) -> list[tuple[Task | None, Task]]:
            have = {(t.project, t.id) for t in current}
            clash = sorted(f"{t.project}/{t.id}" for t in incoming if (t.project, t.id) in have)
            if clash:
                raise GitBoardError(f"already on the board: {', '.join(clash)}")
            _check_graph(current + incoming)
            return [(None, t) for t in incoming]

        done, _, _ = self._cas(change, f"[corral] {self.claimer} added {len(incoming)} tasks")
        return done or []

    def claim(self, project: str | None = None, labels: Iterable[str] = ()) -> ClaimResult | None:
        """Claim the best eligible task; None when no task is eligible."""
        labels = tuple(labels)
        waited = 0.0
        if self.yield_after_win and self._won_last and self.conflict_rate > 0.0:
            # Our last push landed while others were being refused: they are sleeping,
            # and we would take the ref again before any of them wakes (the capture
            # effect of exponential backoff). Wait a jittered base first.
            waited = random.uniform(0.0, self._base())
            time.sleep(waited)

        def change(current: list[Task]) -> list[tuple[Task | None, Task]] | None:
            best = pick(current, project, labels)
            if best is None:
                return None
            now = time.time()
            after = replace(
                best,
                status=TaskStatus.CLAIMED,
                assignee=self.claimer,
                token=best.token + 1,
                attempts=best.attempts + 1,
                claimed_at=now,
                heartbeat_at=now,
                result=None,
                updated_at=now,
            )
            return [(best, after)]

        done, retries, slept = self._cas(change, f"[corral] {self.claimer} claimed {{0}}")
        if not done:
            return None
        task = done[0]
        self._held[(task.project, task.id)] = task.token
        return ClaimResult(task=task, generation=task.token, retries=retries, waited=waited + slept)

    def _held_change(
        self,
        task_id: str,
        generation: int | None,
        project: str | None,
        make: Callable[[Task, float], Task],
        verb: str,
    ) -> Task:

        def change(current: list[Task]) -> list[tuple[Task | None, Task]]:
            found = [
                t for t in current if t.id == task_id and (project is None or t.project == project)
            ]
            if not found:
                raise GitBoardError(f"no task {task_id} on the board")
            if len(found) > 1:
                projects = ", ".join(t.project for t in found)
                raise GitBoardError(
                    f"task {task_id} is in several projects ({projects}); name the project"
                )
            task = found[0]
            gen = generation if generation is not None else self._held.get((task.project, task.id))
            if (
                task.status is not TaskStatus.CLAIMED
                or task.assignee != self.claimer
                or (gen is not None and gen != task.token)
            ):
                holder = (
                    f"held by {task.assignee} with generation {task.token}"
                    if task.status is TaskStatus.CLAIMED
                    else f"{task.status.value}"
                )
                yours = "" if gen is None else f" (generation {gen})"
                raise StaleGeneration(
                    f"cannot {verb} {task_id}: your claim{yours} is not current; it is {holder}"
                )
            return [(task, make(task, time.time()))]

        done, _, _ = self._cas(change, f"[corral] {self.claimer} {verb} {{0}}")
        assert done
        return done[0]

    def heartbeat(
        self, task_id: str, *, generation: int | None = None, project: str | None = None
    ) -> Task:
        return self._held_change(
            task_id,
            generation,
            project,
            lambda t, now: replace(t, heartbeat_at=now, updated_at=now),
            "heartbeat",
        )

    def complete(
        self,
        task_id: str,
        result: str | None = None,
        *,
        generation: int | None = None,
        project: str | None = None,
    ) -> Task:
        task = self._held_change(
            task_id,
            generation,
            project,
            lambda t, now: replace(t, status=TaskStatus.DONE, result=result, updated_at=now),
            "complete",
        )
        self._held.pop((task.project, task.id), None)
        return task

    def fail(
        self,
        task_id: str,
        result: str | None = None,
        *,
        generation: int | None = None,
        project: str | None = None,
    ) -> Task:
        task = self._held_change(
            task_id,
            generation,
            project,
            lambda t, now: replace(t, status=TaskStatus.FAILED, result=result, updated_at=now),
            "fail",
        )
        self._held.pop((task.project, task.id), None)
        return task

    def release(
        self, task_id: str, *, generation: int | None = None, project: str | None = None
    ) -> Task:
        task = self._held_change(
            task_id,
            generation,
            project,
            lambda t, now: _reopened(t, now),
            "release",
        )
        self._held.pop((task.project, task.id), None)
        return task

    def release_stalled(self, max_age: float) -> list[Task]:
        """Reopen claims whose last heartbeat is older than ``max_age`` seconds by this
        machine's clock (see the module's note on clock skew)."""
        if max_age < 0:
            raise GitBoardError(f"max_age {max_age} is negative; give seconds, e.g. 600")

        def change(current: list[Task]) -> list[tuple[Task | None, Task]] | None:
            now = time.time()
            stale = [
                t
                for t in current
                if t.status is TaskStatus.CLAIMED
                and (t.heartbeat_at or t.claimed_at or 0.0) < now - max_age
            ]
            return [(t, _reopened(t, now)) for t in stale] or None

        done, _, _ = self._cas(change, f"[corral] {self.claimer} released stalled {{0}}...")
        return done or []

    def list(self) -> list[Task]:  # defined last: the name shadows the builtin in the class
        """Every task on the board, as the remote has it now."""
        return self._read(self._fetch())

    def drop_cache(self) -> None:
        """Remove the private cache (the next operation recreates it)."""
        shutil.rmtree(self.cache, ignore_errors=True)


def _as_task(item: Task | TaskSpec) -> Task:
    if isinstance(item, Task):
        return item
    return Task(spec=item, status=TaskStatus.OPEN, created_at=time.time())


def _reopened(task: Task, now: float) -> Task:
    return replace(
        task,
        status=TaskStatus.OPEN,
        assignee=None,
        run_id=None,
        claimed_at=None,
        heartbeat_at=None,
        updated_at=now,
    )


def _folder_of(path: str) -> TaskStatus | None:
    parts = path.split("/")
    if len(parts) == 5 and parts[0] == ".agents" and parts[1] == "projects" and parts[3] == "tasks":
        return TaskStatus.OPEN
    if len(parts) == 4 and parts[0] == ".agents" and parts[1] == "claimed":
        return TaskStatus.CLAIMED
    if len(parts) == 4 and parts[0] == ".agents" and parts[1] == "completed":
        return TaskStatus.DONE
    return None


def _no_duplicates(tasks: Sequence[Task]) -> None:
    seen: set[tuple[str, str]] = set()
    for t in tasks:
        key = (t.project, t.id)
        if key in seen:
            raise GitBoardError(f"task {t.id} of {t.project} is given twice")
        seen.add(key)
