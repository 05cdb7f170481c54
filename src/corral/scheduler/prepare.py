"""Everything a run needs before its agent starts, gathered in one place: a ``RunPlan``.

The plan holds the run's files, its environment (only what the run should see: a short
inherited list, the agent's ``[harness] env``, corral's variables, the gateway's, the
credentials' own), where the run lives in its runtime (for the sandbox: the working
directory under /tmp, credentials at /credentials, the project's state hidden), and the
launch template every process of the run (hooks, dynamic context, the agent) starts from.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import stat
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from corral.agentcmd import bash_init_path
from corral.credentials import (
    MODEL_KEY_VARIABLES,
    CredentialStore,
    LoadedCredential,
    credential_context,
    implied_credentials,
)
from corral.errors import RunError
from corral.harness import PromptContext, RunFiles, base_environment, build_launch, build_prompt
from corral.harness.prompt import skills_used
from corral.locate import STATE_DIR_MODE, corral_home, open_private, private_dirs
from corral.project import Agent, Project
from corral.project.presets import key_providers
from corral.runtime import (
    Bind,
    DataFile,
    Isolation,
    LaunchSpec,
    Runtime,
    in_prepare_thread,
    runtime_for,
)
from corral.runtime._private import StaticView, make_static
from corral.scheduler.agentlink import AgentLink
from corral.store import Run, Store

__all__ = [
    "MODEL_KEY_VARIABLES",
    "RUN_ID_BASE",
    "RUN_ID_SPAN",
    "SANDBOX_CREDENTIALS",
    "SANDBOX_WORKDIR",
    "RunPlan",
    "implied_keys",
    "memory_bytes",
    "plan_run",
    "run_ids",
]

# MODEL_KEY_VARIABLES (from corral.credentials): the variable holding each provider's API
# key (its PROVIDER_key credential, named or implied by the agent's models, or env:NAME).
# For a built-in harness run it stays in the scheduler.

#: Where a sandboxed run works, and where it finds its credentials.
SANDBOX_WORKDIR = Path("/tmp/work")
SANDBOX_CREDENTIALS = Path("/credentials")

#: When corral runs as root, each sandboxed run gets a uid of its own from this range
#: (derived from the run's id) and the gid of its project (derived from the project's
#: path, same range): none is a user of the machine, so nothing of corral's state
#: (0700 directories, 0600 files) nor anything private of the machine's users is theirs.
RUN_ID_BASE = 0x68000000  # 1744830464
RUN_ID_SPAN = 1 << 24


@dataclass(frozen=True)
class RunPlan:
    """One run, ready to start: files on the host, the template, what to redact."""

    run: Run
    agent: Agent
    files: RunFiles
    runtime: Runtime
    #: argv empty: hooks and dynamic context replace it; ``launch(prompt)`` fills it in.
    template: LaunchSpec
    #: ``files`` as the run sees them (the same on the host; under /tmp in the sandbox).
    inside: RunFiles
    credentials: tuple[LoadedCredential, ...] = ()
    secrets: tuple[str, ...] = field(default=(), repr=False)
    #: Model API keys of a built-in harness run: kept in the scheduler, never in the run.
    model_keys: Mapping[str, str] = field(default_factory=dict, repr=False)

    def shell(self, command: str) -> LaunchSpec:
        """A ``/bin/sh -c`` command in the run's place, environment and isolation."""
        return replace(self.template, argv=("/bin/sh", "-c", command), stdin=None)

    def prompt_context(self, project: Project) -> PromptContext:
        sandboxed = self.agent.config.runtime.type == "sandbox"
        mount = SANDBOX_CREDENTIALS if sandboxed else self.files.meta / "credentials"
        return PromptContext(
            params=self.agent.config.params,
            workdir=self.inside.workdir,
            shared_dir=project.shared_dir,
            trigger=self.run.trigger.value,
            user_prompt=self.run.prompt,
            payload=self.run.trigger_detail,
            credential_context=credential_context(list(self.credentials), str(mount)),
            skills=skills_used(self.agent.skill.body),
            sandboxed=sandboxed,
        )

    def write_prompt(self, project: Project, system_prompt: str) -> str:
        """Assemble the prompt, write both prompt files (0600, the run's), return it."""
        prompt = build_prompt(self.prompt_context(project))
        self._write_prompt_files(prompt, system_prompt)
        return prompt

    def _write_prompt_files(self, prompt: str, system_prompt: str) -> None:
        iso = self.template.isolation
        owner = (iso.uid, _gid(iso)) if iso is not None and iso.uid is not None else None
        self.files.write(prompt, system_prompt, owner)

    def process(self, argv: Sequence[str], stdin: bytes | None = None) -> LaunchSpec:
        """Any process of the run: ``argv`` in its place, environment and isolation."""
        return replace(self.template, argv=tuple(argv), stdin=stdin)

    def launch(self, project: Project, system_prompt: str) -> LaunchSpec:
        """The agent's own launch; its prompt files are written by the runtime just
        before the start (``LaunchSpec.before``: off the event loop on the host)."""
        prompt = build_prompt(self.prompt_context(project))
        spec = build_launch(
            self.agent.config.harness.command, self.inside, self.template.env, prompt
        )
        template = self.template
        return replace(
            spec,
            cwd=template.cwd,
            isolation=template.isolation,
            tmp=template.tmp,
            static=template.static,
            reach=template.reach,
            before=functools.partial(self._write_prompt_files, prompt, system_prompt),
        )


async def plan_run(
    project: Project,
    store: Store,
    run: Run,
    agent: Agent,
    workdir: Path,
    *,
    link: AgentLink | None,
    credentials: CredentialStore | None = None,
    then: Callable[[], None] | None = None,
    ids_key: str | None = None,
) -> RunPlan:
    """Resolve the agent's credentials (a missing one is a RunError naming the fix), pick
    its runtime, and build the environment and isolation of ``run``.

    What touches the disk (the run's directory, its credential links and scratch
    directory, the credential store's files) is done in a preparation thread
    (`in_prepare_thread`), not on the event loop, and ``then`` (the run log's open)
    right after it in the same thread; only the run secret (the gateway's table and a
    store write) is issued on the loop.

    ``ids_key`` (a warm workspace's name) is what a sandboxed run's uid is derived from
    instead of the run's id: every run in one warm workspace, and the hooks that
    prepared it, are the same uid, which owns the workspace's files.
    """
    made = await in_prepare_thread(
        _prepare_files, project, run, agent, workdir, link, credentials, then, ids_key
    )
    env = made.env
    model_keys: dict[str, str] = {}
    if made.builtin:
        for name in MODEL_KEY_VARIABLES.values():
            if name in env:
                model_keys[name] = env.pop(name)
        for credential in made.implied:
            model_keys.update(credential.env)
    env.update(
        await _gateway_environment(store, run, made.inside, env.get("PATH", ""), link, agent)
    )
    if made.tmp is not None:
        env.setdefault("TMPDIR", str(made.tmp))  # an agent's own [harness.env] TMPDIR wins
    template = LaunchSpec(
        argv=(),
        cwd=made.inside.workdir,
        env=env,
        isolation=made.isolation,
        tmp=made.tmp,
        static=made.static,
        reach=made.reach,
    )
    loaded = made.loaded
    given = loaded if not made.builtin else loaded + made.implied
    values = tuple(secret for credential in given for secret in credential.secrets())
    if "CORRAL_RUN_SECRET" in env:  # an agent that prints its own secret: redacted too
        values += (env["CORRAL_RUN_SECRET"],)
    if link is not None:  # and what it sends the gateway (status text, return value)
        link.protect(run.id, values)
    return RunPlan(
        run, agent, made.files, made.runtime, template, made.inside, loaded, values, model_keys
    )


@dataclass
class _Made:
    """What `_prepare_files` made and read for a run (in the preparation thread)."""

    files: RunFiles
    inside: RunFiles
    runtime: Runtime
    builtin: bool
    loaded: tuple[LoadedCredential, ...]
    implied: tuple[LoadedCredential, ...]
    #: The environment so far: inherited, the agent's, corral's, the credentials'.
    env: dict[str, str]
    isolation: Isolation | None
    tmp: Path | None
    static: StaticView
    reach: tuple[Path, ...]


def _prepare_files(
    project: Project,
    run: Run,
    agent: Agent,
    workdir: Path,
    link: AgentLink | None,
    credentials: CredentialStore | None,
    then: Callable[[], None] | None,
    ids_key: str | None = None,
) -> _Made:
    """The blocking part of `plan_run`: directories, links, the credential store's reads."""
    files = RunFiles.under(workdir)
    sandboxed = agent.config.runtime.type == "sandbox"
    ids = run_ids(project, run, ids_key) if sandboxed else None
    _private_run_dir(project, files, ids)
    runtime = runtime_for(agent.config.runtime.type)
    store_of_creds = credentials or CredentialStore()
    loaded = tuple(store_of_creds.resolve(list(agent.config.credentials)))
    # The keys the agent's models imply; an absent one is left out (a local model server
    # may need none; `corral doctor` names it). A coding-agent CLI reads its key from the
    # environment; the built-in harness keeps it in the scheduler.
    implied = tuple(store_of_creds.resolve(implied_keys(project, agent), missing_ok=True))
    builtin = agent.config.harness.type == "builtin"
    if not builtin:
        loaded += implied
    inside = RunFiles.under(SANDBOX_WORKDIR) if sandboxed else files
    env = {**base_environment(), **_corral_environment(project, run, agent, inside)}
    if sandboxed:
        for credential in loaded:
            env.update(credential.env_for(SANDBOX_CREDENTIALS))
    else:
        for credential in loaded:
            env.update(credential.env_for(_link_credentials(files, credential)))
    isolation = (
        _isolation(project, agent, files, loaded, link, store_of_creds.root, ids)
        if sandboxed
        else None
    )
    tmp, static, reach = _scratch(project, agent, files, loaded)
    if then is not None:
        then()
    return _Made(
        files, inside, runtime, builtin, loaded, implied, env, isolation, tmp, static, reach
    )


def implied_keys(project: Project, agent: Agent) -> list[str]:
    """The model key credentials ``agent``'s models (and preset) imply that it does not
    name itself."""
    pairs = key_providers(project.config.models, agent.config)
    return [str(ref) for ref in implied_credentials(pairs, agent.config.credentials)]


def _scratch(
    project: Project,
    agent: Agent,
    files: RunFiles,
    loaded: tuple[LoadedCredential, ...],
) -> tuple[Path | None, StaticView, tuple[Path, ...]]:
    """The run's /app/static view (both runtimes) and, on the host, its own scratch
    directory: TMPDIR always, and its /tmp where the host runtime can mount one; with
    what else the run needs on the host (its agent folder, shared/, the in-run commands'
    interpreter, its credentials), which a private /tmp must not hide (runtime._private).
    The view is no directory: the runtimes mount it from the sources found here.
    """
    static = make_static(agent.dir, project.shared_dir)
    if agent.config.runtime.type == "sandbox":
        return None, static, ()
    tmp = files.meta / "tmp"
    _private_dir(tmp)  # in the run's .corral, made private just before
    reach = [agent.dir, project.shared_dir, Path(sys.executable)]
    reach += [credential.directory for credential in loaded]
    return tmp, static, tuple(reach)


def run_ids(project: Project, run: Run, key: str | None = None) -> tuple[int, int] | None:
    """The host uid and gid a sandboxed run gets when corral runs as root (else None:
    it runs as corral's user). See RUN_ID_BASE. The uid is derived from ``key`` (a warm
    workspace's name) when given, else from the run's id."""
    if os.geteuid() != 0:
        return None
    return _in_range(key or run.id), _in_range(str(project.root.resolve()))


def _in_range(text: str) -> int:
    digest = hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()
    return RUN_ID_BASE + int.from_bytes(digest[:8], "big") % RUN_ID_SPAN


def _gid(iso: Isolation) -> int:
    return iso.gid if iso.gid is not None else -1


def _private_run_dir(project: Project, files: RunFiles, ids: tuple[int, int] | None) -> None:
    """The run's directory and its corral files: private (0700, 0600), from ``.corral``
    down; with ``ids``, the run's own (it works and writes there as that uid).

    No file is made here: ``env.sh`` is made (0600) by the run's first ``setenv``, and
    the prompt files once the prompt is assembled.
    """
    private_dirs(files.meta, project.root / ".corral")
    if ids is not None:
        for path in (files.workdir, files.meta):
            os.chown(path, *ids)


def _private_dir(path: Path) -> None:
    """``path`` made (0700 from the start) or made private, in a directory that is."""
    try:
        os.mkdir(path, STATE_DIR_MODE)
    except FileExistsError:
        pass
    if os.stat(path).st_mode & 0o7777 != STATE_DIR_MODE:
        os.chmod(path, STATE_DIR_MODE)


def _corral_environment(
    project: Project, run: Run, agent: Agent, inside: RunFiles
) -> dict[str, str]:
    return {
        **dict(agent.config.harness.env),
        "CORRAL_RUN_ID": run.id,
        "CORRAL_AGENT": agent.name,
        "CORRAL_AGENT_DIR": str(agent.dir),
        "CORRAL_SHARED_DIR": str(project.shared_dir),
        "CORRAL_TRIGGER": run.trigger.value,
        "CORRAL_ITEM_ID": str(run.item_id),
        "CORRAL_ATTEMPT": str(run.attempt),
        "CORRAL_WORKDIR": str(inside.workdir),
        **_board_environment(run),
    }


def _board_environment(run: Run) -> dict[str, str]:
    """A run the task board started (a ``[[tasks]]`` trigger): its filter, which
    ``task-claim`` without ``--project``, ``--label`` or ``--min-priority`` uses."""
    detail = run.trigger_detail or {}
    if detail.get("source") != "tasks":
        return {}
    labels = detail.get("labels") or []
    return {
        "CORRAL_TASK_PROJECT": str(detail.get("project", "")),
        "CORRAL_TASK_LABELS": ",".join(str(label) for label in labels),
        "CORRAL_TASK_MIN_PRIORITY": str(detail.get("minPriority", 1)),
    }


def _link_credentials(files: RunFiles, credential: LoadedCredential) -> Path:
    """On the host, a run's credentials are symlinks under ``.corral/credentials/`` in
    its directory (only the ones it names); return that root."""
    root = files.meta / "credentials"
    link = root / credential.ref.type / credential.ref.instance
    private_dirs(link.parent, root)
    if not link.is_symlink():
        link.symlink_to(credential.directory, target_is_directory=True)
    return root


async def _gateway_environment(
    store: Store, run: Run, inside: RunFiles, path: str, link: AgentLink | None, agent: Agent
) -> dict[str, str]:
    """What the in-run commands need: the gateway, the run's secret, the setenv file.

    The secret's hash is in the store before the run starts: an agent may call the
    gateway at once (a scheduler's claim stored it already; otherwise it is stored here).
    A run without a network (``network = "none"``) reaches the gateway over its Unix
    socket.
    """
    if link is None:
        return {}
    secret = link.take(run.id)  # stored by the claim (Scheduler._dispatch)
    if secret is None:
        secret, ref = link.issue(run.id, run.agent, run.trigger.value)
        await store.set_run_secret(run.id, ref.secret_hash)
    env = {"CORRAL_RUN_SECRET": secret, "CORRAL_ENV_FILE": str(inside.env_file)}
    offline = agent.config.runtime.network == "none"
    url = link.unix_url if offline and link.unix_url else link.gateway_url
    if url:
        env["GATEWAY_URL"] = url
    if link.bin_dir is not None:
        env["PATH"] = f"{link.bin_dir}:{path}" if path else str(link.bin_dir)
        env["BASH_ENV"] = str(bash_init_path(link.bin_dir))
    return env


def _isolation(
    project: Project,
    agent: Agent,
    files: RunFiles,
    credentials: tuple[LoadedCredential, ...],
    link: AgentLink | None,
    credentials_root: Path,
    ids: tuple[int, int] | None,
) -> Isolation:
    """The sandbox's view: every corral state corral knows of hidden (this project's, its
    store, the corral home with the credential store, the other projects run from this
    home); the run's own directory writable under /tmp; what it needs bound read-only;
    its own credentials copied in. With ``ids`` the run is its own uid as well, which
    keeps it out of every private file of the host however the projects are laid out."""
    hide = _state_paths(project, credentials_root)
    binds = [Bind(files.workdir, SANDBOX_WORKDIR, writable=True)]
    for content in (agent.dir, project.shared_dir):
        if content.is_dir():
            _refuse_state(content, hide)
            binds.append(Bind(content, content))
    if link is not None and link.bin_dir is not None:
        binds.append(Bind(link.bin_dir, link.bin_dir))
        if ids is not None:
            binds += _interpreter()
    if link is not None and link.unix_url and agent.config.runtime.network == "none":
        socket_path = Path(link.unix_url.removeprefix("unix:"))
        if ids is not None:  # the project's runs (its gid) may connect; it is in .corral
            os.chown(socket_path, -1, ids[1])
            os.chmod(socket_path, 0o660)
        binds.append(Bind(socket_path, socket_path, writable=True))
    data = [
        DataFile(SANDBOX_CREDENTIALS / cred.ref.type / cred.ref.instance / name, value.encode())
        for cred in credentials
        for name, value in sorted(cred.values.items())
    ]
    memory = agent.config.runtime.memory
    return Isolation(
        binds=tuple(binds),
        hide=tuple(hide),
        network=agent.config.runtime.network != "none",
        memory_bytes=None if memory is None else memory_bytes(memory),
        cpus=agent.config.runtime.cpus,
        uid=None if ids is None else ids[0],
        gid=None if ids is None else ids[1],
        files=tuple(data),
    )


def _state_paths(project: Project, credentials_root: Path) -> list[Path]:
    """What a sandbox hides: the project's ``.corral``, its SQLite store wherever it is
    (with its -wal, -shm and -journal files), the corral home and the credential store,
    and the state of every other project started from this corral home."""
    state = project.root / ".corral"
    paths = [state, corral_home(), credentials_root]
    if project.state_url.startswith("sqlite:///"):
        db = Path(project.state_url.removeprefix("sqlite:///"))
        if not db.is_relative_to(state):
            paths += [db.with_name(db.name + suffix) for suffix in ("", "-wal", "-shm", "-journal")]
    paths += known_state_dirs(state)
    return [path.resolve() for path in paths if path.is_absolute()]


def _refuse_state(content: Path, hide: Sequence[Path]) -> None:
    """RunError when a project folder bound into the sandbox is, holds or is inside
    corral's state (``shared`` a symlink to ``.corral``, say)."""
    real = content.resolve()
    for path in hide:
        if real == path or path in real.parents or real in path.parents:
            shown = "" if real == content else f" resolves to {real}, which"
            raise RunError(
                f"{content}{shown} is or holds corral's state ({path}): a sandboxed run "
                "cannot have it; point it at a directory outside the project's .corral "
                "and the corral home"
            )


def _interpreter() -> list[Bind]:
    """The Python installation that runs the in-run commands, when a run of another uid
    could not reach it where it is (under /root, say): bound at its own path."""
    prefix = Path(sys.base_prefix).resolve()
    executable = Path(os.path.realpath(sys.executable))
    for directory in executable.parents:
        try:
            if not directory.stat().st_mode & stat.S_IXOTH:
                return [Bind(prefix, prefix)]
        except OSError:
            break
    return []


#: Where the state directories of the projects run from this corral home are listed.
_KNOWN = "state-dirs"
_registered: set[Path] = set()


def known_state_dirs(state: Path) -> list[Path]:
    """The state directories of the projects run from this corral home (``state`` added).

    A sandbox hides them all: when corral does not run as root the runs are corral's
    user, and hiding is what keeps them out of the other projects' state.
    """
    listing = corral_home() / _KNOWN
    try:
        known = [Path(line) for line in listing.read_text().splitlines() if line.strip()]
    except OSError:
        known = []
    real = state.resolve()
    alive = [path for path in known if path.is_absolute() and path.is_dir()]
    if real not in known and real not in _registered:
        # Listed anew, without the projects that are gone (replaced whole: a concurrent
        # writer's entry may be lost, and is listed again by that project's next run).
        lines = "".join(f"{path}\n" for path in dict.fromkeys([*alive, real]))
        temp = listing.with_name(f".{_KNOWN}.{os.getpid()}.tmp")
        try:
            private_dirs(listing.parent, listing.parent)
            fd = open_private(temp, os.O_WRONLY | os.O_TRUNC)
            with os.fdopen(fd, "w") as handle:
                handle.write(lines)
            os.replace(temp, listing)
            _registered.add(real)
        except OSError:
            pass  # a read-only home: the other hides still hold
    return [path for path in alive if path != real]


_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def memory_bytes(text: str) -> int:
    """``"512m"`` -> 536870912: a ``[runtime] memory`` size in bytes (binary units)."""
    match = re.fullmatch(r"([1-9][0-9]*)([kmgt]?)", text.strip().lower())
    if match is None:
        raise ValueError(f"not a memory size: {text!r}")
    return int(match.group(1)) * _UNITS[match.group(2)]
