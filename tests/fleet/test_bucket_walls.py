"""The runner API's provider buckets (D127) answer a runner only for what its run needs:
a provider the run's agent uses, a token charge no bigger than a model request can be,
a 429 pause of at most an hour. So a runner cannot drain or close another agent's
bucket, or sink a shared one for everyone with one report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fleet.test_fuzz_runner_api import OPERATOR, _setup
from tests.served import serve_gateway

pytestmark = pytest.mark.slow

MODELS = '[models.sonnet]\nprovider = "anthropic"\nmodel = "claude-sonnet-4"\n'
BUCKET = "anthropic:0123456789abcdef"


def test_a_runner_acts_only_on_the_buckets_its_run_needs(tmp_path: Path) -> None:
    root = tmp_path / "p"
    agents: dict[str, dict[str, object]] = {
        "remote": {"command": "true", "runsOn": [], "models": ["sonnet"]}
    }
    with serve_gateway(root, agents, operator=OPERATOR, project_toml=MODELS) as gateway:
        served = _setup(gateway.url, root, lambda: gateway.call(gateway.scheduler.bundles.check))
        headers = {"Authorization": f"Bearer {served.a.credential}"}

        def post(route: str, **fields: Any) -> httpx.Response:
            body = {"fence": served.fence, "bucket": BUCKET, "provider": "anthropic", **fields}
            return httpx.post(
                f"{served.url}/fleet/v1/runs/{served.run_id}/{route}",
                json=body,
                headers=headers,
                timeout=30,
            )

        assert post("permit").status_code == 200
        assert post("tokens", tokens=5_000).status_code == 200
        assert post("throttle", retryAfter=30).status_code == 200
        # a provider the agent's models do not use: refused, naming why
        for route, extra in (("permit", {}), ("tokens", {"tokens": 1}), ("throttle", {})):
            other = post(route, bucket="openai:0123456789abcdef", provider="openai", **extra)
            assert other.status_code == 403, other.text
            assert "uses no model of provider 'openai'" in other.text
        # one report cannot sink or close the shared bucket
        assert post("tokens", tokens=2**40).status_code == 422
        assert post("throttle", retryAfter=86_400).status_code == 422
