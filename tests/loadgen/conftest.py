from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

# benchmarks/ is a top-level folder of the repository, not part of the installed package.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from benchmarks.baselines.floor import start_floor_server  # noqa: E402


@pytest.fixture
async def floor_target() -> AsyncIterator[str]:
    """A real grpc.aio floor server on a free port, in the test's event loop."""
    server, port = await start_floor_server(0, response_items=5)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)
