"""The sandbox tests need a working bubblewrap.

Without one they are skipped, unless ``CORRAL_REQUIRE_SANDBOX=1`` makes that a
failure (as ``CORRAL_REQUIRE_POSTGRES=1`` does for PostgreSQL).
"""

from __future__ import annotations

import os

import pytest

from corral.errors import RunError
from corral.runtime.sandbox import SandboxRuntime, SandboxSupport, sandbox_support


def require_sandbox() -> SandboxSupport:
    try:
        return sandbox_support()
    except RunError as exc:
        if os.environ.get("CORRAL_REQUIRE_SANDBOX") == "1":
            pytest.fail(f"{exc} (CORRAL_REQUIRE_SANDBOX=1 demands a working sandbox)")
        pytest.skip(str(exc))


@pytest.fixture
def sandbox() -> SandboxRuntime:
    return SandboxRuntime(require_sandbox())
