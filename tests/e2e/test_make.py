"""`make` as a user drives it (issue 18 item 11): Ctrl-C stops `make test` at the first interrupt, also while
the browser for the dashboard test is being installed (before: `timeout` put apt-get in a background process
group and make ignored the step's failure, so three SIGINTs over 30 s did nothing)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOLS = ("bash", "sh", "make", "timeout", "mktemp", "id", "tail", "sleep", "cat", "env", "rm")


@pytest.mark.skipif(os.geteuid() != 0, reason="the install step runs apt-get only as root (or with sudo)")
def test_ctrl_c_stops_make_during_the_browser_install(tmp_path: Path) -> None:
    """With no chromium on PATH and an apt-get that takes a minute, one SIGINT to make's process group (what
    Ctrl-C sends) ends `make browser` (a step of `make test`) within seconds, unsuccessfully."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found is not None, tool
        (bin_dir / tool).symlink_to(found)
    (bin_dir / "apt-get").write_text("#!/bin/sh\nsleep 60\n")
    (bin_dir / "apt-get").chmod(0o755)
    proc = subprocess.Popen(
        ["make", "-C", str(REPO), "--no-print-directory", "browser"],
        env={"PATH": str(bin_dir), "HOME": str(tmp_path), "TMPDIR": str(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "installing Debian's chromium" in line:
                break
        time.sleep(0.5)  # apt-get is running
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=20)
        assert time.monotonic() - t0 < 5
        assert code != 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_reproduce_and_the_surf_benchmarks_default_to_the_week_in_the_repository() -> None:
    """``make reproduce`` runs on ``data/surf`` (committed) by default, and no benchmark reaches for
    ``../shared`` for the SURF week: a fresh clone has everything it needs."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("no make")
    # -n: print the recipe only; DEV_STAMP up to date so that nothing would be installed
    out = subprocess.run(
        [make, "-n", "-o", ".venv/.dev-stamp", "-o", ".venv/.run-stamp", "reproduce"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "bench/reproduce.py --workload data/surf " in out, out
    assert (REPO / "data" / "surf" / "tasks.parquet").is_file()
    for script in sorted((REPO / "bench").glob("*.py")):
        text = script.read_text(encoding="utf-8")
        assert '"shared" / "workload"' not in text, script.name
        assert "shared/workload" not in text, script.name


@pytest.mark.slow
def test_reproduce_shows_progress_and_keeps_the_other_workloads_results(tmp_path: Path) -> None:
    """`WORKLOAD=data/demo make reproduce` printed nothing for minutes and emptied reproduce/, SURF results
    included. Now each workload has its own directory (the SURF one is left alone), a rerun says it replaces
    its own earlier results, and progress lines come while the experiments run."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("no make")
    (tmp_path / "surf").mkdir()
    (tmp_path / "surf" / "kept.txt").write_text("the SURF results")
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "stale.txt").write_text("an earlier demo reproduction")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENDT_")}
    res = subprocess.run(
        [make, "-o", ".venv/.dev-stamp", "-o", ".venv/.run-stamp", "reproduce", "WORKLOAD=data/demo",
         f"REPRODUCE_ARGS=--out {tmp_path} --progress-s 2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
    out = res.stdout
    assert (tmp_path / "surf" / "kept.txt").read_text() == "the SURF results"
    assert f"replacing the earlier results of demo in {tmp_path / 'demo'}" in out
    assert not (tmp_path / "demo" / "stale.txt").exists()
    assert (tmp_path / "demo" / "report" / "report.html").is_file()
    lines = out.splitlines()
    done = next(i for i, line in enumerate(lines) if "done in" in line)
    progress = [line for line in lines[:done] if line.startswith("reproduce: ") and " s: " in line]
    assert progress, out[-3000:]
    assert any("windows" in line for line in progress), progress
