"""Task files in the git-native framework's layout and TOON encoding.

A board in that layout is a folder tree::

    .agents/projects/<project>/tasks/TASK-NNN.toon   open
    .agents/claimed/<project>/TASK-NNN.toon          claimed
    .agents/completed/<project>/TASK-NNN.toon        done (or failed/cancelled, see below)

Each file is one TOON document: ``task:`` (id, project, title, type, priority, status),
``description:`` (summary, details), ``acceptance_criteria[N]:``, ``dependencies:``
(``required``, ``blocks``) and whatever else its author wrote (``context``,
``technical_details``, ``metadata``, ``notes``...), plus ``claim:`` and ``completion:``
once the board has touched it.

The files in the wild are written in a dialect of TOON, not the spec: one space of
indentation, YAML-style ``|`` block scalars, and list items on their own lines without
the ``- `` marker (and item counts that do not always match the ``[N]`` header). The
reader first tries the TOON library as is (so files this module wrote, and any strict
TOON file, decode exactly); when that fails it rewrites the dialect into strict TOON
(two-space indent, block scalars and bare list items as quoted strings, counts taken
from the items present) and decodes that with the library. Errors name the file and the
line of the original text. The writer always goes through the library (one-space
indent, so the dialect's line-oriented tools still find ``^ status:``,
``claimed_by:``, ``last_heartbeat:``).
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import toon_format

from corral.tasks._model import Task, TaskError, TaskSpec, TaskStatus

__all__ = [
    "SeedFormatError",
    "board_path",
    "decode",
    "encode",
    "from_iso",
    "iso",
    "read_board",
    "read_board_tasks",
    "read_task",
    "read_task_state",
    "write_board",
    "write_task",
]

#: Indent the writer uses (the dialect's, so its grep/sed tools keep working).
INDENT = 1
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_LINE = re.compile(r"^(?P<key>[^:\[\]{}]+?)(?P<arr>\[\d*\](?:\{[^}]*\})?)?:(?:\s(?P<val>.*)|)$")
_LIB_LINE = re.compile(r"^line (\d+): ")
#: Sections that hold the board's state rather than the task's content.
STATE_SECTIONS = ("claim", "completion")
_OPEN_STATUSES = ("ready", "pending", "blocked")


class SeedFormatError(TaskError):
    """A task file that cannot be read; the message names the file and the line."""


def _where(path: str | Path | None, line: int | None) -> str:
    name = str(path) if path is not None else "<task file>"
    return f"{name}:{line}" if line else name


def _quote(text: str) -> str:
    escaped = (
        text.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'"{escaped}"'


def _indent_of(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


class _Normaliser:
    """Rewrites the seed's dialect as strict TOON (indent 2), remembering for each line
    written the 1-based line of the source it came from."""

    def __init__(
        self, lines: list[str], path: str | Path | None, start: int = 0, stop: int | None = None
    ) -> None:
        self.lines = lines
        self.path = path
        self.start = start
        self.stop = len(lines) if stop is None else stop
        self.out: list[str] = []
        self.origin: list[int] = []
        #: source indents of the keys that opened the objects we are inside
        self.stack: list[int] = []

    def emit(self, depth: int, content: str, src: int) -> None:
        self.out.append("  " * depth + content)
        self.origin.append(src + 1)

    def end_of_children(self, start: int, parent_indent: int) -> int:
        """Index just past the lines that belong under a header at parent_indent."""
        j = last = start
        while j < self.stop:
            line = self.lines[j]
            j += 1
            if not line.strip():
                continue
            if _indent_of(line) <= parent_indent:
                break
            last = j
        return last

    def run(self) -> tuple[str, list[int]]:
        i = self.start
        while i < self.stop:
            raw = self.lines[i]
            lead = raw[: len(raw) - len(raw.lstrip())]
            if "\t" in lead:
                raise SeedFormatError(
                    f"{_where(self.path, i + 1)}: indentation uses a tab; indent with spaces"
                )
            if not raw.strip() or raw.lstrip().startswith("#"):
                i += 1
                continue
            i = self.line(i, raw)
        return "\n".join(self.out) + "\n", self.origin

    def line(self, i: int, raw: str) -> int:
        ind = _indent_of(raw)
        while self.stack and self.stack[-1] >= ind:
            self.stack.pop()
        depth = len(self.stack)
        body = raw.strip()
        m = _LINE.match(body)
        if m is None:
            raise SeedFormatError(
                f"{_where(self.path, i + 1)}: expected 'key: value', 'key:' or 'key[N]:', "
                f"found {body[:60]!r}; a list item or text block must be indented under "
                "its key"
            )
        key = m.group("key").strip()
        qkey = key if _KEY.fullmatch(key) else _quote(key)
        arr = m.group("arr")
        val = (m.group("val") or "").strip()
        if arr is not None and not val:
            return self.array(i, ind, depth, qkey, arr)
        if val in ("|", "|-", ">"):
            end = self.end_of_children(i + 1, ind)
            block = self.lines[i + 1 : end]
            widths = [_indent_of(b) for b in block if b.strip()]
            cut = min(widths) if widths else 0
            content = "\n".join(b[cut:].rstrip() for b in block).strip("\n")
            self.emit(depth, f"{qkey}: {_quote(content)}", i)
            return end
        if val:
            self.emit(depth, f"{qkey}{arr or ''}: {val}", i)
        else:
            self.emit(depth, f"{qkey}:", i)
            self.stack.append(ind)
        return i + 1

    def array(self, i: int, ind: int, depth: int, qkey: str, arr: str) -> int:
        """A ``key[N]:`` list of bare lines, or a ``key[N]{fields}:`` table; the count
        written is the number of items present. A bare item with lines indented under it
        (``name[N]:`` and its own items) is an object, written as TOON's ``- `` item."""
        end = self.end_of_children(i + 1, ind)
        fields = arr[arr.index("]") + 1 :]
        items: list[tuple[int, int]] = []  # (first line, end) of each item
        k = i + 1
        while k < end:
            if not self.lines[k].strip():
                k += 1
                continue
            stop = k + 1 if fields else self.end_of_children(k + 1, _indent_of(self.lines[k]))
            items.append((k, max(stop, k + 1)))
            k = max(stop, k + 1)
        self.emit(depth, f"{qkey}[{len(items)}]{fields}:", i)
        for first, stop in items:
            if fields:
                self.emit(depth + 1, self.lines[first].strip(), first)
            elif stop == first + 1:
                self.emit(depth + 1, "- " + _quote(_item_text(self.lines[first])), first)
            else:
                self.nested_item(depth, first, stop)
        return end

    def nested_item(self, depth: int, first: int, stop: int) -> None:
        if _LINE.match(self.lines[first].strip()) is None:
            raise SeedFormatError(
                f"{_where(self.path, first + 1)}: a list item with lines indented under it "
                "must be a 'key:' or 'key[N]:' line; indent the lines as the item's text "
                "or make the item a key"
            )
        sub = _Normaliser(self.lines, self.path, first, stop)
        sub.run()
        for n, (line, src) in enumerate(zip(sub.out, sub.origin, strict=True)):
            if n == 0:
                self.out.append("  " * (depth + 1) + "- " + line)
            else:
                self.out.append("  " * (depth + 2) + line)
            self.origin.append(src)


def _normalise(text: str, path: str | Path | None) -> tuple[str, list[int]]:
    return _Normaliser(text.replace("\r\n", "\n").split("\n"), path).run()


def decode(text: str, *, path: str | Path | None = None) -> dict[str, Any]:
    """Decode a task file (strict TOON, or the seed's dialect) to a plain dict."""
    if not text.strip():
        raise SeedFormatError(f"{_where(path, None)}: the file is empty; expected a task: section")
    for size in (INDENT, 2):
        try:
            doc = toon_format.decode(text, indent_size=size)
        except toon_format.ToonDecodeError:
            continue
        if isinstance(doc, dict):
            return doc
    strict, origin = _normalise(text, path)
    try:
        doc = toon_format.decode(strict, indent_size=2)
    except toon_format.ToonDecodeError as exc:
        line = getattr(exc, "line", None)
        src = origin[line - 1] if isinstance(line, int) and 0 < line <= len(origin) else None
        msg = getattr(exc, "msg", None) or _LIB_LINE.sub("", str(exc))
        raise SeedFormatError(
            f"{_where(path, src)}: not valid TOON: {msg}; fix that line (quote a value "
            "that holds a comma, colon or quote)"
        ) from None
    if not isinstance(doc, dict):
        raise SeedFormatError(f"{_where(path, 1)}: expected sections such as task:, found a list")
    return doc


def encode(doc: Mapping[str, Any]) -> str:
    """Encode a plain dict as a task file, through the TOON library (a blank line between
    top-level sections, as the dialect's authors write them)."""
    text = str(toon_format.encode(dict(doc), indent_size=INDENT))
    lines = text.split("\n")
    out = [lines[0]]
    for line in lines[1:]:
        if line and not line.startswith(" "):
            out.append("")
        out.append(line)
    return "\n".join(out) + "\n"


def _line_of(text: str | None, key: str) -> int | None:
    if not text:
        return None
    pat = re.compile(rf"^\s*{re.escape(key)}(\[\d*\])?\s*:")
    for no, line in enumerate(text.splitlines(), 1):
        if pat.match(line):
            return no
    return None


def _str_list(value: Any, what: str, path: str | Path | None, text: str | None) -> tuple[str, ...]:
    if value is None or value == "" or value == {}:
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list):
        raise SeedFormatError(
            f"{_where(path, _line_of(text, what))}: {what} must be a list, "
            f"found {type(value).__name__}"
        )
    out = []
    for item in value:
        if isinstance(item, (dict, list)):
            raise SeedFormatError(
                f"{_where(path, _line_of(text, what))}: {what} items must be text, "
                f"found {type(item).__name__}"
            )
        out.append("" if item is None else str(item))
    return tuple(out)


def _render_description(value: Any) -> str:
    if isinstance(value, str):
        return value
    if not isinstance(value, dict):
        return "" if value is None else str(value)
    summary = str(value.get("summary") or "").strip()
    details = str(value.get("details") or "").strip()
    if summary and details:
        return f"{summary}\n\n{details}"
    return summary or details


def _split_description(text: str) -> dict[str, str]:
    if not text:
        return {}
    if "\n\n" in text:
        summary, details = text.split("\n\n", 1)
        return {"summary": summary, "details": details}
    if "\n" in text:
        return {"details": text}
    return {"summary": text}


def _spec_from_doc(doc: dict[str, Any], path: str | Path | None, text: str | None) -> TaskSpec:
    head = doc.get("task")
    if not isinstance(head, dict):
        raise SeedFormatError(
            f"{_where(path, _line_of(text, 'task'))}: no task: section; a task file starts "
            "with 'task:' and indented id, project, title and priority"
        )
    missing = [k for k in ("id", "project", "title") if head.get(k) in (None, "")]
    if missing:
        raise SeedFormatError(
            f"{_where(path, _line_of(text, 'task'))}: task: section lacks "
            f"{', '.join(missing)}; add them (e.g. ' id: TASK-001')"
        )
    prio = head.get("priority", 5)
    if isinstance(prio, float) and prio.is_integer():
        prio = int(prio)
    if isinstance(prio, bool) or not isinstance(prio, int) or not 1 <= prio <= 10:
        raise SeedFormatError(
            f"{_where(path, _line_of(text, 'priority'))}: priority {prio!r} is not a whole "
            "number from 1 to 10"
        )
    deps = doc.get("dependencies") or {}
    if not isinstance(deps, dict):
        raise SeedFormatError(
            f"{_where(path, _line_of(text, 'dependencies'))}: dependencies: must hold "
            "required[N]: and blocks[N]: lists"
        )
    extra = _extra_of(doc, head, deps, path, text)
    description = _render_description(doc.get("description"))
    return _make_spec(doc, head, deps, prio, description, extra, path, text)


def _extra_of(
    doc: dict[str, Any],
    head: dict[str, Any],
    deps: dict[str, Any],
    path: str | Path | None,
    text: str | None,
) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    head_rest = {
        k: v for k, v in head.items() if k not in ("id", "project", "title", "priority", "labels")
    }
    if head_rest:
        extra["task"] = head_rest
    desc = doc.get("description")
    description = _render_description(desc)
    if isinstance(desc, dict) and (
        set(desc) - {"summary", "details"} or _split_description(description) != desc
    ):
        extra["description"] = desc
    dep_rest = {k: v for k, v in deps.items() if k not in ("required", "blocks")}
    for name in ("required", "blocks"):
        # Keep items written with a note ("TASK-001 (Local dev environment)") as written.
        items = _str_list(deps.get(name), name, path, text)
        if any(_dep_ids((item,)) != (item.strip(),) for item in items):
            dep_rest[name] = list(items)
    if dep_rest:
        extra["dependencies"] = dep_rest
    for key, value in doc.items():
        if key not in ("task", "description", "acceptance_criteria", "dependencies"):
            extra[key] = value
    return extra


def _make_spec(
    doc: dict[str, Any],
    head: dict[str, Any],
    deps: dict[str, Any],
    prio: int,
    description: str,
    extra: dict[str, Any],
    path: str | Path | None,
    text: str | None,
) -> TaskSpec:
    try:
        return TaskSpec(
            id=str(head["id"]),
            project=str(head["project"]),
            title=str(head["title"]),
            description=description,
            priority=prio,
            requires=_dep_ids(_str_list(deps.get("required"), "required", path, text)),
            blocks=_dep_ids(_str_list(deps.get("blocks"), "blocks", path, text)),
            acceptance=_str_list(doc.get("acceptance_criteria"), "acceptance_criteria", path, text),
            labels=_str_list(head.get("labels"), "labels", path, text),
            extra=extra,
        )
    except SeedFormatError:
        raise
    except TaskError as exc:
        msg = str(exc)
        key = next(
            (
                k
                for word, k in (
                    ("project", "project"),
                    ("requires", "required"),
                    ("blocks", "blocks"),
                    ("label", "labels"),
                    ("title", "title"),
                )
                if word in msg
            ),
            "id",
        )
        raise SeedFormatError(f"{_where(path, _line_of(text, key))}: {msg}") from None


def read_task(text: str, *, path: str | Path | None = None) -> TaskSpec:
    """Read one task file. Fields the board does not interpret go to ``spec.extra`` (the
    ``claim:`` and ``completion:`` sections and ``task.status`` included), so writing the
    spec back gives the same document."""
    return _spec_from_doc(decode(text, path=path), path, text)


def iso(at: float) -> str:
    """A timestamp as the dialect writes it (UTC, ``Z``), to the millisecond."""
    stamp = _dt.datetime.fromtimestamp(at, tz=_dt.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def from_iso(value: Any) -> float | None:
    if value in (None, ""):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        stamp = _dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=_dt.UTC)
    return stamp.timestamp()


def _status_of(doc: Mapping[str, Any], folder: TaskStatus | None) -> TaskStatus:
    completion = doc.get("completion") if isinstance(doc.get("completion"), dict) else {}
    head = doc.get("task") if isinstance(doc.get("task"), dict) else {}
    done_as = str((completion or {}).get("status") or "").lower()
    said = str((head or {}).get("status") or "").lower()
    for word in (done_as, said):
        if word in ("failed", "cancelled"):
            return TaskStatus(word)
    if folder is not None:
        return folder
    if (
        done_as in ("completed", "done")
        or said in ("completed", "done")
        or (completion or {}).get("completed_at")
    ):
        return TaskStatus.DONE
    if said in ("claimed", "in_progress"):
        return TaskStatus.CLAIMED
    return TaskStatus.OPEN


def read_task_state(
    text: str, *, path: str | Path | None = None, folder: TaskStatus | None = None
) -> Task:
    """Read a task file with its board state (status, holder, generation, heartbeat)."""
    doc = decode(text, path=path)
    spec = _spec_from_doc(doc, path, text)
    status = _status_of(doc, folder)
    claim = doc.get("claim") if isinstance(doc.get("claim"), dict) else {}
    completion = doc.get("completion") if isinstance(doc.get("completion"), dict) else {}
    claim = claim or {}
    completion = completion or {}
    gen = claim.get("generation", 0)
    attempts = claim.get("attempts", gen)
    claimed_at = from_iso(claim.get("claimed_at"))
    beat = from_iso(claim.get("last_heartbeat")) or claimed_at
    result = completion.get("result")
    return Task(
        spec=spec,
        status=status,
        assignee=(str(claim["claimed_by"]) if claim.get("claimed_by") else None)
        if status is not TaskStatus.OPEN
        else None,
        run_id=str(claim["run_id"]) if claim.get("run_id") else None,
        token=int(gen) if isinstance(gen, int) else 0,
        claimed_at=claimed_at,
        heartbeat_at=beat,
        result=None if result is None else str(result),
        attempts=int(attempts) if isinstance(attempts, int) else 0,
    )


def _doc_for(spec: TaskSpec) -> dict[str, Any]:
    extra = dict(spec.extra)
    head: dict[str, Any] = {"id": spec.id, "project": spec.project, "title": spec.title}
    head_extra = dict(extra.pop("task", None) or {})
    if "type" in head_extra:
        head["type"] = head_extra.pop("type")
    head["priority"] = spec.priority
    head.update(head_extra)
    if spec.labels:
        head["labels"] = list(spec.labels)
    doc: dict[str, Any] = {"task": head}
    desc = extra.pop("description", None)
    if isinstance(desc, dict) and _render_description(desc) == spec.description:
        doc["description"] = desc
    elif spec.description:
        doc["description"] = _split_description(spec.description)
    doc["acceptance_criteria"] = list(spec.acceptance)
    deps: dict[str, Any] = {"required": list(spec.requires), "blocks": list(spec.blocks)}
    for name, value in dict(extra.pop("dependencies", None) or {}).items():
        if name in deps:
            # Noted items come back only while they still name the spec's edges.
            if isinstance(value, list) and _dep_ids(tuple(map(str, value))) == tuple(deps[name]):
                deps[name] = value
        else:
            deps[name] = value
    doc["dependencies"] = deps
    doc.update(extra)
    return doc


def _with_state(doc: dict[str, Any], task: Task) -> dict[str, Any]:
    head = doc["task"]
    claim = dict(doc.get("claim") or {}) if isinstance(doc.get("claim"), dict) else {}
    completion = (
        dict(doc.get("completion") or {}) if isinstance(doc.get("completion"), dict) else {}
    )
    doc.pop("claim", None)
    doc.pop("completion", None)
    if task.status is TaskStatus.OPEN:
        if str(head.get("status", "")) not in _OPEN_STATUSES:
            head["status"] = "ready"
        if task.token:
            # Keep the generation so the next claim's token is larger than any before.
            doc["claim"] = {"generation": task.token, "attempts": task.attempts}
        return doc
    head["status"] = {
        TaskStatus.CLAIMED: "claimed",
        TaskStatus.DONE: "completed",
        TaskStatus.FAILED: "failed",
        TaskStatus.CANCELLED: "cancelled",
    }[task.status]
    if task.assignee is not None:
        claim["claimed_by"] = task.assignee
    if task.claimed_at is not None:
        claim["claimed_at"] = iso(task.claimed_at)
    if task.heartbeat_at is not None:
        claim["last_heartbeat"] = iso(task.heartbeat_at)
    claim["generation"] = task.token
    claim["attempts"] = task.attempts
    if task.run_id is not None:
        claim["run_id"] = task.run_id
    doc["claim"] = claim
    if task.status is not TaskStatus.CLAIMED:
        completion["status"] = "completed" if task.status is TaskStatus.DONE else task.status.value
        if task.updated_at:
            completion["completed_at"] = iso(task.updated_at)
        if task.assignee is not None and task.status is TaskStatus.DONE:
            completion.setdefault("completed_by", task.assignee)
        if task.result is not None:
            completion["result"] = task.result
        doc["completion"] = completion
    return doc


def write_task(task: Task | TaskSpec) -> str:
    """Write a task file (strict TOON through the library). A Task's state replaces the
    ``task.status``, ``claim:`` and ``completion:`` the spec carried."""
    if isinstance(task, TaskSpec):
        return encode(_doc_for(task))
    return encode(_with_state(_doc_for(task.spec), task))


_FOLDERS: tuple[tuple[TaskStatus, str], ...] = (
    (TaskStatus.OPEN, ".agents/projects/{project}/tasks"),
    (TaskStatus.CLAIMED, ".agents/claimed/{project}"),
    (TaskStatus.DONE, ".agents/completed/{project}"),
)


def board_path(project: str, task_id: str, status: TaskStatus) -> str:
    """Where a task's file lives in the layout (failed and cancelled go with completed,
    their completion: status says which)."""
    folder = TaskStatus.DONE if status in (TaskStatus.FAILED, TaskStatus.CANCELLED) else status
    for st, pattern in _FOLDERS:
        if st is folder:
            return f"{pattern.format(project=project)}/{task_id}.toon"
    raise AssertionError(status)


def _board_files(root: Path) -> list[tuple[Path, TaskStatus]]:
    agents = root / ".agents"
    found: list[tuple[Path, TaskStatus]] = []
    for p in sorted((agents / "projects").glob("*/tasks/*.toon")):
        found.append((p, TaskStatus.OPEN))
    for p in sorted((agents / "claimed").glob("*/*.toon")):
        found.append((p, TaskStatus.CLAIMED))
    for p in sorted((agents / "completed").glob("*/*.toon")):
        found.append((p, TaskStatus.DONE))
    return found


def read_board_tasks(root: Path) -> list[Task]:
    """Every task under ``root/.agents`` with its state; a task id found in two folders
    is an error (the layout allows one place per task)."""
    tasks: list[Task] = []
    seen: dict[tuple[str, str], Path] = {}
    for path, folder in _board_files(Path(root)):
        task = read_task_state(path.read_text(encoding="utf-8"), path=path, folder=folder)
        key = (task.project, task.id)
        if key in seen:
            raise SeedFormatError(
                f"{path}: task {task.id} of {task.project} is also in {seen[key]}; "
                "keep one file per task"
            )
        seen[key] = path
        tasks.append(task)
    return tasks


def read_board(root: Path) -> list[tuple[TaskSpec, TaskStatus]]:
    """Every task under ``root/.agents`` with its status (from the folder, and the
    file's ``status:`` for failed and cancelled tasks)."""
    return [(t.spec, t.status) for t in read_board_tasks(root)]


def write_board(root: Path, tasks: Iterable[Task]) -> list[Path]:
    """Write tasks into the layout under ``root``, removing a task's file from the other
    folders (a task that moved from open to claimed leaves no copy behind)."""
    root = Path(root)
    written: list[Path] = []
    for task in tasks:
        rel = board_path(task.project, task.id, task.status)
        for st, _ in _FOLDERS:
            other = root / board_path(task.project, task.id, st)
            if other != root / rel and other.exists():
                other.unlink()
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(write_task(task), encoding="utf-8")
        written.append(dest)
    return written


def _item_text(line: str) -> str:
    """A bare list item's text (a ``- `` marker, if the author wrote one, is dropped)."""
    text = line.strip()
    return text[2:] if text.startswith("- ") else text


_DEP = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(?:\s.*)?$", re.S)


def _dep_ids(items: tuple[str, ...]) -> tuple[str, ...]:
    """Task ids of dependency items. An item may carry a note after the id
    ("TASK-001 (Local dev environment)"); an item that does not start with an id
    ("Note: deploy last") is a note, not an edge, as the dialect's scripts read it."""
    out = []
    for item in items:
        m = _DEP.match(item)
        if m:
            out.append(m.group(1))
    return tuple(out)
