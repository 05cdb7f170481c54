"""`corral doctor`: every credential a project needs that is not stored (or not usable).

Needed are, for each agent, the credentials it names, the key credentials its models
imply (``openai_key`` for an OpenAI model; see :mod:`corral.credentials.models`), and for
each webhook source its agents listen to, the source's signing secret. Each problem is
listed with the exact command that fixes it.

A credential an agent names, or a source's secret, that is missing fails the check: runs
of that agent (deliveries of that source) fail without it. A missing implied model key
only warns: a local model server may need none, and a run goes ahead without it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import corral.doctor as doctor
from corral.credentials import (
    CredentialError,
    CredentialRef,
    CredentialStore,
    implied_credentials,
    parse_ref,
)
from corral.project import Project
from corral.project.presets import key_providers
from corral.webhooks.delivery import signing_credential

__all__ = ["Need", "check_credentials", "needed_credentials"]


@dataclass
class Need:
    """One credential the project needs, and who needs it."""

    ref: CredentialRef
    #: "named" (an agent lists it), "model" (implied by its models or harness preset),
    #: "webhook" (a source's signing credential)
    why: str
    users: list[str] = field(default_factory=list)

    @property
    def required(self) -> bool:
        return self.why != "model"

    def describe(self) -> str:
        users = ", ".join(self.users)
        if self.why == "webhook":
            return f"the signing secret of {users}"
        agents = f"agent{'s' if len(self.users) > 1 else ''} {users}"
        return f"the model key of {agents}" if self.why == "model" else f"named by {agents}"


def _agent_needs(project: Project) -> Iterator[tuple[CredentialRef, str, str]]:
    for name, agent in project.agents.items():
        for text in agent.config.credentials:
            try:
                yield parse_ref(text), "named", name
            except CredentialError:
                continue  # the project check reports a malformed name
        pairs = key_providers(project.config.models, agent.config)
        for ref in implied_credentials(pairs, agent.config.credentials):
            yield ref, "model", name


def _source_needs(project: Project) -> Iterator[tuple[CredentialRef, str, str]]:
    used = {t.source for a in project.agents.values() for t in a.config.webhooks}
    for name in sorted(used):
        source = project.config.webhooks.get(name)
        if source is None or source.allow_unsigned or source.credential is None:
            continue
        try:
            found = signing_credential(source)
        except CredentialError:
            continue  # the project check reports a malformed name
        if found is not None:
            yield found[0], "webhook", f"[webhooks.{name}]"


def needed_credentials(project: Project) -> list[Need]:
    """Every credential ``project`` needs, once each, in the order first needed."""
    needs: dict[CredentialRef, Need] = {}
    for ref, why, user in [*_agent_needs(project), *_source_needs(project)]:
        need = needs.setdefault(ref, Need(ref, why))
        if need.why == "model" and why != "model":
            need.why = why  # named outright as well: no longer optional
        if user not in need.users:
            need.users.append(user)
    return list(needs.values())


def _unsigned_sources(project: Project) -> list[str]:
    used = {t.source for a in project.agents.values() for t in a.config.webhooks}
    return [
        name
        for name in sorted(used)
        if (source := project.config.webhooks.get(name)) is not None
        and not source.allow_unsigned
        and source.credential is None
    ]


def check_credentials(project: Project, store: CredentialStore | None = None) -> doctor.Check:
    """One check: ok when every needed credential is stored and usable."""
    store = store or CredentialStore()
    needs = needed_credentials(project)
    lines: list[str] = []
    fixes: list[str] = []
    failed = False
    for need in needs:
        try:
            store.resolve([str(need.ref)])
        except CredentialError as exc:
            failed = failed or need.required
            for problem in exc.problems:
                fix = problem.fix or f"add it with `{need.ref.add_command}`"
                lines.append(f"  {need.ref} ({need.describe()}): {problem.message}; {fix}")
                fixes.append(fix)
    for name in _unsigned_sources(project):
        failed = True
        lines.append(f"  [webhooks.{name}] has no signing secret: its deliveries are refused")
        fixes.append(f'set credential = "INSTANCE" in [webhooks.{name}] (or allowUnsigned = true)')
    if not lines:
        return doctor.Check("credentials", "ok", f"{len(needs)} needed, all stored in {store.root}")
    detail = f"{len(lines)} problem(s) (store: {store.root}):\n" + "\n".join(lines)
    fix = fixes[0] if len(fixes) == 1 else "run the command given on each line above"
    return doctor.Check("credentials", "fail" if failed else "warn", detail, fix)
