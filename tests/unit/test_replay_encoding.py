"""The replay's records, encoded a chunk at a time while the chunk before is sent: the same records in the same
order as one encoding of the whole trace, each the DESIGN §4 JSON of its row."""

from __future__ import annotations

import json

import polars as pl
import pytest

from opendt.models.messages import iso_ms
from opendt.settings import REPO_ROOT, ReplaySettings, TopicNames
from opendt.stream import replay
from opendt.stream.replay import ReplayProducer, encode_chunk, event_order
from opendt.workload import load_workload

DEMO = REPO_ROOT / "data" / "demo"


async def test_chunks_equal_the_whole_trace_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    wl = load_workload(DEMO)
    streams = replay.streams_of(wl, 'dc "1"')
    whole = encode_chunk(streams, event_order(streams))  # the whole trace in one chunk
    monkeypatch.setattr(replay, "CHUNK", 997)
    producer = ReplayProducer(wl, None, TopicNames(), ReplaySettings(), None)  # type: ignore[arg-type]
    parts = [c async for c in producer._chunks(streams, event_order(streams))]
    assert len(parts) == -(-whole.height // 997) > 3
    assert pl.concat(parts).equals(whole)

    # trace time order, tasks before fragments at one instant, rows in file order within a stream
    assert whole["t"].is_sorted()
    assert wl.consumption is not None
    assert wl.carbon is not None
    assert whole.height == wl.tasks.height + wl.fragments.height + wl.consumption.height + wl.carbon.height
    carbon = whole.filter(pl.col("stream") == replay.KINDS.index("carbon"))
    assert json.loads(carbon["key"][0]) == "datacenter"
    assert json.loads(carbon["value"][0]) == {
        "timestamp": iso_ms(int(wl.carbon["timestamp_ms"][0])),
        "carbon_intensity": wl.carbon["carbon_intensity"][0],
    }
    first = whole.filter(pl.col("stream") == replay.KINDS.index("fragments")).head(3)
    for (key, value), row in zip(first.select("key", "value").rows(), wl.fragments.head(3).iter_rows(named=True),
                                 strict=True):  # fmt: skip
        assert json.loads(key) == {"id": row["id"]}
        v = json.loads(value)
        assert (v["duration"], v["cpu_count"], v["cpu_usage"], v["index"]) == (
            row["duration"], row["cpu_count"], row["cpu_usage"], row["index"]
        )  # fmt: skip
    power = whole.filter(pl.col("stream") == replay.KINDS.index("power"))
    assert json.loads(power["key"][0]) == {"source": 'dc "1"'}
    at = whole.group_by("t", maintain_order=True).agg(pl.col("stream").is_sorted().alias("ok"))
    assert at["ok"].all()


async def test_an_empty_trace_has_no_chunks() -> None:
    wl = load_workload(DEMO)
    streams = [
        replay._Stream(s.kind, s.frame.clear(), s.t, s.key, s.value) for s in replay.streams_of(wl, "x")
    ]
    producer = ReplayProducer(wl, None, TopicNames(), ReplaySettings(), None)  # type: ignore[arg-type]
    assert [c async for c in producer._chunks(streams, event_order(streams))] == []
