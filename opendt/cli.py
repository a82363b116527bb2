"""The ``opendt`` command. The only place that reads the environment, configures logging and owns signals."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import structlog

from opendt.commands.report import add_parser as add_report_parser
from opendt.log import configure_logging
from opendt.settings import ConfigError, Settings, load_settings, settings_as_yaml

EXIT_USAGE = 2


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit code 1."""


def _speed(v: str) -> float | str:
    if v == "max":
        return v
    try:
        f = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"speed must be a number > 0 or 'max', got {v!r}") from None
    if f <= 0:
        raise argparse.ArgumentTypeError("speed must be > 0")
    return f


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="opendt", description="OpenDT: an open digital twin for datacenters")
    p.add_argument("--config", type=Path, help="YAML config (default: config/default.yaml)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the whole twin (broker, replay, windows, simulation, API)")
    run.add_argument("--workload", type=Path, help="workload directory (default: the demo workload)")
    run.add_argument("--speed", type=_speed, help="trace seconds per wall second, or 'max'")
    run.add_argument("--data-dir", type=Path, help="runs go under DIR/runs/<run_id>/")
    run.add_argument("--exit-when-done", action="store_true", help="exit 0 once the last window is durable")
    run.add_argument(
        "--no-replay",
        action="store_true",
        help="no replay producer: the twin takes everything from Kafka (replay.enabled: false)",
    )
    run.add_argument("--fresh", action="store_true", help="start a new run (the existing one is moved aside)")

    rep = sub.add_parser("replay", help="stream a workload directory into Kafka (the datacenter stand-in)")
    rep.add_argument("--workload", type=Path)
    rep.add_argument("--speed", type=_speed)

    sim = sub.add_parser("simulate", help="run one simulation of a workload directory")
    sim.add_argument("--workload", type=Path, required=True)
    sim.add_argument("--topology", type=Path, help="topology.json (default: the workload's)")
    sim.add_argument("--out", type=Path, required=True, help="output directory")

    sub.add_parser("serve", help="serve the API over existing results")
    cal = sub.add_parser("calibrate", help="offline calibration over a workload directory")
    cal.add_argument("--workload", type=Path, help="workload directory (default: replay.workload)")
    cal.add_argument("--out", type=Path, help="run directory for results (default: a new temp directory)")
    sub.add_parser("broker", help="run the embedded Kafka broker (Tansu) in the foreground")
    add_report_parser(sub)

    cfg = sub.add_parser("config", help="configuration")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    cfg_sub.add_parser("show", help="print the effective configuration (file + environment)")

    demo = sub.add_parser("demo", help="the embedded demo workload")
    demo_sub = demo.add_subparsers(dest="demo_command", required=True, metavar="ACTION")
    gen = demo_sub.add_parser("generate", help="write the deterministic demo workload")
    gen.add_argument("--out", type=Path, help="directory (default: data/demo)")
    gen.add_argument("--seed", type=int, default=7)
    return p


def _overrides(args: argparse.Namespace, settings: Settings) -> Settings:
    if getattr(args, "workload", None) is not None:
        settings.replay.workload = args.workload
    if getattr(args, "speed", None) is not None:
        settings.replay.speed = args.speed
    if getattr(args, "data_dir", None) is not None:
        settings.data_dir = args.data_dir
    if args.log_level is not None:
        settings.log.level = args.log_level
    if getattr(args, "no_replay", False):
        settings.replay.enabled = False
    return settings


def run_async(main: Callable[[asyncio.Event], Coroutine[Any, Any, int]]) -> int:
    """Run ``main(stop)`` on a fresh loop; SIGINT/SIGTERM set ``stop``, a second signal cancels outright."""

    async def runner() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        task = asyncio.current_task()
        assert task is not None

        def on_signal() -> None:
            if stop.is_set():
                task.cancel()
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        try:
            return await main(stop)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    try:
        return asyncio.run(runner())
    except asyncio.CancelledError:
        return 130


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    cmd = args.command
    if cmd == "config":
        sys.stdout.write(settings_as_yaml(settings))
        return 0
    if cmd == "demo":
        from opendt.commands.demo import generate_demo

        out = args.out or Path(__file__).resolve().parent.parent / "data" / "demo"
        summary = generate_demo(out, seed=args.seed)
        sys.stdout.write(summary + "\n")
        return 0
    if cmd == "broker":
        from opendt.kafka.broker import run_broker_forever

        return run_async(lambda stop: _ok(run_broker_forever(settings.kafka, stop)))
    if cmd == "simulate":
        from opendt.commands.simulate import simulate_cli

        return asyncio.run(simulate_cli(args.workload, args.topology, args.out, settings.simulation))
    if cmd == "run":
        from opendt.daemon import run_daemon

        return run_async(
            lambda stop: run_daemon(
                settings, shutdown_trigger=stop.wait, exit_when_done=args.exit_when_done, fresh=args.fresh
            )
        )
    if cmd == "replay":
        return run_async(lambda stop: _replay(settings, stop))
    if cmd == "calibrate":
        from opendt.commands.calibrate import calibrate_cli

        return asyncio.run(calibrate_cli(settings.replay.workload, settings, args.out))
    if cmd == "report":
        from opendt.commands.report import report_cli

        return report_cli(args)
    sys.stderr.write(f"opendt {cmd}: not available yet in this version\n")
    return EXIT_USAGE


async def _replay(settings: Settings, stop: asyncio.Event) -> int:
    """Stream the workload into Kafka (the configured one, or an embedded broker) and exit when done."""
    from opendt.clock import SystemClock
    from opendt.kafka.broker import kafka_for
    from opendt.kafka.client import make_producer
    from opendt.stream.replay import ReplayProducer
    from opendt.workload import load_workload

    workload = await asyncio.to_thread(load_workload, settings.replay.workload)
    async with kafka_for(settings.kafka) as bootstrap:
        producer = make_producer(bootstrap, settings.kafka)
        await producer.start()
        try:
            replay = asyncio.ensure_future(
                ReplayProducer(
                    workload, producer, settings.kafka.topics, settings.replay, SystemClock()
                ).run()
            )
            stopper = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({replay, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if replay not in done:
                replay.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await replay
                return 130
            stopper.cancel()
            replay.result()
        finally:
            await producer.stop()
    return 0


async def _ok(coro: Coroutine[Any, Any, None]) -> int:
    await coro
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = _overrides(args, load_settings(args.config))
    except ConfigError as e:
        sys.stderr.write(f"opendt: {e}\n")
        return EXIT_USAGE
    except ValueError as e:  # a CLI override that fails the section's validation
        sys.stderr.write(f"opendt: invalid option: {e}\n")
        return EXIT_USAGE
    configure_logging(settings.log.level, settings.log.format)
    try:
        return _dispatch(args, settings)
    except (CommandError, ValueError, OSError) as e:
        # WorkloadError, TopologyError, MessageError are ValueErrors with one-line messages.
        structlog.get_logger().error("command_failed", command=args.command, error=str(e))
        sys.stderr.write(f"opendt {args.command}: {e}\n")
        return 1
    except KeyboardInterrupt:
        return 130
