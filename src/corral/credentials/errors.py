"""The errors of the credential store: every problem found, each with the command that fixes it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from corral.errors import RunError, UsageError

__all__ = ["CredentialError", "CredentialProblem", "CredentialUsageError"]


@dataclass(frozen=True)
class CredentialProblem:
    """One credential that cannot be used: which, why, and what to do (naming the command)."""

    ref: str
    message: str
    fix: str | None = None

    def __str__(self) -> str:
        text = f"{self.ref}: {self.message}"
        return text if self.fix is None else f"{text}; {self.fix}"


class CredentialError(RunError):
    """Credentials are missing, malformed or unsafe; ``problems`` lists every one of them.

    A :class:`RunError`: a run whose credentials cannot be given to it does not start."""

    def __init__(self, problems: Sequence[CredentialProblem]) -> None:
        self.problems = tuple(problems)
        super().__init__(self.render())

    def render(self) -> str:
        if len(self.problems) == 1:
            return str(self.problems[0])
        lines = [f"{len(self.problems)} credentials cannot be used:"]
        lines += [f"  {problem}" for problem in self.problems]
        return "\n".join(lines)


class CredentialUsageError(CredentialError, UsageError):
    """A credential command or call was given something wrong (unknown type, empty value...).

    A :class:`UsageError` too, so the command line exits with the usage code.
    """

    def __init__(self, ref: str, message: str, fix: str | None = None) -> None:
        super().__init__([CredentialProblem(ref, message, fix)])
