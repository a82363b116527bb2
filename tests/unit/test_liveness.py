"""/health's stream stall (issue 24): the watermark has not moved for ``api.health_stall_s`` of wall time
while records keep arriving (a partition whose clock is stuck, a producer re-sending old records). A quiet
stream (nothing arriving) is not a stall, and the problem clears as soon as the watermark moves."""

from __future__ import annotations

from opendt.clock import FakeClock
from opendt.twin.liveness import Liveness


def test_a_stuck_watermark_with_records_arriving_is_a_stall() -> None:
    clock = FakeClock()
    stream = {"watermark": 1_704_067_200_000, "records": 0}
    live = Liveness(
        None,
        lambda: None,
        interval_s=1,
        probe_timeout_s=1,
        broker_limit_s=20,
        loop_limit_s=150,
        stream=lambda: (stream["watermark"], stream["records"]),
        stall_limit_s=60,
        clock=clock.monotonic,
    )
    assert live.problems() == []
    clock.advance(120)
    assert live.problems() == []  # quiet: nothing arrived
    stream["records"] += 500
    [problem] = live.problems()
    assert "watermark (2024-01-01T00:00:00.000Z) has not moved for 120 s while 500 records arrived" in problem
    stream["watermark"] += 300_000
    assert live.problems() == []
    stream["records"] += 10
    clock.advance(30)
    assert live.problems() == []  # moved 30 s ago
