"""Service-level objectives: a validated model, the JSON file, and a watcher that picks up edits at run time.

``config/slo.json`` holds targets **per window** (``windowing.window_s`` of trace time); each is optional,
at least one must be set, every one is a finite number > 0, and unknown keys are errors:

* ``energy_kwh_per_window``: energy drawn by the datacenter during one window (kWh);
* ``peak_power_w``: the highest total power draw at an export instant of the window (W);
* ``carbon_g_per_window``: carbon emitted during one window (gCO2);
* ``task_wait_p95_s``: 95th percentile of the wait (submission → start) of the window's tasks, including
  waits that end after the window and those of tasks re-queued by a topology change (s);
* ``task_runtime_mean_s``: mean runtime (start → finish) of the tasks that finished in the window (s).
  This keeps the earlier design's runtime target: it grows when hosts are slowed down or oversubscribed
  (OpenDC stretches fragments whose demand exceeds the supply), which the runtime rules react to.

The first three are the *energy side*, the last two the *performance side* (:data:`ENERGY_FIELDS`,
:data:`PERFORMANCE_FIELDS`); :mod:`opendt.optimizer.scoring` weighs the two sides.

:class:`SloWatcher` re-reads the file every ``interval_s``; a valid change replaces the SLOs and calls the
callback, an invalid one is logged (once per distinct content) and the old SLOs stay. ``PUT /api/slo`` goes
through :meth:`SloWatcher.update`, which writes the run's live copy (``<run_dir>/slo.json``, never the tracked
configured file) atomically and applies it once (the next poll reads the same content and does nothing);
from then on the live copy is the file watched, and a restart of the same run starts from it.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import os
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

log = structlog.get_logger(component="optimizer")

ENERGY_FIELDS = ("energy_kwh_per_window", "peak_power_w", "carbon_g_per_window")
PERFORMANCE_FIELDS = ("task_runtime_mean_s", "task_wait_p95_s")

Target = Annotated[float | None, Field(gt=0, allow_inf_nan=False, strict=True)]


class SloError(ValueError):
    """SLOs that cannot be used; the message names the file (or source) and the bad field, ``field`` the
    first bad one's dotted path (None when the document as a whole is wrong)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class Slo(BaseModel):
    """The targets per window; unset ones are not optimized for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    energy_kwh_per_window: Target = None
    peak_power_w: Target = None
    carbon_g_per_window: Target = None
    task_wait_p95_s: Target = None
    task_runtime_mean_s: Target = None

    @model_validator(mode="after")
    def _at_least_one(self) -> Slo:
        if not self.targets():
            raise ValueError(f"no target set (give at least one of {', '.join(type(self).model_fields)})")
        return self

    def targets(self) -> dict[str, float]:
        """The targets that are set, by field name (field order)."""
        return {k: v for k, v in self.model_dump().items() if v is not None}

    def to_json_dict(self) -> dict[str, float]:
        """The document as written to the file and shown by the API (unset targets left out)."""
        return self.targets()


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def parse_slo(data: Any, *, source: str = "SLO") -> Slo:
    """Validate a decoded document (a file's content, an API body); raises :class:`SloError`."""
    if not isinstance(data, dict):
        raise SloError(f"invalid SLOs ({source}): expected a JSON object, got {type(data).__name__}")
    try:
        return Slo.model_validate(data)
    except ValidationError as e:
        first = ".".join(str(p) for p in e.errors()[0]["loc"]) if e.errors() else ""
        raise SloError(f"invalid SLOs ({source}): {_describe(e)}", first or None) from None


def _decode(text: bytes, path: Path) -> Slo:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise SloError(f"SLO file {path} is not valid JSON: {e.msg} (line {e.lineno})") from None
    except UnicodeDecodeError as e:
        raise SloError(f"SLO file {path} is not UTF-8 text: {e.reason}") from None
    return parse_slo(data, source=str(path))


def load_slo(path: Path) -> Slo:
    """Read and validate the SLO file; raises :class:`SloError` naming the file and the bad field."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SloError(f"SLO file not found: {path}") from None
    except OSError as e:
        raise SloError(f"SLO file {path} cannot be read: {e.strerror}") from None
    return _decode(raw, path)


def _encode(slo: Slo) -> bytes:
    return (json.dumps(slo.to_json_dict(), indent=2) + "\n").encode()


def save_slo(path: Path, slo: Slo) -> None:
    """Write ``slo`` to ``path`` atomically: a temporary file in the same folder, flushed, then renamed, so a
    reader (the watcher) sees the old or the new document, never a torn one."""
    data = _encode(slo)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


OnChange = Callable[[Slo], Awaitable[None] | None]


class SloWatcher:
    """The current SLOs, kept in step with the file.

    Every ``interval_s`` (``run``) the file is read and hashed (it is tiny; comparing content rather than
    mtime/size also catches same-size edits within a coarse mtime tick). New valid content that changes the
    targets replaces :attr:`current` and calls ``on_change`` (sync or async; a failing callback is logged and
    the watcher goes on). Invalid content or a missing file is logged as a warning once per distinct content
    and :attr:`current` stays. The constructor loads the file and raises :class:`SloError` if it is unusable.
    """

    def __init__(
        self,
        path: Path,
        *,
        interval_s: float = 2.0,
        on_change: OnChange | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        live_path: Path | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self.configured = path
        """The configured SLO file (``optimizer.slo_path``, tracked in the repository by default)."""
        self.live_path = live_path
        """Where ``PUT /api/slo`` writes (``<run_dir>/slo.json``): once it exists it is the file watched, and
        a restarted twin of the same run starts from it; None = write the configured file."""
        if live_path is not None and live_path.exists():
            path = live_path
        self.path = path
        self.interval_s = interval_s
        self.on_change = on_change
        self._sleep = sleep
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise SloError(f"SLO file not found: {path}") from None
        self._current = _decode(raw, path)
        self._seen = hashlib.sha256(raw).hexdigest()
        self.changes = 0
        """Effective changes applied since start (file edits and :meth:`update` calls)."""
        self.rejections = 0
        """Distinct invalid contents (or disappearances) of the file seen since start."""

    @property
    def current(self) -> Slo:
        return self._current

    async def _apply(self, slo: Slo, source: str) -> bool:
        if slo == self._current:
            return False
        old, self._current = self._current, slo
        self.changes += 1
        log.info("slo_changed", path=str(self.path), source=source, old=old.targets(), new=slo.targets())
        if self.on_change is not None:
            try:
                res = self.on_change(slo)
                if inspect.isawaitable(res):
                    await res
            except Exception as e:  # noqa: BLE001 - the SLOs are applied; the callback's owner reports its own
                log.error(  # noqa: TRY400 - one line naming the error; the traceback is the callback's business
                    "slo_callback_failed", path=str(self.path), error=f"{type(e).__name__}: {e}"
                )
        return True

    async def poll(self) -> bool:
        """Check the file once; True when it changed the SLOs."""
        try:
            raw = await asyncio.to_thread(self.path.read_bytes)
        except OSError as e:
            marker = f"unreadable: {type(e).__name__}"
            if marker != self._seen:
                self._seen = marker
                self.rejections += 1
                log.warning(
                    "slo_rejected",
                    path=str(self.path),
                    error=f"cannot read: {e}",
                    kept=self._current.targets(),
                )
            return False
        digest = hashlib.sha256(raw).hexdigest()
        if digest == self._seen:
            return False
        self._seen = digest
        try:
            slo = _decode(raw, self.path)
        except SloError as e:
            self.rejections += 1
            log.warning("slo_rejected", path=str(self.path), error=str(e), kept=self._current.targets())
            return False
        return await self._apply(slo, "file")

    async def update(self, slo: Slo) -> bool:
        """Write ``slo`` to the live file (``live_path``, else the watched one; atomically) and apply it now;
        True when it changed the SLOs. From then on the live file is the one watched; the next poll reads back
        the same content and does not apply it again. Raises ``OSError`` if the file cannot be written (the
        SLOs are then unchanged)."""
        target = self.live_path if self.live_path is not None else self.path
        before, self._seen = self._seen, hashlib.sha256(_encode(slo)).hexdigest()
        try:
            await asyncio.to_thread(save_slo, target, slo)
        except BaseException:
            self._seen = before
            raise
        self.path = target
        return await self._apply(slo, "api")

    async def run(self) -> None:
        """Poll every ``interval_s`` until cancelled."""
        while True:
            await self._sleep(self.interval_s)
            await self.poll()
