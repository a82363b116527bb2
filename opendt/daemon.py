"""The supervisor: builds the components from Settings and runs them in one TaskGroup.

Shutdown is an injectable trigger (``shutdown_trigger``: an awaitable that returns when the daemon must stop;
the CLI passes ``stop_event.wait``, set by SIGINT/SIGTERM). Order: stop intake, drain, release resources in
reverse order of acquisition (AsyncExitStack). A crashing component cancels the others and the daemon exits
non-zero with the error logged.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

import structlog

from opendt.api import serve_api
from opendt.kafka.broker import kafka_for
from opendt.settings import Settings
from opendt.state import TwinState
from opendt.workload import load_workload

log = structlog.get_logger(component="daemon")


class ShutdownRequested(Exception):
    """Raised inside the TaskGroup when the shutdown trigger fires."""


async def _raise_shutdown(trigger: Callable[[], Awaitable[object]]) -> None:
    await trigger()
    raise ShutdownRequested


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


async def run_daemon(
    settings: Settings,
    *,
    shutdown_trigger: Callable[[], Awaitable[object]] | None = None,
    exit_when_done: bool = False,
    state: TwinState | None = None,
) -> int:
    """Run the twin until the trigger fires (exit 0) or a component fails (exit 1)."""
    state = state if state is not None else TwinState()
    state.run_id = new_run_id()
    failed: list[BaseException] = []
    try:
        await _supervise(settings, state, shutdown_trigger or asyncio.Event().wait, exit_when_done)
    except* Exception as eg:  # noqa: BLE001 - the daemon boundary: log every failure, exit 1
        failed.extend(eg.exceptions)
    if failed:
        state.status = "failed"
        for exc in failed:
            log.error("daemon_failed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
        return 1
    return 0


async def _supervise(
    settings: Settings, state: TwinState, trigger: Callable[[], Awaitable[object]], exit_when_done: bool
) -> None:
    t0 = time.monotonic()
    workload = await asyncio.to_thread(load_workload, settings.replay.workload)
    state.workload = {
        "path": str(workload.path),
        "name": workload.meta.name,
        "tasks": workload.tasks.height,
        "fragments": workload.fragments.height,
        "hosts": workload.topology.host_count,
    }
    async with AsyncExitStack() as stack:
        state.bootstrap_servers = await stack.enter_async_context(kafka_for(settings.kafka))
        state.components["broker"] = "running"
        if settings.api.enabled:
            await stack.enter_async_context(serve_api(state, settings.api))
            state.components["api"] = "running"
        state.status = "running"
        log.info(
            "daemon_started",
            run_id=state.run_id,
            workload=state.workload["name"],
            kafka=state.bootstrap_servers,
            startup_s=round(time.monotonic() - t0, 3),
        )
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(_raise_shutdown(trigger))
                if exit_when_done:
                    # Nothing is streamed in this version, so there is nothing to wait for.
                    tg.create_task(_raise_shutdown(_done))
        except* ShutdownRequested:
            log.info("shutdown_requested")
        state.status = "stopping"
    state.status = "stopped"
    log.info("daemon_stopped", run_id=state.run_id, uptime_s=round(time.monotonic() - t0, 3))


async def _done() -> None:
    return None
