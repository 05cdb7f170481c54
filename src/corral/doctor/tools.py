"""`corral doctor`: the programs a project's agents expect to find on this host.

corral runs every agent on the host's programs (the `host` runtime directly, the
`sandbox` runtime through a read-only view of the host's root), so a program the agent
needs must be installed here. Two places say which:

- a harness preset names its CLI (`claude`, `codex`, …): without it every run fails at
  once, so a missing one fails the check, with the command that installs it;
- an `agents/<name>/Dockerfile` (or the project's `Dockerfile`), written for Action Llama,
  installs tools into the image its agent runs in. corral builds no image: it reads the
  install lines (`apk add`, `apt-get install`, `npm install -g`, `pip install`) and lists
  the programs this host lacks, so that the Dockerfile is never silently ignored.
"""

from __future__ import annotations

import re
import shlex
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import corral.doctor as doctor
from corral.project import Project
from corral.project.presets import PRESETS

__all__ = ["Installed", "check_dockerfile", "check_preset_clis", "parse_dockerfile", "tool_checks"]

DOCS = "docs/dockerfiles.md"

#: How to install each preset's CLI (the program named by the preset).
INSTALL_HINTS: dict[str, str] = {
    "claude": "npm install -g @anthropic-ai/claude-code",
    "codex": "npm install -g @openai/codex",
    "gemini": "npm install -g @google/gemini-cli",
    "aider": "python3 -m pip install aider-install && aider-install",
    "opencode": "npm install -g opencode-ai",
}

#: Packages whose program is not named like the package. ``None``: a package that
#: installs no program of its own (certificates, libraries, meta-packages).
_PROGRAMS: dict[str, str | None] = {
    "github-cli": "gh",
    "ripgrep": "rg",
    "fd-find": "fdfind",
    "openssh-client": "ssh",
    "openssh": "ssh",
    "py3-pip": "pip3",
    "python3-pip": "pip3",
    "python3-venv": None,
    "py3-virtualenv": "virtualenv",
    "nodejs": "node",
    "npm": "npm",
    "bind-tools": "dig",
    "dnsutils": "dig",
    "postgresql-client": "psql",
    "mysql-client": "mysql",
    "build-base": "make",
    "build-essential": "make",
    "coreutils": None,
    "ca-certificates": None,
    "tzdata": None,
    "gnupg": "gpg",
    "procps": "ps",
    "iputils-ping": "ping",
    "docker-cli": "docker",
    "aws-cli": "aws",
    "awscli": "aws",
    "google-cloud-cli": "gcloud",
    "google-cloud-sdk": "gcloud",
    "golang": "go",
    "go": "go",
    "rust": "rustc",
    "cargo": "cargo",
    "openjdk": "java",
    "imagemagick": "convert",
    "sqlite": "sqlite3",
    "@anthropic-ai/claude-code": "claude",
    "@openai/codex": "codex",
    "@google/gemini-cli": "gemini",
    "opencode-ai": "opencode",
    "aider-chat": "aider",
    "typescript": "tsc",
    "pnpm": "pnpm",
    "yarn": "yarn",
}

_NO_PROGRAM = re.compile(r"^(lib.*|.*-(dev|doc|docs|libs|headers)|.*-data)$")


@dataclass(frozen=True)
class Installed:
    """A package a Dockerfile installs: its name, the program it gives (``None``: no
    program to look for), how (``apk add``) and on which line the RUN instruction starts."""

    package: str
    program: str | None
    manager: str
    line: int


def tool_checks(project: Project, path: str | None = None) -> list[doctor.Check]:
    """The preset CLIs, then one check per Dockerfile in the project."""
    checks = [check_preset_clis(project, path)] if _preset_users(project) else []
    for dockerfile in _dockerfiles(project):
        checks.append(check_dockerfile(project.root, dockerfile, path))
    return checks


def _preset_users(project: Project) -> dict[str, list[str]]:
    """Program -> the agents whose preset runs it."""
    users: dict[str, list[str]] = {}
    for name, agent in sorted(project.agents.items()):
        preset = agent.config.harness.preset
        if preset is not None and preset in PRESETS:
            users.setdefault(PRESETS[preset].program, []).append(name)
    return users


def check_preset_clis(project: Project, path: str | None = None) -> doctor.Check:
    """Every preset's CLI is on PATH (the PATH corral's runs inherit)."""
    found, missing, fixes = [], [], []
    for program, agents in _preset_users(project).items():
        where = shutil.which(program, path=path)
        used = f"{program} (preset of {', '.join(agents)})"
        if where is not None:
            found.append(f"{used}: {where}")
            continue
        missing.append(f"{used}: not on PATH")
        fixes.append(INSTALL_HINTS.get(program, f"install {program}"))
    lines = missing + found
    detail = "\n".join(f"  {line}" for line in lines)
    if missing:
        fix = "; ".join(fixes) + " (then log it in, or give the agent its API key credential)"
        return doctor.Check("agent CLIs", "fail", f"{len(missing)} missing:\n{detail}", fix)
    return doctor.Check("agent CLIs", "ok", f"installed:\n{detail}")


def _dockerfiles(project: Project) -> list[Path]:
    candidates = [project.root / "Dockerfile"]
    candidates += [agent.dir / "Dockerfile" for _, agent in sorted(project.agents.items())]
    return [path for path in candidates if path.is_file()]


def check_dockerfile(root: Path, dockerfile: Path, path: str | None = None) -> doctor.Check:
    """What a Dockerfile installs that this host lacks. corral does not build images."""
    name = f"Dockerfile {_relative(dockerfile, root)}"
    try:
        installed = parse_dockerfile(dockerfile.read_text(errors="replace"))
    except OSError as exc:
        return doctor.Check(name, "warn", f"cannot read it: {exc}", f"see {DOCS}")
    if not installed:
        return doctor.Check(
            name,
            "warn",
            "corral builds no images, and found no `apk add`, `apt-get install`, "
            "`npm install -g` or `pip install` line in it to check",
            f"install by hand on this host what it adds (see {DOCS})",
        )
    programs = [item for item in installed if item.program is not None]
    missing = [item for item in programs if shutil.which(str(item.program), path=path) is None]
    unchecked = sorted({item.package for item in installed if item.program is None})
    note = f"\n  not checked (no program of their own): {', '.join(unchecked)}" if unchecked else ""
    if not missing:
        listed = ", ".join(sorted({str(item.program) for item in programs})) or "nothing"
        detail = f"corral builds no images; the programs it installs are on this host: {listed}"
        return doctor.Check(name, "ok", detail + note)
    lacking = "\n".join(
        f"  {item.program} ({item.manager} {item.package}, line {item.line})" for item in missing
    )
    return doctor.Check(
        name,
        "warn",
        f"corral builds no images, and this host lacks what it installs:\n{lacking}{note}",
        f"install them on this host (runs use the host's programs); see {DOCS}",
    )


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def parse_dockerfile(text: str) -> list[Installed]:
    """The packages installed by the Dockerfile's RUN instructions, in order."""
    found: list[Installed] = []
    for line, instruction in _instructions(text):
        keyword, _, rest = instruction.partition(" ")
        if keyword.upper() != "RUN":
            continue
        for command in _commands(rest):
            found += [
                Installed(pkg, _program(pkg, manager), manager, line)
                for manager, pkg in _installs(command)
            ]
    return found


def _instructions(text: str) -> Iterator[tuple[int, str]]:
    """Logical instructions (continuation lines joined, comments dropped) and the line
    each starts on."""
    buffer: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not buffer):
            continue
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer.append(stripped[:-1])
            continue
        buffer.append(stripped)
        yield start, " ".join(part.strip() for part in buffer if part.strip())
        buffer = []
    if buffer:
        yield start, " ".join(buffer)


def _commands(shell: str) -> Iterator[list[str]]:
    """The simple commands of a RUN line, split at `&&`, `||`, `;` and `|`."""
    try:
        lexer = shlex.shlex(shell, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens = list(lexer)
    except ValueError:
        return
    command: list[str] = []
    for token in tokens:
        if token in {"&&", "||", ";", "|", "&", "(", ")"}:
            if command:
                yield command
            command = []
        else:
            command.append(token)
    if command:
        yield command


_MANAGERS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("apk", "add"), "apk add"),
    (("apt-get", "install"), "apt-get install"),
    (("apt", "install"), "apt install"),
    (("npm", "install"), "npm install -g"),
    (("npm", "i"), "npm install -g"),
    (("yarn", "global", "add"), "yarn global add"),
    (("pip", "install"), "pip install"),
    (("pip3", "install"), "pip install"),
    (("python", "-m", "pip", "install"), "pip install"),
    (("python3", "-m", "pip", "install"), "pip install"),
    (("pipx", "install"), "pipx install"),
)


def _installs(command: Sequence[str]) -> Iterator[tuple[str, str]]:
    words = list(command)
    while words and (words[0] in {"sudo", "env"} or "=" in words[0]):
        words = words[1:]  # `sudo`, `DEBIAN_FRONTEND=noninteractive` before the command
    for prefix, manager in _MANAGERS:
        args = _after(words, prefix)
        if args is None:
            continue
        if manager == "npm install -g" and not ({"-g", "--global"} & set(args)):
            return  # a project's dependencies, not a tool on PATH
        for arg in _packages(args):
            yield manager, _bare(arg, manager)
        return


def _after(words: Sequence[str], prefix: Sequence[str]) -> list[str] | None:
    """The words after ``prefix`` (options may sit between its words: `apt-get -y
    install`), or ``None`` when the command is not that."""
    if not words or words[0] != prefix[0]:
        return None
    matched = 1
    for index, word in enumerate(words[1:], start=1):
        if matched == len(prefix):
            return list(words[index:])
        if word == prefix[matched]:
            matched += 1
        elif not word.startswith("-"):
            return None
    return [] if matched == len(prefix) else None


def _packages(args: Sequence[str]) -> Iterator[str]:
    """Arguments that name packages: not options, option values, files or variables."""
    takes_value = {"-r", "--requirement", "-c", "--constraint", "-t", "--target", "-o"}
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in takes_value:
            skip = True
        elif not arg.startswith(("-", "$", ".", "/")) and "://" not in arg:
            yield arg


def _bare(package: str, manager: str) -> str:
    """The package's name without a version, extras or tag."""
    if manager.startswith(("npm", "yarn")):
        scope = package.startswith("@")
        name, _, _ = package[1:].partition("@") if scope else package.partition("@")
        return f"@{name}" if scope else name
    if manager.startswith(("pip", "pipx")):
        return re.split(r"[\[<>=!~;@ ]", package, maxsplit=1)[0]
    return re.split(r"[=<>~]", package, maxsplit=1)[0]


def _program(package: str, manager: str) -> str | None:
    name = package.lower()
    if name in _PROGRAMS:
        return _PROGRAMS[name]
    if manager == "pip install" or _NO_PROGRAM.match(name):
        # `pip install` mostly adds libraries; only a known tool's program is looked for.
        return None
    return name.rsplit("/", 1)[-1]
