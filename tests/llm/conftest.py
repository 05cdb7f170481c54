from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.llm.fakeprovider import FakeProvider


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    async with FakeProvider() as server:
        yield server
