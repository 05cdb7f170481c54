"""An agent's pool settings from its validated configuration."""

from __future__ import annotations

from corral.autoscale._model import Settings
from corral.project import ScaleConfig

__all__ = ["settings_for"]


def settings_for(scale: int | ScaleConfig | None, default: int = 1) -> Settings:
    """``scale = N`` (or no ``scale``: the project's ``defaultAgentScale``) is a fixed
    pool of N; a ``[scale]`` table is read as written."""
    if scale is None:
        return Settings.fixed(default)
    if isinstance(scale, int):
        return Settings.fixed(scale)
    return Settings(
        min=scale.min,
        max=scale.max,
        target=scale.target,
        scale_up=scale.scale_up,
        scale_down=scale.scale_down,
        stabilization=float(scale.stabilization),
        window=float(scale.window),
        startup=float(scale.startup),
        policy=scale.policy,
        warm=scale.warm,
    )
