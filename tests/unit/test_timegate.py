"""The time gate: which message times the twin believes (issue 20's time attacks, as pure cases)."""

from __future__ import annotations

import pytest

from opendt.stream.timegate import Judged, TimeGate

H = 3_600_000  # the skew used here: one hour
DAY = 24 * H
T0 = 1_709_510_400_000  # 2024-03-04T00:00Z
P = ("dc.tasks", 0)


def _accepted(verdicts: list[Judged[str]]) -> list[str]:
    return [v.item for v in verdicts if v.accepted]


def _rejected(verdicts: list[Judged[str]]) -> list[str]:
    return [v.item for v in verdicts if not v.accepted]


def _feed(
    gate: TimeGate[str], msgs: list[tuple[str, int]], *, final_last: bool = False
) -> tuple[list[str], list[str]]:
    acc: list[str] = []
    rej: list[str] = []
    for i, (name, t) in enumerate(msgs):
        out = gate.offer(P, t, name, final=final_last and i == len(msgs) - 1)
        acc += _accepted(out)
        rej += _rejected(out)
    return acc, rej


def test_a_steady_stream_passes_in_order_and_the_first_message_waits_for_the_second() -> None:
    """Messages a minute apart all pass, in order; the partition's first message is held until its second
    confirms it (then both pass together)."""
    gate: TimeGate[str] = TimeGate(H)
    assert gate.offer(P, T0, "a") == []
    assert gate.holding(P)
    acc, rej = _feed(gate, [(f"m{i}", T0 + i * 60_000) for i in range(1, 6)])
    assert acc == ["a", "m1", "m2", "m3", "m4", "m5"]
    assert rej == []
    assert gate.accepted_ms(P) == T0 + 5 * 60_000


@pytest.mark.parametrize(
    ("name", "t"),
    [
        ("a year ahead", T0 + 365 * DAY),
        ("year 2199", 7_226_582_400_000),
        ("1.5 days ahead (a heartbeat)", T0 + 36 * H),
        ("a power sample 20 h ahead", T0 + 20 * H),
    ],
)
def test_one_message_far_ahead_is_rejected_and_moves_nothing(name: str, t: int) -> None:
    """One outlier mid-stream is held, rejected when the partition's next message does not confirm it, and
    never moves the partition's accepted time; the stream goes on."""
    gate: TimeGate[str] = TimeGate(H)
    _feed(gate, [("a", T0), ("b", T0 + 60_000)])
    acc, rej = _feed(gate, [(name, t), ("c", T0 + 120_000), ("d", T0 + 180_000)])
    assert rej == [name]
    assert acc == ["c", "d"]
    assert gate.accepted_ms(P) == T0 + 180_000
    assert gate.stats.rejected == 1


def test_a_single_outlier_cannot_start_the_run() -> None:
    """A task dated 1970 (or 2199) sent before the real stream is the partition's first message: the next
    message does not confirm it, so it is rejected and the real stream starts the partition."""
    for outlier in (0, 7_226_582_400_000):
        gate: TimeGate[str] = TimeGate(H)
        acc, rej = _feed(gate, [("outlier", outlier), ("a", T0), ("b", T0 + 60_000)])
        assert rej == ["outlier"]
        assert acc == ["a", "b"]


def test_a_real_jump_is_confirmed_by_the_next_messages() -> None:
    """A partition that really jumps (a gap of two days without heartbeats) goes on: once ``confirm`` (3)
    messages after the jump are near it, they all pass and the jump is counted (held until then)."""
    gate: TimeGate[str] = TimeGate(H)
    _feed(gate, [("a", T0), ("b", T0 + 60_000)])
    after = [(m, T0 + 2 * DAY + k * 60_000) for k, m in enumerate("cdef")]
    acc, rej = _feed(gate, after[:3])
    assert (acc, rej) == ([], [])
    assert gate.holding(P)
    acc, rej = _feed(gate, after[3:])
    assert (acc, rej) == (["c", "d", "e", "f"], [])
    assert gate.stats.jumps == 1


@pytest.mark.parametrize("forged", [1, 2, 3])
def test_forged_records_in_a_row_do_not_move_time(forged: int) -> None:
    """Issue 29: two (or three) forged records 36 h ahead, back to back, confirmed each other before; now the
    real stream going on at its own time rejects them all, and the partition's time never moved."""
    gate: TimeGate[str] = TimeGate(H)
    _feed(gate, [("a", T0), ("b", T0 + 60_000)])
    lies = [(f"lie{k}", T0 + 36 * H + k) for k in range(forged)]
    acc, rej = _feed(gate, [*lies, ("c", T0 + 120_000)])
    assert (acc, rej) == (["c"], [name for name, _ in lies])
    assert gate.accepted_ms(P) == T0 + 120_000


def test_a_live_twin_believes_nothing_far_ahead_of_the_wall_clock() -> None:
    """--no-replay: a record more than the skew ahead of now is rejected, however many confirm it."""
    now = T0 + DAY
    gate: TimeGate[str] = TimeGate(H, now_ms=lambda: now)
    _feed(gate, [("a", T0), ("b", T0 + 60_000)])
    acc, rej = _feed(gate, [(f"x{k}", now + 2 * H + k) for k in range(6)])
    assert acc == []
    assert len(rej) == 6
    assert _accepted(gate.offer(P, T0 + 120_000, "c")) == ["c"]
    assert gate.accepted_ms(P) == T0 + 120_000


def test_messages_long_before_the_run_start_are_rejected_at_once() -> None:
    """Once the run has started, a message more than the skew before its first window is rejected; one
    within the skew (a late event) passes."""
    gate: TimeGate[str] = TimeGate(H, run_start_ms=T0)
    _feed(gate, [("a", T0), ("b", T0 + 60_000)])
    out = gate.offer(P, 0, "1970")
    assert _rejected(out) == ["1970"]
    assert "before the run's start" in out[0].reason
    assert _accepted(gate.offer(P, T0 - H // 2, "late")) == ["late"]


def test_a_final_heartbeat_is_never_held_and_settles_what_is_held() -> None:
    """The stream's end after a long silent gap passes, and so does a message held just before it (not
    after the end); one held beyond the end is rejected."""
    gate: TimeGate[str] = TimeGate(H)
    _feed(gate, [("a", T0), ("b", T0 + 60_000)])
    acc, _ = _feed(gate, [("last", T0 + 3 * DAY), ("end", T0 + 3 * DAY + 1000)], final_last=True)
    assert acc == ["last", "end"]
    gate = TimeGate(H)
    _feed(gate, [("a", T0), ("b", T0 + 60_000)])
    acc, rej = _feed(gate, [("2199", 7_226_582_400_000), ("end", T0 + 120_000)], final_last=True)
    assert (acc, rej) == (["end"], ["2199"])


def test_topologies_ahead_are_believed_and_ones_before_the_run_are_not() -> None:
    """A physical topology dated ahead of every partition is believed (it waits for its time; carbon steps
    read early or a lagging producer say nothing about it: SURF's topology was quarantined against carbon
    times before this); one more than the skew before the run's start is rejected."""
    gate: TimeGate[str] = TimeGate(H, run_start_ms=T0)
    _feed(gate, [("a", T0 - 100 * DAY), ("b", T0 - 100 * DAY + 60_000)])  # e.g. carbon steps read first
    assert gate.judge_topology(T0) is None
    assert gate.judge_topology(T0 + 365 * DAY) is None
    why = gate.judge_topology(T0 - 2 * H)
    assert why is not None
    assert "before the run's start" in why


def test_the_gate_holds_at_most_one_message_per_partition() -> None:
    """Ten thousand outliers in a row on one partition: memory does not grow (one held at a time), every one
    but the last is rejected, and a normal message then rejects the last."""
    gate: TimeGate[str] = TimeGate(H)
    _feed(gate, [("a", T0), ("b", T0 + 60_000)])
    rejected = 0
    for i in range(10_000):
        rejected += len(_rejected(gate.offer(P, T0 + (i + 2) * 10 * DAY, f"x{i}")))
    assert rejected == 9_999
    assert len(gate._held) == 1
    acc, rej = _feed(gate, [("c", T0 + 120_000)])
    assert (acc, rej) == (["c"], ["x9999"])


def test_a_forged_end_far_ahead_or_first_is_rejected() -> None:
    """A final heartbeat as a partition's first message, or a day and a half ahead of its accepted time, is
    rejected (it would close every window up to it); one within the skew of the partition passes."""
    gate: TimeGate[str] = TimeGate(H)
    [v] = gate.offer(P, T0 + 36 * H, "forged", final=True)
    assert not v.accepted
    assert "first message" in v.reason
    _feed(gate, [("a", T0), ("b", T0 + 60_000)])
    [v] = gate.offer(P, T0 + 36 * H, "forged", final=True)
    assert not v.accepted
    assert "ahead of its partition" in v.reason
    [v] = gate.offer(P, T0 + 60_000 + H // 2, "end", final=True)
    assert v.accepted


def test_after_a_restart_an_end_as_first_message_is_judged_by_the_resume_point() -> None:
    """A restart whose partition has nothing left but its end: the end passes when near the resume point."""
    gate: TimeGate[str] = TimeGate(H, run_start_ms=T0, resume_ms=T0 + DAY)
    [v] = gate.offer(P, T0 + DAY + 60_000, "end", final=True)
    assert v.accepted
    gate = TimeGate(H, run_start_ms=T0, resume_ms=T0 + DAY)
    [v] = gate.offer(P, T0 + 3 * DAY, "forged", final=True)
    assert not v.accepted


def test_a_rejected_end_does_not_pass_what_is_held() -> None:
    """Mid-stream, a sample 20 h ahead then a forged end 36 h ahead: the end is rejected and does not vouch
    for the held sample, which the partition's next real message rejects."""
    gate: TimeGate[str] = TimeGate(H)
    _feed(gate, [("a", T0), ("b", T0 + 60_000)])
    assert gate.offer(P, T0 + 20 * H, "ahead") == []
    [v] = gate.offer(P, T0 + 36 * H, "forged", final=True)
    assert not v.accepted
    assert gate.holding(P)
    acc, rej = _feed(gate, [("c", T0 + 120_000)])
    assert (acc, rej) == (["c"], ["ahead"])


def test_a_step_series_may_reach_back_before_the_run() -> None:
    """Carbon steps months before the run's start (the intensity in effect at its start, replayed again on a
    restart) pass; an event that old is rejected."""
    gate: TimeGate[str] = TimeGate(H, run_start_ms=T0)
    acc, rej = [], []
    for i, t in enumerate([T0 - 200 * DAY, T0 - 200 * DAY + 900_000, T0 - 200 * DAY + 1_800_000]):
        out = gate.offer(P, t, f"step{i}", series=True)
        acc += _accepted(out)
        rej += _rejected(out)
    assert (acc, rej) == (["step0", "step1", "step2"], [])
    [v] = gate.offer(("dc.tasks", 1), T0 - 200 * DAY, "task")
    assert not v.accepted
