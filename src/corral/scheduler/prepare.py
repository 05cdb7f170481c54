"""Everything a run needs before its agent starts, gathered in one place: a ``RunPlan``.

The plan holds the run's files, its environment (only what the run should see: a short
inherited list, the agent's ``[harness] env``, corral's variables, the gateway's, the
credentials' own), where the run lives in its runtime (for the sandbox: the working
directory under /tmp, credentials at /credentials, the project's state hidden), and the
launch template every process of the run (hooks, dynamic context, the agent) starts from.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from corral.agentcmd import bash_init_path
from corral.credentials import CredentialStore, LoadedCredential, credential_context
from corral.harness import PromptContext, RunFiles, base_environment, build_launch, build_prompt
from corral.harness.prompt import skills_used
from corral.project import Agent, Project
from corral.runtime import Bind, Isolation, LaunchSpec, Runtime, runtime_for
from corral.scheduler.agentlink import AgentLink
from corral.store import Run, Store

__all__ = [
    "MODEL_KEY_VARIABLES",
    "SANDBOX_CREDENTIALS",
    "SANDBOX_WORKDIR",
    "RunPlan",
    "memory_bytes",
    "plan_run",
]

#: The variable holding each provider's API key (from a credential: ``anthropic_key``,
#: ``openai_key``, or ``env:NAME``). For a built-in harness run it stays in the scheduler.
MODEL_KEY_VARIABLES: Mapping[str, str] = {
    "anthropic": "ANTHROPIC_API_KEY",
    "openai": "OPENAI_API_KEY",
    "openrouter": "OPENROUTER_API_KEY",
    "groq": "GROQ_API_KEY",
    "xai": "XAI_API_KEY",
    "mistral": "MISTRAL_API_KEY",
    "google": "GEMINI_API_KEY",
    "custom": "CUSTOM_API_KEY",
}

#: Where a sandboxed run works, and where it finds its credentials.
SANDBOX_WORKDIR = Path("/tmp/work")
SANDBOX_CREDENTIALS = Path("/credentials")


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
        """Assemble the prompt, write both prompt files, return the prompt."""
        prompt = build_prompt(self.prompt_context(project))
        self.files.write(prompt, system_prompt)
        return prompt

    def process(self, argv: Sequence[str], stdin: bytes | None = None) -> LaunchSpec:
        """Any process of the run: ``argv`` in its place, environment and isolation."""
        return replace(self.template, argv=tuple(argv), stdin=stdin)

    def launch(self, project: Project, system_prompt: str) -> LaunchSpec:
        """Write the prompt files and return the agent's own launch."""
        prompt = self.write_prompt(project, system_prompt)
        spec = build_launch(
            self.agent.config.harness.command, self.inside, self.template.env, prompt
        )
        return replace(spec, cwd=self.template.cwd, isolation=self.template.isolation)


async def plan_run(
    project: Project,
    store: Store,
    run: Run,
    agent: Agent,
    workdir: Path,
    *,
    link: AgentLink | None,
    credentials: CredentialStore | None = None,
) -> RunPlan:
    """Resolve the agent's credentials (a missing one is a RunError naming the fix), pick
    its runtime, and build the environment and isolation of ``run``."""
    files = RunFiles.under(workdir)
    files.meta.mkdir(parents=True, exist_ok=True)
    sandboxed = agent.config.runtime.type == "sandbox"
    runtime = runtime_for(agent.config.runtime.type)
    store_of_creds = credentials or CredentialStore()
    loaded = tuple(store_of_creds.resolve(list(agent.config.credentials)))
    inside = RunFiles.under(SANDBOX_WORKDIR) if sandboxed else files
    env = {**base_environment(), **_corral_environment(project, run, agent, inside)}
    if sandboxed:
        for credential in loaded:
            env.update(credential.env_for(SANDBOX_CREDENTIALS))
    else:
        for credential in loaded:
            env.update(credential.env_for(_link_credentials(files, credential)))
    model_keys: dict[str, str] = {}
    if agent.config.harness.type == "builtin":
        for name in MODEL_KEY_VARIABLES.values():
            if name in env:
                model_keys[name] = env.pop(name)
    env.update(await _gateway_environment(store, run, inside, env.get("PATH", ""), link, agent))
    isolation = (
        _isolation(project, agent, files, loaded, link, store_of_creds.root) if sandboxed else None
    )
    template = LaunchSpec(argv=(), cwd=inside.workdir, env=env, isolation=isolation)
    values = tuple(secret for credential in loaded for secret in credential.secrets())
    if "CORRAL_RUN_SECRET" in env:  # an agent that prints its own secret: redacted too
        values += (env["CORRAL_RUN_SECRET"],)
    if link is not None:  # and what it sends the gateway (status text, return value)
        link.protect(run.id, values)
    return RunPlan(run, agent, files, runtime, template, inside, loaded, values, model_keys)


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
    }


def _link_credentials(files: RunFiles, credential: LoadedCredential) -> Path:
    """On the host, a run's credentials are symlinks under ``.corral/credentials/`` in
    its directory (only the ones it names); return that root."""
    root = files.meta / "credentials"
    link = root / credential.ref.type / credential.ref.instance
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        link.symlink_to(credential.directory, target_is_directory=True)
    return root


async def _gateway_environment(
    store: Store, run: Run, inside: RunFiles, path: str, link: AgentLink | None, agent: Agent
) -> dict[str, str]:
    """What the in-run commands need: the gateway, the run's secret, the setenv file.

    The secret's hash is in the store before the run starts: an agent may call the
    gateway at once. A run without a network (``network = "none"``) reaches the gateway
    over its Unix socket.
    """
    if link is None:
        return {}
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
) -> Isolation:
    """The sandbox's view: the project's state, other runs and every credential hidden;
    the run's own directory writable under /tmp; what it needs bound read-only."""
    state = project.root / ".corral"
    binds = [Bind(files.workdir, SANDBOX_WORKDIR, writable=True)]
    binds += [Bind(agent.dir, agent.dir), *_if_exists(project.shared_dir)]
    if link is not None and link.bin_dir is not None:
        binds.append(Bind(link.bin_dir, link.bin_dir))
    if link is not None and link.unix_url and agent.config.runtime.network == "none":
        socket_path = Path(link.unix_url.removeprefix("unix:"))
        binds.append(Bind(socket_path, socket_path, writable=True))
    for credential in credentials:
        target = SANDBOX_CREDENTIALS / credential.ref.type / credential.ref.instance
        binds.append(Bind(credential.directory, target))
    memory = agent.config.runtime.memory
    return Isolation(
        binds=tuple(binds),
        hide=(state, credentials_root),
        network=agent.config.runtime.network != "none",
        memory_bytes=None if memory is None else memory_bytes(memory),
        cpus=agent.config.runtime.cpus,
    )


_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def memory_bytes(text: str) -> int:
    """``"512m"`` -> 536870912: a ``[runtime] memory`` size in bytes (binary units)."""
    match = re.fullmatch(r"([1-9][0-9]*)([kmgt]?)", text.strip().lower())
    if match is None:
        raise ValueError(f"not a memory size: {text!r}")
    return int(match.group(1)) * _UNITS[match.group(2)]


def _if_exists(path: Path) -> list[Bind]:
    return [Bind(path, path)] if path.is_dir() else []
