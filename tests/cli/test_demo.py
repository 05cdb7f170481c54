"""`corral demo`: the README's first command runs a real fleet end to end, offline."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.cli.conftest import Corral

pytestmark = pytest.mark.slow


def test_the_demo_fleet_works_end_to_end(corral: Corral, tmp_path: Path) -> None:
    try:
        result = corral("demo", str(tmp_path / "demo"), "--duration", "12")
    except subprocess.TimeoutExpired as exc:  # the fixture allows 60 s
        pytest.fail(f"the demo did not finish: {exc}")
    assert result.returncode == 0, result.stderr
    err, out = result.stderr, result.stdout
    assert re.search(r"dashboard: http://127\.0\.0\.1:\d+/dashboard", err)
    assert "webhook issue #11 labeled agent: 202 (queued for dev)" in err
    assert "webhook issue #11 again (same delivery id): 200 (duplicate delivery" in err
    assert "webhook a forged delivery (bad signature): 401 (signature does not match)" in err

    assert out.startswith("== corral stat\n")
    assert re.search(r"^ dev +webhook +idle +0/3 +0", out, re.M)
    summary = out[out.index("what happened:") :]
    assert "webhook deliveries: 1x 200, 8x 202, 1x 401" in summary
    runs = re.search(
        r"runs: (\d+) \((\d+) succeeded\); by agent: dev 8, janitor (\d+), reviewer (\d+)", summary
    )
    assert runs is not None, summary
    total, succeeded, janitor, reviewer = map(int, runs.groups())
    assert total == succeeded == 8 + janitor + reviewer
    assert janitor >= 2  # the manual run and the rerun it asked for
    locks = re.search(r"issue locks: (\d+) granted, (\d+) refused", summary)
    assert locks is not None and locks.groups() == (str(8 - int(locks.group(2))), "2")
    calls = re.search(r"calls answered: (\d+); reruns: (\d+)", summary)
    assert calls is not None and int(calls.group(1)) == reviewer == 6
    assert int(calls.group(2)) >= 1
