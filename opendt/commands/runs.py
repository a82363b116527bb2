"""``opendt runs``: the run directories under ``<data_dir>/runs/`` listed, shown and removed, and the summary
every batch command ends with (windows, MAPE, energy, carbon, where the results are).

A run directory holds ``run.json`` (identity: source and result-affecting settings; older runs lack it),
``agg_results.arrowlog``, ``windows.arrowlog``, ``measured.arrowlog`` (:mod:`opendt.twin.tables`; older runs:
the same names in ``.parquet``, and some lack the measured power: the replayed workload's
``consumption.parquet`` stands in when run.json names it), ``topologies/v<N>.json`` and optionally
``calibration.parquet`` and ``optimizer.jsonl``. Files of a twin that is still running are read in one go.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from opendt.commands.errors import UsageError
from opendt.metrics import mape
from opendt.twin.tables import AGG, MEASURED, Table, read_journal, read_rows

RUN_MARKERS = ("run.json", "windows.parquet", "agg_results.parquet")
"""A directory under ``runs/`` is a run directory when it holds one of these (as a regular file)."""


def is_run_dir(path: Path) -> bool:
    """A real directory (not a symlink) holding a run's files (not a symlink to one either)."""
    if path.is_symlink() or not path.is_dir():
        return False
    return any((path / m).is_file() and not (path / m).is_symlink() for m in RUN_MARKERS)


def read_parquet(path: Path) -> pl.DataFrame | None:
    """A parquet file of a possibly running twin, read in one go; None when absent or unreadable."""
    try:
        return pl.read_parquet(path.read_bytes())
    except (OSError, pl.exceptions.PolarsError):
        return None


def read_table(run_dir: Path, table: Table | None = None) -> pl.DataFrame | None:
    """The journal (``table`` None) or a table's rows of the journaled windows, of a possibly running twin;
    None when absent or unreadable."""
    try:
        return read_journal(run_dir) if table is None else read_rows(run_dir, table)
    except (OSError, ValueError):
        return None


def read_run_json(run_dir: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _epoch_ms(df: pl.DataFrame, col: str) -> pl.Series:
    s = df[col]
    return s.dt.epoch("ms") if s.dtype.is_temporal() else s.cast(pl.Int64)


def _ms_expr(df: pl.DataFrame, col: str) -> pl.Expr:
    return pl.col(col).dt.epoch("ms") if df[col].dtype.is_temporal() else pl.col(col).cast(pl.Int64)


def measured_power(
    run_dir: Path, meta: dict[str, Any] | None, workload: Path | None = None
) -> pl.DataFrame | None:
    """Measured power of a run as ``timestamp_ms``, ``power_draw``: its ``measured.arrowlog``, else (older
    runs) the replayed workload's consumption when ``run.json`` names a workload that still exists."""
    df = read_table(run_dir, MEASURED)
    if df is not None and {"timestamp", "power_draw"} <= set(df.columns):
        keys = ["timestamp", "source"] if "source" in df.columns else ["timestamp"]
        return (
            df.unique(subset=keys, keep="last", maintain_order=True)  # a sample received twice counts once
            .group_by(pl.col("timestamp"), maintain_order=True)
            .agg(pl.col("power_draw").sum())  # the datacenter's power: its sources summed per instant
            .sort("timestamp")
            .select(_ms_expr(df, "timestamp").alias("timestamp_ms"), pl.col("power_draw").cast(pl.Float64))
        )
    source = (meta or {}).get("source") or {}
    if isinstance(source, dict) and source.get("workload"):
        workload = Path(source["workload"])
    if workload is None or not (Path(workload) / "consumption.parquet").exists():
        return None
    from opendt.workload import WorkloadError, load_workload

    try:
        consumption = load_workload(Path(workload)).consumption
    except (WorkloadError, OSError):
        return None
    return None if consumption is None else consumption.select("timestamp_ms", "power_draw")


def fallback_workload(run_dir: Path, meta: dict[str, Any] | None, configured: Path | None) -> Path | None:
    """For a run without run.json (older runs): the configured workload when the run id is named after it."""
    if meta is not None or configured is None or not run_dir.name.startswith(f"{configured.name}-"):
        return None
    return configured


@dataclass
class RunSummary:
    run_id: str
    run_dir: Path
    meta: dict[str, Any] | None
    windows_ok: int = 0
    windows_failed: int = 0
    first_ms: int | None = None
    last_ms: int | None = None
    mape_pct: float | None = None
    mape_points: int = 0
    energy_error_pct: float | None = None
    """Simulated minus measured energy over the instants both have, relative to the measured (%)."""
    energy_kwh: float | None = None
    carbon_kg: float | None = None
    topology_versions: int = 0
    calibration_rounds: int | None = None
    optimizer_rounds: int | None = None
    updated: float = 0.0
    files: dict[str, int] = field(default_factory=dict)
    fallback: Path | None = None
    """The workload of a run without run.json, when the caller could tell it (``fallback_workload``)."""

    @property
    def workload(self) -> str:
        if self.meta is None and self.fallback is not None:
            return f"{self.fallback.name} (no run.json)"
        source = (self.meta or {}).get("source") or {}
        if source.get("kind") == "kafka":
            return f"kafka {source.get('bootstrap_servers', '?')}"
        return str(source.get("workload_name") or source.get("workload") or "?")

    def settings_summary(self) -> str:
        """A few result-affecting settings, short: window, export interval, engine, calibration, optimizer."""
        s = (self.meta or {}).get("settings") or {}
        if not isinstance(s, dict) or not s:
            return "(no run.json)"
        parts = []
        win = (s.get("windowing") or {}).get("window_s")
        if win is not None:
            parts.append(f"window {win}s")
        sim = s.get("simulation") or {}
        exp = s.get("export_interval_s", sim.get("export_interval_s"))
        if exp is not None:
            parts.append(f"export {exp}s")
        if sim.get("engine"):
            parts.append(str(sim["engine"]))
        cal = s.get("calibration") or {}
        parts.append("calibrated" if cal.get("enabled") else "uncalibrated")
        if (s.get("optimizer") or {}).get("enabled"):
            parts.append("optimizer")
        return ", ".join(parts)

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "run_dir": str(self.run_dir),
            "workload": self.workload,
            "settings": self.settings_summary(),
            "windows_ok": self.windows_ok,
            "windows_failed": self.windows_failed,
            "first": _iso(self.first_ms),
            "last": _iso(self.last_ms),
            "mape_pct": self.mape_pct,
            "mape_points": self.mape_points,
            "energy_error_pct": self.energy_error_pct,
            "energy_kwh": self.energy_kwh,
            "carbon_kg": self.carbon_kg,
            "topology_versions": self.topology_versions,
            "calibration_rounds": self.calibration_rounds,
            "optimizer_rounds": self.optimizer_rounds,
            "updated": _iso(int(self.updated * 1000)),
            "files": self.files,
            "run_json": self.meta,
        }


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def summarize_run(run_dir: Path, *, with_mape: bool = True, workload: Path | None = None) -> RunSummary:
    """What a run directory holds, read without changing it (``workload``: where the measured power is when
    the run directory does not say)."""
    meta = read_run_json(run_dir)
    workload = workload if meta is not None else fallback_workload(run_dir, meta, workload)
    out = RunSummary(run_id=run_dir.name, run_dir=run_dir, meta=meta, fallback=workload)
    files = [p for p in run_dir.rglob("*") if not p.is_symlink() and p.is_file()]
    out.files = {str(p.relative_to(run_dir)): p.stat().st_size for p in files}
    out.updated = max((p.stat().st_mtime for p in files), default=run_dir.stat().st_mtime)
    windows = read_table(run_dir)
    if windows is not None and windows.height and "status" in windows.columns:
        out.windows_ok = int((windows["status"] == "ok").sum())
        out.windows_failed = windows.height - out.windows_ok
        out.first_ms = int(_epoch_ms(windows, "window_start").min())  # type: ignore[arg-type]
        out.last_ms = int(_epoch_ms(windows, "window_end").max())  # type: ignore[arg-type]
    agg = read_table(run_dir, AGG)
    if agg is not None and agg.height:
        out.energy_kwh = float(agg["energy_usage"].sum()) / 3.6e6
        if agg["carbon_emission"].is_not_null().any():
            out.carbon_kg = float(agg["carbon_emission"].sum()) / 1000
        if with_mape:
            measured = measured_power(run_dir, meta, workload)
            if measured is not None:
                sim = pl.DataFrame(
                    {"timestamp_ms": _epoch_ms(agg, "timestamp"), "power_draw": agg["power_draw"]}
                )
                both = sim.join(
                    measured.select("timestamp_ms", pl.col("power_draw").alias("measured")), on="timestamp_ms"
                ).filter(pl.col("measured") > 0)
                if both.height:
                    out.mape_pct = mape(both["power_draw"].to_numpy(), both["measured"].to_numpy())
                    out.mape_points = both.height
                    measured_sum = float(both["measured"].sum())
                    out.energy_error_pct = (
                        (float(both["power_draw"].sum()) - measured_sum) / measured_sum * 100
                    )
    topo = run_dir / "topologies"
    out.topology_versions = len(list(topo.glob("v*.json"))) if topo.is_dir() else 0
    cal = read_parquet(run_dir / "calibration.parquet")
    out.calibration_rounds = None if cal is None else cal.height
    opt = run_dir / "optimizer.jsonl"
    if opt.exists():
        lines = opt.read_bytes().splitlines()
        out.optimizer_rounds = len({_round_of(line) for line in lines} - {None})
    return out


def _round_of(line: bytes) -> int | None:
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    return int(rec["round"]) if isinstance(rec, dict) and rec.get("record") == "round" else None


def runs_root(data_dir: Path) -> Path:
    return Path(data_dir) / "runs"


def run_dirs(data_dir: Path) -> list[Path]:
    """Run directories, oldest update first (symlinks and anything that is not a run directory are left
    out: nothing outside ``runs/`` is walked)."""
    root = runs_root(data_dir)
    if root.is_symlink() or not root.is_dir():
        return []
    dirs = [p for p in root.iterdir() if not p.name.startswith(".") and is_run_dir(p)]
    return sorted(dirs, key=_updated)


def _updated(p: Path) -> float:
    files = [f for f in p.iterdir() if not f.is_symlink() and f.is_file()]
    return max((f.stat().st_mtime for f in files), default=p.stat().st_mtime)


def find_run(data_dir: Path, ident: str | None) -> Path:
    """The run of id ``ident`` (a unique prefix is enough); the most recently updated one for None."""
    dirs = run_dirs(data_dir)
    if not dirs:
        raise UsageError(
            f"no runs under {runs_root(data_dir)} (start one with opendt run, or pass --data-dir)"
        )
    if ident is None:
        return dirs[-1]
    exact = [p for p in dirs if p.name == ident]
    hits = exact or [p for p in dirs if p.name.startswith(ident)]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise UsageError(f"no run {ident!r} under {runs_root(data_dir)} (opendt runs lists them)")
    raise UsageError(
        f"{ident!r} matches {len(hits)} runs: {', '.join(p.name for p in hits)}; give more of it"
    )


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def summary_lines(s: RunSummary) -> list[str]:
    """The closing summary of ``opendt run`` (and ``runs show``'s head)."""
    mape_text = (
        "no measured power" if s.mape_pct is None else f"{s.mape_pct:.2f} % over {s.mape_points} instants"
    )
    span = "none durable yet" if s.first_ms is None else f"{_iso(s.first_ms)} .. {_iso(s.last_ms)}"
    error = "" if s.energy_error_pct is None else f" (vs measured: {s.energy_error_pct:+.2f} %)"
    return [
        f"run       {s.run_id}",
        f"windows   {s.windows_ok} ok, {s.windows_failed} failed ({span})",
        f"MAPE      {mape_text}",
        "energy    "
        + ("none simulated" if s.energy_kwh is None else f"{s.energy_kwh:,.3f} kWh simulated{error}"),
        "carbon    "
        + (
            f"{s.carbon_kg:,.3f} kg CO2 simulated"
            if s.carbon_kg is not None
            else "none simulated"
            if s.energy_kwh is None
            else "unknown (no carbon intensity received)"
        ),
        f"results   {s.run_dir}",
    ]


def list_text(data_dir: Path, workload: Path | None = None) -> str:
    dirs = run_dirs(data_dir)
    if not dirs:
        return f"no runs under {runs_root(data_dir)}\n"
    rows = [("RUN", "WORKLOAD", "SETTINGS", "WINDOWS", "MAPE %", "UPDATED")]
    for d in dirs:
        s = summarize_run(d, workload=workload)
        windows = f"{s.windows_ok}" + (f" (+{s.windows_failed} failed)" if s.windows_failed else "")
        updated = datetime.fromtimestamp(s.updated, UTC).strftime("%Y-%m-%d %H:%M")
        rows.append((s.run_id, s.workload, s.settings_summary(), windows, _num(s.mape_pct, ".2f"), updated))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n" for r in rows
    )


def show_text(run_dir: Path, *, as_json: bool = False, workload: Path | None = None) -> str:
    s = summarize_run(run_dir, workload=workload)
    if as_json:
        return json.dumps(s.to_json_dict(), indent=2) + "\n"
    lines = summary_lines(s)
    lines.insert(1, f"workload  {s.workload}")
    lines.insert(2, f"settings  {s.settings_summary()}")
    created = (s.meta or {}).get("created")
    if created:
        lines.insert(1, f"created   {created} (opendt {(s.meta or {}).get('opendt_version', '?')})")
    lines.append(f"topology  {s.topology_versions} version(s) saved")
    if s.calibration_rounds is not None:
        lines.append(f"calibration {s.calibration_rounds} round(s) journaled")
    if s.optimizer_rounds is not None:
        lines.append(f"optimizer {s.optimizer_rounds} round(s) journaled")
    lines.append("files     " + files_summary(s.files))
    return "\n".join(lines) + "\n"


def removable_run(data_dir: Path, ident: str) -> Path:
    """The run directory ``runs rm`` may delete: ``ident`` is exactly the name of a listed run (no prefix,
    no path, never empty: an unset shell variable must not name every run)."""
    root = runs_root(data_dir)
    bad = not ident or ident in (".", "..") or ident.startswith(".") or any(c in ident for c in "/\\\0")
    if bad or ident not in {p.name for p in run_dirs(data_dir)}:
        raise UsageError(f"no run {ident!r} under {root} (give the exact id; opendt runs lists them)")
    return root / ident


def remove_run(run_dir: Path) -> str:
    """Delete a run directory, under its lock: a run whose lock a daemon holds is refused (the lock is
    tried, not guessed from file times)."""
    from opendt.twin.run import RunLock, RunLocked

    lock = RunLock(run_dir)
    try:
        lock.acquire()
    except RunLocked as e:
        raise UsageError(f"run {run_dir.name} is in use: {e}") from None
    try:
        shutil.rmtree(run_dir)
    finally:
        lock.release()
    return f"removed run {run_dir.name} ({run_dir})\n"


SHOWN_ENTRIES = 24
"""Entries of the run directory ``runs show`` names at most (the rest are counted)."""


def files_summary(files: dict[str, int]) -> str:
    """The run directory's top-level files with their sizes, each subdirectory as its file count and total
    size (a SURF run holds thousands of input frames and checkpoint files): bounded whatever the run's age."""
    groups: dict[str, list[int]] = {}
    for name, size in files.items():
        top, sub, _ = name.partition("/")
        groups.setdefault(top + ("/" if sub else ""), []).append(size)
    parts = [
        f"{k} ({len(v):,} files, {sum(v):,} B)" if k.endswith("/") else f"{k} ({v[0]:,} B)"
        for k, v in sorted(groups.items())
    ]
    if len(parts) > SHOWN_ENTRIES:
        parts[SHOWN_ENTRIES:] = [f"… and {len(parts) - SHOWN_ENTRIES} more"]
    return ", ".join(parts)
