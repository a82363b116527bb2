"""API test helpers: ``running_twin`` runs the whole daemon in process (session broker, demo day at max speed)
and yields its API URL once every window is simulated; ``no_nan`` and ``utc`` for answers and stores."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import polars as pl

from opendt.daemon import run_daemon, wait_until
from opendt.settings import REPO_ROOT, Settings
from opendt.twin.status import TwinState

DEMO = REPO_ROOT / "data" / "demo"


def no_nan(token: str) -> Any:
    """``json.loads(..., parse_constant=no_nan)``: NaN or ±Infinity in an answer fails the test."""
    raise AssertionError(f"non-JSON number {token} in an answer")


def utc(ms: list[int]) -> pl.Series:
    """Epoch milliseconds as a UTC datetime column (the result store's timestamps)."""
    return pl.Series(ms, dtype=pl.Int64).cast(pl.Datetime("ms")).dt.replace_time_zone("UTC")


@asynccontextmanager
async def running_twin(settings: Settings, *, timeout_s: float = 120) -> AsyncIterator[tuple[str, TwinState]]:
    """``run_daemon(settings)`` until the context exits; yields ``(api_url, state)`` after the replay is fully
    simulated; asserts a clean exit (0) afterwards."""
    state = TwinState()
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        daemon = tg.create_task(run_daemon(settings, shutdown_trigger=stop.wait, state=state))
        try:
            async with asyncio.timeout(timeout_s):
                await wait_until(state.ready, daemon, "serving")
                assert state.loop is not None
                await wait_until(state.loop.done, daemon, "the replay was simulated")
            yield state.api_url, state
        finally:
            stop.set()
    assert daemon.result() == 0
