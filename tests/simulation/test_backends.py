"""Backends end to end: a fake engine always, our engine once it exists, real OpenDC when configured."""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
import sys
from pathlib import Path

import polars as pl
import pytest

from opendt.commands.simulate import simulate_cli
from opendt.models.topology import Topology, load_topology
from opendt.opendc.backends import (
    BackendConfigError,
    BuiltinBackend,
    OpenDCBackend,
    backend_from_settings,
    run_simulation,
)
from opendt.opendc.pool import SimulationError, SimulationPool
from opendt.opendc.results import read_output
from opendt.settings import SimulationSettings

FAKE = Path(__file__).with_name("fake_sim.py")
SHARED = Path(__file__).resolve().parents[2].parent / "shared"
REFERENCE = SHARED / "reference" / "opendc"
SYNTHETIC = REFERENCE / "synthetic_overload"
CARBON = REFERENCE / "_inputs" / "carbon.parquet"


class FakeBackend:
    """The fake engine, with the same CLI as OpenDC."""

    name = "fake"

    def command(self, experiment_path: Path) -> list[str]:
        return [sys.executable, str(FAKE), "engine", "--experiment-path", str(experiment_path)]

    def env(self) -> dict[str, str]:
        return dict(os.environ)


def synthetic_inputs() -> tuple[Topology, pl.DataFrame, pl.DataFrame]:
    """synthetic_overload's OpenDC inputs, turned back into our normalized frames."""
    wl = SYNTHETIC / "input" / "workload"
    if not (wl / "tasks.parquet").is_file():
        pytest.skip(f"reference inputs {wl} not available")
    tasks = pl.read_parquet(wl / "tasks.parquet").select(
        pl.col("id").cast(pl.Utf8),
        pl.col("submission_time").alias("submission_ms"),
        "duration",
        "cpu_count",
        "cpu_capacity",
        "mem_capacity",
    )
    fragments = pl.read_parquet(wl / "fragments.parquet").with_columns(pl.col("id").cast(pl.Utf8))
    return load_topology(SYNTHETIC / "input" / "topology.json"), tasks, fragments


def opendc_settings() -> SimulationSettings:
    bin_ = os.environ.get("OPENDT_SIMULATION__OPENDC_BIN")
    java = os.environ.get("OPENDT_SIMULATION__JAVA_HOME") or os.environ.get("JAVA_HOME")
    if not bin_ or not java:
        pytest.skip("set OPENDT_SIMULATION__OPENDC_BIN and JAVA_HOME (or OPENDT_SIMULATION__JAVA_HOME)")
    return SimulationSettings(engine="opendc", opendc_bin=Path(bin_), java_home=Path(java), timeout_s=300)


def builtin_available() -> None:
    if importlib.util.find_spec("opendt.engine") is None:
        pytest.skip("opendt.engine is not there yet")
    if importlib.util.find_spec("opendt.engine.__main__") is None:
        pytest.skip("opendt/engine/__main__.py does not exist yet, so `python -m opendt.engine` cannot run")


async def test_run_simulation_with_fake_engine(tmp_path: Path) -> None:
    """run_simulation writes the experiment, runs the engine, reads its output and maps task ids back."""
    topology, tasks, fragments = synthetic_inputs()
    async with SimulationPool(max_parallel=1, timeout_s=60) as pool:
        out = await run_simulation(pool, FakeBackend(), topology, tasks, fragments, tmp_path, 30, CARBON)
    assert out.backend == "fake"
    assert out.power.height == 3  # 4 rows written, the final-flush duplicate dropped
    assert out.total_energy_j == pytest.approx(3 * 100.0 * 30)
    assert out.origin_ms == 1_665_093_600_000
    assert out.task is not None
    assert out.task["id"].to_list() == [str(i) for i in out.task["task_id"].to_list()]
    assert out.wall_s is not None
    assert out.engine_s is not None
    assert out.wall_s >= out.engine_s > 0
    assert out.trackr == [{"name": "opendt"}]


async def test_run_simulation_engine_failure(tmp_path: Path) -> None:
    """An engine that exits non-zero surfaces as SimulationError with its stderr."""

    class Broken(FakeBackend):
        def command(self, experiment_path: Path) -> list[str]:
            return [sys.executable, str(FAKE), "exit", "2", "--stderr-lines", "3"]

    topology, tasks, fragments = synthetic_inputs()
    async with SimulationPool(max_parallel=1, timeout_s=60) as pool:
        with pytest.raises(SimulationError, match="stderr line 2"):
            await run_simulation(pool, Broken(), topology, tasks, fragments, tmp_path, 30, CARBON)


def test_backend_from_settings(tmp_path: Path) -> None:
    """The settings pick the engine; a missing or non-executable OpenDC binary is a config error."""
    assert isinstance(backend_from_settings(SimulationSettings()), BuiltinBackend)
    cmd = BuiltinBackend().command(Path("/x/experiment.json"))
    assert cmd == [sys.executable, "-m", "opendt.engine", "--experiment-path", "/x/experiment.json"]
    with pytest.raises(BackendConfigError, match="opendc_bin is not set"):
        backend_from_settings(SimulationSettings(engine="opendc"))
    with pytest.raises(BackendConfigError, match="not a file"):
        backend_from_settings(SimulationSettings(engine="opendc", opendc_bin=tmp_path / "missing"))
    script = tmp_path / "runner"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(BackendConfigError, match="not executable"):
        backend_from_settings(SimulationSettings(engine="opendc", opendc_bin=script))
    script.chmod(0o755)
    java = tmp_path / "jdk"
    (java / "bin").mkdir(parents=True)
    (java / "bin" / "java").touch()
    b = backend_from_settings(SimulationSettings(engine="opendc", opendc_bin=script, java_home=java))
    assert isinstance(b, OpenDCBackend)
    assert b.command(Path("/e.json")) == [str(script), "--experiment-path", "/e.json"]
    assert b.env()["JAVA_HOME"] == str(java)


def make_workload_dir(tmp_path: Path) -> Path:
    """synthetic_overload as a SURF-format workload directory (int ids, epoch-ms submissions)."""
    synthetic_inputs()
    wl = tmp_path / "workload"
    wl.mkdir()
    for f in ("tasks.parquet", "fragments.parquet"):
        shutil.copy(SYNTHETIC / "input" / "workload" / f, wl / f)
    shutil.copy(SYNTHETIC / "input" / "topology.json", wl / "topology.json")
    shutil.copy(CARBON, wl / "carbon.parquet")  # the topology's ../_inputs path falls back to this
    return wl


async def test_simulate_cli_with_fake_runner(tmp_path: Path) -> None:
    """`opendt simulate` runs the configured engine and prints a one-line summary with rows and energy."""
    runner = tmp_path / "fake-runner"
    runner.write_text(
        f"#!{sys.executable}\n"
        "import runpy, sys\n"
        f"sys.argv = [{str(FAKE)!r}, 'engine', *sys.argv[1:]]\n"
        f"runpy.run_path({str(FAKE)!r}, run_name='__main__')\n"
    )
    runner.chmod(0o755)
    settings = SimulationSettings(engine="opendc", opendc_bin=runner, export_interval_s=30)
    out, err = io.StringIO(), io.StringIO()
    rc = await simulate_cli(
        make_workload_dir(tmp_path), None, tmp_path / "out", settings, stdout=out, stderr=err
    )
    assert rc == 0, err.getvalue()
    line = out.getvalue()
    assert line.startswith("simulated 3 rows (opendc engine), total energy 9.000000e+03 J")
    assert "wall " in line


async def test_simulate_cli_bad_inputs(tmp_path: Path) -> None:
    """A missing workload dir or an unusable engine config exits 2 with a message, without running."""
    err = io.StringIO()
    rc = await simulate_cli(tmp_path / "nope", None, tmp_path / "out", SimulationSettings(), stderr=err)
    assert rc == 2
    assert "error:" in err.getvalue()
    err = io.StringIO()
    rc = await simulate_cli(
        make_workload_dir(tmp_path), None, tmp_path / "out", SimulationSettings(engine="opendc"), stderr=err
    )
    assert rc == 2
    assert "opendc_bin" in err.getvalue()


async def test_builtin_engine_matches_reference(tmp_path: Path) -> None:
    """Our engine, run as a subprocess, reproduces OpenDC's synthetic_overload energy."""
    builtin_available()
    topology, tasks, fragments = synthetic_inputs()
    async with SimulationPool(max_parallel=1, timeout_s=300) as pool:
        out = await run_simulation(pool, BuiltinBackend(), topology, tasks, fragments, tmp_path, 30, CARBON)
    ref = read_output(SYNTHETIC / "output", files=())
    assert out.power["timestamp"].to_list() == ref.power["timestamp"].to_list()
    assert out.total_energy_j == pytest.approx(ref.total_energy_j, rel=1e-5)
    assert out.power["energy_usage"].to_numpy() == pytest.approx(
        ref.power["energy_usage"].to_numpy(), rel=1e-4
    )


@pytest.mark.slow
async def test_opendc_backend_reproduces_reference(tmp_path: Path) -> None:
    """The real OpenDC runner, driven by our writer and pool, gives the reference output exactly."""
    settings = opendc_settings()
    topology, tasks, fragments = synthetic_inputs()
    async with SimulationPool.from_settings(settings) as pool:
        out = await run_simulation(
            pool, backend_from_settings(settings), topology, tasks, fragments, tmp_path, 30, CARBON
        )
    ref = read_output(SYNTHETIC / "output")
    assert out.backend == "opendc"
    assert out.power.equals(ref.power)
    assert out.service is not None
    assert ref.service is not None
    assert out.service.equals(ref.service)
    assert out.host is not None
    assert ref.host is not None
    assert out.host.sort("timestamp", "host_name").equals(ref.host.sort("timestamp", "host_name"))
    assert out.task is not None
    assert ref.task is not None
    assert out.task.drop("id").equals(ref.task)
    assert out.total_energy_j == pytest.approx(5.481140e6, rel=1e-6)


@pytest.mark.slow
async def test_simulate_cli_with_opendc(tmp_path: Path) -> None:
    """`opendt simulate` with the real OpenDC engine prints the reference total energy."""
    settings = opendc_settings().model_copy(update={"export_interval_s": 30})
    out = io.StringIO()
    rc = await simulate_cli(make_workload_dir(tmp_path), None, tmp_path / "out", settings, stdout=out)
    assert rc == 0
    assert out.getvalue().startswith("simulated 259 rows (opendc engine), total energy 5.481140e+06 J")


async def test_simulators_get_no_secret_in_their_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The OpenDC and builtin backends start their process without the API token and the LLM key: a real
    child, run through the pool, dumps its environment; neither secret is in it, JAVA_HOME is."""
    from opendt.opendc import BuiltinBackend, OpenDCBackend, SimulationPool

    monkeypatch.setenv("OPENDT_API__TOKEN", "tok-never-in-a-child")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-in-a-child")
    dump = tmp_path / "env.txt"
    script = tmp_path / "opendc"
    script.write_text(f"#!/bin/sh\nenv > {dump}\n")
    script.chmod(0o755)
    java = tmp_path / "jdk"
    (java / "bin").mkdir(parents=True)
    (java / "bin" / "java").write_text("")
    opendc = OpenDCBackend(bin=script, java_home=java)
    builtin = BuiltinBackend()
    async with SimulationPool(max_parallel=1) as pool:
        await pool.run(opendc.command(tmp_path / "x.json"), env=opendc.env())
        seen = dump.read_text()
        await pool.run(["/bin/sh", "-c", f"env > {dump}"], env=builtin.env())
        seen_builtin = dump.read_text()
    for text in (seen, seen_builtin):
        assert "tok-never-in-a-child" not in text
        assert "sk-never-in-a-child" not in text
    assert f"JAVA_HOME={java}" in seen
    assert "PYTHONPATH=" in seen_builtin
