"""Where a run executes: `host` (a process group) or `sandbox` (bubblewrap)."""

from corral.runtime._base import Bind, DataFile, Isolation, LaunchSpec, Process, Runtime, Sink
from corral.runtime._children import in_prepare_thread
from corral.runtime.host import HostRuntime
from corral.runtime.sandbox import SandboxRuntime

__all__ = [
    "Bind",
    "DataFile",
    "HostRuntime",
    "Isolation",
    "LaunchSpec",
    "Process",
    "Runtime",
    "SandboxRuntime",
    "Sink",
    "in_prepare_thread",
    "runtime_for",
]


def runtime_for(kind: str) -> Runtime:
    """The runtime named in an agent's ``[runtime] type``.

    ``sandbox`` checks once per process that bubblewrap works here, and raises
    RunError saying what to install or why it fails otherwise.
    """
    if kind == "host":
        return HostRuntime()
    if kind == "sandbox":
        return SandboxRuntime()
    from corral.errors import RunError

    raise RunError(
        f"runtime {kind!r} is not available in this version of corral; "
        'set [runtime] type = "host" or "sandbox" in the agent\'s config.toml'
    )
