"""bench/autoscale.py runs the real policies and is repeatable: the same seed, the same
figures; a recorded trace (CSV of arrival times) is read as written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, name: str, *args: str) -> dict:  # type: ignore[type-arg]
    out = tmp_path / f"{name}.json"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "autoscale.py"),
            "--json",
            str(out),
            "--out",
            str(tmp_path),
            *args,
        ],
        check=True,
        capture_output=True,
        timeout=100,
    )
    return json.loads(out.read_text())  # type: ignore[no-any-return]


def test_the_simulator_is_repeatable_and_reads_a_recorded_trace(tmp_path: Path) -> None:
    trace = tmp_path / "arrivals.csv"
    trace.write_text("arrived_s\n" + "".join(f"{60 + n * 0.3}\n" for n in range(100)) + "900\n")
    args = ("--seeds", "2", "--hours", "0.5", "--storm", "40", "--storm-at", "5", "--max", "60")
    first = _run(tmp_path, "a", *args, "--traces", "bursty", "--trace", str(trace))
    again = _run(tmp_path, "b", *args, "--traces", "bursty", "--trace", str(trace))
    assert first["figures"] == again["figures"]
    recorded = first["figures"][f"file:{trace}"]["policies"]
    assert recorded["fixed"]["runs"] == 101
    for policy in ("reactive", "predictive"):
        assert recorded[policy]["max_pool"] <= 60
    bursty = first["figures"]["bursty"]["policies"]
    assert bursty["fixed"]["p95_wait_s"] <= bursty["reactive"]["p95_wait_s"]
