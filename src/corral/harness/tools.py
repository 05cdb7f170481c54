"""The tools the built-in LLM harness offers the model: bash, read_file, write_file, edit_file.

The harness runs in the scheduler process, but every tool call executes *inside* the run's
runtime (host or sandbox) through a :data:`Launch` the executor provides: the model's API
keys never enter the sandbox, and file access obeys the sandbox's view of the filesystem.
So files are read and written by POSIX tools (``sh``, ``cat``, ``sed``, ``mkdir``) started
through the launcher, never by Python file I/O in this process.

Nothing from the model is interpolated into a shell string: paths and numbers travel as
argv elements of a fixed ``sh -c`` script (used only behind redirections or ``--``), file
contents travel on stdin. Tool-level problems never raise; they come back as a
:class:`ToolResult` with ``is_error=True`` and a message meant for the model.
"""

from __future__ import annotations

import asyncio
import math
import posixpath
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from corral.errors import CorralError
from corral.llm.types import ToolResult, ToolSpec, ToolUse
from corral.runtime import Process

__all__ = [
    "BASH_TIMEOUT",
    "EDIT_MAX_BYTES",
    "OUTPUT_LIMIT",
    "READ_LINE_LIMIT",
    "READ_LINE_WIDTH",
    "Launch",
    "Toolbox",
]

#: Start ``argv`` in the run's runtime, ``stdin`` (if any) on its standard input, the run's
#: working directory as cwd and the run's environment; stdout and stderr merged.
Launch = Callable[[Sequence[str], bytes | None], Awaitable[Process]]

BASH_TIMEOUT = 600.0
OUTPUT_LIMIT = 30_000
#: Lines read_file returns when no ``limit`` is given.
READ_LINE_LIMIT = 2000
#: Longer lines are cut in read_file's output.
READ_LINE_WIDTH = 2000
#: The largest file edit_file will rewrite.
EDIT_MAX_BYTES = 10 * 1024 * 1024
#: Seconds between SIGTERM and SIGKILL when a tool's process is stopped.
STOP_GRACE = 2.0

# Exit codes of the checking scripts (chosen to be unlikely from sh/cat themselves).
_MISSING, _DIRECTORY, _UNREADABLE = 91, 92, 93
_CHECK = (
    'if [ ! -e "$1" ]; then exit 91; fi; '
    'if [ -d "$1" ]; then exit 92; fi; '
    'if [ ! -r "$1" ]; then exit 93; fi; '
)
# $1 path, $2 first line, $3 one past the last line wanted (to tell whether more follow).
_READ_SCRIPT = _CHECK + 'exec sed -n "$2,$3p;$3q" < "$1"'
_CAT_SCRIPT = _CHECK + 'exec cat < "$1"'
# $1 parent directory, $2 path.
_WRITE_SCRIPT = 'mkdir -p -- "$1" && cat > "$2"'
_OVERWRITE_SCRIPT = 'cat > "$1"'


@dataclass(frozen=True)
class _Output:
    returncode: int | None  # shell-style (128 + N for signal N); None: timed out
    data: bytes
    dropped: int  # bytes not kept
    head: bytes = b""  # when bytes were dropped from the middle: ``data`` is the head
    tail: bytes = b""


class _ToolError(Exception):
    """A problem the model should hear about: becomes ``is_error=True``."""


class Toolbox:
    """The harness's tools, acting through ``launch`` in the run's runtime.

    ``workdir`` is the run's working directory as the run sees it; relative paths are
    resolved against it. ``bash_timeout`` is both the default and the largest timeout a
    bash call may ask for; ``output_limit`` caps (in characters) what a call returns.
    """

    def __init__(
        self,
        launch: Launch,
        *,
        workdir: str,
        bash_timeout: float = BASH_TIMEOUT,
        output_limit: int = OUTPUT_LIMIT,
    ) -> None:
        self._launch = launch
        self.workdir = workdir
        self.bash_timeout = bash_timeout
        self.output_limit = output_limit
        self.specs: tuple[ToolSpec, ...] = _specs(bash_timeout, output_limit)
        self._handlers: dict[str, Callable[[dict[str, Any]], Awaitable[tuple[str, bool]]]] = {
            "bash": self._bash,
            "read_file": self._read_file,
            "write_file": self._write_file,
            "edit_file": self._edit_file,
        }

    async def run(self, call: ToolUse) -> ToolResult:
        """Execute ``call``; every tool-level problem is an ``is_error`` result."""
        handler = self._handlers.get(call.name)
        if handler is None:
            names = ", ".join(self._handlers)
            return ToolResult(call.id, f"unknown tool {call.name!r}; the tools are: {names}", True)
        args = call.input if isinstance(call.input, dict) else {}
        try:
            content, is_error = await handler(args)
        except _ToolError as exc:
            return ToolResult(call.id, str(exc), True)
        except (CorralError, OSError) as exc:
            return ToolResult(call.id, f"{call.name} could not run: {exc}", True)
        return ToolResult(call.id, content, is_error)

    # --- bash -------------------------------------------------------------------------

    async def _bash(self, args: dict[str, Any]) -> tuple[str, bool]:
        command = _string(args, "command")
        timeout = _number(args, "timeout", self.bash_timeout)
        timeout = min(timeout, self.bash_timeout)
        out = await self._exec(["bash", "-c", command], None, timeout, cap=4 * self.output_limit)
        text = _cap_text(out, self.output_limit)
        if out.returncode is None:
            note = f"[timed out after {timeout:g} s; the command was stopped]"
            return (f"{text}\n{note}" if text else note), True
        if out.returncode != 0:
            note = f"exit code {out.returncode}"
            return (f"{text}\n{note}" if text else note), True
        return text or "(no output)", False

    # --- read_file --------------------------------------------------------------------

    async def _read_file(self, args: dict[str, Any]) -> tuple[str, bool]:
        path = _string(args, "path", allow_empty=False)
        offset = _integer(args, "offset", 1, minimum=1)
        limit = _integer(args, "limit", READ_LINE_LIMIT, minimum=1)
        cap = 4 * self.output_limit + 4 * READ_LINE_WIDTH
        stop = offset + limit  # one more line than wanted, to see whether more follow
        argv = ["sh", "-c", _READ_SCRIPT, "sh", self._resolve(path), str(offset), str(stop)]
        out = await self._exec(argv, None, self.bash_timeout, cap=cap)
        data = self._checked(out, path, "read")
        if b"\0" in data:
            raise _ToolError(f"{path} is a binary file (it contains NUL bytes); not shown")
        lines = data.decode("utf-8", "replace").splitlines()
        more = len(lines) > limit
        if out.dropped and len(lines) > 1 and not data.endswith(b"\n"):
            lines.pop()  # the last line was cut by the byte cap; show it next time
        lines = lines[:limit]
        if not lines:
            if offset == 1:
                return f"({path} is empty)", False
            return f"({path} has fewer than {offset} lines)", False
        shown: list[str] = []
        size = 0
        for number, line in enumerate(lines, start=offset):
            if len(line) > READ_LINE_WIDTH:
                cut = len(line) - READ_LINE_WIDTH
                line = f"{line[:READ_LINE_WIDTH]}[... {cut} more characters on this line]"
            entry = f"{number:6}\t{line}"
            if shown and size + len(entry) + 1 > self.output_limit:
                break
            shown.append(entry)
            size += len(entry) + 1
        last = offset + len(shown) - 1
        text = "\n".join(shown)
        if len(shown) < len(lines) or more or out.dropped:
            text += (
                f"\n[showing lines {offset}-{last}; the file goes on: "
                f"read with offset={last + 1} for more]"
            )
        return text, False

    # --- write_file -------------------------------------------------------------------

    async def _write_file(self, args: dict[str, Any]) -> tuple[str, bool]:
        path = _string(args, "path", allow_empty=False)
        content = _string(args, "content")
        data = content.encode()
        target = self._resolve(path)
        parent = posixpath.dirname(target) or "."
        argv = ["sh", "-c", _WRITE_SCRIPT, "sh", parent, target]
        out = await self._exec(argv, data, self.bash_timeout, cap=self.output_limit)
        if out.returncode != 0:
            raise _ToolError(_failure(f"could not write {path}", out))
        return f"wrote {len(data)} bytes to {path}", False

    # --- edit_file --------------------------------------------------------------------

    async def _edit_file(self, args: dict[str, Any]) -> tuple[str, bool]:
        path = _string(args, "path", allow_empty=False)
        old = _string(args, "old_string", allow_empty=False)
        new = _string(args, "new_string")
        replace_all = _boolean(args, "replace_all", False)
        if old == new:
            raise _ToolError("old_string and new_string are the same; nothing to change")
        target = self._resolve(path)
        argv = ["sh", "-c", _CAT_SCRIPT, "sh", target]
        out = await self._exec(argv, None, self.bash_timeout, cap=EDIT_MAX_BYTES)
        data = self._checked(out, path, "edit")
        if out.dropped:
            raise _ToolError(f"{path} is larger than {EDIT_MAX_BYTES} bytes; edit it with bash")
        if b"\0" in data:
            raise _ToolError(f"{path} is a binary file (it contains NUL bytes); not edited")
        try:
            text = data.decode()
        except UnicodeDecodeError:
            raise _ToolError(f"{path} is not valid UTF-8 text; not edited") from None
        count = text.count(old)
        if count == 0:
            raise _ToolError(f"old_string was not found in {path}; no change made")
        if count > 1 and not replace_all:
            raise _ToolError(
                f"old_string occurs {count} times in {path}; give more context to make it "
                "unique, or set replace_all to replace every occurrence; no change made"
            )
        updated = text.replace(old, new) if replace_all else text.replace(old, new, 1)
        argv = ["sh", "-c", _OVERWRITE_SCRIPT, "sh", target]
        out = await self._exec(argv, updated.encode(), self.bash_timeout, cap=self.output_limit)
        if out.returncode != 0:
            raise _ToolError(_failure(f"could not write {path}", out))
        times = "1 occurrence" if count == 1 else f"{count} occurrences"
        return f"replaced {times} in {path}", False

    # --- plumbing ---------------------------------------------------------------------

    def _resolve(self, path: str) -> str:
        return path if path.startswith("/") else posixpath.join(self.workdir, path)

    def _checked(self, out: _Output, path: str, verb: str) -> bytes:
        """The output of a checking script, or the error it reports."""
        if out.returncode == _MISSING:
            raise _ToolError(f"cannot {verb} {path}: no such file")
        if out.returncode == _DIRECTORY:
            raise _ToolError(f"cannot {verb} {path}: it is a directory")
        if out.returncode == _UNREADABLE:
            raise _ToolError(f"cannot {verb} {path}: permission denied")
        if out.returncode != 0:
            raise _ToolError(_failure(f"cannot {verb} {path}", out))
        return out.data

    async def _exec(
        self, argv: Sequence[str], stdin: bytes | None, timeout: float, *, cap: int
    ) -> _Output:
        """Run ``argv`` through the launcher; keep the first ``cap`` bytes of its output and
        (once that is full) the last ``cap`` bytes; stop it after ``timeout`` seconds."""
        head = bytearray()
        tail = bytearray()
        dropped = 0

        async def collect(chunk: bytes) -> None:
            nonlocal dropped
            room = cap - len(head)
            if room > 0:
                head.extend(chunk[:room])
                chunk = chunk[room:]
            if not chunk:
                return
            tail.extend(chunk)
            if len(tail) > cap:
                dropped += len(tail) - cap
                del tail[: len(tail) - cap]

        process = await self._launch(argv, stdin)
        pump = asyncio.create_task(process.pump(collect))
        try:
            done, _ = await asyncio.wait({pump}, timeout=timeout)
        except asyncio.CancelledError:
            await _stop(process, pump)
            raise
        if not done:
            await _stop(process, pump)
            code: int | None = None
        else:
            returncode = pump.result()
            code = 128 - returncode if returncode < 0 else returncode
        if not tail:
            return _Output(code, bytes(head), 0)
        if not dropped:
            return _Output(code, bytes(head + tail), 0)
        return _Output(code, bytes(head), dropped, bytes(head), bytes(tail))


async def _stop(process: Process, pump: asyncio.Task[int]) -> None:
    await process.stop(STOP_GRACE)
    # The pipe closes once the group is gone; a process that left the group must not
    # keep the tool call open.
    done, _ = await asyncio.wait({pump}, timeout=STOP_GRACE)
    if not done:
        pump.cancel()


def _cap_text(out: _Output, limit: int) -> str:
    """The output as text, at most ``limit`` characters: head and tail, and between them a
    marker saying how many bytes of output were cut."""
    head_chars = limit // 2
    tail_chars = limit - head_chars
    if not out.dropped:
        text = out.data.decode("utf-8", "replace")
        if len(text) <= limit:
            return text.rstrip("\n")
        head, tail, total = text, text, len(out.data)
    else:
        head = out.head.decode("utf-8", "replace")
        tail = out.tail.decode("utf-8", "replace")
        total = len(out.head) + out.dropped + len(out.tail)
    head, tail = head[:head_chars], tail[-tail_chars:]
    cut = max(total - len(head.encode()) - len(tail.encode()), 0)
    return f"{head}\n[... output too long: {cut} bytes cut here ...]\n{tail}".rstrip("\n")


def _failure(what: str, out: _Output) -> str:
    detail = out.data.decode("utf-8", "replace").strip()
    if out.returncode is None:
        return f"{what}: timed out"
    return f"{what}: {detail}" if detail else f"{what} (exit code {out.returncode})"


# --- argument checking ----------------------------------------------------------------


def _string(args: dict[str, Any], name: str, *, allow_empty: bool = True) -> str:
    if name not in args:
        raise _ToolError(f"missing required argument {name!r}")
    value = args[name]
    if not isinstance(value, str):
        raise _ToolError(f"argument {name!r} must be a string")
    if not value and not allow_empty:
        raise _ToolError(f"argument {name!r} must not be empty")
    if "\0" in value:
        raise _ToolError(f"argument {name!r} must not contain NUL characters")
    return value


def _integer(args: dict[str, Any], name: str, default: int, *, minimum: int) -> int:
    value = args.get(name)
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _ToolError(f"argument {name!r} must be an integer")
    if value < minimum:
        raise _ToolError(f"argument {name!r} must be at least {minimum}")
    return value


def _number(args: dict[str, Any], name: str, default: float) -> float:
    value = args.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _ToolError(f"argument {name!r} must be a number of seconds")
    if not math.isfinite(value) or value <= 0:
        raise _ToolError(f"argument {name!r} must be a positive number of seconds")
    return float(value)


def _boolean(args: dict[str, Any], name: str, default: bool) -> bool:
    value = args.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _ToolError(f"argument {name!r} must be true or false")
    return value


def _specs(bash_timeout: float, output_limit: int) -> tuple[ToolSpec, ...]:
    path = {
        "type": "string",
        "description": "File path; relative paths are relative to the working directory.",
    }
    return (
        ToolSpec(
            name="bash",
            description=(
                "Run a command with `bash -c` in the working directory and return its "
                "combined stdout and stderr. Each call starts a fresh shell: `cd` and "
                "variables do not carry over (use the `setenv` command to persist "
                "environment variables). A non-zero exit code is reported. Output longer "
                f"than {output_limit} characters keeps its beginning and end. The command "
                f"is stopped after `timeout` seconds (default and maximum {bash_timeout:g})."
            ),
            input_schema={
                "type": "object",
                "properties": {
                    "command": {"type": "string", "description": "The bash command to run."},
                    "timeout": {
                        "type": "number",
                        "exclusiveMinimum": 0,
                        "description": f"Seconds before the command is stopped "
                        f"(at most {bash_timeout:g}).",
                    },
                },
                "required": ["command"],
                "additionalProperties": False,
            },
        ),
        ToolSpec(
            name="read_file",
            description=(
                "Read a text file, returned with line numbers (like `cat -n`). By default "
                f"the first {READ_LINE_LIMIT} lines; use offset and limit for other parts "
                f"of long files. Lines longer than {READ_LINE_WIDTH} characters are cut. "
                "Binary files and directories are refused."
            ),
            input_schema={
                "type": "object",
                "properties": {
                    "path": path,
                    "offset": {
                        "type": "integer",
                        "minimum": 1,
                        "description": "The line number to start at (1 = first line).",
                    },
                    "limit": {
                        "type": "integer",
                        "minimum": 1,
                        "description": f"How many lines to read (default {READ_LINE_LIMIT}).",
                    },
                },
                "required": ["path"],
                "additionalProperties": False,
            },
        ),
        ToolSpec(
            name="write_file",
            description=(
                "Write `content` to a file exactly as given, replacing it if it exists and "
                "creating missing parent directories. Prefer edit_file to change part of "
                "an existing file."
            ),
            input_schema={
                "type": "object",
                "properties": {
                    "path": path,
                    "content": {"type": "string", "description": "The whole new content."},
                },
                "required": ["path", "content"],
                "additionalProperties": False,
            },
        ),
        ToolSpec(
            name="edit_file",
            description=(
                "Replace `old_string` with `new_string` in a text file. `old_string` must "
                "match the file exactly (whitespace and indentation included) and occur "
                "exactly once, unless replace_all is true; include enough surrounding "
                "lines to make it unique. Read the file first."
            ),
            input_schema={
                "type": "object",
                "properties": {
                    "path": path,
                    "old_string": {"type": "string", "description": "The exact text to replace."},
                    "new_string": {
                        "type": "string",
                        "description": "The replacement (must differ from old_string).",
                    },
                    "replace_all": {
                        "type": "boolean",
                        "description": "Replace every occurrence (default false).",
                    },
                },
                "required": ["path", "old_string", "new_string"],
                "additionalProperties": False,
            },
        ),
    )
