"""A workload whose topology file is outside the model's bounds (the issue's coreCount 2⁶² with cpu.count 4, or
100,000 hosts) is refused at once: ``opendt run`` exits 1 with a message naming the file and the field, no
traceback, nothing simulated. A run's results file that disagrees with its window journal stops the restart
the same way, and a damaged one is named in one line."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from opendt.commands.errors import UsageError
from opendt.commands.serve import build_view
from opendt.daemon import run_daemon
from opendt.models.bounds import MAX_HOSTS
from opendt.settings import Settings
from opendt.twin.appendlog import FRAME_HEADER, Frame, arrow_schema, scan
from opendt.twin.tables import AGG, JOURNAL, MEASURED

from .. import runfiles
from ..pipeline.conftest import run_dir, write_small_workload
from .conftest import DEMO, REPO


@pytest.mark.parametrize(
    ("host", "field"),
    [
        ({"cpu": {"coreCount": 2**62, "count": 4, "coreSpeed": 2400}}, "cpu.coreCount"),
        ({"count": MAX_HOSTS + 1}, "count"),  # 100,000 hosts are a real site now
        (
            {"cpuPowerModel": {"modelType": "mse", "idlePower": 30, "maxPower": 1e9, "calibrationFactor": 4}},
            "maxPower",
        ),
    ],
)
def test_out_of_bounds_topology_file_refuses_to_start(
    tmp_path: Path, host: dict[str, Any], field: str
) -> None:
    """``opendt run`` on it: exit 1 within a minute, stderr names topology.json and the field, no traceback,
    no window written."""
    workload = tmp_path / "wl"
    shutil.copytree(DEMO, workload)
    doc = json.loads((workload / "topology.json").read_text())
    doc["clusters"][0]["hosts"][0].update(host)
    (workload / "topology.json").write_text(json.dumps(doc))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENDT_")}
    env.update({"OPENDT_LOG__FORMAT": "json", "OPENDT_API__PORT": "0"})
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "opendt",
            "run",
            "--workload",
            str(workload),
            "--data-dir",
            str(tmp_path / "data"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 1, res.stderr[-2000:]
    assert "topology.json" in res.stderr
    assert field in res.stderr
    assert "Traceback" not in res.stderr
    assert not list((tmp_path / "data").glob("runs/*/windows.arrowlog"))


def _frames(path: Path) -> list[Frame]:
    return scan(
        path,
        path.read_bytes(),
        arrow_schema(
            AGG.schema
            if "agg" in path.name
            else (MEASURED.schema if "measured" in path.name else JOURNAL.schema)
        ),
    ).frames


def _embedded(settings: Settings) -> Settings:
    """Its own embedded broker per daemon run (as ``opendt run``): a restart's replay re-sends the stream
    after its last durable window into a fresh broker. (Resumed twice or more against one external broker
    with its own replay each time, a twin sometimes runs 24 empty windows past the trace's end and gets a
    different final window: the same on the parquet layout before the appended files; not a results-file
    matter.)"""
    return settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"bootstrap_servers": None})}
    )


def _serve_refuses(settings: Settings, name: str) -> None:
    """``opendt serve`` of the damaged run refuses it in one line naming the file (it cannot re-read)."""
    with pytest.raises(UsageError) as err:
        build_view(run_dir(settings.data_dir), settings)
    assert name in str(err.value)
    assert "\n" not in str(err.value)


async def _fails_naming(settings: Settings, name: str, *words: str) -> None:
    """The daemon on the damaged run: exit 1 at once, one ``daemon_failed`` line naming ``name`` (and
    ``words``), no traceback; ``opendt serve`` of the run refuses it in one line naming it too."""
    with capture_logs() as logs:
        async with asyncio.timeout(60):
            assert await run_daemon(settings, exit_when_done=True) == 1, name
    [failed] = [e for e in logs if e["event"] == "daemon_failed"]
    assert name in failed["error"], failed
    assert all(w in failed["error"] for w in words), (words, failed)
    assert "\n" not in failed["error"]
    assert "exc_info" not in failed, "a traceback for an error whose message says it all"
    assert "ComputeError" not in failed["error"]
    _serve_refuses(settings, name)


async def _reads_again(settings: Settings, name: str, *, torn: bool = False) -> None:
    """The daemon on the damaged run: one warning naming ``name``, the windows from the damage on read again
    from the stream, exit 0. ``opendt serve`` refuses the run first, naming the file — unless the damage is a
    torn journal tail (a run that stopped earlier: served as far as it goes)."""
    if not torn:
        _serve_refuses(settings, name)
    with capture_logs() as logs:
        async with asyncio.timeout(90):
            assert await run_daemon(settings, exit_when_done=True) == 0, name
    named = [e for e in logs if e["event"] in ("results_rewound", "results_tail_cut")]
    assert any(name in (e.get("error", "") + e.get("file", "")) for e in named), named
    assert not [e for e in logs if e["event"] == "daemon_failed"]


@pytest.mark.parametrize("what", ["doubled", "deleted", "stale"])
async def test_results_files_are_checked_against_the_journal_on_load(
    daemon_settings: Callable[..., Settings], tmp_path: Path, what: str
) -> None:
    """A finished run; then its agg_results.arrowlog holds windows twice: the restart stops at once with exit
    1 and one ``daemon_failed`` line naming the file and the way out (before: duplicates kept); deleted, or
    replaced by an older copy (the last 7 windows missing): the twin names it in a warning and reads the
    windows it lacks again from the stream (before: loaded silently, 286 / 266 rows missing), to the same
    results. ``opendt serve`` refuses each, naming the file."""
    workload = write_small_workload(tmp_path / "wl")
    settings = _embedded(daemon_settings(workload))
    async with asyncio.timeout(90):
        assert await run_daemon(settings, exit_when_done=True) == 0
    agg_path = run_dir(settings.data_dir) / "agg_results.arrowlog"
    good = agg_path.read_bytes()
    agg = runfiles.agg(agg_path.parent)
    frames = _frames(agg_path)
    if what == "doubled":
        agg_path.write_bytes(good + good[frames[-3].offset - FRAME_HEADER :])  # the last 3 windows again
        await _fails_naming(settings, "agg_results.arrowlog", "disagrees with windows.arrowlog", "--fresh")
        return
    if what == "deleted":
        agg_path.unlink()
    else:
        agg_path.write_bytes(good[: frames[-7].offset - FRAME_HEADER])  # the last 7 windows' frames gone
    await _reads_again(settings, "agg_results.arrowlog")
    assert runfiles.agg(agg_path.parent).equals(agg)
    assert agg_path.read_bytes() == good


@pytest.mark.parametrize("damage", ["random bytes", "checksum", "cut"])
@pytest.mark.parametrize("name", ["windows.arrowlog", "agg_results.arrowlog", "measured.arrowlog"])
async def test_damaged_results_files_are_named_in_one_line(
    daemon_settings: Callable[..., Settings], tmp_path: Path, name: str, damage: str
) -> None:
    """A finished run; then one of its appended files is random bytes: the restart exits 1 with one line
    naming the file (no ComputeError, no traceback) and ``opendt serve`` refuses the run naming it. One byte
    of a frame in its middle flipped (a checksum mismatch) or the file cut in its middle: ``opendt serve``
    refuses it the same way, and the twin, whose stream still holds the data, names it in one warning, cuts
    every file back to the last intact window and reads the windows after it again, to the same results
    (before: ``windows.parquet`` of random bytes stopped every restart with a raw ComputeError naming no
    file). Never different results."""
    workload = write_small_workload(tmp_path / "wl")
    settings = _embedded(daemon_settings(workload))
    async with asyncio.timeout(90):
        assert await run_daemon(settings, exit_when_done=True) == 0
    run = run_dir(settings.data_dir)
    path = run / name
    good = path.read_bytes()
    agg, journal = runfiles.agg(run), runfiles.journal(run)
    middle = _frames(path)[len(_frames(path)) // 2]
    if damage == "random bytes":
        path.write_bytes(os.urandom(len(good)))
        await _fails_naming(settings, name, "header")
        return
    if damage == "checksum":
        flipped = bytearray(good)
        flipped[middle.offset + middle.length // 2] ^= 0x55
        path.write_bytes(bytes(flipped))
    else:
        path.write_bytes(good[: middle.offset + middle.length // 2])
    await _reads_again(settings, name, torn=damage == "cut" and name == "windows.arrowlog")
    assert runfiles.agg(run).equals(agg)
    again = runfiles.journal(run)
    assert again.drop("latency_s", "compute_s").equals(journal.drop("latency_s", "compute_s"))


@pytest.mark.parametrize("torn", ["journal", "results"])
async def test_a_torn_append_is_cut_back_and_resumes_to_equal_results(
    daemon_settings: Callable[..., Settings], tmp_path: Path, torn: str
) -> None:
    """What a ``kill -9`` in the middle of a window's appends leaves, made exactly: the journal's last frame
    half written, or the last window's results frame half written and its journal frame missing. The
    restart cuts each file back to its last complete window (a ``results_tail_cut`` line naming it), the
    window is simulated again from the stream, and the results equal the uninterrupted run's."""
    workload = write_small_workload(tmp_path / "wl")
    settings = _embedded(daemon_settings(workload))
    async with asyncio.timeout(90):
        assert await run_daemon(settings, exit_when_done=True) == 0
    run = run_dir(settings.data_dir)
    agg, journal = runfiles.agg(run), runfiles.journal(run)
    jpath, apath = run / "windows.arrowlog", run / "agg_results.arrowlog"
    jlast, alast = _frames(jpath)[-1], _frames(apath)[-1]
    if torn == "journal":
        jpath.write_bytes(jpath.read_bytes()[: jlast.offset + jlast.length // 2])
    else:
        jpath.write_bytes(jpath.read_bytes()[: jlast.offset - FRAME_HEADER])
        apath.write_bytes(apath.read_bytes()[: alast.offset + alast.length // 2])
    with capture_logs() as logs:
        async with asyncio.timeout(90):
            assert await run_daemon(settings, exit_when_done=True) == 0
    cut = {Path(e["file"]).name for e in logs if e["event"] == "results_tail_cut"}
    assert ("windows.arrowlog" if torn == "journal" else "agg_results.arrowlog") in cut, cut
    [resumed] = [e for e in logs if e["event"] == "run_resumed"]
    assert resumed["windows_durable"] == journal.height - 1
    assert runfiles.agg(run).equals(agg)
    again = runfiles.journal(run)
    assert again.drop("latency_s", "compute_s").equals(journal.drop("latency_s", "compute_s"))
    starts = agg["window_start"].dt.epoch("ms").unique(maintain_order=True).to_list()
    assert runfiles.frame_starts(run, AGG) == starts  # no frame twice
