"""``opendt run``: the daemon, with the operator's view of it.

Before anything starts, the common mistakes are caught and reported in one line (exit 2): a workload
directory that does not exist or lacks its files, an API address already in use. While it runs: the dashboard
URL once it serves, progress (a bar on a terminal, ``progress`` log lines otherwise), a line when every
window of the replayed trace is simulated (and that it keeps serving, unless ``--exit-when-done``), and at
the end a summary: windows, MAPE, energy, carbon and where the results are.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import subprocess
import sys
from pathlib import Path
from typing import TextIO

from opendt.commands.errors import UsageError
from opendt.commands.progress import Progress, Sample
from opendt.commands.runs import summarize_run, summary_lines
from opendt.opendc.backends import BackendConfigError, opendc_backend
from opendt.settings import Settings
from opendt.twin.status import SimulationStatus, TwinState

REQUIRED_FILES = ("tasks.parquet", "fragments.parquet", "topology.json")
PROBE_TIMEOUT_S = 60.0
"""How long the OpenDC binary's ``--help`` may take at start (a JVM starts in about a second)."""


def check_workload(path: Path, option: str = "--workload DIR (or replay.workload)") -> None:
    """A workload directory that exists and holds the files a replay needs, else :class:`UsageError`."""
    if not path.exists():
        raise UsageError(f"workload directory {path} does not exist: give an existing one with {option}")
    if not path.is_dir():
        raise UsageError(f"workload {path} is not a directory: give a workload directory with {option}")
    missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
    if missing:
        raise UsageError(
            f"workload directory {path} lacks {', '.join(missing)}: not a workload directory "
            "(opendt demo generate --out DIR writes one)"
        )


def check_port(host: str, port: int, option: str = "--port N (or OPENDT_API__PORT)") -> None:
    """The API address can be bound (as the API binds it), else :class:`UsageError` naming the fix."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UsageError(f"API host {host!r} cannot be resolved ({e.strerror}): use --host ADDR") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise UsageError(
                    f"API port {port} on {host} is already in use (another opendt run or serve?): "
                    f"stop that one, or pick another port with {option}; 0 = any free port"
                ) from None
            if e.errno == errno.EADDRNOTAVAIL:
                raise UsageError(
                    f"API host {host} is not an address of this machine: use --host ADDR"
                ) from None
            if e.errno == errno.EACCES:
                raise UsageError(
                    f"API port {port} needs privileges: use a port above 1023 with {option}"
                ) from None
            raise UsageError(f"cannot listen on {host}:{port}: {e.strerror}") from None


def preflight(settings: Settings) -> None:
    check_engine(settings)
    if settings.replay.enabled:
        check_workload(Path(settings.replay.workload))
    if settings.api.enabled:
        check_port(settings.api.host, settings.api.port)


def check_engine(settings: Settings) -> None:
    """``simulation.engine: opendc`` and the cross-check need an OpenDC binary that runs: one line naming
    the key otherwise (the binary is started once, with ``--help``, and must exit 0: the OpenDC runner prints
    its usage; under a Java older than 21 it exits 1 with a LinkageError)."""
    sim = settings.simulation
    if sim.engine != "opendc" and sim.verify_every_s is None:
        return
    why = "simulation.engine is 'opendc'" if sim.engine == "opendc" else "simulation.verify_every_s is set"
    if sim.opendc_bin is None:
        raise UsageError(
            f"{why} but simulation.opendc_bin is not set: point it (or OPENDT_SIMULATION__OPENDC_BIN) at an "
            "OpenDCExperimentRunner start script (README: the OpenDC binary)"
        )
    try:
        backend = opendc_backend(sim)
    except BackendConfigError as e:
        raise UsageError(str(e)) from None
    try:
        done = subprocess.run(  # the operator's own binary, no shell
            [str(backend.bin), "--help"],
            env=backend.env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=PROBE_TIMEOUT_S,
            check=False,
        )
    except OSError as e:
        raise UsageError(f"simulation.opendc_bin: {sim.opendc_bin} does not run: {e.strerror}") from None
    except subprocess.TimeoutExpired:
        raise UsageError(
            f"simulation.opendc_bin: {sim.opendc_bin} --help did not finish in {PROBE_TIMEOUT_S:g} s"
        ) from None
    if done.returncode != 0:  # OpenDC's runner prints its usage with exit 0; a wrong Java exits 1
        tail = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
        raise UsageError(
            f"simulation.opendc_bin: {sim.opendc_bin} does not run (exit {done.returncode}"
            + (f": {_whole(tail[-1].strip())}" if tail else "")
            + "); is Java 21 there (simulation.java_home or JAVA_HOME)?"
        )


def _whole(line: str, limit: int = 600) -> str:
    """A child's line, whole when it is at most ``limit`` characters (the JVM's class-version line is 246:
    its end says which Java runs), else its start and its end around an ellipsis."""
    return line if len(line) <= limit else f"{line[: limit // 2]} … {line[-(limit // 2) :]}"


def sample_of(state: TwinState) -> tuple[Sample, SimulationStatus | None]:
    """Progress of a twin: the share of the workload's trace whose windows are durable, the windows done
    (read from the window loop's own status, not the whole status document: this runs twice a second)."""
    sim = None if state.loop is None else state.loop.status()
    if sim is None:
        return Sample(fraction=None, done=0, total=None), None
    done = sim.windows_simulated + sim.windows_failed + sim.windows_replayed
    wl = state.workload
    fraction = None
    if wl is not None:
        span = max(1, wl.end_ms - wl.start_ms)
        last = sim.last_window_end_ms
        fraction = 0.0 if last is None else min(1.0, max(0.0, (last - wl.start_ms) / span))
        if sim.done:
            fraction = 1.0
    return Sample(fraction=fraction, done=done, total=None), sim


def trace_windows(state: TwinState, window_ms: int) -> int | None:
    """How many windows the replayed workload's trace spans (None without a workload: a live stream)."""
    wl = state.workload
    if wl is None:
        return None
    return wl.end_ms // window_ms - wl.start_ms // window_ms + 1


def end_line(state: TwinState, sim: SimulationStatus, total: int | None) -> str:
    """What ended the window loop, for the console: the whole trace, or a Ctrl-C part of the way (the
    windows durable, over every process of the run; how many this process simulated when it resumed)."""
    durable = sim.windows_durable
    failed = f", {sim.windows_failed} failed" if sim.windows_failed else ""
    now = sim.windows_simulated + sim.windows_failed
    this = f" ({now} by this process, {durable - now} before it)" if durable != now else ""
    if state.stop_reason == "signal":
        of = f" of {total}" if total is not None else ""
        return (
            f"stopped early: {durable}{of} windows durable{failed}{this}; `opendt run` again resumes the run"
        )
    return f"replay done: all {durable} windows simulated{failed}{this}"


async def report(
    state: TwinState, out: TextIO, *, exit_when_done: bool, every_s: float = 0.5, window_ms: int = 300_000
) -> None:
    """Print the dashboard URL once the twin serves, then progress until cancelled; say when the trace is
    done and whether the twin keeps serving."""
    await state.ready.wait()
    url = state.api_url
    where = f"dashboard {url}/" if url else "API disabled"
    out.write(f"opendt: twin running: {where}  (run {state.run_id}; results in {state.run_dir})\n")
    out.flush()
    progress = Progress(out, every_s=10 * every_s, label="simulating")
    try:
        while True:
            sample, sim = sample_of(state)
            progress.update(sample)
            if sim is not None and sim.done:
                progress.close()
                line = end_line(state, sim, trace_windows(state, window_ms))
                if state.stop_reason is not None:
                    out.write(f"opendt: {line}\n")
                elif exit_when_done:
                    out.write(f"opendt: {line}; stopping (--exit-when-done)\n")
                else:
                    out.write(
                        f"opendt: {line}; the twin keeps serving {url or 'its results'} (Ctrl-C stops it)\n"
                    )
                out.flush()
                return
            if state.loop is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(state.loop.done.wait(), every_s)
            else:
                await asyncio.sleep(every_s)
    finally:
        progress.close()


async def run_cli(
    settings: Settings,
    stop: asyncio.Event,
    *,
    exit_when_done: bool,
    fresh: bool = False,
    out: TextIO | None = None,
) -> int:
    """Run the twin until ``stop`` is set (or the trace is done with ``exit_when_done``); print a summary."""
    from opendt.daemon import run_daemon
    from opendt.kafka.security import check_kafka

    out = out if out is not None else sys.stderr
    preflight(settings)
    await check_kafka(settings.kafka)  # credentials and (create_topics false) topics: exit 2, one line
    state = TwinState()
    daemon = asyncio.ensure_future(
        run_daemon(
            settings, shutdown_trigger=stop.wait, exit_when_done=exit_when_done, fresh=fresh, state=state
        )
    )
    window_ms = settings.windowing.window_s * 1000
    reporter = asyncio.ensure_future(report(state, out, exit_when_done=exit_when_done, window_ms=window_ms))
    try:
        code = await daemon
    finally:
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
    run_dir = Path(state.run_dir) if state.run_dir else None
    if run_dir is not None and await asyncio.to_thread(run_dir.is_dir):
        workload = Path(settings.replay.workload) if settings.replay.enabled else None
        summary = await asyncio.to_thread(summarize_run, run_dir, workload=workload)
        verdict = "done" if code == 0 else f"stopped with errors (exit {code})"
        sim = None if state.loop is None else state.loop.status()
        if code == 0 and state.stop_reason == "signal" and sim is not None:
            total = trace_windows(state, window_ms)
            if total is None or sim.windows_durable < total:
                verdict = end_line(state, sim, total)
        sys.stdout.write(
            f"opendt run {verdict}:\n" + "".join(f"  {line}\n" for line in summary_lines(summary))
        )
        sys.stdout.flush()
    return code
