"""The pure windower: watermark, aligned half-open windows, idempotence, no data loss."""

from __future__ import annotations

import polars as pl
import pytest

from opendt.models.messages import CarbonRow, FragmentRow, PowerRow, TaskRow
from opendt.models.topology import Topology
from opendt.stream.timegate import TimeGate
from opendt.stream.windowing import Windower, window_start
from opendt.workload import FRAGMENT_SCHEMA

W = 300_000
T, F, P, C = ("dc.tasks", 0), ("dc.fragments", 0), ("dc.power", 0), ("dc.carbon", 0)


def _frag(tid: str, t: int, idx: int, usage: float = 1.0) -> FragmentRow:
    return FragmentRow(tid, t, 30_000, 1, usage, idx)


def _task(tid: str, t: int) -> TaskRow:
    return TaskRow(tid, t, 60_000, 1, 100.0, 10)


def _frame(rows: list[FragmentRow], offset: int) -> pl.DataFrame:
    """Fragments as a fetch gives them at once (``FRAGMENT_SCHEMA`` plus the message offsets)."""
    frame = pl.DataFrame(rows, schema=FRAGMENT_SCHEMA, orient="row")
    return frame.with_columns(pl.int_range(offset, offset + frame.height, dtype=pl.Int64).alias("offset"))


def test_windows_are_aligned_to_the_epoch() -> None:
    """Window starts are multiples of the window size since the epoch."""
    assert window_start(1_665_093_612_345, W) == 1_665_093_600_000
    assert window_start(W, W) == W
    assert window_start(W - 1, W) == 0


def test_nothing_closes_until_every_source_has_spoken() -> None:
    """The watermark is unknown until every partition has sent an event or heartbeat."""
    w = Windower(W, [T, F, P])
    w.add_task(T, _task("a", 10_000))
    w.add_fragment(F, _frag("a", 10_000, 0))
    w.heartbeat(T, 10 * W)
    w.heartbeat(F, 10 * W)
    assert w.watermark_ms is None
    assert w.close_ready() == []
    w.heartbeat(P, W)
    closed = w.close_ready()
    assert [c.start_ms for c in closed] == [0]
    assert len(closed[0].tasks) == 1
    assert len(closed[0].fragments) == 1


def test_watermark_is_the_minimum_and_end_is_exclusive() -> None:
    """A window closes only when the slowest source reaches its end; an event at `end` is the next window."""
    w = Windower(W, [F, P])
    w.add_fragment(F, _frag("a", 0, 0))
    w.add_fragment(F, _frag("a", W, 1))  # exactly at the end of window 0 -> window 1
    w.heartbeat(P, W - 1)
    assert w.close_ready() == []
    w.heartbeat(P, W)
    (c0,) = w.close_ready()
    assert (c0.start_ms, c0.end_ms, [f[5] for f in c0.fragments]) == (0, W, [0])


def test_gaps_produce_empty_windows_in_order() -> None:
    """Every window between the first event and the watermark is emitted, empty or not."""
    w = Windower(W, [F])
    w.add_fragment(F, _frag("a", 5, 0))
    w.add_fragment(F, _frag("a", 3 * W + 5, 1))
    w.heartbeat(F, 4 * W)
    closed = w.close_ready()
    assert [c.start_ms for c in closed] == [0, W, 2 * W, 3 * W]
    assert [c.empty for c in closed] == [False, True, True, False]


def test_duplicates_are_dropped_and_counted() -> None:
    """A re-delivered task, fragment or power sample does not double a window."""
    w = Windower(W, [T, F, P])
    assert w.add_task(T, _task("a", 0))
    assert not w.add_task(T, _task("a", 0))
    assert w.add_fragment(F, _frag("a", 0, 0))
    assert w.add_fragment(F, _frag("a", 30_000, 1))
    assert not w.add_fragment(F, _frag("a", 0, 0))
    assert w.add_power(P, PowerRow("dc", 30_000, 1.0, 30.0))
    assert not w.add_power(P, PowerRow("dc", 30_000, 1.0, 30.0))
    for s in (T, F, P):
        w.heartbeat(s, W, final=True)
    (c,) = w.close_ready()
    assert (len(c.tasks), len(c.fragments), len(c.power)) == (1, 2, 1)
    assert w.stats.duplicates == 3


def test_late_events_are_refused_and_reported() -> None:
    """An event for a window already closed (issue 24: a broken promise, an idle source waking up) is refused
    and counted as late, with its time and window (the consumer dead-letters it); it is not merged into the
    next window (that would move its usage in time), and not remembered as received."""
    w = Windower(W, [F])
    w.add_fragment(F, _frag("a", 0, 0))
    w.heartbeat(F, W)
    assert len(w.close_ready()) == 1
    assert not w.add_fragment(F, _frag("b", 10, 0))  # broken promise: time 10 < watermark W
    assert w.last_late == (10, 0)
    w.heartbeat(F, 2 * W)
    (c,) = w.close_ready()
    assert c.start_ms == W
    assert c.fragments == []
    assert w.stats.late == 1
    assert not w.add_fragment(F, _frag("b", 10, 0))  # sent again: late again, not a duplicate
    assert (w.stats.late, w.stats.duplicates) == (2, 0)


def test_idle_sources_stop_holding_the_watermark() -> None:
    """A source marked idle (the consumer: silent, nothing left to read) does not hold the watermark; when
    every source is idle, the consumer's clock estimate does; a source that speaks again holds it again."""
    w = Windower(W, [T, F])
    w.add_task(T, _task("a", 0))
    assert w.close_ready() == []  # F never spoke
    w.set_idle(F, True)
    w.heartbeat(T, 2 * W)
    assert [c.start_ms for c in w.close_ready()] == [0, W]
    w.set_idle(T, True)
    assert w.close_ready() == []  # every source idle, no clock estimate yet
    w.clock_ms = 3 * W
    assert [c.start_ms for c in w.close_ready()] == [2 * W]
    w.clock_ms = None
    w.set_idle(F, False)
    w.add_fragment(F, _frag("a", 3 * W + 5, 0))
    w.set_idle(T, False)
    w.heartbeat(T, 5 * W)
    assert [c.start_ms for c in w.close_ready()] == []  # F (at 3W + 5) holds it
    assert w.holding() == [(F, 3 * W + 5)]


def test_final_heartbeat_closes_everything_once() -> None:
    """The final heartbeats close all open windows, mark the last one final, and closing is idempotent."""
    w = Windower(W, [T, F])
    w.add_task(T, _task("a", 0))
    w.add_fragment(F, _frag("a", 2 * W + 1, 0))
    w.heartbeat(T, 2 * W, final=True)
    assert [c.start_ms for c in w.close_ready()] == [0, W]  # the fragments source is at 2W+1
    w.heartbeat(F, 2 * W + 1, final=True)
    closed = w.close_ready()
    assert [(c.start_ms, c.final) for c in closed] == [(2 * W, True)]
    assert w.finished
    assert w.close_ready() == []
    assert w.stats.windows_closed == 3


def test_events_before_the_first_are_accepted_until_a_window_closes() -> None:
    """Sources interleave: an earlier event arriving second still opens the earlier window."""
    w = Windower(W, [T, F])
    w.add_fragment(F, _frag("a", 2 * W, 0))
    w.add_task(T, _task("b", 10))
    w.heartbeat(T, 3 * W)
    w.heartbeat(F, 3 * W)
    assert [c.start_ms for c in w.close_ready()] == [0, W, 2 * W]


def test_unknown_source_and_bad_size_are_errors() -> None:
    """Programming errors surface immediately."""
    w = Windower(W, [F])
    with pytest.raises(KeyError):
        w.heartbeat(("other", 0), 5)
    with pytest.raises(ValueError, match="window_ms"):
        Windower(0, [F])


def test_nothing_that_arrives_first_makes_real_events_duplicates() -> None:
    """A forged fragment with a high index, or a power sample ahead, arriving first makes no real event a
    duplicate (only an exact re-delivery is one); a task id re-sent with other content is a conflict, not a
    duplicate, and the first keeps the id."""
    w = Windower(W, [T, F, P])
    assert w.add_fragment(F, _frag("a", 0, 1000))  # forged, first
    assert all(w.add_fragment(F, _frag("a", i * 1000, i)) for i in range(21))
    assert not w.add_fragment(F, _frag("a", 5000, 5))  # a re-delivery
    assert w.add_power(P, PowerRow("dc", 200_000, 1.0, 1.0))  # ahead, first
    assert all(w.add_power(P, PowerRow("dc", t, 1.0, 1.0)) for t in range(0, 200_000, 30_000))
    assert w.add_task(T, _task("a", 0))
    assert not w.add_task(T, _task("a", 0))  # re-delivered: a duplicate
    assert not w.add_task(T, TaskRow("a", 0, 60_000, 2, 100.0, 10))  # other content: a conflict
    assert (w.stats.duplicates, w.stats.conflicts) == (2, 1)


def test_a_final_heartbeat_is_taken_back_when_its_source_goes_on() -> None:
    """Forged final heartbeats on every source, then the stream goes on: each is taken back by the source's
    next message, nothing closes as final, and the real end later closes everything once."""
    w = Windower(W, [T, F])
    w.add_task(T, _task("a", 10))
    w.add_fragment(F, _frag("a", 10, 0))
    w.heartbeat(T, 20, final=True)
    w.heartbeat(F, 20, final=True)
    assert [w.all_final] == [True]  # (a list: mypy would narrow the property and call the next check dead)
    assert w.close_ready(final_ok=False) == []  # the consumer has not believed the end yet
    w.add_task(T, _task("b", 2 * W + 5))
    w.add_fragment(F, _frag("b", 2 * W + 5, 0))
    assert not w.all_final
    assert w.stats.finals_revoked == 2
    assert [c.start_ms for c in w.close_ready()] == [0, W]
    w.heartbeat(T, 3 * W, final=True)
    w.heartbeat(F, 3 * W, final=True)
    closed = w.close_ready()
    assert [(c.start_ms, c.final) for c in closed] == [(2 * W, True)]
    assert w.finished


def test_a_long_gap_closes_a_few_windows_at_a_time() -> None:
    """A month-long gap closes in steps of ``limit`` windows, in order, none lost."""
    w = Windower(W, [F])
    w.add_fragment(F, _frag("a", 0, 0))
    w.heartbeat(F, 30 * 288 * W)
    starts: list[int] = []
    while batch := w.close_ready(limit=64):
        assert len(batch) <= 64
        starts += [c.start_ms for c in batch]
    assert starts == list(range(0, starts[-1] + W, W))
    assert len(starts) == 30 * 288


MEMORY = {"memory": {"memorySize": 1000}}


def _topology(cores: int) -> Topology:
    return Topology.model_validate(
        {
            "clusters": [
                {
                    "name": "C",
                    "hosts": [{"name": "H", "cpu": {"coreCount": cores, "coreSpeed": 2000}, **MEMORY}],
                }
            ]
        }
    )


def test_far_future_topologies_cannot_lock_out_a_real_change() -> None:
    """Issue 29: a full waiting list drops its furthest-future entry for a nearer one (16 topologies dated
    2199 kept every real change out before); two topologies with one timestamp and other content are a
    conflict, counted (the later applies)."""
    w = Windower(W, [F], need_topology=True)
    forged = 7_226_582_400_000
    for k in range(16):
        w.add_topology(forged + k, _topology(8))
    assert w.evict_furthest_topology(W) == forged + 15
    assert w.add_topology(W, _topology(16))
    assert w.pending_topologies == 16
    assert not w.add_topology(W, _topology(32))  # same time, other content
    assert w.stats.conflicts == 1
    w.add_fragment(F, _frag("a", 0, 0))
    w.heartbeat(F, 3 * W)
    closed = w.close_ready()
    applied = [c.topology.clusters[0].hosts[0].cpu.coreCount for c in closed if c.topology is not None]
    assert applied[-1] == 32
    assert w.evict_furthest_topology(forged + 100) is None  # nothing later than that waits


def test_carbon_steps_out_of_order_are_inserted_where_they_belong() -> None:
    """Issue 29: a carbon step older than the newest one held is inserted in time order (before, it was
    dropped as a duplicate); a step at an instant held is a duplicate (same intensity) or a correction (other
    intensity: a conflict, the later applies); one for a window closed already is late, never merged."""
    w = Windower(W, [F, C], strict_sources=[C])
    w.add_fragment(F, _frag("a", 0, 0))
    for t, v in [(W, 2.0), (0, 1.0), (2 * W, 3.0), (W + W // 2, 9.0)]:
        assert w.add_carbon(C, CarbonRow(t, v))
    assert not w.add_carbon(C, CarbonRow(W, 2.0))  # a duplicate
    assert w.add_carbon(C, CarbonRow(W + W // 2, 2.5))  # a correction
    assert (w.stats.duplicates, w.stats.conflicts) == (1, 1)
    w.heartbeat(F, 2 * W)
    w.heartbeat(C, 2 * W + 1)  # a strict source: it passed the end
    c0, c1 = w.close_ready()
    assert [(c.timestamp_ms, c.carbon_intensity) for c in c0.carbon] == [(0, 1.0), (W, 2.0)]
    assert [(c.timestamp_ms, c.carbon_intensity) for c in c1.carbon] == [(W + W // 2, 2.5), (2 * W, 3.0)]
    assert not w.add_carbon(C, CarbonRow(W + 1, 4.0))  # window [W, 2W) used the intensity of its time
    assert (w.stats.late, w.last_late) == (1, (W + 1, W))
    assert not w.add_carbon(C, CarbonRow(2 * W, 3.0))  # carried already: a duplicate, not late
    assert (w.stats.duplicates, w.stats.late) == (2, 1)


def test_confirmed_forged_carbon_steps_do_not_drop_the_real_ones() -> None:
    """Issue 29: ``jump_confirm + 1`` forged carbon steps a day ahead pass the time gate as a jump; the real
    steps after them (older than the forged ones) are still inserted where they belong, not dropped as
    duplicates (before: 99 real steps dropped, carbon −12 %)."""
    gate: TimeGate[CarbonRow] = TimeGate(3_600_000, confirm=3)
    w = Windower(W, [F, C], strict_sources=[C])
    day = 86_400_000

    def offer(row: CarbonRow) -> None:
        for v in gate.offer(C, row.timestamp_ms, row, series=True):
            assert v.accepted
            w.add_carbon(C, v.item)

    for k in range(3):
        offer(CarbonRow(k * W, 100.0 + k))
    for k in range(4):
        offer(CarbonRow(day + k * 1000, 999.0))
    assert gate.stats.jumps == 1
    for k in range(3, 12):
        offer(CarbonRow(k * W, 100.0 + k))
    assert w.stats.duplicates == 0
    w.add_fragment(F, _frag("a", 0, 0))
    w.heartbeat(F, 10 * W)
    carried = [c for window in w.close_ready() for c in window.carbon]
    assert [c.carbon_intensity for c in carried] == [100.0 + k for k in range(11)]


def test_fragments_read_before_their_task_are_held_then_windowed() -> None:
    """Issue 29: a fragment whose task has not been received is held, not windowed; its task arriving (from
    another partition, later) windows it where it belongs, exactly as if it had come after its task. A
    fetch's fragments at once hold the same ones."""
    w = Windower(W, [T, F], max_orphans=10)
    assert w.add_fragment(F, _frag("a", 10_000, 0), 7)
    assert w.orphans_held == 1
    assert w.add_task(T, _task("a", 10_000))
    assert w.orphans_held == 0
    w.heartbeat(T, W)
    w.heartbeat(F, W)
    (c0,) = w.close_ready()
    assert ([t.id for t in c0.tasks], [f.id for f in c0.fragment_rows()]) == (["a"], ["a"])
    assert (w.stats.orphans, w.orphaned) == (0, [])


def test_fragments_of_tasks_never_sent_are_dead_lettered_when_their_window_closes() -> None:
    """Issue 29: fragments of task ids never sent are held until their window closes, then handed back as
    orphans (the consumer dead-letters them), never windowed; at most ``max_orphans`` are held (one more is
    refused at once); the stream's end hands back every one still held. Before, each was windowed."""
    frame = _frame([_frag(f"ghost-{k}", W + k, 0, 5.0) for k in range(3)], 100)
    w = Windower(W, [T, F], max_orphans=5)
    w.add_task(T, _task("a", 0))
    assert w.add_fragments(F, pl.concat([frame, _frame([_frag("a", 0, 0)], 99)])) == {W: 100, 0: 99}
    assert w.add_fragments(F, _frame([_frag("ghost-0", W + 9, 1)], 103)) == {W: 103}  # still not known
    assert w.add_fragment(F, _frag("ghost-x", 3 * W, 0), 200)
    assert not w.add_fragment(F, _frag("ghost-y", 3 * W, 0), 201)  # the sixth: refused at once
    assert w.orphans_held == 5
    w.heartbeat(T, 2 * W)
    w.heartbeat(F, 2 * W)
    closed = w.close_ready()
    assert [f.id for c in closed for f in c.fragment_rows()] == ["a"]
    orphaned = [(h.offset, h.row.id) for h, _ in w.orphaned]
    assert orphaned == [
        (201, "ghost-y"),
        (100, "ghost-0"),
        (103, "ghost-0"),
        (101, "ghost-1"),
        (102, "ghost-2"),
    ]
    assert "not received by the end of the fragment's window" in w.orphaned[-1][1]
    assert (w.stats.orphans, w.orphans_held) == (5, 1)
    w.orphaned.clear()
    w.heartbeat(T, 2 * W, final=True)
    w.heartbeat(F, 2 * W, final=True)
    w.close_ready()
    assert w.finished
    assert [h.row.id for h, _ in w.orphaned] == ["ghost-x"]


def test_tasks_read_far_ahead_stay_known_for_their_fragments() -> None:
    """A small tasks topic is read to its end long before the fragments (a backlog, SURF's week): its tasks
    stay known while the windows closed are within the horizon of them, so their fragments are windowed, not
    orphans (the newest event read, a week ahead, does not expire them: it made 2.2 M of SURF's 2.4 M
    records orphans)."""
    day = 86_400_000
    w = Windower(W, [T, F], dedup_horizon_ms=day, max_orphans=10)
    for k in range(8):
        w.add_task(T, _task(f"t{k}", k * day))
    w.heartbeat(T, 8 * day)
    w.add_fragment(F, _frag("t0", 0, 0), 1)
    w.add_fragment(F, _frag("t1", day, 0), 2)
    w.heartbeat(F, day + W)
    assert w.orphans_held == 0
    assert sum(c.n_fragments for c in w.close_ready()) == 2
    assert w.stats.orphans == 0
