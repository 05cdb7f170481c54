"""corral.inert on its own: which characters are shown escaped, a run's output cut into
chunks anywhere, and log records with newlines in their message, arguments and traceback."""

from __future__ import annotations

import io
import logging

import pytest
from rich.text import Text

from corral.cli._render import InertConsole
from corral.inert import InertFormatter, OutputFilter, inert, inert_output

UNSAFE = [
    ("\x1b", "\\x1b"),
    ("\x07", "\\x07"),
    ("\x00", "\\x00"),
    ("\x7f", "\\x7f"),
    ("\x85", "\\x85"),  # NEL, a C1 line break
    ("\x9b", "\\x9b"),  # C1 CSI
    ("\u202e", "\\u202e"),  # right-to-left override
    ("\u2066", "\\u2066"),  # left-to-right isolate
    ("\u200b", "\\u200b"),  # zero-width space
    ("\ufeff", "\\ufeff"),
    ("\u2028", "\\u2028"),  # line separator
    ("\ud800", "\\ud800"),  # a lone surrogate
    ("\U000e0041", "\\U000e0041"),  # a tag character
    ("\n", "\\n"),
    ("\r", "\\r"),
    ("\t", "\\t"),
]


@pytest.mark.parametrize(("char", "shown"), UNSAFE)
def test_a_one_line_field_shows_every_control_escaped(char: str, shown: str) -> None:
    assert inert(f"a{char}b") == f"a{shown}b"


def test_ordinary_text_is_untouched() -> None:
    text = "fixing #7: naïve café, 東京, emoji 🚀, [red]markup[/red], C:\\path"
    assert inert(text) == text
    assert inert(42) == "42"


def test_several_lines_keep_newlines_and_tabs_only() -> None:
    assert inert("a\n\tb\r\x1b[2J", newlines=True) == "a\n\tb\\r\\x1b[2J"


def test_run_output_keeps_colours_and_line_ends_only() -> None:
    text = "\x1b[1;31mred\x1b[0m\r\n\x1b]0;title\x07\x1b[2J\x1b[?1049h\x1bP1$q\x1b\\x\ry"
    assert inert_output(text) == (
        "\x1b[1;31mred\x1b[0m\r\n\\x1b]0;title\\x07\\x1b[2J\\x1b[?1049h\\x1bP1$q\\x1b\\x\\ry"
    )


def test_run_output_cut_anywhere_gives_the_same_text() -> None:
    data = "é \x1b[38;5;196mred\x1b[0m\r\n\x1b]52;c;eA==\x07 \u202e 東\r\n".encode()
    whole = inert_output(data.decode())
    for size in (1, 2, 3, 5, 7):
        output = OutputFilter()
        pieces = [output.feed(data[i : i + size]) for i in range(0, len(data), size)]
        assert "".join(pieces) + output.flush() == whole, size


def test_invalid_utf8_in_run_output_is_replaced() -> None:
    output = OutputFilter()
    assert output.feed(b"a\xffb") + output.flush() == "a\ufffdb"


def _record_text(formatter: logging.Formatter, *args: object, exc: bool = False) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger("corral.test.inert")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        if exc:
            try:
                raise ValueError("bad\nINFO corral: forged")
            except ValueError:
                logger.exception("failed for %s", *args)
        else:
            logger.warning("webhook %s refused: %s", *args)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def test_a_log_record_is_one_line() -> None:
    formatter = InertFormatter("%(levelname)s %(name)s: %(message)s")
    text = _record_text(formatter, "a\nINFO corral: forged\x1b]0;t\x07", "\u202eok")
    assert text == (
        "WARNING corral.test.inert: webhook a\\nINFO corral: forged\\x1b]0;t\\x07 refused: "
        "\\u202eok\n"
    )


def test_a_traceback_follows_its_record_indented() -> None:
    formatter = InertFormatter("%(levelname)s: %(message)s")
    lines = _record_text(formatter, "x\ny", exc=True).splitlines()
    assert lines[0] == "ERROR: failed for x\\ny"
    assert len(lines) > 2 and all(line.startswith("  ") for line in lines[1:])
    assert "  INFO corral: forged" in lines


def test_the_console_escapes_what_reaches_it_unescaped() -> None:
    """The CLI's consoles are the last line of defence: a control character that reaches
    them in a text (not through ``cell`` or ``safe``) is printed escaped; rich's own
    styles still go out."""
    out = io.StringIO()
    console = InertConsole(file=out, force_terminal=True, color_system="standard", width=80)
    console.print(Text("a\x1b]52;c;eA==\x07\u202eb", style="red"))
    printed = out.getvalue()
    assert "\\x1b]52;c;eA==" in printed and "\\u202e" in printed
    assert "\x1b[31m" in printed  # the style, from rich
    assert "\x1b]" not in printed and "\u202e" not in printed
