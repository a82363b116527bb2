"""Columnar ingest equals record-by-record ingest (issue 30): the decoder of a whole fetch accepts exactly the
records the per-record decoder accepts, with the same values and the same reasons for the others, whatever
mix of per-record messages and NDJSON batches carries them; the windower's and the time gate's fetch-at-once
paths end in the same state as one record at a time. Random fetches, seeded, with hostile records mixed in."""

from __future__ import annotations

import random
from collections.abc import Hashable

import numpy as np
import orjson
import polars as pl
import pytest

from opendt.models.fastdecode import decode_row
from opendt.models.messages import FragmentRow, Heartbeat, MessageError, TaskRow
from opendt.stream.columns import MAX_BATCH_RECORDS, NDJSON, SCHEMAS, Item, decode_fetch, decode_line
from opendt.stream.timegate import TimeGate
from opendt.stream.windowing import Window, Windower

BATCH = (("content-type", NDJSON.encode()),)
T0 = 1_704_067_200_000


def _iso(ms: int) -> str:
    return np.datetime_as_string(np.datetime64(ms, "ms"), unit="ms") + "Z"


def _fragment(rng: random.Random, i: int) -> dict[str, object]:
    return {
        "submission_time": _iso(T0 + i * 1000),
        "duration": rng.randrange(0, 600_000),
        "cpu_count": rng.randrange(1, 64),
        "cpu_usage": rng.choice([rng.random() * 5000, rng.randrange(0, 4000)]),
        "index": rng.randrange(0, 50),
    }


MUTATIONS = [
    lambda r, v: {**v, "cpu_count": 0},
    lambda r, v: {**v, "cpu_count": "4"},
    lambda r, v: {**v, "duration": 1.5},
    lambda r, v: {**v, "duration": 2**62},
    lambda r, v: {**v, "index": -1},
    lambda r, v: {**v, "cpu_usage": 1e300},
    lambda r, v: {**v, "extra": 1},
    lambda r, v: {k: x for k, x in v.items() if k != "index"},
    lambda r, v: {**v, "submission_time": "2024-01-01T00:00:00"},  # no zone
    lambda r, v: {**v, "submission_time": "2024-01-01T01:00:00+01:00"},  # an offset: valid
    lambda r, v: {**v, "submission_time": "2024-02-30T00:00:00Z"},
    lambda r, v: {**v, "submission_time": 1704067200},
    lambda r, v: {**v, "cpu_count": None},
    lambda r, v: {**v, "cpu_usage": True},
]


def _fetch(rng: random.Random, n: int, hostile: float) -> tuple[list[Item], list[tuple[bytes | None, bytes]]]:
    """A fetch: per-record messages and batches (key field inline), some records mutated; and each record
    as the per-record decoder sees it (key, value)."""
    messages: list[Item] = []
    singles: list[tuple[bytes | None, bytes]] = []
    i = offset = 0
    while i < n:
        if rng.random() < 0.4:  # a batch
            lines = []
            for _ in range(rng.randrange(1, 40)):
                value = _fragment(rng, i)
                if rng.random() < hostile:
                    value = rng.choice(MUTATIONS)(rng, value)
                ident: object = rng.choice([f"t{rng.randrange(30)}", rng.randrange(30)])
                line = orjson.dumps({"id": ident, **value})
                if rng.random() < hostile / 3:
                    line = rng.choice([b"not json", b"[1,2]", b'{"submission_time": 3}', b""])
                lines.append(line)
                singles.append((None, line))
                i += 1
            if lines[-1] == b"":  # a trailing newline ends the last line: it is no record
                lines.append(b"[]")
                singles.append((None, b"[]"))
                i += 1
            messages.append(Item("f", 0, offset, b'"datacenter"', b"\n".join(lines), headers=BATCH))
        elif rng.random() < 0.1:
            value_b = orjson.dumps({"heartbeat": _iso(T0 + i * 1000)})
            messages.append(Item("f", 0, offset, None, value_b))
            singles.append((None, value_b))
            i += 1
        else:
            value = _fragment(rng, i)
            if rng.random() < hostile:
                value = rng.choice(MUTATIONS)(rng, value)
            key = orjson.dumps({"id": rng.choice([f"t{rng.randrange(30)}", rng.randrange(30)])})
            if rng.random() < hostile / 3:
                key = rng.choice([b"nope", b'{"id": null}', b'{"id": "x", "y": 1}'])
            raw = orjson.dumps(value)
            if rng.random() < hostile / 3:
                raw = rng.choice([b"{}", b"{", b'{"index": 1}\n{"index": 2}'])
            messages.append(Item("f", 0, offset, key, raw))
            singles.append((key, raw))
            i += 1
        offset += 1
    return messages, singles


def _one_by_one(singles: list[tuple[bytes | None, bytes]]) -> tuple[list[tuple[object, ...]], list[str]]:
    rows: list[tuple[object, ...]] = []
    reasons: list[str] = []
    for key, value in singles:
        try:
            row = decode_row("fragments", key, value) if key is not None else decode_line("fragments", value)
        except MessageError as e:
            reasons.append(str(e))
            continue
        if not isinstance(row, Heartbeat):
            rows.append(tuple(row))
    return rows, reasons


@pytest.mark.parametrize("seed", range(12))
def test_a_fetch_decodes_as_its_records_one_by_one(seed: int) -> None:
    rng = random.Random(seed)
    messages, singles = _fetch(rng, 400, hostile=0.15 if seed % 3 else 0.0)
    fetch = decode_fetch("fragments", messages)
    rows, reasons = _one_by_one(singles)
    got = [tuple(r) for r in fetch.frame.select(SCHEMAS["fragments"].names()).iter_rows()]
    assert got == rows
    assert sorted(r for _, r in fetch.bad) == sorted(reasons)
    assert fetch.records == len(singles)
    assert fetch.frame["seq"].is_sorted()
    heartbeats = sum(1 for k, v in singles if k is None and b'"heartbeat"' in v)
    assert len(fetch.heartbeats) == heartbeats


def test_a_bad_line_is_dead_lettered_alone_with_its_line() -> None:
    good = {"id": "a", **_fragment(random.Random(1), 0)}
    lines = [orjson.dumps({**good, "index": k}) for k in range(5)]
    lines[3] = orjson.dumps({**good, "index": 3, "cpu_count": 0})
    fetch = decode_fetch("fragments", [Item("f", 2, 7, None, b"\n".join(lines), headers=BATCH)])
    assert fetch.frame["index"].to_list() == [0, 1, 2, 4]
    [(item, reason)] = fetch.bad
    assert (item.partition, item.offset, item.line, item.value) == (2, 7, 3, lines[3])
    assert "cpu_count" in reason


def test_a_batch_over_the_bound_is_rejected_whole() -> None:
    line = orjson.dumps({"id": "a", **_fragment(random.Random(1), 0)})
    big = b"\n".join([line] * (MAX_BATCH_RECORDS + 1))
    fetch = decode_fetch("fragments", [Item("f", 0, 0, None, big, headers=BATCH)])
    assert fetch.frame.height == 0
    [(_, reason)] = fetch.bad
    assert "over the bound" in reason
    assert str(MAX_BATCH_RECORDS) in reason


def _fragments(rng: random.Random, n: int) -> list[FragmentRow]:
    """Fragments of 20 tasks in time order, positions mostly in order, with repeats, gaps and rewinds."""
    nxt = dict.fromkeys(range(20), 0)
    out = []
    for i in range(n):
        task = rng.randrange(20)
        p = nxt[task]
        roll = rng.random()
        if roll < 0.002:
            p = max(0, p - rng.randrange(1, 4))  # a duplicate (or an old position)
        elif roll < 0.0025:
            p += rng.randrange(2, 5)  # a gap (later filled, or not)
        nxt[task] = max(nxt[task], p + 1)
        out.append(FragmentRow(f"t{task}", T0 + i * 700, 1000, 1, 10.0, p))
    return out


@pytest.mark.parametrize("seed", range(8))
def test_fragments_a_fetch_at_a_time_equal_one_at_a_time(seed: int) -> None:
    rng = random.Random(seed)
    frags = _fragments(rng, 3000)
    one = Windower(300_000, ["f"], dedup_horizon_ms=600_000)
    many = Windower(300_000, ["f"], dedup_horizon_ms=600_000)
    fast = 0
    i = 0
    closed_one: list[Window] = []
    closed_many: list[Window] = []
    while i < len(frags):
        part = frags[i : i + rng.randrange(1, 200)]
        frame = pl.DataFrame(part, schema=SCHEMAS["fragments"], orient="row").with_columns(
            pl.lit(i, pl.Int64).alias("offset")
        )
        for f in part:
            one.add_fragment("f", f)
        if many.add_fragments("f", frame) is None:
            for f in part:
                many.add_fragment("f", f)
        else:
            fast += 1
        i += len(part)
        if rng.random() < 0.2:  # close what is ready in both, as the consumer does between fetches
            closed_one += one.close_ready()
            closed_many += many.close_ready()
    one.heartbeat("f", T0 + 10**8, final=True)
    many.heartbeat("f", T0 + 10**8, final=True)
    a, b = closed_one + one.close_ready(), closed_many + many.close_ready()
    assert [w.start_ms for w in a] == [w.start_ms for w in b]
    for x, y in zip(a, b, strict=True):
        assert x.fragment_frame().equals(y.fragment_frame())
    assert one.stats == many.stats
    assert fast > 2, "the fetch-at-a-time path was (almost) never taken"


def _judge_one_by_one(gate: TimeGate[int], source: Hashable, times: list[int]) -> list[bool]:
    verdicts = []
    for k, t in enumerate(times):
        verdicts += [(v.item, v.accepted) for v in gate.offer(source, t, k)]
    return [ok for _, ok in sorted(verdicts)]


@pytest.mark.parametrize("seed", range(20))
def test_the_gate_takes_a_run_at_once_only_as_it_would_one_by_one(seed: int) -> None:
    rng = random.Random(seed)
    skew = 60_000
    start = [T0, T0 + 1000]
    times = [T0 + 2000 + rng.randrange(-30_000, 50_000) * (k // 10 + 1) // 4 for k in range(40)]
    if seed % 2:
        times[rng.randrange(40)] += 10 * skew  # a forged jump
    at_once, one = TimeGate[int](skew, run_start_ms=T0), TimeGate[int](skew, run_start_ms=T0)
    _judge_one_by_one(at_once, "p", start)
    _judge_one_by_one(one, "p", start)
    taken = at_once.accept_run("p", np.array(times, dtype=np.int64))
    verdicts = _judge_one_by_one(one, "p", times)
    if taken:
        assert all(verdicts)
        assert at_once.accepted_ms("p") == one.accepted_ms("p")
    else:
        assert at_once.accepted_ms("p") == T0 + 1000  # nothing changed
    assert taken == (all(verdicts) and not one.holding("p"))


def test_task_rows_keep_the_schema_order() -> None:
    assert tuple(SCHEMAS["tasks"].names()) == TaskRow._fields
    assert tuple(SCHEMAS["fragments"].names())[:5] == FragmentRow._fields[:5]


def test_times_on_the_columns_equal_the_per_record_parse() -> None:
    """The usual ISO form is parsed on the columns (civil-date arithmetic); every time, valid or not (Feb 30,
    hour 24, second 60, before 1970, from 2200, an offset, no fraction, no zone, other digits), gets exactly
    what the per-record parse gives."""
    from datetime import UTC, datetime, timedelta

    from opendt.models.messages import time_ms
    from opendt.stream.columns import _times

    rng = random.Random(5)
    values = []
    for _ in range(5000):
        t = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=rng.randrange(-(10**12), 8 * 10**12))
        values.append(t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z")
    values += [
        "2024-02-30T00:00:00.000Z", "2023-02-29T00:00:00.000Z", "2024-02-29T23:59:59.999Z",
        "2024-13-01T00:00:00.000Z", "2024-01-01T24:00:00.000Z", "2024-01-01T00:60:00.000Z",
        "2024-01-01T00:00:60.000Z", "2199-12-31T23:59:59.999Z", "2200-01-01T00:00:00.000Z",
        "1969-12-31T23:59:59.999Z", "2024-01-01T01:00:00+01:00", "2024-01-01T00:00:00Z",
        "2024-01-01T00:00:00.000", "2024-01-01 00:00:00.000Z", "٢٠٢٤-01-01T00:00:00.000Z", "x",
    ]  # fmt: skip
    got, _ = _times(pl.Series(values))
    for value, ms in zip(values, got.to_list(), strict=True):
        try:
            expected: int | None = time_ms(value)
        except ValueError:
            expected = None
        assert ms == expected, value
