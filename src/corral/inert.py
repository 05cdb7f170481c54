"""Text from outside made inert before it reaches a terminal or a log.

Much of what corral shows comes from somewhere it does not control: a run's ``al-status``
text and output, a webhook sender's source name and headers, lock keys, error messages
that quote them. Printed as they are, such texts could drive the operator's terminal
(escape sequences that set the clipboard, the window title or a hyperlink, move the
cursor or rewrite the screen), reorder what is shown (bidirectional overrides), or forge
lines in a log. Three tools make them inert:

- :func:`inert` for one field shown by the CLI or written to a log: every control
  character (C0, DEL, C1), every format character (bidi overrides and isolates,
  zero-width characters, ...), the line and paragraph separators and lone surrogates
  are shown as visible escapes (``\\x1b``, ``\\u202e``); newlines and tabs too, unless
  the field is several lines by nature (``newlines=True``).
- :func:`inert_output` and :class:`OutputFilter` for a run's own output (`corral logs`,
  `corral run`): colours and text styles (SGR sequences, ``ESC [ ... m``), newlines,
  tabs and CR LF line ends are kept; every other escape sequence (OSC: clipboard, title,
  hyperlinks; cursor and screen control; device queries) and every other control or
  format character is shown as a visible escape.
- :class:`InertFormatter` for corral's log: each record is one line (its message's
  newlines and controls escaped); a traceback follows on lines that begin with a space.

A backslash is left as it is, so a literal ``\\x1b`` in the text looks like an escaped
ESC; it can be told apart only by reading the stored data (``--json``).
"""

from __future__ import annotations

import codecs
import logging
import re
import unicodedata

__all__ = ["InertFormatter", "OutputFilter", "inert", "inert_output", "is_unsafe_char"]

#: Characters that never need a look at their Unicode category: printable ASCII.
_CANDIDATE = re.compile(r"[^\x20-\x7e]")
#: In a run's output: a colour or style sequence, a CR LF line end, or a candidate.
_OUTPUT_TOKEN = re.compile(r"\x1b\[[0-9;:]{0,64}m|\r\n|[^\x20-\x7e]")
#: The end of a chunk that may be the start of a token kept whole (held back).
_OUTPUT_TAIL = re.compile(r"(?:\x1b(?:\[[0-9;:]{0,64})?|\r)\Z")
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
_MULTILINE_KEEP = frozenset({"\n", "\t"})


def is_unsafe_char(char: str) -> bool:
    """Whether ``char`` would act on a terminal or a log instead of being shown: a
    control, format (bidi, zero-width), separator or surrogate code point."""
    return unicodedata.category(char) in _UNSAFE_CATEGORIES


def _visible(char: str) -> str:
    code = ord(char)
    if char in _NAMED:
        return _NAMED[char]
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _one_line(match: re.Match[str]) -> str:
    char = match.group()
    return _visible(char) if is_unsafe_char(char) else char


def _lines(match: re.Match[str]) -> str:
    char = match.group()
    return _visible(char) if char not in _MULTILINE_KEEP and is_unsafe_char(char) else char


def inert(text: object, *, newlines: bool = False) -> str:
    """``text`` (made a string) with every character that could act on a terminal or a
    log shown as a visible escape; with ``newlines``, newlines and tabs are kept."""
    value = text if isinstance(text, str) else str(text)
    return _CANDIDATE.sub(_lines if newlines else _one_line, value)


def _output_token(match: re.Match[str]) -> str:
    token = match.group()
    if len(token) > 1:  # an SGR sequence or CR LF
        return token
    return _lines(match)


def inert_output(text: str) -> str:
    """A run's output made safe to print: colours, styles, newlines, tabs and CR LF stay;
    every other escape sequence and control or format character is shown escaped."""
    return _OUTPUT_TOKEN.sub(_output_token, text)


class OutputFilter:
    """:func:`inert_output` over a stream of byte chunks (invalid UTF-8 is replaced).

    A sequence or a character split across two chunks is held back until the next one,
    so the result does not depend on where the chunks were cut."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""

    def feed(self, chunk: bytes, *, final: bool = False) -> str:
        text = self._held + self._decoder.decode(chunk, final=final)
        self._held = ""
        if not final:
            tail = _OUTPUT_TAIL.search(text)
            if tail is not None:
                self._held, text = text[tail.start() :], text[: tail.start()]
        return inert_output(text)

    def flush(self) -> str:
        """What is still held back, made safe (at the end of the stream)."""
        return self.feed(b"", final=True)


class InertFormatter(logging.Formatter):
    """A log formatter for text from outside: one line per record, whatever its message
    and arguments hold; a traceback or stack follows on lines indented by two spaces."""

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        head = inert(self.formatMessage(record))
        more: list[str] = []
        if record.exc_info:
            more += self.formatException(record.exc_info).splitlines()
        elif record.exc_text:
            more += record.exc_text.splitlines()
        if record.stack_info:
            more += self.formatStack(record.stack_info).splitlines()
        return "\n".join([head, *(f"  {inert(line)}" for line in more)])
