"""Redaction: every credential value in a run's output becomes ``[REDACTED]``.

    redactor = Redactor(loaded.secrets())
    redactor.redact("token is ghp_abc...")          # -> "token is [REDACTED]"
    stream = redactor.stream()
    out = stream.feed(chunk) ...; out += stream.flush()  # streaming, same result

Values are matched as UTF-8 bytes, the longest first. A multi-line value (an SSH key) is
matched whole and also line by line, so a key printed one line at a time, or with its
line breaks escaped (in JSON, for instance), does not leak either.

Values shorter than :data:`MIN_SECRET_LEN` characters are ignored: they occur by chance
in ordinary output ("1", "yes", "abc") and replacing them everywhere would make logs
unreadable while protecting nothing, since a value that short can be guessed anyway.
The store refuses to keep secret values that short (see ``corral.credentials.store``),
so no stored credential is left unredacted.

The replacement text is not scanned again: a value that contains ``[REDACTED]`` or
overlaps it could, in theory, reappear around a replacement.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["MARKER", "MIN_SECRET_LEN", "RedactingSink", "Redactor"]

MARKER = b"[REDACTED]"
MIN_SECRET_LEN = 4


def _patterns(secrets: Iterable[str]) -> list[bytes]:
    found: set[bytes] = set()
    for secret in secrets:
        pieces = [secret, secret.strip()]
        if "\n" in secret or "\r" in secret:
            pieces += [line.strip() for line in secret.splitlines()]
        for piece in pieces:
            if len(piece.strip()) >= MIN_SECRET_LEN:
                found.add(piece.encode("utf-8", "surrogatepass"))
    # Longest first: where several values match at one place, the longest one is replaced.
    return sorted(found, key=lambda p: (-len(p), p))


class Redactor:
    """Replaces every occurrence of the given secret values with ``[REDACTED]``."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self._patterns = _patterns(secrets)
        self._regex = (
            re.compile(b"|".join(re.escape(p) for p in self._patterns)) if self._patterns else None
        )
        self.max_len = max((len(p) for p in self._patterns), default=0)
        self._by_first: dict[int, list[bytes]] = {}
        for pattern in self._patterns:
            self._by_first.setdefault(pattern[0], []).append(pattern)

    def __repr__(self) -> str:
        return f"Redactor({len(self._patterns)} patterns)"

    def __bool__(self) -> bool:
        return self._regex is not None

    def redact_bytes(self, data: bytes) -> bytes:
        if self._regex is None:
            return data
        return self._regex.sub(lambda _: MARKER, data)

    def redact(self, text: str) -> str:
        if self._regex is None:
            return text
        data = text.encode("utf-8", "surrogatepass")
        return self.redact_bytes(data).decode("utf-8", "surrogatepass")

    def stream(self) -> RedactingSink:
        """A new streaming redactor for one byte stream (a run's output)."""
        return RedactingSink(self)

    def _first_open(self, buf: bytes, start: int) -> int:
        """The first position at or after ``start`` where a value may begin but not yet end.

        From there on, the next bytes decide what matches; before it, everything is
        decided by ``buf`` alone.
        """
        for pos in range(max(start, len(buf) - self.max_len + 1), len(buf)):
            candidates = self._by_first.get(buf[pos])
            if candidates:
                rest = buf[pos:]
                if any(len(p) > len(rest) and p.startswith(rest) for p in candidates):
                    return pos
        return len(buf)


class RedactingSink:
    """Streaming redaction of a byte stream cut into arbitrary chunks.

    :meth:`feed` returns what can be let through now; the end of the stream that could
    still be the start of a value is held back (at most the longest value's length less
    one byte) until the next chunk or :meth:`flush`. The concatenated output equals
    ``Redactor.redact_bytes`` of the concatenated input, and never holds part of a value
    that was then replaced.
    """

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor
        self._tail = b""

    def feed(self, chunk: bytes) -> bytes:
        redactor = self._redactor
        if redactor._regex is None:
            return chunk
        buf = self._tail + chunk
        out: list[bytes] = []
        pos = 0
        hold = redactor._first_open(buf, 0)
        for match in redactor._regex.finditer(buf):
            if hold < pos:  # the last match ended past the open position: look again
                hold = redactor._first_open(buf, pos)
            if match.start() >= hold:
                break
            out += (buf[pos : match.start()], MARKER)
            pos = match.end()
        if hold < pos:
            hold = redactor._first_open(buf, pos)
        out.append(buf[pos:hold])
        self._tail = buf[hold:]
        return b"".join(out)

    def flush(self) -> bytes:
        """The rest of the stream, redacted; the sink can be fed again afterwards."""
        tail, self._tail = self._tail, b""
        return self._redactor.redact_bytes(tail)
