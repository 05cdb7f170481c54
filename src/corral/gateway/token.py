"""The operator token that guards the control API."""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

__all__ = ["TOKEN_ENV", "operator_token", "token_matches"]

TOKEN_ENV = "CORRAL_OPERATOR_TOKEN"


def operator_token(root: Path) -> str:
    """``$CORRAL_OPERATOR_TOKEN``, else the project's token file (made on first use, mode 0600)."""
    from_env = os.environ.get(TOKEN_ENV)
    if from_env:
        return from_env
    path = root / ".corral" / "operator-token"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token


def token_matches(given: str | None, expected: str) -> bool:
    """Constant-time comparison; a missing token never matches."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())
