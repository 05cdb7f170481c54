"""Where a run executes: `host` now; `sandbox` (bubblewrap) follows."""

from corral.runtime._base import LaunchSpec, Process, Runtime, Sink
from corral.runtime.host import HostRuntime

__all__ = ["HostRuntime", "LaunchSpec", "Process", "Runtime", "Sink", "runtime_for"]


def runtime_for(kind: str) -> Runtime:
    """The runtime named in an agent's ``[runtime] type``."""
    if kind == "host":
        return HostRuntime()
    from corral.errors import RunError

    raise RunError(
        f"runtime {kind!r} is not available in this version of corral; "
        'set [runtime] type = "host" in the agent\'s config.toml'
    )
