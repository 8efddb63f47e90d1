from collections.abc import AsyncIterator

import pytest

from tests.unit.api.harness import Harness, open_harness


@pytest.fixture
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    """Settings overrides come from `@pytest.mark.settings(...)` on the test."""
    marker = request.node.get_closest_marker("settings")
    async for opened in open_harness(**(marker.kwargs if marker else {})):
        yield opened
