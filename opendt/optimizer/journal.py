"""The optimizer's rounds on disk: ``<run_dir>/optimizer.jsonl``, appended, so a restarted twin keeps its
history and the proposal waiting for an operator.

One JSON object per line:

* ``{"record": "round", ...}``: a finished round (kept, rejected, maintain, failed, skipped or superseded),
  exactly as ``GET /api/optimizer`` shows it (the proposal with its whole topology, so it can be accepted
  after a restart);
* ``{"record": "accepted", "round": n, "version": v}``: round ``n`` was accepted as topology version ``v``
  (``optimizer.accept: apply``);
* ``{"record": "planned", "round": n, "patch": {...}, "reason": "...", "at_ms": t}`` and
  ``{"record": "plan_done", "round": n, "at_ms": t}``: round ``n`` was accepted as a plan, which the physical
  topology later realised (:mod:`opendt.optimizer.plan`); :attr:`OptimizerJournal.plans` after a load.

A round written again (the same index: its windows were simulated again after a restart) replaces the earlier
line. Each line is flushed and fsynced before the round counts as recorded. A line that cannot be read (the
tail of a write a kill interrupted, a hand edit) is logged and skipped; an unterminated last line is cut off
first so that the next append starts on a line of its own.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import orjson
import structlog

log = structlog.get_logger(component="optimizer")


class OptimizerJournal:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.errors = 0
        """Lines skipped on load plus appends that failed (the round stays in memory)."""
        self.plans: list[dict[str, Any]] = []
        """The plan records read by :meth:`load`, in order."""

    def load(self) -> list[dict[str, Any]]:
        """The recorded rounds by index (ascending), accepts applied; [] without a file."""
        self.plans = []
        if self.path is None or not self.path.exists():
            return []
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            log.warning("optimizer_journal_truncated", path=str(self.path), dropped_bytes=len(data) - cut)
            with self.path.open("r+b") as f:
                f.truncate(cut)
            data = data[:cut]
        rounds: dict[int, dict[str, Any]] = {}
        for n, line in enumerate(data.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = orjson.loads(line)
                kind = rec.pop("record")
                if kind == "round":
                    rounds[int(rec["round"])] = rec
                elif kind == "accepted":
                    rounds[int(rec["round"])]["accepted_version"] = int(rec["version"])
                elif kind in ("planned", "plan_done"):
                    int(rec["round"])
                    if kind == "planned" and not isinstance(rec["patch"], dict):
                        raise ValueError("a plan's patch must be an object")
                    self.plans.append({"record": kind, **rec})
                else:
                    raise ValueError(f"unknown record {kind!r}")
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
                self.errors += 1
                log.warning("optimizer_journal_bad_line", path=str(self.path), line=n, error=repr(e))
        return [rounds[k] for k in sorted(rounds)]

    async def round(self, doc: dict[str, Any]) -> None:
        await self._append({"record": "round", **doc})

    async def accepted(self, index: int, version: int) -> None:
        await self._append({"record": "accepted", "round": index, "version": version})

    async def record(self, rec: dict[str, Any]) -> None:
        """Any other record (a plan's)."""
        await self._append(rec)

    async def _append(self, rec: dict[str, Any]) -> None:
        if self.path is None:
            return
        line = orjson.dumps(rec) + b"\n"
        try:
            await asyncio.to_thread(self._write, self.path, line)
        except OSError as e:
            self.errors += 1
            log.exception("optimizer_journal_write_failed", path=str(self.path), error=repr(e))

    @staticmethod
    def _write(path: Path, line: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
