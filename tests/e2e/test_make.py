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
