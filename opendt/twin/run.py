"""Run identity: which run directory a twin writes to (``<data_dir>/runs/<run_id>/``), what it records about
itself (``run.json``), and the lock that keeps a second daemon off it.

The run id covers every setting that changes results — the windows, the export interval, the engine, the
calibrator (on or off, and every calibration setting) — and the source of the input: with the replay
producer, the workload's *content* (a hash of its files, not only its path); with ``--no-replay``, the Kafka
source (bootstrap servers and input topics). The same command therefore resumes the same run, and a run with
other results never reuses it. ``opendt run --fresh`` moves an existing run directory aside first.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from opendt import __version__
from opendt.models.datacenter import DEFAULT as DEFAULT_DATACENTER
from opendt.settings import Settings
from opendt.workload import Workload

WORKLOAD_FILES = (
    "tasks.parquet",
    "fragments.parquet",
    "consumption.parquet",
    "carbon.parquet",
    "topology.json",
    "workload.yaml",
)


class RunLocked(RuntimeError):
    """Another daemon uses the run directory."""


def result_settings(settings: Settings) -> dict[str, Any]:
    """The settings that change a run's results (what its id hashes and ``run.json`` records)."""
    sim = settings.simulation
    cal = settings.calibration
    return {
        "window_s": settings.windowing.window_s,
        "export_interval_s": sim.export_interval_s,
        "engine": sim.engine,
        "calibration": cal.model_dump(mode="json") if cal.enabled else None,
    }


def workload_digest(path: Path) -> str:
    """A hash of the workload directory's files (their bytes, in a fixed order)."""
    h = hashlib.sha1(usedforsecurity=False)
    for name in WORKLOAD_FILES:
        p = path / name
        if not p.is_file():
            continue
        h.update(name.encode())
        with p.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class RunIdentity:
    run_id: str
    source: dict[str, Any]
    settings: dict[str, Any]


def identity(settings: Settings, workload: Workload | None) -> RunIdentity:
    """The run of these settings: from the workload's content (replay) or the Kafka source (no replay), and
    the datacenter (``kafka.datacenter``: a named one is in the id, ``<id>-<digest>`` without a replay)."""
    topics = settings.kafka.topics
    if workload is not None:
        name = workload.meta.name
        source: dict[str, Any] = {
            "kind": "replay",
            "workload": str(workload.path.resolve()),
            "workload_name": name,
            "workload_sha1": workload_digest(workload.path),
        }
        key: list[Any] = [source["workload_sha1"]]
    else:
        name = "kafka"
        inputs = {k: getattr(topics, k) for k in ("tasks", "fragments", "power", "carbon", "topology")}
        source = {
            "kind": "kafka",
            "bootstrap_servers": settings.kafka.bootstrap_servers or "embedded",
            "topics": inputs,
        }
        key = [source["bootstrap_servers"], inputs]
    if (dc := settings.kafka.datacenter) != DEFAULT_DATACENTER:  # the default keeps the ids of before
        name = dc if workload is None else f"{name}-{dc}"
        source["datacenter"] = dc
        key.append(dc)
    doc = result_settings(settings)
    digest = hashlib.sha1(orjson.dumps([key, doc], option=orjson.OPT_SORT_KEYS), usedforsecurity=False)
    return RunIdentity(f"{name}-{digest.hexdigest()[:10]}", source, doc)


def write_run_json(run_dir: Path, ident: RunIdentity) -> None:
    """Record the run (atomically); ``created`` is kept from an earlier process of the run."""
    path = run_dir / "run.json"
    created = datetime.now(tz=UTC).isoformat(timespec="seconds")
    if path.exists():
        with contextlib.suppress(OSError, ValueError):
            created = json.loads(path.read_text()).get("created", created)
    doc = {
        "run_id": ident.run_id,
        "created": created,
        "opendt_version": __version__,
        "source": ident.source,
        "settings": ident.settings,
    }
    tmp = path.with_name("run.json.tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(path)


def set_aside(run_dir: Path) -> Path | None:
    """``--fresh``: move an existing run directory to ``<run_id>.<UTC time>`` (nothing is deleted)."""
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return None
    stamp = datetime.now(tz=UTC).strftime("%Y%m%dT%H%M%SZ")
    target = run_dir.with_name(f"{run_dir.name}.{stamp}")
    run_dir.rename(target)
    return target


class RunLock:
    """An exclusive lock on a run directory for the daemon's life (``flock``; the kernel releases it when
    the process dies, even by ``kill -9``)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / ".lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = (os.read(fd, 64).decode(errors="replace").split() or ["?"])[0]
            os.close(fd)
            raise RunLocked(
                f"another opendt daemon (pid {holder}) is using the run directory {self.path.parent}; "
                "stop it first, or use another data_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {int(time.time())}".encode())
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
