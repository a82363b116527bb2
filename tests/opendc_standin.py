"""Stand-ins for the OpenDC binary (CI has no Java): executables that honour OpenDC's CLI contract,
``<bin> --experiment-path experiment.json`` (DESIGN §7), and ``--help``.

* ``honest``: our engine (``python -m opendt.engine``), its powerSource values written unrounded
  (``--float64``), so a twin run on it must equal the builtin twin;
* ``perturb``: the same, then 0.1 % added to the energy of the middle powerSource row: the cross-check must
  see it;
* ``hang``: writes its pid and a grandchild's (``sleep``) to ``pids`` beside it, then sleeps: cancellation and
  timeouts must kill the whole process group;
* ``broken``: a script whose interpreter does not exist (the binary "does not run");
* ``old_java``: what the OpenDC runner does under a Java older than 21: a LinkageError, exit 1, even for
  ``--help``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

REPO = Path(__file__).resolve().parents[1]
JAVA17_LINE = (
    "java.lang.UnsupportedClassVersionError: org/opendc/experiments/base/runner/ExperimentCli has been "
    "compiled by a more recent version of the Java Runtime (class file version 65.0), this version of the "
    "Java Runtime only recognizes class file versions up to 61.0"
)
"""The JVM's second line under Java 17 (one line, 246 characters)."""

Kind = Literal["honest", "perturb", "hang", "broken", "old_java"]

_HEAD = f"""#!{sys.executable}
import sys
sys.path.insert(0, {str(REPO)!r})
if "--help" in sys.argv[1:]:
    print("usage: opendc-standin --experiment-path EXPERIMENT_JSON")
    sys.exit(0)
"""

_ENGINE = """
from opendt.engine.cli import main
rc = main([*sys.argv[1:], "--float64"])
if rc:
    sys.exit(rc)
"""

_PERTURB = """
import glob, json
import polars as pl
exp = json.load(open(sys.argv[sys.argv.index("--experiment-path") + 1]))
for f in glob.glob(f"{exp['outputFolder']}/{exp['name']}/raw-output/0/seed=0/powerSource.parquet"):
    df = pl.read_parquet(f)
    k = df.height // 2
    bump = pl.when(pl.int_range(pl.len()) == k).then(pl.col("energy_usage") * 1.001)
    df.with_columns(bump.otherwise(pl.col("energy_usage")).alias("energy_usage")).write_parquet(f)
"""

_HANG = """
import os, subprocess, time
from pathlib import Path
child = subprocess.Popen(["sleep", "1000"])
Path(__file__).with_name("pids").open("a").write(f"{os.getpid()} {child.pid}\\n")
time.sleep(1000)
"""


def write_standin(directory: Path, kind: Kind = "honest") -> Path:
    """An executable stand-in of ``kind`` in ``directory`` (created)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"opendc-{kind}"
    if kind == "broken":
        text = "#!/nonexistent/interpreter/java21\nexit 0\n"
    elif kind == "old_java":
        text = (
            "#!/bin/sh\necho 'Error: LinkageError occurred while loading main class "
            "org.opendc.experiments.base.runner.ExperimentCli' >&2\n"
            "printf '\\t%s\\n' '" + JAVA17_LINE + "' >&2\nexit 1\n"
        )
    else:
        body = {"honest": _ENGINE, "perturb": _ENGINE + _PERTURB, "hang": _HANG}[kind]
        text = _HEAD + body
    path.write_text(text)
    path.chmod(0o755)
    return path


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def zombies_of(pid: int) -> list[int]:
    """Zombie children of ``pid`` (unreaped processes)."""
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z" and int(fields[1]) == pid:
            out.append(int(p.name))
    return out
