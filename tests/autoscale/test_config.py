"""``[scale]`` in an agent's config.toml: parsed into the pool settings, or refused with
the file, the field and the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.autoscale import Settings, settings_for
from corral.errors import ConfigError
from corral.project import ScaleConfig, load_project

from ..project.helpers import MODELS, agent, write


def _load(tmp_path: Path, config: str):  # type: ignore[no-untyped-def]
    root = write(tmp_path / "p", {"config.toml": MODELS, **agent("dev", config)})
    return load_project(root).agents["dev"]


def test_a_scale_table_is_a_pool_sized_by_its_policy(tmp_path: Path) -> None:
    dev = _load(
        tmp_path,
        'models = ["sonnet"]\n\n[scale]\nmin = 1\nmax = 8\ntarget = 0.5\nscaleUp = 0.8\n'
        'scaleDown = 0.1\nstabilization = 120\nwindow = 600\nstartup = 12\npolicy = "predictive"\n'
        "warm = 2\n",
    )
    assert isinstance(dev.config.scale, ScaleConfig)
    assert settings_for(dev.config.scale) == Settings(
        min=1,
        max=8,
        target=0.5,
        scale_up=0.8,
        scale_down=0.1,
        stabilization=120.0,
        window=600.0,
        startup=12.0,
        policy="predictive",
        warm=2,
    )
    assert dev.effective_scale == 8  # the most that run at once until pools are wired
    keys = {v.key: v.value for v in dev.resolved}
    assert keys["agents.dev.scale.policy"] == "predictive"


def test_warm_workspaces_are_configured_by_hooks_and_the_scale_table(tmp_path: Path) -> None:
    dev = _load(
        tmp_path,
        'models = ["sonnet"]\n[hooks]\nwarm = ["git clone /r ."]\nrefresh = ["git pull"]\n'
        "[scale]\nmax = 4\nwarm = 2\nwarmMaxRuns = 5\nwarmMaxAge = 600\n",
    )
    assert dev.config.hooks.warm == ("git clone /r .",)
    assert dev.config.hooks.refresh == ("git pull",)
    assert isinstance(dev.config.scale, ScaleConfig)
    assert (dev.config.scale.warm, dev.config.scale.warm_max_runs) == (2, 5)
    assert dev.config.scale.warm_max_age == 600
    plain = _load(tmp_path / "q", 'models = ["sonnet"]\n[scale]\nmax = 4\n')
    assert isinstance(plain.config.scale, ScaleConfig)
    assert (plain.config.scale.warm_max_runs, plain.config.scale.warm_max_age) == (20, 3600)
    assert plain.config.hooks.warm == () and plain.config.hooks.refresh == ()


def test_the_defaults_of_a_scale_table(tmp_path: Path) -> None:
    dev = _load(tmp_path, 'models = ["sonnet"]\n[scale]\nmax = 4\n')
    assert settings_for(dev.config.scale) == Settings(min=0, max=4)
    assert Settings(max=4).policy == "reactive"
    assert (Settings().scale_up, Settings().scale_down, Settings().target) == (0.7, 0.2, 0.6)


@pytest.mark.parametrize("written, size", [("scale = 3\n", 3), ("scale = 0\n", 0), ("", 1)])
def test_scale_n_is_still_a_fixed_pool(tmp_path: Path, written: str, size: int) -> None:
    dev = _load(tmp_path, 'models = ["sonnet"]\n' + written)
    assert dev.effective_scale == size
    assert settings_for(dev.config.scale, 1) == Settings(min=size, max=size, policy="fixed")


@pytest.mark.parametrize(
    "table, field, line, says",
    [
        ("[scale]\nmin = 2\n", "scale.max", 2, "missing required key 'max' in [scale]"),
        ("[scale]\nmax = 0\n", "scale.max", 3, "'scale.max' must be an integer >= 1, got 0"),
        ("[scale]\nmax = 4\nmin = -1\n", "scale.min", 4, "must be an integer >= 0"),
        ("[scale]\nmax = 4\nmni = 1\n", "scale.mni", 4, "did you mean 'min'?"),
        ("[scale]\nmax = 2\nmin = 3\n", "scale", 2, "min = 3 above max = 2"),
        ("[scale]\nmax = 2\nwarm = 3\n", "scale", 2, "warm = 3 above max = 2"),
        ("[scale]\nmax = 4\ntarget = 0.9\n", "scale", 2, "needs scaleDown < target <= scaleUp"),
        ("[scale]\nmax = 4\nscaleUp = 1.5\n", "scale.scaleUp", 4, "at most 1"),
        ('[scale]\nmax = 4\ntarget = "high"\n', "scale.target", 4, "found the string"),
        ('[scale]\nmax = 4\npolicy = "predictve"\n', "scale.policy", 4, 'did you mean "pred'),
        ('[scale]\nmax = 4\npolicy = "fixed"\n', "scale", 2, "a fixed pool has one size"),
        ("[scale]\nmax = 4\nstabilization = -5\n", "scale.stabilization", 4, "between 0 and 86400"),
        ("[scale]\nmax = 4\nwindow = 5\n", "scale.window", 4, "between 15 and 86400"),
        ("[scale]\nmax = 4\nstartup = -1\n", "scale.startup", 4, "between 0 and 86400"),
        ("[scale]\nmax = 4\nstartup = 1.5\n", "scale.startup", 4, "integer"),
        ("[scale]\nmax = 4\nwarmMaxRuns = 0\n", "scale.warmMaxRuns", 4, "between 1 and 1000000"),
        ('[scale]\nmax = 4\nwarmMaxAge = "1h"\n', "scale.warmMaxAge", 4, "the string"),
        ("[scale]\nmax = 4\nwarmMaxAge = 0\n", "scale.warmMaxAge", 4, "between 1 and 2592000"),
        ('[hooks]\nwarm = "git clone x"\n', "hooks.warm", 3, "list"),
        ("[hooks]\nrefresh = [1]\n", "hooks.refresh[0]", 3, "string"),
        ("[hooks]\nwram = []\n", "hooks.wram", 3, "did you mean 'warm'?"),
        ("scale = -1\n", "scale", 2, "must be an integer >= 0, got -1"),
        ('scale = "4"\n', "scale", 2, 'must be an integer >= 0, got the string "4"'),
        ("scale = 2.5\n", "scale", 2, "must be an integer >= 0, got 2.5"),
    ],
)
def test_a_bad_scale_names_file_field_and_line(
    tmp_path: Path, table: str, field: str, line: int, says: str
) -> None:
    root = write(
        tmp_path / "p", {"config.toml": MODELS, **agent("dev", 'models = ["sonnet"]\n' + table)}
    )
    with pytest.raises(ConfigError) as caught:
        load_project(root)
    issues = caught.value.issues
    assert [(i.file, i.field) for i in issues] == [("agents/dev/config.toml", field)], issues
    assert says in str(issues[0]), str(issues[0])
    assert issues[0].line == line, str(issues[0])


def test_a_scale_key_after_the_table_is_read_into_it(tmp_path: Path) -> None:
    root = write(
        tmp_path / "p",
        {"config.toml": MODELS, **agent("dev", '[scale]\nmax = 2\nmodels = ["sonnet"]\n')},
    )
    with pytest.raises(ConfigError, match="must come before the first"):
        load_project(root)
