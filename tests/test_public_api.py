"""The public surface is explicit: these names, and no others, are exported."""

from __future__ import annotations

import corral
import corral.harness
import corral.runtime


def test_top_level_exports() -> None:
    assert sorted(corral.__all__) == [
        "ConfigError",
        "ConfigIssue",
        "CorralError",
        "RunError",
        "StoreError",
        "__version__",
    ]


def test_runtime_and_harness_exports() -> None:
    assert sorted(corral.runtime.__all__) == [
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
    assert sorted(corral.harness.__all__) == [
        "PromptContext",
        "RunFiles",
        "base_environment",
        "build_launch",
        "build_prompt",
    ]


def test_every_exception_is_a_corral_error() -> None:
    from corral import errors

    for name in errors.__all__:
        obj = getattr(errors, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, errors.CorralError), name
