"""The ``opendt`` command: parsing and dispatch. The only place that reads the environment, configures logging
and owns signals; each command's logic is in :mod:`opendt.commands`.

Every failure is one line on stderr naming the problem and what to do: exit 2 for usage and configuration
errors (a bad option or value, a missing workload, a busy API port), 1 for a command that failed at its work.
Tracebacks are printed only at ``--log-level debug``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import traceback
from collections.abc import Callable, Coroutine, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from opendt.commands.errors import EXIT_FAILED, EXIT_USAGE, CommandError, UsageError
from opendt.commands.report import add_parser as add_report_parser
from opendt.log import configure_logging, describe_exception
from opendt.settings import ConfigError, Settings, load_settings, settings_as_yaml

__all__ = ["build_parser", "main", "run_async"]


def version() -> str:
    try:
        return metadata.version("opendt")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a tree that was not installed
        return "unknown"


def _speed(v: str) -> float | str:
    if v.strip().lower() == "max":
        return "max"
    try:
        f = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"speed must be a number > 0 or 'max', got {v!r}") from None
    if not f > 0 or f == float("inf"):
        raise argparse.ArgumentTypeError(f"speed must be a finite number > 0 or 'max', got {v!r}")
    return f


def _port(v: str) -> int:
    try:
        p = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be an integer 0..65535, got {v!r}") from None
    if not 0 <= p <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 0..65535 (0 = any free port), got {p}")
    return p


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line naming the problem and where the usage is, exit 2."""

    def error(self, message: str) -> Any:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _global_options(p: argparse.ArgumentParser) -> None:
    """``--config`` and ``--log-level``, accepted before or after the subcommand."""
    p.add_argument(
        "--config", type=Path, default=argparse.SUPPRESS, help="YAML config (default: config/default.yaml)"
    )
    p.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        type=str.lower,
        default=argparse.SUPPRESS,
        help="log level (debug also prints tracebacks)",
    )


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    _global_options(common)
    p = _Parser(prog="opendt", description="OpenDT: an open digital twin for datacenters", parents=[common])
    p.add_argument("--version", action="version", version=f"opendt {version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    def cmd(name: str, help_text: str, description: str | None = None) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=description, parents=[common])

    run = cmd("run", "run the whole twin (broker, replay, windows, simulation, API)")
    run.add_argument("--workload", type=Path, help="workload directory (default: the demo workload)")
    run.add_argument("--speed", type=_speed, help="trace seconds per wall second, or 'max'")
    run.add_argument("--data-dir", type=Path, help="runs go under DIR/runs/<run_id>/")
    run.add_argument("--host", help="API address (default: api.host, 127.0.0.1)")
    run.add_argument("--port", type=_port, help="API port (default: api.port, 8080; 0 = any free port)")
    run.add_argument("--exit-when-done", action="store_true", help="exit 0 once the last window is durable")
    run.add_argument(
        "--no-replay",
        action="store_true",
        help="no replay producer: the twin takes everything from Kafka (replay.enabled: false)",
    )
    run.add_argument("--fresh", action="store_true", help="start a new run (the existing one is moved aside)")
    run.add_argument(
        "--datacenter",
        metavar="ID",
        help="the datacenter to twin (kafka.datacenter; default: the stream's single, unnamed datacenter)",
    )

    rep = cmd(
        "replay",
        "stream a workload directory into Kafka (the datacenter stand-in)",
        "Play a workload directory into a running Kafka as the datacenter would: its topology, tasks, "
        "fragments, measured power and carbon intensity on the dc.* topics (kafka.topics), in trace order, "
        "paced at --speed, then a final heartbeat, and exit. A twin started with `opendt run --no-replay` "
        "against the same Kafka consumes them. The Kafka must outlive the replay: give its address "
        "(--bootstrap-servers, or kafka.bootstrap_servers / OPENDT_KAFKA__BOOTSTRAP_SERVERS); "
        "`opendt broker` runs one and prints it.",
    )
    rep.add_argument(
        "--workload", type=Path, help="workload directory (default: replay.workload, the demo workload)"
    )
    rep.add_argument(
        "--speed",
        type=_speed,
        help="trace seconds per wall second (default: replay.speed, 1440), or 'max' for as fast as possible",
    )
    rep.add_argument(
        "--datacenter",
        metavar="ID",
        help="replay as datacenter ID: every message names it (header datacenter) and goes to its partition "
        "of each topic (kafka.datacenter; default: unnamed, as a single datacenter)",
    )
    rep.add_argument(
        "--bootstrap-servers",
        metavar="HOST:PORT",
        help="the Kafka to stream into (default: kafka.bootstrap_servers; required)",
    )

    sim = cmd("simulate", "run one simulation of a workload directory")
    sim.add_argument("--workload", type=Path, required=True)
    sim.add_argument("--topology", type=Path, help="topology.json (default: the workload's)")
    sim.add_argument("--out", type=Path, required=True, help="output directory")

    serve = cmd("serve", "serve the API, Grafana datasource and dashboard read-only over a finished run")
    serve.add_argument("--run", help="run id or a unique prefix (default: the most recently updated run)")
    serve.add_argument("--data-dir", type=Path, help="where the runs are (default: data_dir)")
    serve.add_argument("--host", help="API address (default: api.host)")
    serve.add_argument("--port", type=_port, help="API port (default: api.port; 0 = any free port)")

    runs = cmd("runs", "list the runs under DATA_DIR/runs (show ID, rm ID)")
    runs.add_argument("--data-dir", type=Path, help="where the runs are (default: data_dir)")
    runs_sub = runs.add_subparsers(dest="runs_command", metavar="ACTION", parser_class=_Parser)
    show = runs_sub.add_parser("show", help="one run in detail", parents=[common])
    show.add_argument("run_id", metavar="ID", help="run id or a unique prefix")
    show.add_argument("--json", action="store_true", help="as JSON")
    show.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS)
    rm = runs_sub.add_parser("rm", help="delete a run directory", parents=[common])
    rm.add_argument("run_id", metavar="ID", help="run id (exact; a run a daemon holds is refused)")
    rm.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS)

    cal = cmd("calibrate", "offline calibration over a workload directory")
    cal.add_argument("--workload", type=Path, help="workload directory (default: replay.workload)")
    cal.add_argument("--out", type=Path, help="run directory for results (default: a new temp directory)")
    broker = cmd(
        "broker",
        "run the embedded Kafka broker (Tansu) in the foreground",
        "Run the embedded Kafka broker (Tansu, in memory) with the twin's topics until Ctrl-C; prints its "
        "address (host:port) for `opendt replay --bootstrap-servers` and `opendt run` "
        "(OPENDT_KAFKA__BOOTSTRAP_SERVERS).",
    )
    broker.add_argument(
        "--host", dest="broker_host", metavar="HOST", help="listen address (default: kafka.host, 127.0.0.1)"
    )
    broker.add_argument(
        "--port",
        dest="broker_port",
        metavar="PORT",
        type=_port,
        help="listen port (default: kafka.port; 0 = any free port)",
    )
    add_report_parser(sub, parents=[common])

    cfg = cmd("config", "configuration")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True, metavar="ACTION", parser_class=_Parser)
    cfg_sub.add_parser("show", help="print the effective configuration (secrets masked)", parents=[common])

    demo = cmd("demo", "the embedded demo workload")
    demo_sub = demo.add_subparsers(dest="demo_command", required=True, metavar="ACTION", parser_class=_Parser)
    gen = demo_sub.add_parser("generate", help="write the deterministic demo workload", parents=[common])
    gen.add_argument("--out", type=Path, help="directory (default: data/demo)")
    gen.add_argument("--seed", type=int, default=7)
    return p


def _overrides(args: argparse.Namespace, settings: Settings) -> Settings:
    for option, (section, key) in {
        "workload": ("replay", "workload"),
        "speed": ("replay", "speed"),
        "host": ("api", "host"),
        "port": ("api", "port"),
    }.items():
        if getattr(args, option, None) is not None:
            setattr(getattr(settings, section), key, getattr(args, option))
    for option, key in {
        "broker_host": "host",
        "broker_port": "port",
        "bootstrap_servers": "bootstrap_servers",
        "datacenter": "datacenter",
    }.items():
        if getattr(args, option, None) is not None:
            setattr(settings.kafka, key, getattr(args, option))
    if getattr(args, "data_dir", None) is not None:
        settings.data_dir = args.data_dir
    if getattr(args, "log_level", None) is not None:
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
        return asyncio.run(runner(), debug=_asyncio_debug())
    except asyncio.CancelledError:
        return 130


def _asyncio_debug() -> bool:
    """asyncio's debug mode as ``PYTHONASYNCIODEBUG`` asks, except that ``0`` (``false``, ``off``) is off:
    Python takes any non-empty value as on, and debug mode records a traceback for every future (a fifth of
    the daemon's time at ``--speed max``)."""
    value = os.environ.get("PYTHONASYNCIODEBUG", "").strip().lower()
    return value not in ("", "0", "false", "off", "no")


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    cmd = args.command
    out = sys.stdout
    if cmd == "config":
        out.write(settings_as_yaml(settings))
        return 0
    if cmd == "demo":
        from opendt.commands.demo import generate_demo

        target = args.out or Path(__file__).resolve().parent.parent / "data" / "demo"
        out.write(generate_demo(target, seed=args.seed) + "\n")
        return 0
    if cmd == "runs":
        from opendt.commands import runs

        data_dir = Path(settings.data_dir)
        workload = Path(settings.replay.workload)  # the measured power of runs older than run.json
        if args.runs_command == "show":
            out.write(
                runs.show_text(runs.find_run(data_dir, args.run_id), as_json=args.json, workload=workload)
            )
        elif args.runs_command == "rm":
            out.write(runs.remove_run(runs.removable_run(data_dir, args.run_id)))
        else:
            out.write(runs.list_text(data_dir, workload))
        return 0
    if cmd == "broker":
        from opendt.kafka.broker import run_broker_forever

        return run_async(lambda stop: _ok(run_broker_forever(settings.kafka, stop)))
    if cmd == "simulate":
        from opendt.commands.simulate import simulate_cli

        return asyncio.run(simulate_cli(args.workload, args.topology, args.out, settings.simulation))
    if cmd == "run":
        from opendt.commands.run import run_cli

        return run_async(
            lambda stop: run_cli(settings, stop, exit_when_done=args.exit_when_done, fresh=args.fresh)
        )
    if cmd == "serve":
        from opendt.commands.serve import serve_cli

        return run_async(lambda stop: serve_cli(settings, args.run, stop))
    if cmd == "replay":
        from opendt.commands.replay import replay_cli

        return run_async(lambda stop: replay_cli(settings, stop))
    if cmd == "calibrate":
        from opendt.commands.calibrate import calibrate_cli
        from opendt.commands.run import check_workload

        check_workload(Path(settings.replay.workload))
        return asyncio.run(calibrate_cli(settings.replay.workload, settings, args.out))
    if cmd == "report":
        from opendt.commands.report import report_cli

        return report_cli(args, Path(settings.data_dir))
    raise UsageError(f"unknown command {cmd!r}")  # pragma: no cover - argparse rejects it first


async def _ok(coro: Coroutine[Any, Any, None]) -> int:
    await coro
    return 0


def _fail(command: str, message: str, code: int, exc: BaseException | None, debug: bool) -> int:
    if debug and exc is not None:
        traceback.print_exception(exc, file=sys.stderr)
    sys.stderr.write(f"opendt {command}: {message}\n")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = _overrides(args, load_settings(getattr(args, "config", None)))
    except ConfigError as e:
        sys.stderr.write(f"opendt: {e}\n")
        return EXIT_USAGE
    except ValueError as e:  # a CLI override that fails the section's validation
        sys.stderr.write(f"opendt: invalid option: {e}\n")
        return EXIT_USAGE
    debug = settings.log.level == "debug"
    configure_logging(settings.log.level, settings.log.format)
    from opendt.models.topology import TopologyError
    from opendt.workload import WorkloadError

    try:
        return _dispatch(args, settings)
    except (UsageError, ConfigError) as e:
        return _fail(args.command, str(e), EXIT_USAGE, e, debug)
    except (WorkloadError, TopologyError) as e:
        return _fail(args.command, str(e), EXIT_USAGE, e, debug)
    except (CommandError, ValueError, OSError) as e:
        return _fail(args.command, str(e), EXIT_FAILED, e, debug)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001 - the command boundary: one line, never a traceback below debug
        hint = "" if debug else " (rerun with --log-level debug for the traceback)"
        return _fail(args.command, f"internal error: {describe_exception(e)}{hint}", EXIT_FAILED, e, debug)
