"""What connects running agents to the gateway: their secrets, the URL, change notices.

Each run gets a random secret in its environment (``CORRAL_RUN_SECRET``); the store keeps
only its SHA-256 (``corral_runs.secret_hash``), and so does this registry. The gateway
resolves a request's secret here (or, for a run this process did not start, in the
store) and compares the hashes in constant time.

``Changes`` wakes requests that wait (``rlock --wait``, ``al-subagent-wait``) as soon as
something they wait for may have happened: a lock released, a run ended, a call answered.
It is the store's hub (``store.changes``, corral/store/_notify.py): on PostgreSQL the
changes of every process sharing the store arrive there too (LISTEN/NOTIFY); on SQLite
only this process's do, and other processes' changes are seen by the waiters' polls.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from corral.credentials.redact import MARKER, Redactor
from corral.store._notify import Changes

__all__ = ["AgentLink", "Changes", "RunRef", "hash_secret"]

#: ``al-exit`` handler: stop run ``run_id`` so that it ends with ``code``.
ExitHandler = Callable[[str, int], Awaitable[bool]]
#: ``al-shutdown`` handler: kill run ``run_id`` now, for ``reason``.
ShutdownHandler = Callable[[str, str], Awaitable[bool]]


def hash_secret(secret: str) -> str:
    """The hex SHA-256 of a run secret: what the store and the registry keep."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class RunRef:
    """A run that may talk to the gateway: who it is, as its secret proves."""

    run_id: str
    agent: str
    trigger: str
    secret_hash: str
    #: The secret the request presented (never shown; redacted from what the run sends).
    secret: str = field(default="", repr=False, compare=False)


@dataclass
class AgentLink:
    """Run secrets, the gateway URL runs are given, and change notices; one per process.

    ``bin_dir`` holds the in-run commands (``corral.agentcmd``), put first on every run's
    PATH. ``on_exit`` is set by whoever executes runs, so ``al-exit`` can end one.
    """

    gateway_url: str | None
    bin_dir: Path | None = None
    #: The gateway over a Unix socket (``unix:/path``), for runs without a network.
    unix_url: str | None = None
    changes: Changes = field(default_factory=Changes)
    on_exit: ExitHandler | None = None
    on_shutdown: ShutdownHandler | None = None
    on_queued: Callable[[], None] | None = None
    _runs: dict[str, RunRef] = field(default_factory=dict)
    _by_run: dict[str, str] = field(default_factory=dict)
    _redactors: dict[str, Redactor] = field(default_factory=dict)
    #: Secrets made ahead of a claim and not given to any run: (hash, secret).
    _spare: list[tuple[str, str]] = field(default_factory=list)
    #: Secrets whose hash a claim stored with its run, until the run's start takes them.
    _claimed: dict[str, str] = field(default_factory=dict)

    def issue(self, run_id: str, agent: str, trigger: str) -> tuple[str, RunRef]:
        """A fresh secret for a run about to start, and its registered reference."""
        return self._register(secrets.token_urlsafe(32), run_id, agent, trigger)

    def _register(self, secret: str, run_id: str, agent: str, trigger: str) -> tuple[str, RunRef]:
        ref = RunRef(run_id, agent, trigger, hash_secret(secret))
        self._runs[ref.secret_hash] = ref
        self._by_run[run_id] = ref.secret_hash
        return secret, ref

    # -- secrets stored by the claim itself ------------------------------------------------

    def spare_hashes(self, n: int) -> list[str]:
        """The hashes of ``n`` secrets made ahead for the runs a claim may start
        (``Store.claim(secret_hashes=…)``): the store keeps each with its run in the
        claim, so a run's secret costs no write of its own. Secrets a claim did not use
        are kept for the next one; none has been given to anyone."""
        while len(self._spare) < n:
            secret = secrets.token_urlsafe(32)
            self._spare.append((hash_secret(secret), secret))
        return [digest for digest, _ in self._spare[:n]]

    def claimed(self, runs: Sequence[tuple[str, str, str]]) -> None:
        """A claim that was given ``spare_hashes`` returned these runs (run id, agent,
        trigger), in item id order: the i-th run holds the i-th hash. Each is registered
        now and its secret kept for ``take``."""
        used, self._spare = self._spare[: len(runs)], self._spare[len(runs) :]
        for (run_id, agent, trigger), (_, secret) in zip(runs, used, strict=False):
            self._register(secret, run_id, agent, trigger)
            self._claimed[run_id] = secret

    def claim_failed(self) -> None:
        """A claim given ``spare_hashes`` failed: it may have committed before the
        failure was seen, so none of those hashes is offered again."""
        self._spare.clear()

    def adopt(self, run_id: str, agent: str, trigger: str, secret: str) -> None:
        """A secret made ahead elsewhere whose hash a claim stored with ``run_id`` (a
        runner's, offered with its request for work): registered, and kept for ``take``."""
        self._register(secret, run_id, agent, trigger)
        self._claimed[run_id] = secret

    def take(self, run_id: str) -> str | None:
        """The secret a claim stored for ``run_id`` (once), or None when it stored none
        (then ``issue`` one and store its hash)."""
        return self._claimed.pop(run_id, None)

    def protect(self, run_id: str, values: Iterable[str]) -> None:
        """Values a run must not show anyone: its credentials and its own secret.

        The run log redacts them already; ``redact`` does the same for what the run sends
        the gateway (``al-status`` text, ``al-return`` values), which operators see in
        `corral stat`, the control API and the dashboard.
        """
        self._redactors[run_id] = Redactor(values)

    def redact(self, run: RunRef, text: str) -> str:
        """``text`` from ``run`` with its protected values, and the secret it presented,
        replaced by ``[REDACTED]``."""
        kept = self._redactors.get(run.run_id)
        if kept is not None:
            text = kept.redact(text)
        if run.secret and run.secret in text:
            text = text.replace(run.secret, MARKER.decode())
        return text

    def revoke(self, run_id: str) -> None:
        """The run ended: its secret opens nothing any more."""
        self._redactors.pop(run_id, None)
        self._claimed.pop(run_id, None)
        digest = self._by_run.pop(run_id, None)
        if digest is not None:
            self._runs.pop(digest, None)

    def lookup(self, secret: str) -> RunRef | None:
        """The live run this process started whose secret is ``secret``, if any."""
        digest = hash_secret(secret)
        ref = self._runs.get(digest)
        if ref is None or not hmac.compare_digest(ref.secret_hash, digest):
            return None
        return ref
