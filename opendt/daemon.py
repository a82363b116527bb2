"""The supervisor: runs the twin's components (built by :mod:`opendt.wiring`) in one TaskGroup.

Shutdown is an injectable trigger (``shutdown_trigger``: an awaitable that returns when the daemon must stop;
the CLI passes ``stop_event.wait``, set by SIGINT/SIGTERM). Order: stop intake (replay and consumer), drain
the windows already closed up to ``SHUTDOWN_DRAIN_S``, cancel what is left, release resources in reverse
order of acquisition (AsyncExitStack). A crashing component cancels the others; the daemon exits 1.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import structlog

from opendt.settings import Settings
from opendt.twin.appendlog import LogCorrupt
from opendt.twin.files import DiskFull
from opendt.twin.inputs import InputsLost, InputUnreadable
from opendt.twin.results import ResultsMismatch
from opendt.twin.run import RunLocked
from opendt.twin.status import TwinState
from opendt.wiring import Twin, bounded, build_twin

log = structlog.get_logger(component="daemon")

SHUTDOWN_DRAIN_S = 4.0


class ShutdownRequested(Exception):
    """Raised inside the TaskGroup when the daemon must stop."""


async def run_daemon(
    settings: Settings,
    *,
    shutdown_trigger: Callable[[], Awaitable[object]] | None = None,
    exit_when_done: bool = False,
    state: TwinState | None = None,
    fresh: bool = False,
) -> int:
    """Run the twin until the trigger fires or (``exit_when_done``) the last window is durable: exit 0.
    A component failure: exit 1, with the error logged. ``state.ready`` is set once the components are built
    and the API serves."""
    state = state if state is not None else TwinState()
    failed: list[BaseException] = []
    try:
        await _supervise(settings, state, shutdown_trigger or asyncio.Event().wait, exit_when_done, fresh)
    except* Exception as eg:  # noqa: BLE001 - the daemon boundary: log every failure, exit 1
        failed.extend(eg.exceptions)
    if failed:
        state.status = "failed"
        for exc in failed:
            if isinstance(
                exc, DiskFull | RunLocked | ResultsMismatch | LogCorrupt | InputsLost | InputUnreadable
            ):  # the message names it
                log.error("daemon_failed", error=str(exc))
            else:
                log.error("daemon_failed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
        return 1
    return 0


async def wait_until(event: asyncio.Event, daemon: asyncio.Future[int], what: str) -> None:
    """Wait for ``event`` of a running daemon (``state.ready``, ``state.loop.done``) while ``daemon`` (its
    :func:`run_daemon` task) runs; ``RuntimeError`` naming ``what`` when the daemon ends first."""
    waiter: asyncio.Future[Any] = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter, daemon}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if not event.is_set():
        code = daemon.result() if daemon.done() and not daemon.cancelled() else None
        raise RuntimeError(f"the daemon exited (code {code}) before {what}")


async def _supervise(
    settings: Settings,
    state: TwinState,
    trigger: Callable[[], Awaitable[object]],
    exit_when_done: bool,
    fresh: bool,
) -> None:
    t0 = time.monotonic()
    async with AsyncExitStack() as stack:
        twin = await build_twin(settings, state, stack, fresh=fresh)
        state.status = "running"
        state.ready.set()
        log.info(
            "daemon_started",
            run_id=state.run_id,
            run_dir=str(twin.run_dir),
            workload=None if state.workload is None else state.workload.name,
            kafka=state.bootstrap_servers,
            resumed_windows=twin.loop.store.durable_count,
            startup_s=round(time.monotonic() - t0, 3),
        )
        replay: asyncio.Task[None] | None = None

        async def stop_when(cause: Callable[[], Awaitable[object]], reason: str) -> None:
            await cause()
            log.info("shutdown_started", reason=reason)
            state.status, state.stop_reason = "stopping", reason
            if replay is not None:
                replay.cancel()
            await _drain(twin)
            raise ShutdownRequested

        task = asyncio.current_task()
        baseline = 0 if task is None else task.cancelling()
        try:
            async with asyncio.TaskGroup() as tg:
                if twin.replay is not None:
                    replay = tg.create_task(twin.replay.run())
                for runner in twin.runners():
                    tg.create_task(runner)
                tg.create_task(stop_when(trigger, "signal"))
                if exit_when_done:
                    tg.create_task(stop_when(twin.loop.done.wait, "done"))
        except* ShutdownRequested:
            pass
        finally:
            # Python 3.11's TaskGroup leaves its parent task "cancelling" when a child fails after the body
            # ended (it cancels the parent and never uncancels it; fixed in 3.12): undo that, so the release
            # steps below run as in any shutdown and the failure is reported (exit 1), not a cancel (130)
            while task is not None and task.cancelling() > baseline:
                task.uncancel()
        await bounded(twin.producer.flush, "producer_flush")
    state.status = "stopped"
    log.info(
        "daemon_stopped",
        run_id=state.run_id,
        windows=twin.loop.stats.windows_simulated,
        failed=twin.loop.stats.windows_failed,
        uptime_s=round(time.monotonic() - t0, 3),
    )


async def _drain(twin: Twin) -> None:
    """Shutdown steps 1–2: stop intake, then let the windows already closed finish, up to the deadline."""
    twin.consumer.stop_intake()
    try:
        async with asyncio.timeout(SHUTDOWN_DRAIN_S):
            await twin.loop.done.wait()
    except TimeoutError:
        log.warning("shutdown_drain_timeout", queued=twin.consumer.out.qsize())
