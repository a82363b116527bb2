"""A broker usable from synchronous code: an event loop on a background thread holds it.

This is what the test suite's session fixture uses, so that one broker serves tests that each run on
their own (function-scoped) event loop. Clients must be created on the caller's loop; only admin
coroutines (topic creation/deletion) are run on the thread's loop through :meth:`BrokerThread.run`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

from opendt.kafka.broker import BrokerError, EmbeddedBroker
from opendt.settings import KafkaSettings

T = TypeVar("T")

_JOIN_TIMEOUT_S = 30.0


class BrokerThread:
    """Start the embedded broker (or just a loop, with ``bootstrap_servers`` set) on a daemon thread.

    The broker is a child of that thread, so ``PR_SET_PDEATHSIG`` kills it when the thread or the whole
    process ends, including when the process is SIGKILLed.
    """

    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
        self._thread = threading.Thread(target=self._main, name="opendt-broker", daemon=True)
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._bootstrap: str | None = None
        self._error: BaseException | None = None
        self.pid: int | None = None

    @property
    def bootstrap_servers(self) -> str:
        if self._bootstrap is None:
            raise BrokerError("the broker thread is not running")
        return self._bootstrap

    def start(self) -> str:
        """Start the thread and block until the broker answers; returns the bootstrap servers."""
        if self._thread.is_alive() or self._ready.is_set():
            raise BrokerError("the broker thread was already started")
        self._thread.start()
        if not self._ready.wait(self._settings.startup_timeout_s + _JOIN_TIMEOUT_S):
            raise BrokerError("the broker thread did not report readiness")
        if self._error is not None:
            self._thread.join(_JOIN_TIMEOUT_S)
            raise BrokerError(f"the broker did not start: {self._error}") from self._error
        return self.bootstrap_servers

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the broker thread's loop and return its result (blocking the caller)."""
        if self._loop is None or self._bootstrap is None:
            coro.close()
            raise BrokerError("the broker thread is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def stop(self) -> None:
        """Stop the broker and join the thread; idempotent."""
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(_JOIN_TIMEOUT_S)
        self._bootstrap = None

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            if self._settings.bootstrap_servers:
                self._bootstrap = self._settings.bootstrap_servers
                self._ready.set()
                await self._stop.wait()
                return
            async with EmbeddedBroker(self._settings) as broker:
                self._bootstrap = broker.bootstrap_servers
                self.pid = broker.pid
                self._ready.set()
                await self._stop.wait()
        except Exception as e:  # noqa: BLE001 - handed to the thread that called start(), which raises it
            self._error = e
        finally:
            self._ready.set()

    def __enter__(self) -> BrokerThread:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
