"""Real random values shaped like the credentials they stand for."""

from __future__ import annotations

import base64
import secrets
import shutil
import subprocess
from pathlib import Path


def token(prefix: str = "ghp_") -> str:
    return prefix + secrets.token_urlsafe(27)


def fake_key() -> str:
    """A private-key-shaped value: header, random base64 lines of 70 characters, footer."""
    body = base64.b64encode(secrets.token_bytes(280)).decode()
    lines = [body[i : i + 70] for i in range(0, len(body), 70)]
    return (
        "-----BEGIN OPENSSH PRIVATE KEY-----\n"
        + "\n".join(lines)
        + "\n-----END OPENSSH PRIVATE KEY-----\n"
    )


def ssh_key(directory: Path) -> Path:
    """A real ed25519 key made by ssh-keygen (the test is skipped without it)."""
    import pytest

    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen is not installed")
    path = directory / "id_test"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test", "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path
