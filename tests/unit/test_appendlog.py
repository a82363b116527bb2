"""The appended table files (``*.arrowlog``), on real files: a torn last frame at every byte is detected and
cut back to the last complete window; a damaged frame before the last, a wrong header or a frame that claims
more rows than its bytes can hold is one ``LogCorrupt`` naming the file, before any row is decoded."""

from __future__ import annotations

import resource
import struct
import zlib
from pathlib import Path

import polars as pl
import pytest

from opendt.commands.errors import UsageError
from opendt.commands.serve import build_view
from opendt.settings import Settings
from opendt.twin.appendlog import FRAME_HEADER, AppendLog, LogCorrupt, arrow_schema, scan
from opendt.twin.results import WINDOW_SCHEMA, ResultsMismatch, ResultStore, WindowRecord
from opendt.twin.tables import AGG, AGG_SCHEMA, MEASURED_SCHEMA

W = 300_000
T0 = 1_704_067_200_000


def _rows(start: int, n: int = 3) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "timestamp": [start + (i + 1) * 100_000 for i in range(n)],
            "power_draw": [1.5 * i for i in range(n)],
            "energy_usage": [2.0] * n,
            "carbon_intensity": [None] * n,
            "carbon_emission": [0.5] * n,
            "topology_version": [0] * n,
            "window_start": [start] * n,
            "tasks_completed": [1] * n,
            "cpu_work": [None] * n,
        }
    ).with_columns(pl.col("timestamp", "window_start").cast(pl.Datetime("ms", "UTC")))


def _write(path: Path, windows: int) -> bytes:
    log = AppendLog(path, AGG_SCHEMA)
    for i in range(windows):
        log.append(T0 + i * W, _rows(T0 + i * W))
    return path.read_bytes()


def test_a_torn_last_frame_at_any_byte_is_cut_to_the_last_complete_window(tmp_path: Path) -> None:
    path = tmp_path / "agg_results.arrowlog"
    data = _write(path, 4)
    schema = arrow_schema(AGG_SCHEMA)
    frames = scan(path, data, schema).frames
    assert [f.window_start_ms for f in frames] == [T0 + i * W for i in range(4)]
    last = frames[-1].offset - FRAME_HEADER
    for cut in range(last + 1, len(data)):
        found = scan(path, data[:cut], schema)
        assert len(found.frames) == 3
        assert (found.end, found.torn) == (last, cut - last)
    log = AppendLog(path, AGG_SCHEMA)
    path.write_bytes(data[: last + 7])
    _, found = log.read()
    log.cut(found.end)
    log.opened(found.end)
    log.append(T0 + 3 * W, _rows(T0 + 3 * W))
    assert path.read_bytes() == data  # cut back, appended again: the uninterrupted file


def test_damage_before_the_last_frame_is_named(tmp_path: Path) -> None:
    path = tmp_path / "agg_results.arrowlog"
    data = _write(path, 4)
    schema = arrow_schema(AGG_SCHEMA)
    frames = scan(path, data, schema).frames
    for pos in range(frames[1].offset - FRAME_HEADER + 4, frames[1].offset + frames[1].length):
        bad = bytearray(data)
        bad[pos] ^= 0x01
        with pytest.raises(LogCorrupt, match=r"agg_results\.arrowlog: checksum mismatch"):
            scan(path, bytes(bad), schema)
    with pytest.raises(LogCorrupt, match=r"agg_results\.arrowlog: not an OpenDT table file"):
        scan(path, b"PAR1" + data[4:], schema)
    with pytest.raises(LogCorrupt, match=r"agg_results\.arrowlog: columns"):
        scan(path, data, arrow_schema(MEASURED_SCHEMA))


async def test_serve_refuses_a_small_file_claiming_millions_of_rows(tmp_path: Path) -> None:
    """A run whose results file (a few KB) has a frame claiming 5,000,000 rows, its checksum recomputed, and a
    journal that agrees: ``opendt serve`` refuses it in one line naming the file, without allocating for the
    rows (before: a 145 KB file claiming 5 M rows took 508 MB)."""
    run = tmp_path / "data" / "runs" / "r-1"
    store = ResultStore(run)
    store.load()
    for i in range(3):
        rec = WindowRecord(T0 + i * W, T0 + (i + 1) * W, "ok", 3, 1, 1, 0, 0, 0.01, 0.01, 1)
        await store.commit(rec, _rows(T0 + i * W))
    path = run / AGG.file
    data = bytearray(path.read_bytes())
    last = scan(path, bytes(data), arrow_schema(AGG_SCHEMA)).frames[-1]
    head = last.offset - FRAME_HEADER
    tail = struct.pack("<qI", last.window_start_ms, 5_000_000)
    payload = bytes(data[last.offset : last.offset + last.length])
    data[head : last.offset] = struct.pack("<II", last.length, zlib.crc32(payload, zlib.crc32(tail))) + tail
    path.write_bytes(bytes(data))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(UsageError) as err:
        build_view(run, Settings(data_dir=tmp_path / "data"))
    assert "agg_results.arrowlog" in str(err.value)
    assert "claims 5000000 rows" in str(err.value)
    assert "\n" not in str(err.value)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KB


async def test_a_results_file_the_journal_needs_is_named_when_nothing_can_be_kept(tmp_path: Path) -> None:
    """Without a way to re-read the stream (``rewind`` None or refusing), a deleted results file is
    ``ResultsMismatch`` naming it ("does not exist"); with one, the files are cut back to the last window
    whose rows are all there."""
    run = tmp_path / "run"
    store = ResultStore(run)
    store.load()
    for i in range(3):
        rec = WindowRecord(T0 + i * W, T0 + (i + 1) * W, "ok", 3 if i else 0, 1, 1, 0, 0, 0.01, 0.01, 1)
        await store.commit(rec, _rows(T0 + i * W) if i else pl.DataFrame())
    (run / AGG.file).unlink()
    with pytest.raises(ResultsMismatch, match=r"agg_results\.arrowlog does not exist"):
        ResultStore(run).load(rewind=lambda kept, end: False)
    asked: list[tuple[list[int], int]] = []

    def rewind(kept: list[int], end: int) -> bool:
        asked.append((kept, end))
        return True

    again = ResultStore(run)
    again.load(rewind=rewind)
    assert asked == [([T0], T0 + W)]  # the first window had no rows: it is intact
    assert again.durable_count == 1
    assert runfiles_windows(run) == 1


def runfiles_windows(run: Path) -> int:
    return len(
        scan(
            run / "windows.arrowlog", (run / "windows.arrowlog").read_bytes(), arrow_schema(WINDOW_SCHEMA)
        ).frames
    )


async def test_a_run_of_the_parquet_layout_is_converted_once(tmp_path: Path) -> None:
    """A run written before the appended files (``windows.parquet``, ``agg_results.parquet``, rewritten whole):
    ``opendt serve`` reads it as it is; the daemon's load converts it to the appended files (same rows, the
    parquet files removed), and it goes on appending."""
    run = tmp_path / "run"
    run.mkdir()
    recs = [WindowRecord(T0 + i * W, T0 + (i + 1) * W, "ok", 3, 1, 1, 0, 0, 0.01, 0.01, 1) for i in range(3)]
    journal = pl.concat(
        [
            pl.DataFrame([{**{k: v for k, v in vars(r).items() if not k.endswith("_ms")}}]).with_columns(
                window_start=pl.lit(r.window_start_ms).cast(pl.Datetime("ms", "UTC")),
                window_end=pl.lit(r.window_end_ms).cast(pl.Datetime("ms", "UTC")),
            )
            for r in recs
        ]
    ).drop("engine")  # journals of that time could lack the column
    journal.write_parquet(run / "windows.parquet")
    agg = pl.concat([_rows(T0 + i * W) for i in range(3)])
    agg.write_parquet(run / "agg_results.parquet")
    served = ResultStore(run)
    served.load(writable=False)
    assert served.agg.equals(agg)
    assert not (run / "windows.arrowlog").exists()
    store = ResultStore(run)
    store.load()
    assert store.agg.equals(agg)
    assert store.windows["engine"].to_list() == ["builtin"] * 3
    assert sorted(p.name for p in run.iterdir()) == ["agg_results.arrowlog", "windows.arrowlog"]
    rec = WindowRecord(T0 + 3 * W, T0 + 4 * W, "ok", 3, 1, 1, 0, 0, 0.01, 0.01, 1)
    await store.commit(rec, _rows(T0 + 3 * W))
    again = ResultStore(run)
    again.load()
    assert again.agg.equals(pl.concat([agg, _rows(T0 + 3 * W)]))
    assert again.durable_count == 4
