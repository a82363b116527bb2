"""The durable tables of a run directory, appended per window (:mod:`opendt.twin.appendlog`).

* ``windows.arrowlog``: the journal, one row per durable window (status ``ok`` or ``failed``). A window is
  durable once its journal frame is complete: it is appended after the window's rows.
* ``agg_results.arrowlog``: the twin's results, one row per export instant, one frame per window.
* ``measured.arrowlog``: the measured power the twin received (``dc.power``), one frame per window.

Reading checks each file against the journal before decoding its rows: per window, as many rows as the
journal records (from the frames' headers, so a small file claiming millions of rows is refused before any
allocation). Frames after the last journaled window (a crash between a window's appends) and a torn last
frame (a ``kill -9`` in the middle of an append) are not part of the run: readers skip them, the daemon cuts
them off when it opens the run (``writable``). A file that disagrees otherwise is
:class:`ResultsMismatch`, one that is damaged :class:`~opendt.twin.appendlog.LogCorrupt`: one line naming it.

Runs written before this layout hold ``windows.parquet``, ``agg_results.parquet`` and ``measured.parquet``
(rewritten whole per window): they are read as they are, and the daemon converts them once (:func:`migrate`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import structlog

from opendt.twin.appendlog import FRAME_HEADER, AppendLog, Frame, LogCorrupt, Scan, decode

log = structlog.get_logger(component="results")

AGG_SCHEMA = pl.Schema(
    {
        "timestamp": pl.Datetime("ms", "UTC"),
        "power_draw": pl.Float64(),
        "energy_usage": pl.Float64(),
        "carbon_intensity": pl.Float64(),
        "carbon_emission": pl.Float64(),
        "topology_version": pl.Int64(),
        "window_start": pl.Datetime("ms", "UTC"),
        "tasks_completed": pl.Int64(),  # completed in [t − Δ, t): finish < t, as OpenDC's service table
        "cpu_work": pl.Float64(),  # GHz·s the hosts delivered over (t − Δ, t] (demand capped at capacity)
    }
)
WINDOW_SCHEMA = pl.Schema(
    {
        "window_start": pl.Datetime("ms", "UTC"),
        "window_end": pl.Datetime("ms", "UTC"),
        "status": pl.Utf8(),
        "rows": pl.Int64(),
        "tasks": pl.Int64(),
        "fragments": pl.Int64(),
        "power_samples": pl.Int64(),
        "topology_version": pl.Int64(),
        "latency_s": pl.Float64(),
        "compute_s": pl.Float64(),
        "attempts": pl.Int64(),
        "error": pl.Utf8(),
        "engine": pl.Utf8(),  # builtin | opendc: what simulated the window's rows
    }
)
MEASURED_SCHEMA = pl.Schema(
    {
        "timestamp": pl.Datetime("ms", "UTC"),
        "source": pl.Utf8(),
        "power_draw": pl.Float64(),
        "energy_usage": pl.Float64(),
        "window_start": pl.Datetime("ms", "UTC"),
    }
)
"""``measured.arrowlog``: the measured power the twin received (``dc.power``), per window."""


@dataclass(frozen=True)
class Table:
    name: str
    schema: pl.Schema
    count: str
    """The journal's column that counts this table's rows of a window."""

    @property
    def file(self) -> str:
        return f"{self.name}.arrowlog"

    @property
    def legacy(self) -> str:
        return f"{self.name}.parquet"


JOURNAL = Table("windows", WINDOW_SCHEMA, "")
AGG = Table("agg_results", AGG_SCHEMA, "rows")
MEASURED = Table("measured", MEASURED_SCHEMA, "power_samples")


class ResultsMismatch(ValueError):
    """A results file disagrees with the window journal."""


def conform(df: pl.DataFrame, schema: pl.Schema) -> pl.DataFrame:
    """``df`` with the columns of ``schema``; a column it lacks (written before the column existed) is null
    (the journal's ``engine``: builtin)."""
    fill = {"engine": pl.lit("builtin")}
    missing = [fill.get(c, pl.lit(None)).alias(c) for c in schema if c not in df.columns]
    return df.with_columns(missing).select(list(schema)).cast(schema)


def _starts(df: pl.DataFrame) -> np.ndarray:
    return df["window_start"].dt.epoch("ms").to_numpy()


@dataclass
class Loaded:
    """A table file as read: its rows of journaled windows, and its writer positioned at its valid end."""

    rows: pl.DataFrame
    writer: AppendLog


def _read(path: Path, table: Table, writer: AppendLog) -> tuple[bytes, Scan]:
    try:
        return writer.read()
    except OSError as e:
        raise LogCorrupt(f"{path}: unreadable ({e.strerror or e})") from None


def _decode(path: Path, table: Table, data: bytes, found: Scan, frames: list[Frame]) -> pl.DataFrame:
    if not frames:
        return pl.DataFrame(schema=table.schema)
    df = pl.from_arrow(decode(path, data, found, frames))
    assert isinstance(df, pl.DataFrame)
    if df.columns != list(table.schema):
        raise LogCorrupt(f"{path}: columns {df.columns}, expected {list(table.schema)}")
    try:
        df = df.cast(table.schema)
    except pl.exceptions.PolarsError as e:
        raise LogCorrupt(f"{path}: columns of the wrong type ({str(e).splitlines()[0][:200]})") from None
    want = np.repeat(np.array([f.window_start_ms for f in frames], np.int64), [f.rows for f in frames])
    if not np.array_equal(_starts(df), want):
        raise LogCorrupt(f"{path}: rows filed under another window than their frame's")
    return df


def _cut(writer: AppendLog, end: int, found: Scan, what: str) -> None:
    log.warning("results_tail_cut", file=str(writer.path), bytes=found.end + found.torn - end, what=what)
    writer.cut(end)


def load_journal(run_dir: Path, *, writable: bool) -> Loaded:
    """The journal; a torn last frame is cut off (``writable``) or skipped."""
    path = run_dir / JOURNAL.file
    writer = AppendLog(path, JOURNAL.schema)
    data, found = _read(path, JOURNAL, writer)
    if any(f.rows != 1 for f in found.frames):
        raise LogCorrupt(f"{path}: a frame of {max(f.rows for f in found.frames)} windows")
    starts = [f.window_start_ms for f in found.frames]
    if len(set(starts)) != len(starts):
        raise ResultsMismatch(f"{path} lists a window twice: restore it, or start a new run with --fresh")
    rows = _decode(path, JOURNAL, data, found, found.frames)
    if writable and found.torn:
        _cut(writer, found.end, found, "an append cut short")
    writer.opened(found.end)
    return Loaded(rows, writer)


def _mismatch(path: Path, want: dict[int, int], have: dict[int, int], exists: bool) -> ResultsMismatch | None:
    bad = sorted(s for s in want.keys() | have.keys() if want.get(s, 0) != have.get(s, 0))
    if not bad:
        return None
    missing = sum(max(0, want.get(s, 0) - have.get(s, 0)) for s in bad)
    extra = sum(max(0, have.get(s, 0) - want.get(s, 0)) for s in bad)
    first = pl.Series([bad[0]]).cast(pl.Datetime("ms"))[0]
    what = "does not exist" if not exists else f"disagrees with {JOURNAL.file}"
    return ResultsMismatch(
        f"{path} {what}: {len(bad)} of {len(want)} durable windows (the first at {first:%Y-%m-%dT%H:%M}Z) "
        f"lack {missing} and hold {extra} extra rows: the file was deleted, replaced by an older copy or "
        "written twice; restore it, or start a new run with --fresh (this one is moved aside)"
    )


def load_rows(run_dir: Path, table: Table, journal: pl.DataFrame, *, writable: bool, check: bool) -> Loaded:
    """A table's rows of the journal's windows. Frames after the last journaled window and a torn last frame
    are cut off (``writable``) or skipped; ``check``: the rows per window must be the journal's count
    (:class:`ResultsMismatch` otherwise), checked on the frames' headers before any row is decoded."""
    path = run_dir / table.file
    writer = AppendLog(path, table.schema)
    data, found = _read(path, table, writer)
    journaled = set(_starts(journal).tolist())
    frames = found.frames
    k = len(frames)
    while k and frames[k - 1].window_start_ms not in journaled:
        k -= 1
    kept = frames[:k]
    if any(f.window_start_ms not in journaled for f in kept):
        raise ResultsMismatch(
            f"{path} holds rows of windows {JOURNAL.file} does not list, before its last: restore it, or "
            "start a new run with --fresh"
        )
    if check:
        want = dict(zip(_starts(journal).tolist(), journal[table.count].to_list(), strict=True))
        have: dict[int, int] = {}
        for f in kept:
            have[f.window_start_ms] = have.get(f.window_start_ms, 0) + f.rows
        if (e := _mismatch(path, {s: n for s, n in want.items() if n}, have, path.exists())) is not None:
            raise e
    rows = _decode(path, table, data, found, kept)
    end = (
        kept[-1].offset + kept[-1].length
        if kept
        else frames[0].offset - FRAME_HEADER
        if frames
        else found.end
    )
    if writable and end < found.end + found.torn:
        _cut(
            writer,
            end,
            found,
            "frames of a window not in the journal" if k < len(frames) else "an append cut short",
        )
    writer.opened(end)
    return Loaded(rows, writer)


def read_journal(run_dir: Path) -> pl.DataFrame | None:
    """The journal of a run as far as it is durable, read-only (a run of the old layout: its parquet
    file); None when the run has none yet."""
    if (run_dir / JOURNAL.file).exists():
        return load_journal(run_dir, writable=False).rows
    legacy = _legacy(run_dir, JOURNAL)
    return None if legacy is None else conform(legacy, JOURNAL.schema)


def journal_windows(run_dir: Path) -> int:
    """How many windows the journal lists (its complete frames, none decoded); 0 without one."""
    path = run_dir / JOURNAL.file
    try:
        return len(AppendLog(path, JOURNAL.schema).read()[1].frames)
    except FileNotFoundError:
        return 0


def read_rows(run_dir: Path, table: Table, journal: pl.DataFrame | None = None) -> pl.DataFrame | None:
    """A table's rows of the journaled windows, read-only, not checked against the journal's counts (the
    report and ``opendt runs`` show what there is); None when the run has neither layout's file."""
    journal = read_journal(run_dir) if journal is None else journal
    if journal is None:
        return None
    if (run_dir / JOURNAL.file).exists():
        if not (run_dir / table.file).exists():
            return None
        return load_rows(run_dir, table, journal, writable=False, check=False).rows
    legacy = _legacy(run_dir, table)
    if legacy is None:
        return None
    return conform(legacy, table.schema).join(journal.select("window_start"), on="window_start", how="semi")


def _legacy(run_dir: Path, table: Table) -> pl.DataFrame | None:
    path = run_dir / table.legacy
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return pl.read_parquet(data)
    except pl.exceptions.PolarsError as e:
        raise LogCorrupt(f"{path}: not a readable parquet file ({str(e).splitlines()[0][:200]})") from None


def migrate(run_dir: Path) -> bool:
    """Convert a run of the old layout (whole parquet files) to the appended one, once: each table's rows
    written per journaled window to a temporary file renamed into place, the journal last (a crash before
    its rename leaves the old files, converted again next time), then the old files removed."""
    if (run_dir / JOURNAL.file).exists():
        for table in (AGG, MEASURED, JOURNAL):  # converted, then stopped before they were removed
            (run_dir / table.legacy).unlink(missing_ok=True)
        return False
    if (old := _legacy(run_dir, JOURNAL)) is None:
        return False
    journal = conform(old, JOURNAL.schema).unique("window_start", keep="last", maintain_order=True)
    for table in (AGG, MEASURED, JOURNAL):
        if table is JOURNAL:
            rows = journal
        elif (legacy := _legacy(run_dir, table)) is None:
            continue
        else:
            rows = conform(legacy, table.schema).join(
                journal.select("window_start"), on="window_start", how="semi"
            )
        tmp = run_dir / f"{table.file}.tmp"
        tmp.unlink(missing_ok=True)
        writer = AppendLog(tmp, table.schema)
        for (start,), part in rows.group_by("window_start", maintain_order=True):
            assert start is not None
            writer.append(int(start.timestamp() * 1000), part)
        if writer.size == 0:
            continue
        tmp.replace(run_dir / table.file)
    for table in (AGG, MEASURED, JOURNAL):
        (run_dir / table.legacy).unlink(missing_ok=True)
    log.info("results_converted", run_dir=str(run_dir), windows=journal.height)
    return True


def sound_prefix(run_dir: Path, tables: list[Table]) -> tuple[list[int], int] | None:
    """The starts of the journal's longest prefix of windows whose frames are intact in every file of
    ``tables`` (as many rows as the journal records) and the end of its last window; None when it is empty,
    when a file cannot be read even in part (no
    header) or holds more rows than the journal for a window (written twice: not damage the stream repairs).
    """
    try:
        _, found = AppendLog(run_dir / JOURNAL.file, JOURNAL.schema).read(prefix=True)
    except (LogCorrupt, OSError):
        return None
    if any(f.rows != 1 for f in found.frames):
        return None
    try:
        journal = load_journal_frames(run_dir, found)
    except (LogCorrupt, ResultsMismatch):
        return None
    starts: list[int] = [int(x) for x in _starts(journal)]
    keep = len(starts)
    for table in tables:
        try:
            _, part = AppendLog(run_dir / table.file, table.schema).read(prefix=True)
        except FileNotFoundError:
            part = Scan(None)
        except (LogCorrupt, OSError):
            return None
        have = part.rows_per_window()
        want = journal[table.count].to_list()
        for i, (s, n) in enumerate(zip(starts, want, strict=True)):
            if have.get(s, 0) > n:
                return None
            if have.get(s, 0) != n:
                keep = min(keep, i)
                break
    if keep == 0:
        return None
    return starts[:keep], int(journal["window_end"].dt.epoch("ms")[keep - 1])


def load_journal_frames(run_dir: Path, found: Scan) -> pl.DataFrame:
    path = run_dir / JOURNAL.file
    return _decode(path, JOURNAL, path.read_bytes(), found, found.frames)


def cut_from(run_dir: Path, start_ms: int) -> None:
    """Cut every table file back to before its first frame of a window at or after ``start_ms`` (or its
    first damaged frame), the journal first: the windows from ``start_ms`` on are no longer durable."""
    for table in (JOURNAL, AGG, MEASURED):
        writer = AppendLog(run_dir / table.file, table.schema)
        if not writer.path.exists():
            continue
        _, found = writer.read(prefix=True)
        later = [f for f in found.frames if f.window_start_ms >= start_ms]
        end = later[0].offset - FRAME_HEADER if later else found.end
        if end < found.end + found.torn:
            _cut(writer, end, found, f"windows from {start_ms} on, to be read again from the stream")
