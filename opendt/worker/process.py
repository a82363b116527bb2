"""The one way OpenDT runs a child process: the Tansu broker, the OpenDC-contract pool's runs, the twin's
engine worker and the candidate workers all go through :class:`ChildProcess`.

A child is started with :func:`asyncio.create_subprocess_exec` (never a shell) in its own session, so it and
everything it spawns share one process group and a kill reaches them all. Its output streams that are not
used as a protocol channel are drained concurrently into bounded tails (:class:`OutputTail`: the last bytes,
optionally each line handed to a callback), so a chatty child can neither block on a full pipe nor grow our
memory. :meth:`ChildProcess.stop` is the one shutdown sequence: close its stdin, optionally signal the group
(SIGTERM), wait a grace period, SIGKILL the group (also any straggler left when the leader has exited), and
wait for the child; it finishes even when the caller is cancelled meanwhile (the cancellation is re-raised
afterwards), so no child of ours is left running or unreaped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import structlog

log = structlog.get_logger(component="process")

_READ_CHUNK = 65536
PIPE = asyncio.subprocess.PIPE
DEVNULL = asyncio.subprocess.DEVNULL


class OutputTail:
    """The last ``limit`` bytes of a stream and its total size; ``on_line`` sees every complete line."""

    def __init__(self, limit: int = 8192, on_line: Callable[[str], None] | None = None) -> None:
        self.limit = limit
        self.on_line = on_line
        self.buf = bytearray()
        self.total = 0
        self._partial = bytearray()

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self.buf += chunk
        if len(self.buf) > self.limit:
            del self.buf[: len(self.buf) - self.limit]
        if self.on_line is not None:
            self._partial += chunk
            *lines, rest = self._partial.split(b"\n")
            self._partial = bytearray(rest[-self.limit :])
            for line in lines:
                self._emit(bytes(line))

    def close(self) -> None:
        """The stream ended: a last line without a newline is handed on too."""
        if self.on_line is not None and self._partial:
            self._emit(bytes(self._partial))
            self._partial.clear()

    def _emit(self, raw: bytes) -> None:
        assert self.on_line is not None
        line = raw.decode("utf-8", "replace").rstrip()
        if line:
            self.on_line(line)

    def text(self) -> str:
        return self.buf.decode("utf-8", errors="replace")

    def lines(self, n: int) -> list[str]:
        """The last ``n`` non-empty lines of the tail."""
        return [ln for ln in self.text().splitlines() if ln.strip()][-n:]


async def _drain(stream: asyncio.StreamReader, tail: OutputTail) -> None:
    try:
        while chunk := await stream.read(_READ_CHUNK):
            tail.add(chunk)
    finally:
        tail.close()


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the process group led by ``pid`` (the child leads its own session); fall back to the child."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


class ChildProcess:
    """A started child in its own process group. Build it with :meth:`spawn`; end it with :meth:`stop`."""

    def __init__(self, proc: asyncio.subprocess.Process, argv: Sequence[str]) -> None:
        self.proc = proc
        self.argv = tuple(argv)
        self.stdout_tail = OutputTail()
        self.stderr_tail = OutputTail()
        self._drains: list[asyncio.Task[None]] = []

    @classmethod
    async def spawn(
        cls,
        argv: Sequence[str],
        *,
        stdin: int = DEVNULL,
        capture_stdout: bool = True,
        stdout_tail: OutputTail | None = None,
        stderr_tail: OutputTail | None = None,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
        limit: int = 2**16,
    ) -> ChildProcess:
        """Start ``argv``. stderr always goes to a drained tail; stdout too unless ``capture_stdout`` is
        false (then ``proc.stdout`` is a pipe the caller reads: a protocol channel). Raises ``OSError``
        when the program cannot be started."""
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=stdin,
            stdout=PIPE,
            stderr=PIPE,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            start_new_session=True,  # own process group: a kill reaches the child's children too
            preexec_fn=preexec_fn,
            limit=limit,
        )
        child = cls(proc, argv)
        if stdout_tail is not None:
            child.stdout_tail = stdout_tail
        if stderr_tail is not None:
            child.stderr_tail = stderr_tail
        assert proc.stdout is not None
        assert proc.stderr is not None
        child._drains.append(asyncio.create_task(_drain(proc.stderr, child.stderr_tail)))
        if capture_stdout:
            child._drains.append(asyncio.create_task(_drain(proc.stdout, child.stdout_tail)))
        return child

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    async def wait(self) -> int:
        """Wait for the child to exit and its captured output to be drained; its exit code."""
        code = await self.proc.wait()
        await self.drained()
        return code

    async def drained(self) -> None:
        """Wait until the captured streams reached their end (the child and its group closed them)."""
        if self._drains:
            await asyncio.gather(*self._drains, return_exceptions=True)

    def signal(self, sig: signal.Signals) -> None:
        signal_group(self.proc.pid, sig)

    async def stop(self, grace_s: float, *, terminate: bool = True) -> int:
        """End the child: close its stdin, SIGTERM its group (``terminate``), wait up to ``grace_s``, SIGKILL
        the group, wait. Idempotent; completes even if cancelled meanwhile (then re-raises). Exit code."""
        task = asyncio.ensure_future(self._stop(grace_s, terminate))
        cancelled = False
        while not task.done():
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                cancelled = True  # keep reaping; re-raise once the child is gone
        code = task.result()
        if cancelled:
            raise asyncio.CancelledError
        return code

    async def _stop(self, grace_s: float, terminate: bool) -> int:
        proc = self.proc
        if proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.close()
        if proc.returncode is None:
            if terminate and grace_s > 0:
                self.signal(signal.SIGTERM)
            if grace_s > 0:
                try:
                    async with asyncio.timeout(grace_s):
                        await proc.wait()
                except TimeoutError:
                    log.warning("child_kill", pid=proc.pid, program=self.argv[0], grace_s=grace_s)
        self.signal(signal.SIGKILL)  # the child if still alive, and any straggler left in its group
        code = await proc.wait()
        for t in self._drains:
            if not t.done():
                t.cancel()
        await self.drained()
        return code
