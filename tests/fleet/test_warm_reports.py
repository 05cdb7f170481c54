"""What a control plane process keeps of the runners' warm workspace reports (D126):
the live ones only, for the project's own agents."""

from __future__ import annotations

import time

from corral.engine.fleet import WarmReports


def test_old_reports_are_forgotten_and_unknown_agents_left_out() -> None:
    reports = WarmReports(max_age=0.2)
    for n in range(500):  # runners that came and went (an autoscaled fleet)
        reports.record(f"gone-{n}", {"w": 1})
    time.sleep(0.3)
    reports.record("live", {"w": 2, "<script>": 9, "x": 1})
    assert reports.by_agent({"w", "x"}) == {"w": 2, "x": 1}
    assert reports.by_agent() == {"w": 2, "<script>": 9, "x": 1}
    assert len(reports._heard) == 1  # the 500 silent runners are not kept
    assert reports.of("gone-3") is None and reports.of("live") == {"w": 2, "<script>": 9, "x": 1}
