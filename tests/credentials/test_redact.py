"""Redaction: one-shot and streaming, with real random values and random chunkings."""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from corral.credentials import MIN_SECRET_LEN, Redactor

from .keys import fake_key, token


def streamed(redactor: Redactor, data: bytes, sizes: Sequence[int]) -> bytes:
    """Feed ``data`` in chunks of the given sizes (cycled), then flush."""
    stream = redactor.stream()
    out: list[bytes] = []
    pos, index = 0, 0
    while pos < len(data):
        size = sizes[index % len(sizes)] if sizes else len(data)
        out.append(stream.feed(data[pos : pos + size]))
        # Never more held back than the longest value less one byte.
        assert len(stream._tail) <= max(redactor.max_len - 1, 0)
        pos, index = pos + size, index + 1
    out.append(stream.flush())
    return b"".join(out)


def test_every_occurrence_is_replaced() -> None:
    value = token()
    redactor = Redactor([value])
    text = f"export GH_TOKEN={value}\ncurl -H 'Authorization: token {value}' x{value}y"
    assert redactor.redact(text) == (
        "export GH_TOKEN=[REDACTED]\ncurl -H 'Authorization: token [REDACTED]' x[REDACTED]y"
    )
    assert redactor.redact_bytes(text.encode()) == redactor.redact(text).encode()


def test_the_longest_value_wins_where_values_overlap() -> None:
    short = secrets.token_hex(4)
    long = short + secrets.token_hex(4)
    redactor = Redactor([short, long])
    assert redactor.redact(f"<{long}> <{short}>") == "<[REDACTED]> <[REDACTED]>"


def test_short_and_empty_values_are_ignored() -> None:
    redactor = Redactor(["", "a", "ab", "abc", "  x "])
    assert not redactor
    assert redactor.redact("a ab abc x") == "a ab abc x"
    assert MIN_SECRET_LEN == 4
    assert Redactor(["abcd"]).redact("abcd abc") == "[REDACTED] abc"


def test_non_ascii_values() -> None:
    value = "pässwörd-€-" + secrets.token_hex(3)
    assert Redactor([value]).redact(f"«{value}»") == "«[REDACTED]»"


def test_a_key_is_redacted_whole_line_by_line_and_escaped() -> None:
    key = fake_key()
    lines = [line for line in key.splitlines() if len(line) >= MIN_SECRET_LEN]
    redactor = Redactor([key])
    assert redactor.redact(f"key:\n{key}done") == "key:\n[REDACTED]done"
    numbered = "".join(f"{n:3} | {line}\n" for n, line in enumerate(key.splitlines()))
    escaped = json.dumps({"key": key})
    crlf = key.replace("\n", "\r\n")
    for printed in (numbered, escaped, crlf):
        out = redactor.redact(printed)
        assert not any(line in out for line in lines), out
        assert "[REDACTED]" in out


def test_no_values_pass_everything_through() -> None:
    redactor = Redactor([])
    stream = redactor.stream()
    assert stream.feed(b"abc") == b"abc" and stream.flush() == b""
    assert redactor.redact("abc") == "abc"


def test_a_value_split_across_chunks_never_leaks_any_part() -> None:
    value = token()
    redactor = Redactor([value])
    stream = redactor.stream()
    first = stream.feed(b"token=" + value[:10].encode())
    assert first == b"token="  # the start of the value is held back
    second = stream.feed(value[10:].encode() + b" ok\n")
    assert second == b"[REDACTED] ok\n"  # what cannot start a value is let through at once
    assert stream.feed(b"plain output\n") == b"plain output\n"
    assert stream.flush() == b""


def test_a_held_prefix_that_is_not_the_value_comes_out() -> None:
    value = token()
    stream = Redactor([value]).stream()
    assert stream.feed(value[:5].encode()) == b""
    assert stream.feed(b"!") == value[:5].encode() + b"!"
    assert stream.feed(value[:7].encode()) == b""
    assert stream.flush() == value[:7].encode()
    assert stream.feed(b"again") == b"again"  # usable after a flush


def test_a_value_after_one_that_crossed_the_held_back_end() -> None:
    # "cdXYefgh" could still become "cdXYefghZ", so the stream holds from "cd" on; but "abcd"
    # took that "cd": what follows is decided, and "efgh" must be replaced, not let through.
    redactor = Redactor(["abcd", "cdXYefghZ", "efgh"])
    stream = redactor.stream()
    assert stream.feed(b"abcdXYefgh") == b"[REDACTED]XY[REDACTED]"
    assert stream.flush() == b""


# Values and text share a tiny alphabet so that values overlap, nest and repeat; none of
# the letters of "[REDACTED]" is in it, so a replacement cannot form a value.
SMALL = "ab1\n "
VALUES = st.text(SMALL, min_size=MIN_SECRET_LEN, max_size=12).filter(
    lambda v: len(v.strip()) >= MIN_SECRET_LEN
)


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(VALUES, min_size=1, max_size=4),
    parts=st.lists(st.tuples(st.text(SMALL, max_size=8), st.integers(0, 3)), max_size=12),
    sizes=st.lists(st.integers(1, 9), min_size=1, max_size=8),
)
def test_streaming_equals_one_shot_and_no_value_survives(
    values: list[str], parts: list[tuple[str, int]], sizes: list[int]
) -> None:
    redactor = Redactor(values)
    text = "".join(filler + values[pick % len(values)] for filler, pick in parts)
    data = text.encode()
    once = redactor.redact_bytes(data)
    assert streamed(redactor, data, sizes) == once
    for value in values:
        assert value.encode() not in once


@settings(max_examples=100, deadline=None)
@given(
    layout=st.lists(st.sampled_from(["token", "key", "key-lines", "json", "noise"]), max_size=10),
    sizes=st.lists(st.integers(1, 300), min_size=1, max_size=8),
    seed=st.binary(min_size=8, max_size=8),
)
def test_real_values_in_random_chunks(layout: list[str], sizes: list[int], seed: bytes) -> None:
    value, key = token(), fake_key()
    redactor = Redactor([value, key])
    pieces = {
        "token": f"GH_TOKEN={value}\n",
        "key": key,
        "key-lines": "".join(f"> {line}\n" for line in key.splitlines()),
        "json": json.dumps({"k": key, "t": value}) + "\n",
        "noise": seed.hex() + " ok\n",
    }
    data = "".join(pieces[p] for p in layout).encode()
    out = streamed(redactor, data, sizes)
    assert out == redactor.redact_bytes(data)
    assert value.encode() not in out
    for line in key.splitlines():
        assert line.encode() not in out
    assert out.count(b"[REDACTED]") >= sum(p != "noise" for p in layout)


@settings(max_examples=100, deadline=None)
@given(text=st.text("xyz\n-", max_size=200), sizes=st.lists(st.integers(1, 7), min_size=1))
def test_output_without_values_is_unchanged(text: str, sizes: list[int]) -> None:
    redactor = Redactor(["abcd", token()])
    data = text.encode()
    assert redactor.redact_bytes(data) == data
    assert streamed(redactor, data, sizes) == data
