"""SLOs: the model, the file (load, atomic save), and the watcher that applies edits and rejects bad ones."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from opendt.optimizer.slo import Slo, SloError, SloWatcher, load_slo, parse_slo, save_slo
from opendt.settings import OptimizerSettings

REPO = Path(__file__).resolve().parents[2]


def _write(path: Path, doc: object, indent: int | None = None) -> None:
    path.write_text(json.dumps(doc, indent=indent))


def _remove(path: Path) -> None:
    path.unlink()


def _edit_keeping_size_and_mtime(path: Path, old: str, new: str) -> None:
    """Replace ``old`` by ``new`` (same length) in the file and restore its mtime."""
    st = path.stat()
    text = path.read_text()
    edited = text.replace(old, new)
    assert len(edited) == len(text)
    assert edited != text
    path.write_text(edited)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.fixture
def slo_file(tmp_path: Path) -> Path:
    """An SLO file with an energy and a wait target."""
    p = tmp_path / "slo.json"
    _write(p, {"energy_kwh_per_window": 0.2, "task_wait_p95_s": 60})
    return p


def test_load_valid_file(slo_file: Path) -> None:
    """A valid file loads; targets() lists the set fields only, in field order."""
    slo = load_slo(slo_file)
    assert slo.targets() == {"energy_kwh_per_window": 0.2, "task_wait_p95_s": 60.0}
    assert slo.peak_power_w is None


def test_shipped_default_is_valid_and_is_the_settings_default() -> None:
    """config/slo.json (the settings' default slo_path) loads and sets an energy target per window."""
    path = OptimizerSettings().slo_path
    assert path == REPO / "config" / "slo.json"
    slo = load_slo(path)
    assert slo.energy_kwh_per_window is not None
    assert set(slo.targets()) <= set(Slo.model_fields)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ('{"energy_kwh_per_window": 0.2,}', "is not valid JSON: Expecting property name"),
        ('{"energy_kwh_per_window": 0.2, "runtime": 5}', "runtime: unknown key"),
        ('{"peak_power_w": 0}', "peak_power_w: Input should be greater than 0"),
        ('{"peak_power_w": -5}', "peak_power_w: Input should be greater than 0"),
        ('{"carbon_g_per_window": "50"}', "carbon_g_per_window: Input should be a valid number"),
        ('{"carbon_g_per_window": true}', "carbon_g_per_window: Input should be a valid number"),
        ("{}", "no target set"),
        ('{"task_wait_p95_s": null}', "no target set"),
        ("[1, 2]", "expected a JSON object, got list"),
        (b'{"peak_power_w": 1\x80}', "is not UTF-8 text"),
    ],
)
def test_bad_files_raise_slo_error_naming_file_and_field(
    tmp_path: Path, content: str | bytes, fragment: str
) -> None:
    """Every kind of bad file raises SloError with the file's path and the problem."""
    p = tmp_path / "slo.json"
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content)
    with pytest.raises(SloError) as e:
        load_slo(p)
    assert str(p) in str(e.value)
    assert fragment in str(e.value)


def test_missing_file(tmp_path: Path) -> None:
    """A missing file is an SloError naming it."""
    with pytest.raises(SloError, match=r"SLO file not found: .*nope\.json"):
        load_slo(tmp_path / "nope.json")


def test_parse_slo_names_the_source() -> None:
    """parse_slo (used for API bodies) names its source and the field."""
    with pytest.raises(SloError, match=r"invalid SLOs \(PUT /api/slo\): energy_kwh_per_window"):
        parse_slo({"energy_kwh_per_window": "x"}, source="PUT /api/slo")
    assert parse_slo({"peak_power_w": 5000}).peak_power_w == 5000.0


def test_save_round_trips_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    """save_slo writes only the set targets; load_slo reads back an equal Slo; no temp file remains."""
    p = tmp_path / "slo.json"
    slo = Slo(peak_power_w=4000, carbon_g_per_window=55.5)
    save_slo(p, slo)
    assert json.loads(p.read_text()) == {"peak_power_w": 4000.0, "carbon_g_per_window": 55.5}
    assert load_slo(p) == slo
    assert [f.name for f in tmp_path.iterdir()] == ["slo.json"]


def test_failed_save_keeps_old_file_and_removes_temporary(
    slo_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the rename fails, the old file is intact and the temporary file is removed."""
    before = slo_file.read_text()

    def boom(self: Path, target: Path) -> Path:
        raise OSError("disk full")

    monkeypatch.setattr(Path, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        save_slo(slo_file, Slo(peak_power_w=1))
    assert slo_file.read_text() == before
    assert [f.name for f in slo_file.parent.iterdir()] == ["slo.json"]


def test_watcher_refuses_a_bad_file_at_start(tmp_path: Path) -> None:
    """The constructor loads the file: a bad or missing one raises SloError (the daemon cannot start)."""
    p = tmp_path / "slo.json"
    with pytest.raises(SloError, match="not found"):
        SloWatcher(p)
    p.write_text("{}")
    with pytest.raises(SloError, match="no target set"):
        SloWatcher(p)
    with pytest.raises(ValueError, match="interval_s"):
        SloWatcher(p, interval_s=0)


async def test_valid_edit_swaps_and_calls_back_once(slo_file: Path) -> None:
    """A valid edit replaces current and calls the (sync) callback once; an unchanged file does nothing."""
    seen: list[Slo] = []
    w = SloWatcher(slo_file, on_change=seen.append)
    assert not await w.poll()
    _write(slo_file, {"energy_kwh_per_window": 0.3})
    with capture_logs() as logs:
        assert await w.poll()
    assert w.current == Slo(energy_kwh_per_window=0.3)
    assert seen == [w.current]
    assert not await w.poll()
    assert seen == [w.current]
    assert w.changes == 1
    assert [e["event"] for e in logs] == ["slo_changed"]
    assert logs[0]["new"] == {"energy_kwh_per_window": 0.3}


async def test_async_callback_is_awaited(slo_file: Path) -> None:
    """An async callback is awaited before poll returns."""
    seen: list[Slo] = []

    async def cb(slo: Slo) -> None:
        await asyncio.sleep(0)
        seen.append(slo)

    w = SloWatcher(slo_file, on_change=cb)
    _write(slo_file, {"peak_power_w": 3000})
    assert await w.poll()
    assert seen == [Slo(peak_power_w=3000)]


async def test_formatting_only_edit_is_not_a_change(slo_file: Path) -> None:
    """New bytes describing the same SLOs do not call back."""
    seen: list[Slo] = []
    w = SloWatcher(slo_file, on_change=seen.append)
    _write(slo_file, {"task_wait_p95_s": 60.0, "energy_kwh_per_window": 0.2}, indent=4)
    assert not await w.poll()
    assert seen == []


async def test_invalid_edit_is_logged_once_and_old_slos_stay(slo_file: Path) -> None:
    """A bad edit logs one slo_rejected warning naming file and field; the old SLOs stay; a fix applies."""
    seen: list[Slo] = []
    w = SloWatcher(slo_file, on_change=seen.append)
    old = w.current
    _write(slo_file, {"energy_kwh_per_window": -1})
    with capture_logs() as logs:
        assert not await w.poll()
        assert not await w.poll()
    assert w.current == old
    assert seen == []
    assert len(logs) == 1
    assert logs[0]["event"] == "slo_rejected"
    assert logs[0]["log_level"] == "warning"
    assert str(slo_file) in logs[0]["error"]
    assert "energy_kwh_per_window" in logs[0]["error"]
    assert logs[0]["kept"] == old.targets()
    assert w.rejections == 1
    _write(slo_file, {"energy_kwh_per_window": 0.25})
    assert await w.poll()
    assert w.current.energy_kwh_per_window == 0.25


async def test_deleted_file_keeps_slos_until_it_returns(slo_file: Path) -> None:
    """A vanished file is one warning; the SLOs stay; the file's return is applied."""
    w = SloWatcher(slo_file)
    old = w.current
    _remove(slo_file)
    with capture_logs() as logs:
        assert not await w.poll()
        assert not await w.poll()
    assert [e["event"] for e in logs] == ["slo_rejected"]
    assert "cannot read" in logs[0]["error"]
    assert w.current == old
    _write(slo_file, {"carbon_g_per_window": 10})
    assert await w.poll()
    assert w.current == Slo(carbon_g_per_window=10)


async def test_same_size_edit_with_same_mtime_is_seen(slo_file: Path) -> None:
    """Content is compared, not mtime/size: an equal-length edit with the old mtime restored is applied."""
    w = SloWatcher(slo_file)
    _edit_keeping_size_and_mtime(slo_file, "0.2", "0.3")
    assert await w.poll()
    assert w.current.energy_kwh_per_window == 0.3


async def test_update_writes_applies_once_and_poll_does_not_reapply(slo_file: Path) -> None:
    """update() (PUT /api/slo) writes the file atomically and calls back once; the next polls see no change."""
    seen: list[Slo] = []
    w = SloWatcher(slo_file, on_change=seen.append)
    new = Slo(energy_kwh_per_window=0.15, peak_power_w=3500)
    assert await w.update(new)
    assert load_slo(slo_file) == new
    assert w.current == new
    assert not await w.poll()
    assert not await w.poll()
    assert seen == [new]
    assert not await w.update(new)  # the same SLOs again: written, not a change
    assert seen == [new]


async def test_failed_update_changes_nothing(slo_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An update whose write fails raises and keeps the SLOs; a later identical file edit is still applied."""
    w = SloWatcher(slo_file)
    old = w.current
    new = Slo(peak_power_w=1234)

    def boom(path: Path, slo: Slo) -> None:
        raise OSError("read-only")

    monkeypatch.setattr("opendt.optimizer.slo.save_slo", boom)
    with pytest.raises(OSError, match="read-only"):
        await w.update(new)
    assert w.current == old
    monkeypatch.undo()
    save_slo(slo_file, new)
    assert await w.poll()
    assert w.current == new


async def test_failing_callback_is_logged_and_the_slos_still_apply(slo_file: Path) -> None:
    """A callback that raises is logged (slo_callback_failed); the new SLOs are current anyway."""

    def cb(slo: Slo) -> None:
        raise RuntimeError("optimizer busy")

    w = SloWatcher(slo_file, on_change=cb)
    _write(slo_file, {"peak_power_w": 2000})
    with capture_logs() as logs:
        assert await w.poll()
    assert w.current == Slo(peak_power_w=2000)
    failed = [e for e in logs if e["event"] == "slo_callback_failed"]
    assert failed
    assert failed[0]["error"] == "RuntimeError: optimizer busy"


async def test_run_polls_every_interval(slo_file: Path) -> None:
    """run() sleeps interval_s between polls (injected sleep) and picks up an edit made between them."""
    delays: list[float] = []
    seen: list[Slo] = []

    async def sleep(s: float) -> None:
        delays.append(s)
        if len(delays) == 2:
            _write(slo_file, {"task_wait_p95_s": 30})
        if len(delays) == 4:
            raise asyncio.CancelledError

    w = SloWatcher(slo_file, interval_s=1.5, on_change=seen.append, sleep=sleep)
    with pytest.raises(asyncio.CancelledError):
        await w.run()
    assert delays == [1.5, 1.5, 1.5, 1.5]
    assert seen == [Slo(task_wait_p95_s=30)]


async def test_updates_go_to_the_live_copy_and_survive_a_restart(tmp_path: Path) -> None:
    """Issue 18 item 8: update() (PUT /api/slo) writes the run's live copy, never the configured (tracked)
    file; the live copy is watched from then on, and a watcher of the same run starts from it."""
    configured = tmp_path / "slo.json"
    configured.write_text('{"peak_power_w": 4000}')
    live = tmp_path / "run" / "slo.json"
    live.parent.mkdir()
    w = SloWatcher(configured, live_path=live)
    assert w.path == configured
    await w.update(Slo(peak_power_w=3000))
    assert configured.read_text() == '{"peak_power_w": 4000}'
    assert json.loads(live.read_text()) == {"peak_power_w": 3000.0}
    assert w.path == live
    live.write_text('{"peak_power_w": 2500}')
    assert await w.poll()
    assert w.current.peak_power_w == 2500
    again = SloWatcher(configured, live_path=live)
    assert again.current.peak_power_w == 2500
    assert again.path == live
