"""setenv: the executable and the bash-init.sh function write the same file and messages;
the function also exports into the current shell."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from corral.agentcmd import bash_init_path
from tests.agentcmd.conftest import base_env

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def env_for(bin_dir: Path, env_file: Path | None) -> dict[str, str]:
    env = base_env(bin_dir)
    env["BASH_ENV"] = str(bash_init_path(bin_dir))
    if env_file is not None:
        env["CORRAL_ENV_FILE"] = str(env_file)
    return env


def executable(
    bin_dir: Path, env_file: Path | None, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(bin_dir / "setenv"), *args],
        capture_output=True,
        text=True,
        env=env_for(bin_dir, env_file),
        timeout=10,
    )


def shell(bin_dir: Path, env_file: Path | None, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        env=env_for(bin_dir, env_file),
        timeout=10,
    )


def function(bin_dir: Path, env_file: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    """``setenv ARGS`` as the shell function (``type`` proves it is not the executable)."""
    return subprocess.run(
        ["bash", "-c", 'test "$(type -t setenv)" = function || exit 99; setenv "$@"', "-", *args],
        capture_output=True,
        text=True,
        env=env_for(bin_dir, env_file),
        timeout=10,
    )


VALUES = [
    "plain",
    "it's x",
    "''",
    "$HOME `id` $(id) \\n \\",
    "two\nlines",
    "  spaced  ",
    "",
    "ünï ✓ 😀",
    'say "hi"',
]


@pytest.mark.parametrize("how", [executable, function])
def test_values_round_trip_through_the_file(bin_dir: Path, tmp_path: Path, how: object) -> None:
    env_file = tmp_path / "env"
    args: list[str] = []
    for index, value in enumerate(VALUES):
        args += [f"V{index}", value]
    result = how(bin_dir, env_file, *args)  # type: ignore[operator]
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        f"set {len(VALUES)} variables\n",
        "",
    )
    # A new shell of the run loads the file through BASH_ENV.
    names = " ".join(f'"$V{index}"' for index in range(len(VALUES)))
    check = shell(bin_dir, env_file, f"printf '%s\\0' {names}")
    assert check.stdout.split("\0")[:-1] == VALUES


def test_file_format_and_messages(bin_dir: Path, tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    result = executable(bin_dir, env_file, "A", "it's x")
    assert (result.returncode, result.stdout) == (0, "set 1 variable\n")
    result = executable(bin_dir, env_file, "B", "1", "setenv", "C", "setenv", "setenv", "D", "")
    assert (result.returncode, result.stdout) == (0, "set 3 variables\n")
    assert env_file.read_text() == (
        "export A='it'\\''s x'\nexport B='1'\nexport C='setenv'\nexport D=''\n"
    )


def test_function_and_executable_write_the_same_bytes(bin_dir: Path, tmp_path: Path) -> None:
    args = ["setenv", "A", "it's", "_b9", "x'y'z", "setenv", "C", "$(no)\n"]
    first, second = tmp_path / "one", tmp_path / "two"
    assert executable(bin_dir, first, *args).returncode == 0
    assert function(bin_dir, second, *args).returncode == 0
    assert first.read_bytes() == second.read_bytes()


def test_function_exports_at_once_and_later_shells_see_it(bin_dir: Path, tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    result = shell(bin_dir, env_file, """setenv A "it's x"; echo "$A"; bash -c 'echo "child $A"'""")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == "set 1 variable\nit's x\nchild it's x\n"
    result = shell(bin_dir, env_file, 'echo "$A"')
    assert result.stdout == "it's x\n"


def test_function_works_under_set_u(bin_dir: Path, tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    result = subprocess.run(
        ["bash", "-u", "-c", 'setenv A 1 B 2 && echo "$A$B"'],
        capture_output=True,
        text=True,
        env=env_for(bin_dir, env_file),
        timeout=10,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "set 2 variables\n12\n", "")


ERRORS = [
    (
        ["1A", "x"],
        "setenv: invalid variable name '1A': use letters, digits and _, not starting with a digit",
    ),
    (
        ["A-B", "x"],
        "setenv: invalid variable name 'A-B': use letters, digits and _, not starting with a digit",
    ),
    (
        ["ok", "1", "é", "x"],
        "setenv: invalid variable name 'é': use letters, digits and _, not starting with a digit",
    ),
    (
        ["", "x"],
        "setenv: invalid variable name '': use letters, digits and _, not starting with a digit",
    ),
    (["A", "1", "B"], "setenv: B has no value; usage: setenv NAME VALUE [NAME VALUE ...]"),
    ([], "setenv: usage: setenv NAME VALUE [NAME VALUE ...]"),
    (["setenv"], "setenv: usage: setenv NAME VALUE [NAME VALUE ...]"),
]


@pytest.mark.parametrize(("args", "message"), ERRORS)
@pytest.mark.parametrize("how", [executable, function])
def test_errors(bin_dir: Path, tmp_path: Path, how: object, args: list[str], message: str) -> None:
    env_file = tmp_path / "env"
    result = how(bin_dir, env_file, *args)  # type: ignore[operator]
    assert (result.returncode, result.stdout, result.stderr) == (9, "", message + "\n")
    assert not env_file.exists()  # nothing written when any pair is wrong


@pytest.mark.parametrize("how", [executable, function])
def test_env_file_unset(bin_dir: Path, how: object) -> None:
    result = how(bin_dir, None, "A", "1")  # type: ignore[operator]
    assert result.returncode == 9
    assert result.stderr == (
        "setenv: CORRAL_ENV_FILE is not set: setenv only works inside a corral run\n"
    )


@pytest.mark.parametrize("how", [executable, function])
def test_env_file_not_writable(bin_dir: Path, tmp_path: Path, how: object) -> None:
    env_file = tmp_path / "missing-dir" / "env"
    result = how(bin_dir, env_file, "A", "1")  # type: ignore[operator]
    assert result.returncode == 9
    assert result.stderr == f"setenv: cannot write to CORRAL_ENV_FILE ({env_file})\n"


def test_function_leaves_no_helper_variables(bin_dir: Path, tmp_path: Path) -> None:
    result = shell(
        bin_dir, tmp_path / "env", "setenv A 1 >/dev/null; set | grep -c '^_corral_[a-z]*=' || true"
    )
    assert result.stdout.strip() == "0"


def test_no_env_file_yet_is_fine(bin_dir: Path, tmp_path: Path) -> None:
    result = shell(bin_dir, tmp_path / "env", "echo ok")
    assert (result.returncode, result.stdout, result.stderr) == (0, "ok\n", "")
    assert os.path.exists(bash_init_path(bin_dir))


@pytest.mark.parametrize("how", [executable, function])
def test_the_first_setenv_makes_the_file_private_whatever_the_umask(
    bin_dir: Path, tmp_path: Path, how: object
) -> None:
    # A run's env.sh does not exist before its first setenv (corral does not make it).
    env_file = tmp_path / "env.sh"
    previous = os.umask(0o022)
    try:
        result = how(bin_dir, env_file, "A", "1")  # type: ignore[operator]
    finally:
        os.umask(previous)
    assert result.returncode == 0, result.stderr
    assert env_file.read_text() == "export A='1'\n"
    assert env_file.stat().st_mode & 0o777 == 0o600
    check = shell(bin_dir, env_file, 'echo "A=$A"')
    assert check.stdout == "A=1\n"


def test_a_shell_of_a_run_that_never_used_setenv_starts_clean(
    bin_dir: Path, tmp_path: Path
) -> None:
    env_file = tmp_path / "env.sh"  # absent: nothing was set yet
    result = shell(bin_dir, env_file, 'echo "ok ${A-unset}"')
    assert (result.returncode, result.stdout, result.stderr) == (0, "ok unset\n", "")
    assert not env_file.exists()
