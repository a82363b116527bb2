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
        ({"count": 100_000}, "count"),
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
    with pytest.raises(UsageError) as err:
        build_view(run_dir(settings.data_dir), settings)
    assert name in str(err.value)
    assert "\n" not in str(err.value)


async def test_results_files_are_checked_against_the_journal_on_load(
    daemon_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """A finished run; then its agg_results.arrowlog is deleted, replaced by an older copy (windows missing),
    or holds a window twice: each restart stops at once with exit 1 and one ``daemon_failed`` line naming the
    file and the way out (before: loaded silently, 286 / 266 rows missing, duplicates kept). Restored, the
    run resumes and exits 0."""
    workload = write_small_workload(tmp_path / "wl")
    settings = daemon_settings(workload)
    async with asyncio.timeout(90):
        assert await run_daemon(settings, exit_when_done=True) == 0
    agg_path = run_dir(settings.data_dir) / "agg_results.arrowlog"
    good = agg_path.read_bytes()
    agg = runfiles.agg(agg_path.parent)
    frames = _frames(agg_path)
    cut = frames[-7].offset - FRAME_HEADER  # the last 7 windows' frames gone
    last3 = good[frames[-3].offset - FRAME_HEADER :]
    cases = {"deleted": None, "stale": good[:cut], "doubled": good + last3}
    for what, data in cases.items():
        if data is None:
            agg_path.unlink()
        else:
            agg_path.write_bytes(data)
        word = "does not exist" if what == "deleted" else "disagrees with windows.arrowlog"
        await _fails_naming(settings, "agg_results.arrowlog", word, "--fresh")
        agg_path.write_bytes(good)
    async with asyncio.timeout(90):
        assert await run_daemon(settings, exit_when_done=True) == 0
    assert runfiles.agg(agg_path.parent).equals(agg)
    assert agg_path.read_bytes() == good


@pytest.mark.parametrize("name", ["windows.arrowlog", "agg_results.arrowlog", "measured.arrowlog"])
async def test_damaged_results_files_are_named_in_one_line(
    daemon_settings: Callable[..., Settings], tmp_path: Path, name: str
) -> None:
    """A finished run; then one of its appended files is random bytes, or one byte of a frame in its middle
    is flipped (a checksum mismatch), or it is cut in its middle: the restart exits 1 with one line naming the
    file (no ComputeError, no traceback) and ``opendt serve`` refuses the run naming it, never loading
    different results — except the journal cut in its middle: a cut journal is a run that stopped earlier,
    and the twin re-reads the windows after the cut from the stream, to the same results. Restored, the run
    resumes and exits 0 with its results unchanged (before: ``windows.parquet`` of random bytes stopped
    every restart with a raw ComputeError naming no file)."""
    workload = write_small_workload(tmp_path / "wl")
    settings = daemon_settings(workload)
    async with asyncio.timeout(90):
        assert await run_daemon(settings, exit_when_done=True) == 0
    run = run_dir(settings.data_dir)
    path = run / name
    good = path.read_bytes()
    agg, journal = runfiles.agg(run), runfiles.journal(run)
    middle = _frames(path)[len(_frames(path)) // 2]
    flipped = bytearray(good)
    flipped[middle.offset + middle.length // 2] ^= 0x55
    damage = {
        "random bytes": os.urandom(len(good)),
        "checksum": bytes(flipped),
        "cut": good[: middle.offset + middle.length // 2],
    }
    for what, data in damage.items():
        path.write_bytes(data)
        if what == "cut" and name == "windows.arrowlog":
            with capture_logs() as logs:
                async with asyncio.timeout(90):
                    assert await run_daemon(settings, exit_when_done=True) == 0
            [cut] = [e for e in logs if e["event"] == "results_tail_cut" and name in e["file"]]
            assert cut["bytes"] > 0
        else:
            words = {"random bytes": "header", "checksum": "checksum mismatch", "cut": "disagrees"}
            await _fails_naming(settings, name, words[what])
            path.write_bytes(good)
        assert (
            runfiles.journal(run)
            .drop("latency_s", "compute_s")
            .equals(journal.drop("latency_s", "compute_s"))
        )
        assert runfiles.agg(run).equals(agg)


@pytest.mark.parametrize("torn", ["journal", "results"])
async def test_a_torn_append_is_cut_back_and_resumes_to_equal_results(
    daemon_settings: Callable[..., Settings], tmp_path: Path, torn: str
) -> None:
    """What a ``kill -9`` in the middle of a window's appends leaves, made exactly: the journal's last frame
    half written, or the last window's results frame half written and its journal frame missing. The
    restart cuts each file back to its last complete window (a ``results_tail_cut`` line naming it), the
    window is simulated again from the stream, and the results equal the uninterrupted run's."""
    workload = write_small_workload(tmp_path / "wl")
    settings = daemon_settings(workload)
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
