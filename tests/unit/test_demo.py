"""The committed demo workload is what the generator makes, byte for byte, and is a valid workload."""

from __future__ import annotations

from pathlib import Path

from opendt.commands.demo import TRUE_CALIBRATION_FACTOR, generate_demo
from opendt.workload import load_workload

DEMO = Path(__file__).resolve().parents[2] / "data" / "demo"


def test_demo_regenerates_byte_for_byte(tmp_path: Path) -> None:
    """`opendt demo generate` reproduces every committed file exactly."""
    generate_demo(tmp_path)
    names = sorted(p.name for p in DEMO.iterdir())
    assert names == sorted(p.name for p in tmp_path.iterdir())
    for name in names:
        assert (tmp_path / name).read_bytes() == (DEMO / name).read_bytes(), name


def test_demo_is_small_and_valid() -> None:
    """The demo loads, is under 2 MB, spans about a day, and hides a calibration factor unlike its topology's."""
    assert sum(p.stat().st_size for p in DEMO.iterdir()) < 2_000_000
    wl = load_workload(DEMO)
    assert 300 <= wl.tasks.height <= 600
    assert 30_000 <= wl.fragments.height <= 50_000
    assert 24 * 3_600_000 <= wl.end_ms - wl.origin_ms <= 48 * 3_600_000
    assert wl.topology.host_count == 36
    assert wl.consumption is not None
    assert wl.carbon is not None
    factors = {h.cpuPowerModel.calibrationFactor for c in wl.topology.clusters for h in c.hosts}
    assert factors == {4.0}
    assert TRUE_CALIBRATION_FACTOR not in factors
