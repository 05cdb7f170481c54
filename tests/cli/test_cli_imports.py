"""The CLI reaches the gateway only to serve it (the `cli-no-gateway` import-linter
contract): with every command registered, no gateway module, FastAPI or uvicorn is
loaded, so a command such as `corral pause` starts without them."""

from __future__ import annotations

import json
import subprocess
import sys

_PROBE = """
import json, sys
from corral.cli import commands  # registers every subcommand, as `corral` does
print(json.dumps(sorted(
    m for m in sys.modules
    if m.startswith("corral.gateway") or m.split(".")[0] in ("fastapi", "uvicorn", "starlette")
)))
"""


def test_every_command_imports_without_the_gateway() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(out.stdout) == []


def test_the_operator_actions_are_the_engines() -> None:
    """The CLI's actions are the ones the control API calls: one module, in corral.engine."""
    from corral.cli.commands import control
    from corral.engine import actions
    from corral.gateway import control as control_api

    assert vars(control)["actions"] is actions
    assert vars(control_api)["actions"] is actions
