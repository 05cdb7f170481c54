"""The harness tools, run for real through a HostRuntime launcher in a temporary directory."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from corral.harness.tools import Toolbox
from corral.llm.types import ToolResult, ToolUse
from corral.runtime import HostRuntime, LaunchSpec, Process


def _toolbox(workdir: Path, env: dict[str, str] | None = None, **kwargs: Any) -> Toolbox:
    runtime = HostRuntime()
    environment = {"PATH": os.environ["PATH"], **(env or {})}

    async def launch(argv: Sequence[str], stdin: bytes | None) -> Process:
        return await runtime.launch(LaunchSpec(argv, cwd=workdir, env=environment, stdin=stdin))

    return Toolbox(launch, workdir=str(workdir), **kwargs)


@pytest.fixture
def box(tmp_path: Path) -> Toolbox:
    return _toolbox(tmp_path)


async def call(box: Toolbox, name: str, **args: Any) -> ToolResult:
    result = await box.run(ToolUse(id="t1", name=name, input=args))
    assert result.tool_use_id == "t1"
    return result


# --- specs and validation -----------------------------------------------------------------


def test_specs_name_the_four_tools(box: Toolbox) -> None:
    assert [s.name for s in box.specs] == ["bash", "read_file", "write_file", "edit_file"]
    for spec in box.specs:
        assert spec.description
        assert spec.input_schema["type"] == "object"
        assert set(spec.input_schema["required"]) <= set(spec.input_schema["properties"])


async def test_unknown_tool_lists_the_tools(box: Toolbox) -> None:
    result = await call(box, "rm_rf")
    assert result.is_error
    assert "'rm_rf'" in result.content
    assert "bash, read_file, write_file, edit_file" in result.content


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        ("bash", {}, "missing required argument 'command'"),
        ("bash", {"command": 3}, "'command' must be a string"),
        ("bash", {"command": "true", "timeout": "soon"}, "'timeout' must be a number"),
        ("bash", {"command": "true", "timeout": -1}, "'timeout' must be a positive"),
        ("read_file", {}, "missing required argument 'path'"),
        ("read_file", {"path": ""}, "'path' must not be empty"),
        ("read_file", {"path": "f", "offset": 0}, "'offset' must be at least 1"),
        ("read_file", {"path": "f", "limit": "x"}, "'limit' must be an integer"),
        ("read_file", {"path": "f", "limit": True}, "'limit' must be an integer"),
        ("write_file", {"path": "f"}, "missing required argument 'content'"),
        ("write_file", {"path": "f\0g", "content": ""}, "'path' must not contain NUL"),
        ("edit_file", {"path": "f", "new_string": "x"}, "missing required argument 'old_string'"),
        ("edit_file", {"path": "f", "old_string": "", "new_string": "x"}, "'old_string' must not"),
        (
            "edit_file",
            {"path": "f", "old_string": "a", "new_string": "b", "replace_all": "yes"},
            "'replace_all' must be true or false",
        ),
    ],
)
async def test_invalid_arguments_are_named(
    box: Toolbox, name: str, args: dict[str, Any], message: str
) -> None:
    result = await call(box, name, **args)
    assert result.is_error
    assert message in result.content


# --- bash ---------------------------------------------------------------------------------


async def test_bash_merges_output_in_the_workdir(box: Toolbox, tmp_path: Path) -> None:
    result = await call(box, "bash", command="pwd; echo out; echo err >&2")
    assert not result.is_error
    assert result.content == f"{tmp_path}\nout\nerr"


async def test_bash_reports_a_non_zero_exit_code(box: Toolbox) -> None:
    result = await call(box, "bash", command="echo failing; exit 3")
    assert result.is_error
    assert result.content == "failing\nexit code 3"
    quiet = await call(box, "bash", command="exit 7")
    assert quiet.is_error
    assert quiet.content == "exit code 7"


async def test_bash_without_output_says_so(box: Toolbox) -> None:
    result = await call(box, "bash", command="true")
    assert (result.content, result.is_error) == ("(no output)", False)


async def test_bash_output_keeps_head_and_tail(tmp_path: Path) -> None:
    box = _toolbox(tmp_path, output_limit=1000)
    result = await call(box, "bash", command="seq 1 5000")
    assert not result.is_error
    lines = result.content.splitlines()
    assert lines[0] == "1"
    assert lines[-1] == "5000"
    marker = next(line for line in lines if "output too long" in line)
    total = len("\n".join(str(i) for i in range(1, 5001))) + 1
    assert f"{total - 1000} bytes cut" in marker
    assert len(result.content) < 1100


async def test_bash_huge_output_drops_the_middle(tmp_path: Path) -> None:
    box = _toolbox(tmp_path, output_limit=100)
    big = "head -c 2000000 /dev/zero | tr '\\0' x"
    result = await call(box, "bash", command=f"echo START; {big}; echo; echo END")
    assert result.content.startswith("START\n")
    assert result.content.endswith("\nEND")
    assert f"{2_000_000 + 11 - 100} bytes cut" in result.content
    assert len(result.content) < 250


async def test_bash_timeout_stops_the_process(tmp_path: Path) -> None:
    box = _toolbox(tmp_path)
    started = time.monotonic()
    result = await call(box, "bash", command="echo begun; sleep 30 & wait", timeout=0.5)
    assert time.monotonic() - started < 5
    assert result.is_error
    assert result.content.startswith("begun\n")
    assert "timed out after 0.5 s" in result.content


async def test_bash_timeout_is_capped_by_the_toolbox(tmp_path: Path) -> None:
    box = _toolbox(tmp_path, bash_timeout=0.3)
    result = await call(box, "bash", command="sleep 30", timeout=100)
    assert result.is_error
    assert "timed out after 0.3 s" in result.content


async def test_setenv_persists_across_bash_calls_through_bash_env(tmp_path: Path) -> None:
    env_file = tmp_path / "run.env"
    env_file.touch()
    bash_env = tmp_path / "bash_env.sh"
    bash_env.write_text(
        f'setenv() {{ printf "export %s=%q\\n" "$1" "$2" >> {env_file}; export "$1=$2"; }}\n'
        f". {env_file}\n"
    )
    box = _toolbox(tmp_path / "work", env={"BASH_ENV": str(bash_env)})
    first = await call(box, "bash", command="setenv GREETING 'hello world'")
    assert not first.is_error, first.content
    second = await call(box, "bash", command='echo "$GREETING"')
    assert second.content == "hello world"


# --- read_file ----------------------------------------------------------------------------


async def test_read_file_numbers_lines(box: Toolbox, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("one\ntwo\nthree\n")
    result = await call(box, "read_file", path="a.txt")
    assert not result.is_error
    assert result.content == "     1\tone\n     2\ttwo\n     3\tthree"


async def test_read_file_offset_and_limit(box: Toolbox, tmp_path: Path) -> None:
    (tmp_path / "n.txt").write_text("".join(f"line {i}\n" for i in range(1, 11)))
    result = await call(box, "read_file", path=str(tmp_path / "n.txt"), offset=4, limit=3)
    lines = result.content.splitlines()
    assert lines[:3] == ["     4\tline 4", "     5\tline 5", "     6\tline 6"]
    assert "offset=7" in lines[3]
    end = await call(box, "read_file", path="n.txt", offset=9, limit=5)
    assert end.content == "     9\tline 9\n    10\tline 10"
    past = await call(box, "read_file", path="n.txt", offset=50)
    assert not past.is_error
    assert "fewer than 50 lines" in past.content


async def test_read_file_defaults_to_2000_lines(box: Toolbox, tmp_path: Path) -> None:
    (tmp_path / "long.txt").write_text("".join(f"{i}\n" for i in range(1, 3001)))
    result = await call(box, "read_file", path="long.txt")
    lines = result.content.splitlines()
    assert lines[-2] == "  2000\t2000"
    assert "offset=2001" in lines[-1]


async def test_read_file_caps_output_at_the_limit(tmp_path: Path) -> None:
    box = _toolbox(tmp_path, output_limit=200)
    (tmp_path / "w.txt").write_text("".join(f"{i:040}\n" for i in range(100)))
    result = await call(box, "read_file", path="w.txt")
    assert len(result.content) < 300
    assert "offset=5" in result.content.splitlines()[-1]


async def test_read_file_cuts_very_long_lines(box: Toolbox, tmp_path: Path) -> None:
    (tmp_path / "wide.txt").write_text("x" * 5000 + "\nshort\n")
    result = await call(box, "read_file", path="wide.txt")
    first, second = result.content.splitlines()
    assert first.endswith("[... 3000 more characters on this line]")
    assert second == "     2\tshort"


async def test_read_file_empty(box: Toolbox, tmp_path: Path) -> None:
    (tmp_path / "empty").touch()
    result = await call(box, "read_file", path="empty")
    assert (result.content, result.is_error) == ("(empty is empty)", False)


async def test_read_file_errors(box: Toolbox, tmp_path: Path) -> None:
    missing = await call(box, "read_file", path="nope.txt")
    assert missing.is_error
    assert missing.content == "cannot read nope.txt: no such file"
    (tmp_path / "sub").mkdir()
    directory = await call(box, "read_file", path="sub")
    assert directory.is_error
    assert "is a directory" in directory.content
    (tmp_path / "bin").write_bytes(b"ELF\0\1\2\nmore\n")
    binary = await call(box, "read_file", path="bin")
    assert binary.is_error
    assert "binary file" in binary.content


# --- write_file ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    ["no trailing newline", "ünïcødé ✓ 日本語\nline two\n", "", "$(touch pwned) `id` \\n\n"],
)
async def test_write_file_round_trips(box: Toolbox, tmp_path: Path, content: str) -> None:
    result = await call(box, "write_file", path="deep/er/out.txt", content=content)
    assert not result.is_error, result.content
    assert result.content == f"wrote {len(content.encode())} bytes to deep/er/out.txt"
    assert (tmp_path / "deep/er/out.txt").read_bytes() == content.encode()
    assert not (tmp_path / "pwned").exists()
    if content:
        back = await call(box, "read_file", path="deep/er/out.txt")
        numbered = [line.split("\t", 1)[1] for line in back.content.splitlines()]
        assert numbered == content.splitlines()


@pytest.mark.parametrize("name", ["with space.txt", 'it\'s "quoted".txt', "-n", "--rf $x;.txt"])
async def test_awkward_paths(box: Toolbox, tmp_path: Path, name: str) -> None:
    written = await call(box, "write_file", path=name, content="alpha\n")
    assert not written.is_error, written.content
    assert (tmp_path / name).read_text() == "alpha\n"
    read = await call(box, "read_file", path=name)
    assert read.content == "     1\talpha"
    edited = await call(box, "edit_file", path=name, old_string="alpha", new_string="beta")
    assert not edited.is_error, edited.content
    assert (tmp_path / name).read_text() == "beta\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


async def test_write_file_overwrites(box: Toolbox, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("a much longer old content\n")
    await call(box, "write_file", path="f", content="new")
    assert (tmp_path / "f").read_text() == "new"


# --- edit_file ----------------------------------------------------------------------------


async def test_edit_file_replaces_one_occurrence(box: Toolbox, tmp_path: Path) -> None:
    (tmp_path / "e.py").write_text("def f():\n    return 1\n")
    result = await call(box, "edit_file", path="e.py", old_string="return 1", new_string="return 2")
    assert (result.content, result.is_error) == ("replaced 1 occurrence in e.py", False)
    assert (tmp_path / "e.py").read_text() == "def f():\n    return 2\n"


async def test_edit_file_requires_a_unique_match(box: Toolbox, tmp_path: Path) -> None:
    target = tmp_path / "e.txt"
    target.write_text("x = 1\nx = 1\nx = 1")
    ambiguous = await call(box, "edit_file", path="e.txt", old_string="x = 1", new_string="y")
    assert ambiguous.is_error
    assert "occurs 3 times" in ambiguous.content
    assert target.read_text() == "x = 1\nx = 1\nx = 1"
    absent = await call(box, "edit_file", path="e.txt", old_string="z", new_string="y")
    assert absent.is_error
    assert "not found" in absent.content
    every = await call(
        box, "edit_file", path="e.txt", old_string="1", new_string="ü", replace_all=True
    )
    assert every.content == "replaced 3 occurrences in e.txt"
    assert target.read_text() == "x = ü\nx = ü\nx = ü"


async def test_edit_file_errors(box: Toolbox, tmp_path: Path) -> None:
    (tmp_path / "same").write_text("a")
    same = await call(box, "edit_file", path="same", old_string="a", new_string="a")
    assert same.is_error
    assert "the same" in same.content
    missing = await call(box, "edit_file", path="gone", old_string="a", new_string="b")
    assert missing.is_error
    assert missing.content == "cannot edit gone: no such file"
    (tmp_path / "bin").write_bytes(b"a\0b")
    binary = await call(box, "edit_file", path="bin", old_string="a", new_string="b")
    assert binary.is_error
    assert "binary" in binary.content
    assert (tmp_path / "bin").read_bytes() == b"a\0b"
    (tmp_path / "latin").write_bytes(b"caf\xe9")
    latin = await call(box, "edit_file", path="latin", old_string="caf", new_string="tea")
    assert latin.is_error
    assert "UTF-8" in latin.content


async def test_launch_failure_is_a_tool_error(tmp_path: Path) -> None:
    box = _toolbox(tmp_path, env={"PATH": str(tmp_path / "empty-bin")})
    result = await call(box, "bash", command="true")
    assert result.is_error
    assert "bash could not run" in result.content


async def test_write_file_under_a_file_fails_with_the_shells_message(
    box: Toolbox, tmp_path: Path
) -> None:
    (tmp_path / "plain").write_text("x")
    result = await call(box, "write_file", path="plain/child.txt", content="y")
    assert result.is_error
    assert result.content.startswith("could not write plain/child.txt: ")
    assert "mkdir" in result.content
    assert (tmp_path / "plain").read_text() == "x"
