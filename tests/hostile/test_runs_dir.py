"""The run directory as an attacker or a slip of the shell leaves it: ``opendt runs rm ""`` (an unset
variable) removed every run, and ``runs rm ID`` removed a live twin that had been quiet a while (the guard
read file times); ``runs/x -> /usr`` was walked by ``opendt runs`` and listed by ``runs show``. Now ``runs rm``
wants the exact id of a listed run and tries the run's lock, and listing skips symlinks and whatever is not a
run directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..pipeline.conftest import write_small_workload
from .conftest import REPO, start_daemon


def opendt(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENDT_")}
    return subprocess.run(
        [sys.executable, "-m", "opendt", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def one_line_error(res: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert res.returncode == 2, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    assert "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    for n in needles:
        assert n in last, (n, last)


def age(tree: Path, seconds: float) -> None:
    """Every file and directory under ``tree`` last changed ``seconds`` ago (a twin quiet that long)."""
    t = time.time() - seconds
    for p in [tree, *tree.rglob("*")]:
        os.utime(p, (t, t), follow_symlinks=False)


def test_runs_rm_refuses_empty_inexact_and_locked_and_listing_skips_what_is_not_a_run(tmp_path: Path) -> None:
    """1. A live twin (``opendt run``, holding its run's lock) with every file an hour old, beside a finished
    copy of its run; 2. ``runs rm ""``, ``runs rm <prefix>``, ``runs rm ..`` and ``runs rm <live id>`` each
    exit 2 with one line, and nothing is removed; the twin stays healthy; 3. ``runs/x -> /usr``, a symlink
    to a run directory outside, a directory with no run file and a plain file are neither listed nor shown;
    4. ``runs rm <copy>`` (no lock held) removes the copy only."""
    wl = write_small_workload(tmp_path / "wl")
    data = tmp_path / "data"
    daemon = start_daemon(data, "--speed", "max", workload=wl)
    try:
        daemon.wait_done(timeout=120)
        runs = data / "runs"
        [live] = [p for p in runs.iterdir() if p.is_dir()]
        copy = runs / f"{live.name}-copy"
        shutil.copytree(live, copy)
        outside = tmp_path / "elsewhere" / "stolen"
        shutil.copytree(live, outside)
        (runs / "x").symlink_to("/usr")
        (runs / "y").symlink_to(outside)
        (runs / "junk").mkdir()
        (runs / "junk" / "notes.txt").write_text("not a run")
        (runs / "file.txt").write_text("not a run either")
        age(data, 3600)

        t0 = time.monotonic()
        res = opendt("runs", "--data-dir", str(data))
        listing_s = time.monotonic() - t0
        assert res.returncode == 0, res.stderr
        listed = [line.split()[0] for line in res.stdout.strip().splitlines()[1:]]
        assert sorted(listed) == sorted([live.name, copy.name]), res.stdout
        assert listing_s < 30, f"the listing took {listing_s:.0f} s"
        for name in ("x", "y", "junk", "file.txt"):
            one_line_error(opendt("runs", "show", name, "--data-dir", str(data)), name)

        for ident in ("", live.name[:8], "..", ".", "x", "y", "junk", str(live)):
            one_line_error(opendt("runs", "rm", ident, "--data-dir", str(data)), "exact id")
        one_line_error(
            opendt("runs", "rm", live.name, "--data-dir", str(data)), "in use", str(daemon.proc.pid)
        )
        assert (live / "windows.arrowlog").is_file()
        assert (runs / "x").is_symlink()
        assert Path("/usr/bin").is_dir()
        assert outside.is_dir()
        assert daemon.proc.poll() is None
        assert daemon.get("/health").status == 200

        res = opendt("runs", "rm", copy.name, "--data-dir", str(data))
        assert res.returncode == 0, res.stderr
        assert not copy.exists()
        assert (live / "windows.arrowlog").is_file()
    finally:
        code = daemon.stop()
    assert code == 0, daemon.tail()
