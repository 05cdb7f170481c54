"""Reading TOML files, and finding the line a dotted path was written on.

``tomllib`` gives values but no positions, so :class:`Locator` scans the text
for ``[table]`` / ``[[array]]`` headers and ``key =`` lines. It is best effort:
exact for headers, keys in tables and keys in the n-th ``[[array]]`` entry;
keys inside inline tables fall back to the line of their parent.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from corral.errors import ConfigIssue

__all__ = [
    "MAX_CONFIG_DEPTH",
    "MAX_FILE_BYTES",
    "Loc",
    "Locator",
    "file_digest",
    "nested_too_deep",
    "read_limited",
    "read_text_limited",
    "read_toml",
    "split_key",
]

Loc = tuple[str | int, ...]
"""A location inside a document: table keys and list indexes."""

#: How deep tables and arrays (or YAML mappings and lists) may nest in a config file.
#: corral's own settings nest four levels at most; the limit keeps a file nested
#: thousands deep (by accident or on purpose) a config error instead of exhausting the
#: stack of the parser, the merge or the validation.
MAX_CONFIG_DEPTH = 64

#: The largest config file or SKILL.md corral reads (real ones are a few KiB). The cap keeps
#: a huge (or sparse) file a config error instead of exhausting memory.
MAX_FILE_BYTES = 1 << 20

_HEADER = re.compile(r"^\s*(\[\[?)(.*?)\]\]?\s*(?:#.*)?$")
_KEY_PART = r"""(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')"""
_KEY = re.compile(rf"^\s*({_KEY_PART}(?:\s*\.\s*{_KEY_PART})*)\s*=(.*)$")
_PART = re.compile(r"""[A-Za-z0-9_-]+|"([^"]*)"|'([^']*)'""")
_STRINGS = re.compile(r""""(?:[^"\\]|\\.)*"|'[^']*'""")
_POSITION = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)\s*$")


class Locator:
    """Maps paths such as ``("webhooks", 0, "source")`` to 1-based line numbers."""

    def __init__(self, lines: Mapping[Loc, int] | None = None) -> None:
        self.lines: dict[Loc, int] = dict(lines or {})

    @classmethod
    def from_toml(cls, text: str) -> Locator:
        scanner = _Scanner()
        for number, line in enumerate(text.splitlines(), start=1):
            scanner.feed(number, line)
        return cls(scanner.found)

    def line_for(self, path: Sequence[str | int]) -> int | None:
        """The line of ``path``, or of its nearest written ancestor."""
        key = tuple(path)
        while key:
            if key in self.lines:
                return self.lines[key]
            key = key[:-1]
        return None

    def alias(self, new: Loc, old: Loc) -> None:
        """Make ``new`` resolve to where ``old`` was written (renamed keys)."""
        if old in self.lines:
            self.lines[new] = self.lines[old]


def split_key(text: str) -> tuple[str, ...]:
    return tuple(m.group(1) or m.group(2) or m.group(0) for m in _PART.finditer(text))


class _Scanner:
    def __init__(self) -> None:
        self.found: dict[Loc, int] = {}
        self.table: Loc = ()
        self.arrays: dict[Loc, int] = {}
        self.in_string = False
        self.depth = 0

    def feed(self, number: int, line: str) -> None:
        if self.in_string or self.depth > 0:
            self._skip(line)
            return
        header = _HEADER.match(line)
        if header:
            self._header(number, header.group(1) == "[[", split_key(header.group(2)))
            return
        key = _KEY.match(line)
        if key:
            path = self.table + split_key(key.group(1))
            self.found.setdefault(path, number)
            self._skip(key.group(2))

    def _header(self, number: int, is_array: bool, parts: tuple[str, ...]) -> None:
        path: Loc = ()
        for part in parts:
            path += (part,)
            if path in self.arrays and (path != tuple(parts) or not is_array):
                path += (self.arrays[path],)
        if is_array:
            index = self.arrays.get(path, -1) + 1
            self.arrays[path] = index
            self.found.setdefault(path, number)
            path += (index,)
        self.found.setdefault(path, number)
        self.table = path

    def _skip(self, rest: str) -> None:
        """Track multi-line strings and arrays so their lines are not read as keys."""
        if rest.count('"""') % 2 == 1 or rest.count("'''") % 2 == 1:
            self.in_string = not self.in_string
        if self.in_string:
            return
        bare = _STRINGS.sub("", rest).split("#", 1)[0]
        self.depth = max(0, self.depth + bare.count("[") + bare.count("{"))
        self.depth = max(0, self.depth - bare.count("]") - bare.count("}"))


def nested_too_deep(data: object, shown: str) -> ConfigIssue | None:
    """The issue to report when ``data`` nests deeper than :data:`MAX_CONFIG_DEPTH`
    (measured without recursion, so any depth can be measured)."""
    stack: list[tuple[object, int]] = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list | tuple):
            children = value
        else:
            continue
        if depth > MAX_CONFIG_DEPTH:
            return too_deep_issue(shown)
        stack.extend((child, depth + 1) for child in children)
    return None


def too_deep_issue(shown: str) -> ConfigIssue:
    return ConfigIssue(
        shown,
        None,
        f"nested too deeply: corral reads at most {MAX_CONFIG_DEPTH} levels of tables and "
        "arrays in a config file",
    )


def read_toml(path: Path, shown: str) -> tuple[dict[str, Any] | None, Locator, list[ConfigIssue]]:
    """Parse ``path``; on a syntax error return ``None`` and one issue with its line.
    A file nested deeper than :data:`MAX_CONFIG_DEPTH` is an issue too."""
    try:
        text = read_text_limited(path)
    except (OSError, UnicodeDecodeError) as exc:
        return None, Locator(), [ConfigIssue(shown, None, f"cannot read the file: {exc}")]
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return None, Locator(), [_syntax_issue(shown, text, str(exc))]
    except ValueError as exc:  # e.g. an integer over Python's digit limit
        return None, Locator(), [_value_issue(shown, text, exc)]
    except RecursionError:  # the parser recurses once per nested array or inline table
        return None, Locator(), [too_deep_issue(shown)]
    deep = nested_too_deep(data, shown)
    if deep is not None:
        return None, Locator(), [deep]
    return data, Locator.from_toml(text), []


def _syntax_issue(shown: str, text: str, message: str) -> ConfigIssue:
    position = _POSITION.search(message)
    reason = message[: position.start()] if position else message
    line: int | None = None
    where = ""
    if position and position.group(1):
        line = int(position.group(1))
        where = f" (column {position.group(2)})"
    elif position:
        line = max(1, len(text.splitlines()))
        where = " (at the end of the file)"
    reason = reason[:1].lower() + reason[1:]
    if reason.startswith(("illegal character '\\n'", "unterminated string")):
        reason = "a string is not closed (a missing quote?)"
    return ConfigIssue(shown, None, f"not valid TOML: {reason}{where}", line)


def _value_issue(shown: str, text: str, exc: ValueError) -> ConfigIssue:
    """A value the parser cannot represent (an integer of thousands of digits)."""
    line = next(
        (n for n, row in enumerate(text.splitlines(), 1) if re.search(r"\d{4000,}", row)), None
    )
    reason = str(exc).split(";", 1)[0]
    return ConfigIssue(shown, None, f"a value cannot be read: {reason}; shorten it", line)


class UnsafeFile(OSError):
    """A file corral will not read as a config file: its message is the whole reason."""

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


def _open_regular(path: Path) -> tuple[int, os.stat_result]:
    """Open ``path`` for reading without blocking (a FIFO); refuse anything but a regular
    file. A symbolic link is followed (dotfiles and shared skills are often links) and
    its target must be a regular file. Raises ``OSError`` with a readable reason."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        reason = "is not a regular file (a directory, FIFO or device?); replace it with a file"
        raise UnsafeFile(errno.EINVAL, reason, str(path))
    return fd, info


def _too_large(path: Path, limit: int) -> OSError:
    reason = f"is larger than {limit} bytes, the most corral reads of a config file or SKILL.md"
    return UnsafeFile(errno.EFBIG, reason, str(path))


def read_limited(path: Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of the regular file ``path``, refusing one over ``limit`` bytes."""
    fd, info = _open_regular(path)
    with os.fdopen(fd, "rb") as handle:
        if info.st_size > limit:
            raise _too_large(path, limit)
        data = handle.read(limit + 1)  # it may have grown since the fstat
    if len(data) > limit:
        raise _too_large(path, limit)
    return data


def read_text_limited(path: Path, limit: int = MAX_FILE_BYTES) -> str:
    """:func:`read_limited` decoded as UTF-8 with universal newlines (as ``read_text``)."""
    text = read_limited(path, limit).decode("utf-8")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def file_digest(path: Path, limit: int = MAX_FILE_BYTES) -> str:
    """A digest that changes when the file at ``path`` does: the SHA-256 of its bytes, or a
    word for a file that is missing, not regular, too large or unreadable (read in chunks,
    never more than ``limit`` bytes, never blocking)."""
    try:
        fd, info = _open_regular(path)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return "not-regular" if exc.errno in (errno.EINVAL, errno.ELOOP) else f"error {exc.errno}"
    with os.fdopen(fd, "rb") as handle:
        if info.st_size > limit:
            return f"too-large {info.st_size} {info.st_mtime_ns}"
        digest = hashlib.sha256()
        read = 0
        while read <= limit and (chunk := handle.read(65536)):
            digest.update(chunk)
            read += len(chunk)
    return f"sha256:{digest.hexdigest()}"
