"""The in-run commands a running agent uses to talk to the corral gateway.

`install` writes them into a directory that goes on every run's ``PATH``: one small
executable per command (``#!<python> -SI``), the shared client module beside them
(precompiled, so a read-only directory still starts fast) and ``bash-init.sh``, the
``BASH_ENV`` file that gives shells a ``setenv`` function.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import importlib.util
import marshal
import os
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["BASH_INIT", "COMMANDS", "MODULE_NAME", "bash_init_path", "install"]

COMMANDS = (
    "rlock",
    "runlock",
    "rlock-heartbeat",
    "al-subagent",
    "al-subagent-check",
    "al-subagent-wait",
    "al-return",
    "al-rerun",
    "al-status",
    "al-exit",
    "al-shutdown",
    "setenv",
    "task-claim",
    "task-heartbeat",
    "task-complete",
    "task-release",
    "task-fail",
)

MODULE_NAME = "_corral_agentcmd"
BASH_INIT = "bash-init.sh"

# Linux reads at most 256 bytes of a script's first line (128 before 5.1); past that the
# interpreter's options would be cut off without a word.
_SHEBANG_LIMIT = 255
# A hash-based pyc whose hash Python checks against the source: valid whatever the files'
# mtimes, so two installers racing cannot leave a stale cache.
_PYC_CHECKED_HASH = 0b11


def bash_init_path(bin_dir: Path) -> Path:
    """The ``BASH_ENV`` file that `install` writes into ``bin_dir``."""
    return Path(os.path.abspath(bin_dir)) / BASH_INIT


def install(bin_dir: Path, python: str | None = None) -> Path:
    """Write the commands into ``bin_dir`` (made if missing); returns its absolute path.

    ``python`` is the interpreter named in the scripts' shebang: by default the real
    interpreter running corral (not a virtualenv or pyenv shim, which would cost a
    process or a ``site`` import on every command). Every file is replaced atomically
    and only when its content changes, so concurrent or repeated installs are safe.
    """
    target = Path(os.path.abspath(bin_dir))
    interpreter = python if python is not None else os.path.realpath(sys.executable)
    shebang = f"#!{interpreter} -SI\n"
    _check_interpreter(interpreter, shebang)
    # The directory it is in (a project's .corral) is private when made here; the
    # commands themselves are no secret, and a sandboxed run of another uid runs them.
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    target.mkdir(exist_ok=True)
    os.chmod(target, 0o755)

    package = importlib.resources.files(__name__)
    module = target / f"{MODULE_NAME}.py"
    changed = _write_atomic(module, package.joinpath("client.py").read_bytes(), 0o644)
    _precompile(module, interpreter, changed)
    _write_atomic(target / BASH_INIT, package.joinpath(BASH_INIT).read_bytes(), 0o644)
    for name in COMMANDS:
        script = (
            f"{shebang}import sys; sys.path.insert(0, {str(target)!r}); "
            f"import {MODULE_NAME} as c; sys.exit(c.main({name!r}, sys.argv[1:]))\n"
        )
        _write_atomic(target / name, script.encode("utf-8", "surrogateescape"), 0o755)
    return target


def _check_interpreter(interpreter: str, shebang: str) -> None:
    if not os.path.isabs(interpreter):
        raise ValueError(f"the commands' interpreter must be an absolute path: {interpreter!r}")
    if any(char.isspace() for char in interpreter):
        raise ValueError(f"a shebang cannot name an interpreter path with spaces: {interpreter!r}")
    if len(os.fsencode(shebang.rstrip("\n"))) > _SHEBANG_LIMIT:
        raise ValueError(
            f"the interpreter path is too long for a shebang line ({_SHEBANG_LIMIT} bytes): "
            f"{interpreter!r}"
        )
    if not os.access(interpreter, os.X_OK):
        raise ValueError(f"the commands' interpreter is not an executable: {interpreter!r}")


def _precompile(module: Path, interpreter: str, changed: bool) -> None:
    """The module's bytecode in ``__pycache__``, for the interpreter the scripts run."""
    if os.path.realpath(interpreter) != os.path.realpath(sys.executable):
        # Another Python: only it knows its bytecode format and cache file name.
        if changed or not (module.parent / "__pycache__").is_dir():
            subprocess.run(
                [
                    interpreter,
                    "-SI",
                    "-c",
                    "import py_compile, sys; py_compile.compile(sys.argv[1], doraise=True, "
                    "invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)",
                    str(module),
                ],
                check=True,
                capture_output=True,
            )
        return
    source = module.read_bytes()
    code = compile(source, str(module), "exec", dont_inherit=True)
    pyc = (
        importlib.util.MAGIC_NUMBER
        + _PYC_CHECKED_HASH.to_bytes(4, "little")
        + importlib.util.source_hash(source)
        + marshal.dumps(code)
    )
    cache = Path(importlib.util.cache_from_source(str(module)))
    cache.parent.mkdir(exist_ok=True)
    os.chmod(cache.parent, 0o755)
    _write_atomic(cache, pyc, 0o644)


def _write_atomic(path: Path, data: bytes, mode: int) -> bool:
    """Put ``data`` at ``path`` by rename, unless it is already there; True if written."""
    with contextlib.suppress(OSError):
        if path.read_bytes() == data and (path.stat().st_mode & 0o7777) == mode:
            return False
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    return True
