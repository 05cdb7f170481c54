"""A provider error that echoes the API key must not leave the scheduler: not in the
run's stored error (which stat, the dashboard and MCP show), not in the OTLP span, and the
collector's password in its URL not in the log. A real fleet (scheduler and gateway), the
built-in harness against a fake provider over real HTTP, a real OTLP receiver, both stores."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from corral.credentials import CredentialStore
from corral.store import RunState, Store
from corral.telemetry._otel import shown_endpoint
from tests.gateway.fleet import running_fleet
from tests.llm.fakeprovider import FakeProvider, Status
from tests.telemetry.otlp import OtlpReceiver, attrs

MODEL_KEY = "sk-ant-" + "s3cr3t" * 6
PASSWORD = "S3cretCollectorPass"


async def test_a_key_echoed_by_the_provider_is_redacted_in_the_run_and_the_span(
    tmp_path: Path,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("CORRAL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    CredentialStore().add("anthropic_key", "default", {"api_key": MODEL_KEY})
    caplog.set_level(logging.INFO, logger="corral")
    with OtlpReceiver() as receiver:
        async with FakeProvider() as fake:
            # What some Anthropic-compatible servers (LiteLLM, proxies) answer.
            refusal = {"type": "error", "error": {"message": f"invalid x-api-key: {MODEL_KEY}"}}
            fake.script("anthropic", Status(401, refusal))
            endpoint = receiver.url.replace("http://", f"http://otel:{PASSWORD}@")
            toml = (
                f'[models.first]\nprovider = "anthropic"\nmodel = "claude-test"\n'
                f'baseUrl = "{fake.url}"\n'
                f'[telemetry]\nenabled = true\nprovider = "otel"\nendpoint = "{endpoint}"\n'
            )
            agents: dict[str, dict[str, object]] = {
                "dev": {"command": "unused", "models": ["first"], "credentials": ["anthropic_key"]}
            }
            tables = {"dev": 'type = "builtin"\n'}
            async with running_fleet(tmp_path / "p", store, agents, toml, tables) as fleet:
                await fleet.trigger("dev")
                (run,) = await fleet.finished("dev", 1, timeout=60)
        assert run.state is RunState.FAILED
        assert run.error is not None and "invalid x-api-key: [REDACTED]" in run.error
        assert MODEL_KEY not in run.error
        stored = await store.get_run(run.id)
        assert stored is not None and stored.error == run.error
        # The fleet has stopped, so its observer has flushed its spans.
        (span,) = [s for _, s in receiver.received.spans() if s.name == "corral.run"]
        assert MODEL_KEY not in span.status.message and "[REDACTED]" in span.status.message
        assert MODEL_KEY not in str(attrs(span.attributes))
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "exporting traces and metrics to http://127.0.0.1:" in logged
    assert PASSWORD not in logged and MODEL_KEY not in logged


def test_the_logged_endpoint_has_no_userinfo() -> None:
    assert shown_endpoint("http://u:p@collector:4318") == "http://collector:4318"
    assert shown_endpoint("https://token@[::1]:4318/x") == "https://[::1]:4318/x"
    assert shown_endpoint("http://collector:4318") == "http://collector:4318"
