from collections.abc import AsyncIterator

import pytest

from tests.unit.api.harness import Harness, open_harness


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    async for opened in open_harness():
        yield opened
