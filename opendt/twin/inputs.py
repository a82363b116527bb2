"""The window inputs of a run, on disk: ``<run_dir>/inputs/<window_start_ms>.frame``, one file per window.

A window's tasks, fragments, measured power and carbon steps (and the physical topology it brought) are
written, atomically, before the window is simulated, together with the stream positions at which it closed.
They are the one store the twin reads its past from: the resume after a restart (replaying the windows after
the newest checkpoint), the rebuild after an engine worker crash, the calibration lookback and the what-if
history. Memory holds only the list of stored window starts; the files of windows older than the retention
are deleted (``prune``), so disk stays bounded too.

The file is the worker frame format (:mod:`opendt.worker.protocol`): a JSON header, then the tables as
zstd-compressed Arrow IPC streams. A file read back is checked (its tables' sizes add up to the file, each
table is there with its schema); one that is not whole raises :class:`InputUnreadable` naming it, never a
library's error.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from opendt.models.messages import CarbonRow, FragmentRow, PowerRow, TaskRow
from opendt.models.topology import parse_topology
from opendt.stream.resume import InputsLost
from opendt.stream.windowing import Window
from opendt.twin.files import write_atomic
from opendt.worker.protocol import LEN, pack, unpack
from opendt.workload import CARBON_SCHEMA, FRAGMENT_SCHEMA, TASK_SCHEMA

POWER_SCHEMA = pl.Schema(
    {
        "source": pl.Utf8(),
        "timestamp_ms": pl.Int64(),
        "power_draw": pl.Float64(),
        "energy_usage": pl.Float64(),
    }
)
SUFFIX = ".frame"
FRAME_SCHEMAS = {
    "tasks": TASK_SCHEMA,
    "fragments": FRAGMENT_SCHEMA,
    "power": POWER_SCHEMA,
    "carbon": CARBON_SCHEMA,
}
"""The tables a stored window holds."""


__all__ = ["InputStore", "InputUnreadable", "InputsLost", "StoredWindow"]


class InputUnreadable(ValueError):
    """A stored window's file that is missing or does not read back whole; the message names the file."""


def check_frame(frame: bytes) -> tuple[dict[str, Any], dict[str, pl.DataFrame]]:
    """A stored window's header and tables, checked: the sizes the header gives add up to the file, and
    every table of :data:`FRAME_SCHEMAS` is there with its schema (``ValueError`` saying what is wrong)."""
    if len(frame) < LEN.size:
        raise ValueError(f"cut short ({len(frame)} bytes)")
    (n,) = LEN.unpack(frame[: LEN.size])
    header, tables = unpack(frame)
    sizes = header.get("tables", [])
    if LEN.size + n + sum(int(size) for _, size in sizes) != len(frame):
        raise ValueError(f"cut short or padded ({len(frame)} bytes, the header says otherwise)")
    for name, schema in FRAME_SCHEMAS.items():
        if name not in tables or tables[name].schema != schema:
            raise ValueError(f"table {name!r} missing or of another schema")
    for key in ("start_ms", "end_ms", "final", "topology", "topology_ms", "positions"):
        if key not in header:
            raise ValueError(f"header without {key!r}")
    return header, tables


@dataclass
class StoredWindow:
    """A window as it was stored: the window itself (rows as the consumer built them) and its frames."""

    window: Window
    tasks: pl.DataFrame
    fragments: pl.DataFrame
    power: pl.DataFrame
    carbon: pl.DataFrame
    positions: dict[tuple[str, int], int] = field(default_factory=dict)
    """(topic, partition) → the offset to consume from after this window (its commit offsets)."""


def _frames(w: Window) -> dict[str, pl.DataFrame]:
    return {
        "tasks": pl.DataFrame(w.tasks, schema=TASK_SCHEMA, orient="row"),
        "fragments": w.fragment_frame(),
        "power": pl.DataFrame(w.power, schema=POWER_SCHEMA, orient="row"),
        "carbon": pl.DataFrame(w.carbon, schema=CARBON_SCHEMA, orient="row"),
    }


def encode_window(w: Window, positions: dict[tuple[str, int], int]) -> bytes:
    header = {
        "start_ms": w.start_ms,
        "end_ms": w.end_ms,
        "final": w.final,
        "topology": None if w.topology is None else w.topology.to_json_dict(),
        "topology_ms": w.topology_ms,
        "positions": [[t, p, o] for (t, p), o in sorted(positions.items())],
    }
    return pack(header, _frames(w), compression="zstd")


def decode_window(frame: bytes, source: str) -> StoredWindow:
    header, tables = check_frame(frame)
    tasks, fragments = tables["tasks"], tables["fragments"]
    power, carbon = tables["power"], tables["carbon"]
    doc = header["topology"]
    w = Window(
        int(header["start_ms"]),
        int(header["end_ms"]),
        tasks=[TaskRow(*r) for r in tasks.iter_rows()],
        fragments=[FragmentRow(*r) for r in fragments.iter_rows()],
        power=[PowerRow(*r) for r in power.iter_rows()],
        carbon=[CarbonRow(*r) for r in carbon.iter_rows()],
        topology=None if doc is None else parse_topology(doc, source=source),
        topology_ms=header["topology_ms"],
        final=bool(header["final"]),
    )
    positions = {(str(t), int(p)): int(o) for t, p, o in header["positions"]}
    return StoredWindow(w, tasks, fragments, power, carbon, positions)


class InputStore:
    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir / "inputs"
        self._starts: list[int] = []

    def load(self, *, readonly: bool = False) -> None:
        """List the stored windows (a torn temporary file of a killed write is removed, unless ``readonly``:
        then nothing is written)."""
        if readonly:
            if not self.dir.is_dir():
                return
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            for tmp in self.dir.glob("*.tmp"):
                tmp.unlink(missing_ok=True)
        stored = [p.stem for p in self.dir.glob(f"*{SUFFIX}")]
        self._starts = sorted(int(s) for s in stored if s.lstrip("-").isdigit())

    @property
    def starts(self) -> list[int]:
        return list(self._starts)

    def _path(self, start_ms: int) -> Path:
        return self.dir / f"{start_ms}{SUFFIX}"

    def has(self, start_ms: int) -> bool:
        i = bisect.bisect_left(self._starts, start_ms)
        return i < len(self._starts) and self._starts[i] == start_ms

    async def write(self, w: Window, positions: dict[tuple[str, int], int]) -> None:
        """Store a window before it is simulated (atomic: tmp file, then rename)."""
        data = await asyncio.to_thread(encode_window, w, positions)
        path = self._path(w.start_ms)
        await asyncio.to_thread(_write_atomic, path, data)
        if not self.has(w.start_ms):
            bisect.insort(self._starts, w.start_ms)

    async def write_many(self, windows: list[tuple[Window, dict[tuple[str, int], int]]]) -> None:
        """Store several windows as :meth:`write` does, in one step off the event loop."""

        def store() -> None:
            for w, positions in windows:
                _write_atomic(self._path(w.start_ms), encode_window(w, positions))

        await asyncio.to_thread(store)
        for w, _ in windows:
            if not self.has(w.start_ms):
                bisect.insort(self._starts, w.start_ms)

    def read(self, start_ms: int) -> StoredWindow:
        """A stored window; :class:`InputUnreadable` (naming the file) when it is missing or not whole."""
        path = self._path(start_ms)
        try:
            return decode_window(path.read_bytes(), f"stored window {start_ms}")
        except Exception as e:  # noqa: BLE001 - the file is data: whatever is wrong with it, name it
            raise InputUnreadable(_unreadable(path, e)) from None

    def tables(self, start_ms: int) -> dict[str, pl.DataFrame]:
        """A stored window's frames only (tasks, fragments, power, carbon): no row objects are built."""
        path = self._path(start_ms)
        try:
            return check_frame(path.read_bytes())[1]
        except Exception as e:  # noqa: BLE001 - the file is data: whatever is wrong with it, name it
            raise InputUnreadable(_unreadable(path, e)) from None

    def problem(self, start_ms: int) -> str | None:
        """What is wrong with a stored window's file (None: it reads back whole)."""
        try:
            self.read(start_ms)
        except InputUnreadable as e:
            return str(e)
        return None

    def between(self, lo_ms: int, hi_ms: int) -> list[int]:
        """Starts of the stored windows in ``[lo_ms, hi_ms)``."""
        a = bisect.bisect_left(self._starts, lo_ms)
        b = bisect.bisect_left(self._starts, hi_ms)
        return self._starts[a:b]

    def frames(self, lo_ms: int, hi_ms: int) -> dict[str, pl.DataFrame]:
        """The concatenated frames (tasks, fragments, power, carbon) of the windows in ``[lo_ms, hi_ms)``
        (their tables only: no row objects are built)."""
        parts = [self.tables(s) for s in self.between(lo_ms, hi_ms)]
        return {
            name: pl.concat([p[name] for p in parts], how="vertical_relaxed").cast(schema)
            if parts
            else pl.DataFrame(schema=schema)
            for name, schema in FRAME_SCHEMAS.items()
        }

    def prune(self, before_ms: int) -> int:
        """Delete the windows that start before ``before_ms``; returns how many."""
        k = bisect.bisect_left(self._starts, before_ms)
        old, self._starts = self._starts[:k], self._starts[k:]
        for s in old:
            with contextlib.suppress(FileNotFoundError):
                self._path(s).unlink()
        return len(old)

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.dir.glob(f"*{SUFFIX}"))


def _unreadable(path: Path, e: Exception) -> str:
    if isinstance(e, FileNotFoundError):
        return f"{path}: missing"
    return f"{path}: unreadable ({type(e).__name__}: {str(e)[:200]})"


def _write_atomic(path: Path, data: bytes) -> None:
    write_atomic(path, lambda tmp: tmp.write_bytes(data))
