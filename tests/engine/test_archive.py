"""The running-archive snapshot (opendt/worker/warm.py, a checkpoint's) leaves the engine's fragment archive
with the running tasks' fragments only, as a restored checkpoint has it: bounded, and the results are the same
afterwards, a structural topology change (tasks re-queued from their archived fragments) included."""

from __future__ import annotations

import numpy as np
import polars as pl

from opendt.engine import Engine
from opendt.engine.placement import RUNNING
from opendt.worker.warm import snapshot

from .conftest import host_spec, linear, random_trace, topo, windows


def _archived(eng: Engine) -> list[int]:
    archive = eng.frags.archive
    assert archive is not None
    return [int(t) for part in archive for t in part[0]]


def test_snapshots_keep_the_archive_to_running_tasks_and_change_no_result() -> None:
    tasks, frags = random_trace(11, n_tasks=40)
    big = topo(("C", [host_spec("H", 4, 16, 2000.0, linear())]))
    small = topo(("C", [host_spec("H", 1, 16, 2000.0, linear())]))
    parts = windows(tasks, frags, 300_000)

    def run(snapshots: bool) -> tuple[pl.DataFrame, Engine, list[int]]:
        eng = Engine(big, export_interval_ms=60_000)
        out, sizes = [], []
        for i, (until, wt, wf) in enumerate(parts):
            if i == 4:
                eng.set_topology(small)  # removed hosts: their tasks re-queued from the archive
            out.append(eng.advance(until, wt, wf))
            if snapshots:
                snapshot(eng, "running")
                running = set(np.flatnonzero(np.asarray(eng.sched.state) == RUNNING).tolist())
                archived = _archived(eng)
                assert set(archived) <= running
                sizes.append(len(archived))
        out.append(eng.finish())
        return pl.concat(out), eng, sizes

    with_snapshots, eng, sizes = run(True)
    without, plain, _ = run(False)
    assert plain.sched.requeued_at, "the topology change re-queued no task"
    assert with_snapshots.equals(without)
    assert eng.sched.finish == plain.sched.finish
    assert len(_archived(plain)) > max(sizes), "without snapshots the archive keeps every placed fragment"
