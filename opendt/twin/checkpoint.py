"""Checkpoints of a run: ``<run_dir>/checkpoints/<at_ms>/`` every ``checkpoint.every_s`` of trace time.

A checkpoint is taken after the window ending at ``at_ms`` is durable: ``engine.bin`` (the twin's engine,
:func:`opendt.worker.warm.snapshot` with the running tasks' fragments, so a later structural topology change
still works) and ``state.json`` (the topology box, the version applied in the engine, the windows since the
run's start, the stream positions after the window, and what the calibrator and optimizer need to go on).
Both are written into a temporary directory that is renamed into place, so a checkpoint is whole or absent.

The same snapshots are the warm starts of what-ifs, optimizer rounds and calibration lookbacks (a run over
``[start, end)`` starts from the newest checkpoint at or before ``start``): the twin keeps no snapshot in
memory. Old checkpoints are pruned: those a what-if can still need (``api.whatif_max_range_s`` behind the
newest) and the newest ``checkpoint.keep`` stay.

A checkpoint is read back as data only (:mod:`opendt.engine.state`; never pickle) and checked before use:
one whose ``state.json`` or ``engine.bin`` does not read back whole (missing, cut, damaged, of another
format) is skipped with one log line naming the file, and the next older one is used.
"""

from __future__ import annotations

import bisect
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from opendt.engine.state import StateError, loads
from opendt.twin.files import DiskFull, is_disk_full

log = structlog.get_logger(component="checkpoint")


@dataclass(frozen=True)
class Checkpoint:
    at_ms: int
    state: dict[str, Any]
    path: Path

    def engine_blob(self) -> bytes:
        return (self.path / "engine.bin").read_bytes()


class Checkpoints:
    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir / "checkpoints"
        self._at: list[int] = []
        self._checked: dict[int, bool] = {}
        """Instants already checked (True: whole), so a checkpoint is read through and logged once."""

    def load(self, *, readonly: bool = False) -> None:
        """List the checkpoints (a half-written one of a killed process is removed, unless ``readonly``:
        then nothing is written and only whole ones are listed)."""
        if readonly:
            if not self.dir.is_dir():
                return
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            for tmp in self.dir.glob("*.tmp"):
                shutil.rmtree(tmp, ignore_errors=True)
        whole = [p for p in self.dir.iterdir() if p.name.isdigit() and (p / "state.json").exists()]
        self._at = sorted(int(p.name) for p in whole)

    @property
    def instants(self) -> list[int]:
        return list(self._at)

    def save(self, at_ms: int, blob: bytes, state: dict[str, Any]) -> None:
        """Write a checkpoint (blocking; call it in a thread)."""
        final = self.dir / str(at_ms)
        tmp = self.dir / f"{at_ms}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir(parents=True)
            (tmp / "engine.bin").write_bytes(blob)
            (tmp / "state.json").write_text(json.dumps({**state, "at_ms": at_ms}))
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if is_disk_full(e):
                raise DiskFull(
                    e.errno,
                    f"no space left on the device of {self.dir} (writing checkpoint {at_ms}): free "
                    "space and run the same command again, the twin resumes where it stopped",
                ) from None
            raise
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        if at_ms not in self._at:
            bisect.insort(self._at, at_ms)
        self._checked[at_ms] = True  # written from the engine just now

    def at_or_before(self, t_ms: int) -> Checkpoint | None:
        """The newest whole checkpoint taken at or before ``t_ms`` (a bad one is logged once, naming its file,
        and the next older tried)."""
        for at in reversed(self._at[: bisect.bisect_right(self._at, t_ms)]):
            ckpt = self.whole(at)
            if ckpt is not None:
                return ckpt
        return None

    def whole(self, at_ms: int) -> Checkpoint | None:
        """The checkpoint at ``at_ms`` if it reads back whole (state and engine), else None (logged once)."""
        ckpt = self.get(at_ms)
        return ckpt if ckpt is not None and self._check(ckpt) else None

    def _check(self, ckpt: Checkpoint) -> bool:
        """Whether the checkpoint's engine state reads back (once per checkpoint: a whole decode)."""
        ok = self._checked.get(ckpt.at_ms)
        if ok is None:
            path = ckpt.path / "engine.bin"
            try:
                loads(path.read_bytes())
                ok = True
            except (OSError, StateError) as e:
                log.warning(
                    "checkpoint_skipped", file=str(path), error=str(e)[:300], next="an older checkpoint"
                )
                ok = False
            self._checked[ckpt.at_ms] = ok
        return ok

    def get(self, at_ms: int) -> Checkpoint | None:
        """The checkpoint at ``at_ms``, None when it is absent or its ``state.json`` is not whole (logged
        once, naming the file)."""
        path = self.dir / str(at_ms)
        file = path / "state.json"
        try:
            state = json.loads(file.read_text())
            if not isinstance(state, dict) or not isinstance(state.get("box"), dict):
                raise ValueError("not a checkpoint state (no box)")  # noqa: TRY004 - bad content, as bad JSON
            if type(state.get("applied_version")) is not int:
                raise ValueError("not a checkpoint state (no applied_version)")
        except (OSError, ValueError) as e:
            if at_ms in self._at and self._checked.get(at_ms) is not False:
                self._checked[at_ms] = False
                log.warning(
                    "checkpoint_skipped", file=str(file), error=str(e)[:300], next="an older checkpoint"
                )
            return None
        return Checkpoint(at_ms, state, path)

    def prune(self, keep_from_ms: int, keep: int) -> int:
        """Delete the checkpoints before ``keep_from_ms``, except the newest ``keep``; returns how many."""
        doomed = [a for a in self._at[:-keep] if a < keep_from_ms] if keep else []
        for a in doomed:
            shutil.rmtree(self.dir / str(a), ignore_errors=True)
        self._at = [a for a in self._at if a not in set(doomed)]
        for a in doomed:
            self._checked.pop(a, None)
        return len(doomed)

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.dir.rglob("*") if p.is_file())
