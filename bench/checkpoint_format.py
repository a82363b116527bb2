"""Checkpoint engine state: size and write/read time of the data format (:mod:`opendt.engine.state`) against
the pickle + zstd format it replaced (computed here, for comparison only; OpenDT no longer reads pickles).

    .venv/bin/python bench/checkpoint_format.py [--workload data/surf] [--every-h 24]

The engine advances over the workload in 5-minute windows (the twin's way); every ``--every-h`` hours of
trace time its state is written in both formats (``archive="running"``, what a checkpoint keeps) and read
back; the read-back engine must give the same rows as the original over the next window. Printed per
instant: tasks known, sizes, and the best of 3 write/read times.
"""

from __future__ import annotations

import argparse
import pickle
import time
from pathlib import Path

import polars as pl
import pyarrow as pa

from opendt.engine import Engine
from opendt.worker.warm import load_snapshot, snapshot
from opendt.workload import load_workload

W = 300_000
ZSTD = pa.Codec("zstd", compression_level=3)


def best(fn: object, n: int = 3) -> float:
    assert callable(fn)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def old_write(engine: Engine) -> bytes:
    kept = engine.frags.archive
    import numpy as np

    from opendt.engine.placement import RUNNING

    if kept:
        state = np.asarray(engine.sched.state)
        parts = [np.concatenate(col) for col in zip(*kept, strict=True)]
        live = state[parts[0]] == RUNNING
        engine.frags.archive = [(parts[0][live], parts[1][live], parts[2][live], parts[3][live])]
    try:
        raw = pickle.dumps(engine, protocol=pickle.HIGHEST_PROTOCOL)
    finally:
        engine.frags.archive = kept
    packed: bytes = ZSTD.compress(raw, asbytes=True)
    return len(raw).to_bytes(8, "little") + packed


def old_read(blob: bytes) -> object:
    size = int.from_bytes(blob[:8], "little")
    raw = ZSTD.decompress(blob[8:], decompressed_size=size, asbytes=True)
    return pickle.loads(raw)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", default="data/demo")
    ap.add_argument("--every-h", type=float, default=24.0)
    args = ap.parse_args()
    wl = load_workload(Path(args.workload))
    carbon = wl.carbon.rename({"timestamp_ms": "timestamp"}) if wl.carbon is not None else None
    start = wl.origin_ms // W * W
    every = int(args.every_h * 3_600_000)
    eng = Engine(wl.topology, export_interval_ms=150_000, carbon=carbon)
    print(f"{args.workload}: {wl.tasks.height} tasks, {wl.fragments.height} fragments")
    print(
        "trace_h  tasks  pickle_zstd_B  data_B  pickle_write_ms  data_write_ms  pickle_read_ms  data_read_ms"
    )
    b = start + W
    while b <= wl.end_ms + W:
        sel = (pl.col("submission_ms") >= b - W) & (pl.col("submission_ms") < b)
        tasks, frags = wl.tasks.filter(sel), wl.fragments.filter(sel)
        if (b - start) % every == 0:
            old = old_write(eng)
            new = snapshot(eng, "running")
            tw_old, tw_new = best(lambda: old_write(eng)), best(lambda: snapshot(eng, "running"))
            tr_old = best(lambda old=old: old_read(old))
            tr_new = best(lambda new=new: load_snapshot(new))
            again = load_snapshot(new)
            same = again.advance(b, tasks, frags, carbon).equals(eng.advance(b, tasks, frags, carbon))
            assert same, f"the read-back engine differs at {b}"
            print(
                f"{(b - start) / 3.6e6:7.1f}  {len(eng.ids):5d}  {len(old):13d}  {len(new):6d}  "
                f"{tw_old * 1e3:15.2f}  {tw_new * 1e3:13.2f}  {tr_old * 1e3:14.2f}  {tr_new * 1e3:12.2f}"
            )
        else:
            eng.advance(b, tasks, frags, carbon)
        b += W


if __name__ == "__main__":
    main()
