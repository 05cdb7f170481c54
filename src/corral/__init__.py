"""corral: an orchestrator for fleets of AI coding agents."""

from corral._version import __version__
from corral.errors import (
    ConfigError,
    ConfigIssue,
    CorralError,
    RunError,
    StoreError,
)

__all__ = [
    "ConfigError",
    "ConfigIssue",
    "CorralError",
    "RunError",
    "StoreError",
    "__version__",
]
