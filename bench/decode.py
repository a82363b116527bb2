"""Decode throughput of the high-volume streams (``decode_row``), without Kafka.

Usage: ``.venv/bin/python bench/decode.py [--workload DIR] [--runs 5] [--against FILE]``

The workload (default: the demo day; ``data/surf`` for the week) is encoded exactly as the
replay producer encodes it (``opendt.stream.replay``), then every record is decoded with ``decode_row`` as
the window consumer does, ``--runs`` times (the cache of parsed times is emptied before each run, as in a
fresh process). Prints records/s per stream (median and best of the runs), and the rate of rejecting
records that break one bound each (the malformed path: the fast decoder declines, the model names the field).

``--against FILE`` compares with another version of ``opendt/models/messages.py`` (e.g. from
``git show <commit>:opendt/models/messages.py > /tmp/old.py``), in the same process, runs alternating (old,
new, new, old, …) so both see the same machine load: the median of each and the relative change.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import polars as pl

from opendt.models import messages
from opendt.models.fastdecode import decode_row
from opendt.models.messages import MessageError, clear_time_cache
from opendt.settings import REPO_ROOT
from opendt.stream.replay import encode_chunk, event_order, streams_of
from opendt.workload import load_workload

Kind = Literal["tasks", "fragments", "power"]
KINDS: tuple[Kind, ...] = ("tasks", "fragments", "power")
Records = list[tuple[bytes, bytes]]


def encoded(workload: Path) -> dict[Kind, Records]:
    """Every record of the workload, per stream, as the replay producer sends it."""
    streams = streams_of(load_workload(workload), "datacenter")
    chunk = encode_chunk(streams, event_order(streams))
    out: dict[Kind, Records] = {}
    for i, kind in enumerate(KINDS[: len(streams)]):
        part = chunk.filter(pl.col("stream") == i)
        out[kind] = [(k.encode(), v.encode()) for k, v in part.select("key", "value").iter_rows()]
    return out


def rate(kind: Kind, records: Records, runs: int) -> tuple[float, float]:
    """(median, best) records/s of decoding ``records`` ``runs`` times."""
    rates = []
    for _ in range(runs):
        clear_time_cache()
        t0 = time.process_time()
        for key, value in records:
            decode_row(kind, key, value)
        rates.append(len(records) / (time.process_time() - t0))
    return statistics.median(rates), max(rates)


HOSTILE: dict[Kind, list[bytes]] = {
    "tasks": [
        b'{"submission_time":"2024-01-01T00:00:00Z","duration":1,"cpu_count":2147483648,'
        b'"cpu_capacity":1.0,"mem_capacity":1}',
        b'{"submission_time":"2024-01-01T00:00:00Z","duration":-1,"cpu_count":1,"cpu_capacity":1.0,'
        b'"mem_capacity":1}',
    ],
    "fragments": [
        b'{"submission_time":"2024-01-01T00:00:00Z","duration":1,"cpu_count":1,"cpu_usage":1.0,'
        b'"index":2147483648}',
        b'{"submission_time":"9999-01-01T00:00:00Z","duration":1,"cpu_count":1,"cpu_usage":1.0,"index":0}',
    ],
    "power": [
        b'{"heartbeat":12345}',
        b'{"timestamp":"2024-01-01T00:00:00Z","power_draw":1e300,"energy_usage":0}',
    ],
}


def reject_rate(kind: Kind, n: int) -> tuple[float, int]:
    """(records/s, how many were accepted) of decoding ``n`` hostile records of ``kind``."""
    values = HOSTILE[kind]
    key = b'{"source":"x"}' if kind == "power" else b'{"id":"t"}'
    accepted = 0
    t0 = time.process_time()
    for i in range(n):
        try:
            decode_row(kind, key, values[i % len(values)])
        except MessageError:
            pass
        else:
            accepted += 1
    return n / (time.process_time() - t0), accepted


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("messages_against", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pass(module: ModuleType, kind: Kind, records: Records) -> float:
    decode: Callable[..., Any] = module.decode_row
    cache = getattr(module, "_time_ms", None)  # an older version has no clear_time_cache()
    if cache is not None:
        cache.cache_clear()
    t0 = time.process_time()
    for key, value in records:
        decode(kind, key, value)
    return len(records) / (time.process_time() - t0)


def compare(other: ModuleType, records: dict[Kind, Records], runs: int) -> None:
    for kind, recs in records.items():
        rates: dict[str, list[float]] = {"old": [], "new": []}
        for i in range(runs):
            order = [("old", other), ("new", messages)]
            for name, module in order if i % 2 == 0 else order[::-1]:
                rates[name].append(_pass(module, kind, recs))
        old, new = statistics.median(rates["old"]), statistics.median(rates["new"])
        print(f"  {kind:<9} before {old:>10,.0f}/s  after {new:>10,.0f}/s  ({(new / old - 1) * 100:+.1f} %)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workload", type=Path, default=REPO_ROOT / "data" / "demo")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--against", type=Path, help="another opendt/models/messages.py to compare with")
    args = parser.parse_args()
    records = encoded(args.workload)
    total = sum(len(r) for r in records.values())
    print(f"{args.workload}: {total:,} records")
    if args.against is not None:
        compare(_load(args.against), records, args.runs)
        return
    for kind, recs in records.items():
        median, best = rate(kind, recs, args.runs)
        print(f"  {kind:<9} {len(recs):>9,} records  {median:>10,.0f}/s median  {best:>10,.0f}/s best")
    for kind in KINDS:
        per_s, accepted = reject_rate(kind, 20_000)
        print(f"  hostile {kind:<9} {per_s:>10,.0f}/s decoded, {accepted:,} of 20,000 accepted")


if __name__ == "__main__":
    main()
