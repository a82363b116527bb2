"""Run identity: the run id covers the input source and every result setting; one daemon per run directory;
--fresh moves a run aside."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from opendt.calibration.settings import CalibrationSettings
from opendt.settings import REPO_ROOT, KafkaSettings, Settings, SimulationSettings
from opendt.twin.run import RunLock, RunLocked, identity, set_aside, write_run_json
from opendt.workload import load_workload

DEMO = REPO_ROOT / "data" / "demo"


def test_the_id_covers_calibration_settings_engine_and_workload_content(tmp_path: Path) -> None:
    """Calibration on (or one of its settings) and another export interval give other runs; the same workload
    copied elsewhere (same content) gives the same run, a changed file another one."""
    wl = load_workload(DEMO)
    base = identity(Settings(), wl).run_id
    assert identity(Settings(), wl).run_id == base
    assert identity(Settings(calibration=CalibrationSettings(enabled=True)), wl).run_id != base
    cal = identity(Settings(calibration=CalibrationSettings(enabled=True)), wl).run_id
    tuned = Settings(calibration=CalibrationSettings(enabled=True, apply_delay_s=900))
    assert identity(tuned, wl).run_id not in (base, cal)
    assert identity(Settings(simulation=SimulationSettings(export_interval_s=300)), wl).run_id != base
    copy = tmp_path / "copy"
    shutil.copytree(DEMO, copy)
    assert identity(Settings(), load_workload(copy)).run_id == base
    (copy / "workload.yaml").write_text((copy / "workload.yaml").read_text() + "\n# edited\n")
    assert identity(Settings(), load_workload(copy)).run_id != base


def test_without_replay_the_id_comes_from_the_kafka_source() -> None:
    """--no-replay: the id derives from the settings and the Kafka source (bootstrap servers, topics)."""
    a = identity(Settings(kafka=KafkaSettings(bootstrap_servers="dc1:9092")), None)
    b = identity(Settings(kafka=KafkaSettings(bootstrap_servers="dc2:9092")), None)
    assert a.run_id.startswith("kafka-")
    assert a.run_id != b.run_id
    assert identity(Settings(kafka=KafkaSettings(bootstrap_servers="dc1:9092")), None).run_id == a.run_id
    assert a.source["kind"] == "kafka"


def test_run_json_records_the_run_and_keeps_its_creation_time(tmp_path: Path) -> None:
    """run.json names the source and the result settings; a later process of the run keeps `created`."""
    ident = identity(Settings(calibration=CalibrationSettings(enabled=True)), load_workload(DEMO))
    write_run_json(tmp_path, ident)
    first = json.loads((tmp_path / "run.json").read_text())
    assert first["run_id"] == ident.run_id
    assert first["source"]["kind"] == "replay"
    assert first["settings"]["calibration"]["enabled"] is True
    write_run_json(tmp_path, ident)
    assert json.loads((tmp_path / "run.json").read_text())["created"] == first["created"]


def test_a_second_daemon_on_the_same_run_directory_is_refused(tmp_path: Path) -> None:
    """The lock is exclusive while held (naming the holder's pid) and free again once released."""
    one, two = RunLock(tmp_path), RunLock(tmp_path)
    one.acquire()
    with pytest.raises(RunLocked, match=r"another opendt daemon \(pid \d+\) is using the run directory"):
        two.acquire()
    one.release()
    two.acquire()
    two.release()


def test_fresh_moves_the_run_aside(tmp_path: Path) -> None:
    """--fresh renames a run directory with content (nothing is deleted); an empty or absent one stays."""
    run = tmp_path / "runs" / "demo-0123456789"
    assert set_aside(run) is None
    run.mkdir(parents=True)
    (run / "windows.parquet").write_bytes(b"x")
    moved = set_aside(run)
    assert moved is not None
    assert moved.name.startswith("demo-0123456789.")
    assert (moved / "windows.parquet").read_bytes() == b"x"
    assert not run.exists()
