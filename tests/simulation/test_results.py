"""The result reader on the real OpenDC reference outputs and on broken folders."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from opendt.opendc.results import SimulationOutputError, read_output, read_output_async

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
REFERENCE = SHARED / "reference" / "opendc"


def reference(scenario: str) -> Path:
    out = REFERENCE / scenario / "output"
    if not (out / "powerSource.parquet").is_file():
        pytest.skip(f"reference output {out} not available")
    return out


def test_synthetic_reference_normalized() -> None:
    """synthetic_overload: the final-flush duplicate is dropped and the energy total is OpenDC's."""
    out = read_output(reference("synthetic_overload"), files=("host", "task", "service"))
    raw = pl.read_parquet(REFERENCE / "synthetic_overload" / "output" / "powerSource.parquet")
    assert raw.height == 260
    assert out.power.height == 259  # 258 grid instants + the duplicated last one, kept once
    assert out.power["timestamp"].is_unique().all()
    assert out.power["timestamp"].to_list()[:2] == [30_000, 60_000]
    assert out.power.schema["timestamp"] == pl.Int64
    assert out.power.schema["timestamp_absolute"] == pl.Int64
    for col in ("power_draw", "energy_usage", "carbon_intensity", "carbon_emission"):
        assert out.power.schema[col] == pl.Float64
    assert out.total_energy_j == pytest.approx(5.481140e6, rel=1e-6)
    # keep first: the kept row is the first one of the duplicated instant, not the 0-energy flush.
    last_t = raw["timestamp"][-1]
    first_dup = raw.filter(pl.col("timestamp") == last_t).row(0, named=True)
    assert out.power.filter(pl.col("timestamp") == last_t)["energy_usage"].item() == pytest.approx(
        first_dup["energy_usage"]
    )
    assert out.host is not None
    assert out.host.height == 1040 - 4  # 4 hosts, the flush block dropped
    assert out.service is not None
    assert out.service.height == 259
    assert out.task is not None
    assert out.trackr is not None


def test_surf_reference_origin_and_energy() -> None:
    """surf_mse_default: origin is SURF's first submission and the total energy matches the README."""
    out = read_output(reference("surf_mse_default"), files=())
    assert out.power.height == 4032
    assert out.origin_ms == 1_665_093_600_000
    assert out.total_energy_j == pytest.approx(1.232730e10, rel=1e-6)
    assert out.host is None
    assert out.task is None
    assert out.power_total().height == 4032


async def test_async_reader_reads_calibration_sweep() -> None:
    """The async reader returns the same frame as the blocking one."""
    path = reference("surf_mse_calib_sweep/cf_5")
    a = await read_output_async(path)
    b = read_output(path)
    assert a.power.equals(b.power)


def test_missing_and_corrupt_outputs_are_clear(tmp_path: Path) -> None:
    """Missing folder, no powerSource, a corrupt file and a missing column each give a clear error."""
    with pytest.raises(SimulationOutputError, match="not found"):
        read_output(tmp_path / "nope")
    with pytest.raises(SimulationOutputError, match=r"no powerSource\.parquet"):
        read_output(tmp_path)
    raw = tmp_path / "run" / "raw-output" / "0" / "seed=0"
    raw.mkdir(parents=True)
    (raw / "powerSource.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(SimulationOutputError, match=r"cannot read .*powerSource\.parquet"):
        read_output(tmp_path / "run")
    pl.DataFrame({"timestamp": [1], "power_draw": [1.0]}).write_parquet(raw / "powerSource.parquet")
    with pytest.raises(SimulationOutputError, match=r"missing column.*timestamp_absolute"):
        read_output(tmp_path / "run")
