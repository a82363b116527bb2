"""A run directory's appended tables as tests read them: read-only, each checked against the journal (rows
per window), a torn tail or frames of windows not yet journaled skipped (a daemon may be writing)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from opendt.twin.appendlog import arrow_schema, scan
from opendt.twin.tables import AGG, MEASURED, Table, load_journal, load_rows


def journal(run_dir: Path) -> pl.DataFrame:
    return load_journal(run_dir, writable=False).rows


def agg(run_dir: Path) -> pl.DataFrame:
    return load_rows(run_dir, AGG, journal(run_dir), writable=False, check=True).rows


def measured(run_dir: Path) -> pl.DataFrame:
    return load_rows(run_dir, MEASURED, journal(run_dir), writable=False, check=True).rows


def frame_starts(run_dir: Path, table: Table) -> list[int]:
    """The window start (epoch ms) of every complete frame of a table file, journaled or not."""
    path = run_dir / table.file
    if not path.exists():
        return []
    return [f.window_start_ms for f in scan(path, path.read_bytes(), arrow_schema(table.schema)).frames]
