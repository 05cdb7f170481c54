"""Fixtures of the dashboard's server-side tests: a running fleet, a signed-in client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from corral.store import Store
from tests.dashboard.support import DashFleet, dashboard_fleet, login


@pytest.fixture
async def fleet(tmp_path: Path, store: Store) -> AsyncIterator[DashFleet]:
    async with dashboard_fleet(tmp_path / "p", store) as running:
        yield running


@pytest.fixture
async def http(fleet: DashFleet) -> AsyncIterator[httpx.AsyncClient]:
    """A client without a session."""
    async with httpx.AsyncClient(base_url=fleet.url, timeout=15) as client:
        yield client


@pytest.fixture
async def signed_in(http: httpx.AsyncClient) -> tuple[httpx.AsyncClient, dict[str, str]]:
    """A client with a session, and the headers its buttons send."""
    return http, await login(http)
