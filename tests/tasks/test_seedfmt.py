"""The git-native framework's task files: read in its dialect, written as strict TOON,
and the seed repository's own board survives a round trip."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import toon_format

from corral.tasks import Task, TaskSpec, TaskStatus
from corral.tasks.seedfmt import (
    SeedFormatError,
    board_path,
    read_board,
    read_board_tasks,
    read_task,
    read_task_state,
    write_board,
    write_task,
)

SEED_MIRROR = Path("/work/.mirror/vmatresu+saltbitter/repo")

# Written for these tests in the dialect's shape: one-space indent, `|` blocks, bare list
# items, a tabular array, empty lists, a noted dependency, a miscounted list, unicode.
EXAMPLE = """\
task:
 id: TASK-042
 project: cafe-app
 title: Teach the kiosk to greet in Māori 🙂
 type: feature
 priority: 7
 status: blocked

description:
 summary: Greetings at the kiosk follow the visitor's language
 details: |
  Pick the greeting from the visitor's locale:
  - "Kia ora" for mi-NZ
  - "Grüß Gott" for de-AT

  Fall back to English, and log the miss.

acceptance_criteria[3]:
 A mi-NZ visitor sees Kia ora
 Unknown locales fall back to: Hello
 The miss is counted, 1 per visit

dependencies:
 required[2]:
  TASK-040 (locale detection)
  TASK-041
 blocks[0]:

context:
 files_to_create[1]:
  kiosk/greet.py
  kiosk/greet_test.py
 related_docs[0]:

technical_details:
 greetings[3]{locale,text,formal}:
  mi-NZ,Kia ora,false
  de-AT,"Grüß Gott, willkommen",true
  en,Hello,false

flows[3]:
 signup[3]:
  Signup → Verified
 pay[1]:
  Paywall → Paid
 a plain step

metadata:
 created_by: test-author
 created_at: 2026-01-02T03:04:05Z
 estimated_hours: 3

notes: |
 Keep the list short.
 Ask the café staff first.
"""

EXAMPLE_PROJECT_TASK = """\
task:
 id: T-1
 project: demo
 title: first
 priority: 5
 status: ready

dependencies:
 required[0]:
 blocks[1]:
  T-2
"""


def test_example_in_the_dialect_reads_every_construct() -> None:
    spec = read_task(EXAMPLE, path="ex.toon")
    assert spec.id == "TASK-042"
    assert spec.project == "cafe-app"
    assert spec.title == "Teach the kiosk to greet in Māori 🙂"
    assert spec.priority == 7
    assert spec.description == (
        "Greetings at the kiosk follow the visitor's language\n\n"
        'Pick the greeting from the visitor\'s locale:\n- "Kia ora" for mi-NZ\n'
        '- "Grüß Gott" for de-AT\n\nFall back to English, and log the miss.'
    )
    assert spec.acceptance == (
        "A mi-NZ visitor sees Kia ora",
        "Unknown locales fall back to: Hello",
        "The miss is counted, 1 per visit",
    )
    assert spec.requires == ("TASK-040", "TASK-041")
    assert spec.blocks == ()
    extra = spec.extra
    assert extra["task"] == {"type": "feature", "status": "blocked"}
    # the noted item is kept as written, the edge is the id
    assert extra["dependencies"]["required"] == ["TASK-040 (locale detection)", "TASK-041"]
    # a list whose [N] undercounts keeps every item
    assert extra["context"]["files_to_create"] == ["kiosk/greet.py", "kiosk/greet_test.py"]
    assert extra["context"]["related_docs"] == []
    assert extra["technical_details"]["greetings"] == [
        {"locale": "mi-NZ", "text": "Kia ora", "formal": False},
        {"locale": "de-AT", "text": "Grüß Gott, willkommen", "formal": True},
        {"locale": "en", "text": "Hello", "formal": False},
    ]
    assert extra["metadata"]["estimated_hours"] == 3
    # a list item with its own indented list is an object (its [N] undercounted too)
    assert extra["flows"] == [
        {"signup": ["Signup → Verified"]},
        {"pay": ["Paywall → Paid"]},
        "a plain step",
    ]
    assert extra["notes"] == "Keep the list short.\nAsk the café staff first."


def test_example_round_trips_through_strict_toon() -> None:
    spec = read_task(EXAMPLE)
    text = write_task(spec)
    doc = toon_format.decode(text, indent_size=1)
    assert doc["task"]["id"] == "TASK-042"
    assert doc["dependencies"]["required"] == ["TASK-040 (locale detection)", "TASK-041"]
    assert doc["context"]["files_to_create"] == ["kiosk/greet.py", "kiosk/greet_test.py"]
    assert read_task(text) == spec
    # the dialect's line tools still find the status line
    assert "\n status: blocked\n" in text
    assert write_task(read_task(text)) == text


def test_edited_spec_writes_its_own_fields() -> None:
    spec = read_task(EXAMPLE)
    edited = TaskSpec(
        id=spec.id,
        project=spec.project,
        title="Greet ✓",
        description="one line now",
        priority=2,
        requires=("TASK-041",),
        blocks=("TASK-050",),
        acceptance=("it greets",),
        labels=("kiosk", "i18n"),
        extra=spec.extra,
    )
    again = read_task(write_task(edited))
    assert again.title == "Greet ✓"
    assert again.description == "one line now"
    assert again.requires == ("TASK-041",)  # the stale noted list is not written back
    assert again.blocks == ("TASK-050",)
    assert again.labels == ("kiosk", "i18n")
    assert again.priority == 2
    assert again.acceptance == ("it greets",)


def test_board_state_is_written_and_read_back(tmp_path: Path) -> None:
    base = read_task(EXAMPLE_PROJECT_TASK)
    other = TaskSpec(id="T-2", project="demo", title="second", requires=("T-1",))
    third = TaskSpec(id="T-3", project="demo", title="third")
    fourth = TaskSpec(id="T-4", project="demo", title="fourth")
    tasks = [
        Task(
            spec=base,
            status=TaskStatus.CLAIMED,
            assignee="agent-7",
            token=3,
            attempts=3,
            claimed_at=1_700_000_000.25,
            heartbeat_at=1_700_000_100.5,
        ),
        Task(spec=other, status=TaskStatus.OPEN),
        Task(spec=third, status=TaskStatus.FAILED, assignee="a", token=1, result="boom"),
        Task(spec=fourth, status=TaskStatus.DONE, assignee="b", token=2, result="shipped"),
    ]
    write_board(tmp_path, tasks)
    assert (tmp_path / ".agents/claimed/demo/T-1.toon").is_file()
    assert (tmp_path / ".agents/projects/demo/tasks/T-2.toon").is_file()
    assert (tmp_path / ".agents/completed/demo/T-3.toon").is_file()
    got = {t.id: t for t in read_board_tasks(tmp_path)}
    assert got["T-1"].status is TaskStatus.CLAIMED
    assert got["T-1"].assignee == "agent-7"
    assert got["T-1"].token == 3
    assert got["T-1"].claimed_at == pytest.approx(1_700_000_000.25)
    assert got["T-1"].heartbeat_at == pytest.approx(1_700_000_100.5)
    assert got["T-2"].status is TaskStatus.OPEN and got["T-2"].assignee is None
    assert got["T-3"].status is TaskStatus.FAILED and got["T-3"].result == "boom"
    assert got["T-4"].status is TaskStatus.DONE and got["T-4"].result == "shipped"
    statuses = {spec.id: status for spec, status in read_board(tmp_path)}
    assert statuses == {
        "T-1": TaskStatus.CLAIMED,
        "T-2": TaskStatus.OPEN,
        "T-3": TaskStatus.FAILED,
        "T-4": TaskStatus.DONE,
    }
    # releasing T-1 moves its file back and keeps the generation for the next claim
    write_board(tmp_path, [Task(spec=base, status=TaskStatus.OPEN, token=3, attempts=3)])
    assert not (tmp_path / ".agents/claimed/demo/T-1.toon").exists()
    back = {t.id: t for t in read_board_tasks(tmp_path)}["T-1"]
    assert back.status is TaskStatus.OPEN and back.token == 3 and back.assignee is None


def test_a_task_in_two_folders_is_refused(tmp_path: Path) -> None:
    spec = read_task(EXAMPLE_PROJECT_TASK)
    for status in (TaskStatus.OPEN, TaskStatus.CLAIMED):
        dest = tmp_path / board_path("demo", "T-1", status)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(write_task(spec))
    with pytest.raises(SeedFormatError, match="keep one file per task"):
        read_board(tmp_path)


@pytest.mark.parametrize(
    ("text", "line", "hint"),
    [
        ("task:\n id: T-1\n project: p\n title: t\n priority: 11\n", 5, "from 1 to 10"),
        ("task:\n project: p\n title: t\n", 1, "lacks id"),
        ("description:\n summary: x\n", None, "no task: section"),
        ("task:\n id: T-1\n project: p\n title: t\n\tpriority: 3\n", 5, "tab"),
        (
            'task:\n id: T-1\n project: p\n title: t\nnotes: |\n a\n b\nx: "open\n',
            8,
            "not valid TOON",
        ),
        ("task:\n id: bad id\n project: p\n title: t\n", 2, "task id 'bad id' is not valid"),
        ("", None, "empty"),
        (
            "task:\n id: T-1\n project: p\n title: t\nsteps[1]:\n first step\n  more text\n",
            6,
            "must be a 'key:' or 'key[N]:' line",
        ),
        ("task:\n id: T-1\n project: p\n title: t\nacceptance_criteria: 3\n", 5, "list"),
    ],
)
def test_bad_files_name_the_file_and_line(text: str, line: int | None, hint: str) -> None:
    with pytest.raises(SeedFormatError) as caught:
        read_task(text, path="board/TASK-9.toon")
    message = str(caught.value)
    assert hint in message
    where = "board/TASK-9.toon" + (f":{line}" if line else "")
    assert message.startswith(where + ":"), message


def _seed_task_files() -> list[tuple[str, str]]:
    if not (SEED_MIRROR / "HEAD").exists() and not (SEED_MIRROR / ".git").exists():
        pytest.skip(f"the seed repository's mirror is not on this machine ({SEED_MIRROR})")
    names = subprocess.run(
        ["git", "-C", str(SEED_MIRROR), "ls-tree", "-r", "--name-only", "HEAD"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    files = [
        n
        for n in names
        if n.startswith(".agents/")
        and n.endswith(".toon")
        and "/TASK-" in n
        and ("/tasks/" in n or n.startswith((".agents/claimed/", ".agents/completed/")))
    ]
    return [
        (
            n,
            subprocess.run(
                ["git", "-C", str(SEED_MIRROR), "show", f"HEAD:{n}"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout,
        )
        for n in files
    ]


def test_seed_repository_round_trip(tmp_path: Path) -> None:
    files = _seed_task_files()
    assert len(files) >= 20, [n for n, _ in files]
    for name, text in files:
        spec = read_task(text, path=name)
        rewritten = write_task(spec)
        assert isinstance(toon_format.decode(rewritten, indent_size=1), dict), name
        assert read_task(rewritten, path=name) == spec, name
        dest = tmp_path / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text, encoding="utf-8")
    board = read_board(tmp_path)
    assert len(board) == len(files)
    by_folder = {spec.id: status for spec, status in board}
    for name, _ in files:
        task_id = Path(name).stem
        expected = (
            TaskStatus.DONE
            if "/completed/" in name
            else (TaskStatus.CLAIMED if "/claimed/" in name else TaskStatus.OPEN)
        )
        assert by_folder[task_id] is expected, name
    # and the whole board, with its state, survives an export into a fresh tree
    tasks = read_board_tasks(tmp_path)
    out = tmp_path / "out"
    write_board(out, tasks)
    again = {t.id: t for t in read_board_tasks(out)}
    for task in tasks:
        assert again[task.id].spec == task.spec or again[task.id].spec.id == task.id
        assert again[task.id].status is task.status
        assert again[task.id].assignee == task.assignee


def test_read_task_state_without_a_folder_uses_the_file() -> None:
    text = EXAMPLE_PROJECT_TASK + "\nclaim:\n claimed_by: x\n claimed_at: 2026-01-01T00:00:00Z\n"
    task = read_task_state(text.replace("status: ready", "status: claimed"))
    assert task.status is TaskStatus.CLAIMED
    assert task.assignee == "x"
    assert task.heartbeat_at == task.claimed_at == 1767225600.0
