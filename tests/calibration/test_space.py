"""Search space: parameter paths, grids, refinement, and candidates rejected up front with a reason."""

from __future__ import annotations

from typing import Any

import pytest

from opendt.calibration.settings import CalibrationAxis, CalibrationSettings, TrustAxis
from opendt.calibration.space import (
    Refiner,
    SearchSpaceError,
    current_values,
    grid_points,
    make_candidate,
    parse_space,
)
from opendt.calibration.trust import parse_region, resize, scaled, step_points
from opendt.models.topology import Topology, parse_topology


def _topo() -> Topology:
    def host(name: str, idle: float, mx: float, model: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "name": name,
            "count": 2,
            "cpu": {"coreCount": 8, "coreSpeed": 2000},
            "memory": {"memorySize": 64000},
            "cpuPowerModel": model
            or {"modelType": "mse", "idlePower": idle, "maxPower": mx, "calibrationFactor": 4.0},
        }

    return parse_topology(
        {
            "clusters": [
                {"name": "east", "hosts": [host("A", 30.0, 190.0), host("B", 45.0, 260.0)]},
                {
                    "name": "west",
                    "hosts": [
                        host("C", 20.0, 100.0, {"modelType": "linear", "idlePower": 20, "maxPower": 100})
                    ],
                },
            ]
        }
    )


def _axes(*specs: dict[str, Any]) -> list[Any]:
    return parse_space([CalibrationAxis.model_validate(s) for s in specs], _topo())


def _model(t: Topology, cluster: int, host: int) -> Any:
    return t.clusters[cluster].hosts[host].cpuPowerModel


def test_default_grid_is_idle_scale_times_calibration_factor() -> None:
    """The default search space is idlePower ×0.4…×1.6 (4) × calibrationFactor 3…12 (4): 16 grid points."""
    axes = parse_space(CalibrationSettings().grid, _topo())
    assert [a.path for a in axes] == ["cpuPowerModel.idlePower", "cpuPowerModel.calibrationFactor"]
    assert axes[0].scale
    assert axes[0].points == (0.4, 0.8, 1.2, 1.6)
    assert axes[1].points == (3.0, 6.0, 9.0, 12.0)
    assert len(grid_points(axes)) == 16


def test_single_parameter_shorthand_replaces_the_default_grid() -> None:
    """Setting only parameter/values makes that the one axis; setting both forms is an error."""
    s = CalibrationSettings(parameter="cpuPowerModel.maxPower", values=[150.0, 200.0])
    assert [(a.parameter, a.values) for a in s.grid] == [("cpuPowerModel.maxPower", [150.0, 200.0])]
    with pytest.raises(ValueError, match="either grid or parameter/values"):
        CalibrationSettings(values=[1.0], grid=[{"parameter": "cpu.coreSpeed", "values": [1.0]}])


def test_axis_needs_exactly_one_of_values_and_linspace() -> None:
    """An axis with neither or both of values/linspace is refused naming the parameter."""
    with pytest.raises(ValueError, match="exactly one of values or linspace"):
        CalibrationAxis(parameter="cpu.coreSpeed")
    with pytest.raises(ValueError, match="exactly one of values or linspace"):
        CalibrationAxis(parameter="cpu.coreSpeed", values=[1.0], linspace=(1.0, 2.0, 3))
    assert CalibrationAxis(parameter="x", linspace=(3.0, 9.0, 4)).points() == [3.0, 5.0, 7.0, 9.0]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"parameter": "cpuPowerModel.fooFactor", "values": [1.0]},
            "unknown host parameter 'cpuPowerModel.fooFactor'",
        ),
        ({"parameter": "cpu.coreCount", "values": [4.0]}, "structural"),
        ({"parameter": "count", "values": [4.0]}, "structural"),
        (
            {"parameter": "cpuPowerModel.modelType", "linspace": [1, 2, 2]},
            "categorical parameter takes values",
        ),
        ({"parameter": "cpuPowerModel.idlePower", "values": ["high"]}, "non-numeric"),
        ({"parameter": "clusters[north].cpuPowerModel.idlePower", "values": [1.0]}, "matches no host"),
        ({"parameter": "cpuPowerModel.idlePower", "values": [1.0, 1.0]}, "duplicate values"),
    ],
)
def test_bad_axes_are_refused_with_the_reason(spec: dict[str, Any], message: str) -> None:
    """Unknown, structural, mistyped, unmatched or duplicated axes are refused before any round."""
    with pytest.raises(SearchSpaceError, match=message):
        _axes(spec)


def test_per_cluster_axis_changes_only_that_cluster() -> None:
    """``clusters[east].…`` changes the east hosts only; an unprefixed axis changes every host."""
    topo = _topo()
    axes = _axes(
        {"parameter": "clusters[east].cpuPowerModel.calibrationFactor", "values": [6.5]},
        {"parameter": "cpu.coreSpeed", "values": [2400.0]},
    )
    c = make_candidate(topo, topo, axes, (6.5, 2400.0))
    assert c.topology is not None
    assert c.reason == ""
    assert [_model(c.topology, 0, h).calibrationFactor for h in (0, 1)] == [6.5, 6.5]
    assert _model(c.topology, 1, 0).calibrationFactor == 1.0
    assert {h.cpu.coreSpeed for cl in c.topology.clusters for h in cl.hosts} == {2400.0}


def test_scale_axis_multiplies_each_hosts_physical_value() -> None:
    """A scale axis keeps heterogeneous hosts heterogeneous: idle 30/45/20 × 1.5 → 45/67.5/30."""
    topo = _topo()
    axes = _axes({"parameter": "cpuPowerModel.idlePower", "values": [1.5], "scale": True})
    c = make_candidate(topo, topo, axes, (1.5,))
    assert c.topology is not None
    assert [_model(c.topology, 0, 0).idlePower, _model(c.topology, 0, 1).idlePower] == [45.0, 67.5]
    assert _model(c.topology, 1, 0).idlePower == 30.0
    assert current_values(c.topology, topo, axes) == (1.5,)


@pytest.mark.parametrize(
    ("spec", "value", "reason"),
    [
        (
            {"parameter": "cpuPowerModel.idlePower", "values": [-5.0]},
            -5.0,
            "idlePower: Input should be greater than or equal to 0",
        ),
        ({"parameter": "cpuPowerModel.idlePower", "values": [500.0]}, 500.0, "must be >= idlePower"),
        ({"parameter": "cpuPowerModel.modelType", "values": ["asymptotic"]}, "asymptotic", "asymUtil > 0"),
        ({"parameter": "cpuPowerModel.modelType", "values": ["constant"]}, "constant", "needs power"),
        (
            {"parameter": "clusters[west].cpuPowerModel.modelType", "values": ["mse"]},
            "mse",
            "needs calibrationFactor",
        ),
    ],
)
def test_invalid_candidates_are_rejected_with_a_reason(spec: dict[str, Any], value: Any, reason: str) -> None:
    """Negative powers, max < idle, asymptotic without asymUtil (OpenDC hangs) and a model type whose
    parameters are not set give a candidate with no topology and the reason: it is never run."""
    topo = _topo()
    c = make_candidate(topo, topo, _axes(spec), (value,))
    assert c.topology is None
    assert reason in c.reason


def test_valid_model_type_switch_is_accepted() -> None:
    """Switching to a model whose parameters are all set (linear, or mse where calibrationFactor is set)."""
    topo = _topo()
    c = make_candidate(
        topo, topo, _axes({"parameter": "cpuPowerModel.modelType", "values": ["linear"]}), ("linear",)
    )
    assert c.topology is not None
    assert {h.cpuPowerModel.modelType for cl in c.topology.clusters for h in cl.hosts} == {"linear"}


def test_refinement_zooms_half_a_step_around_the_best_point() -> None:
    """Each refinement spans ±half the previous spacing around the best value, clipped to the axis bounds;
    categorical axes stay at the best value."""
    axes = _axes(
        {"parameter": "cpuPowerModel.calibrationFactor", "linspace": [3, 9, 4]},
        {"parameter": "cpuPowerModel.modelType", "values": ["mse", "linear"]},
    )
    r = Refiner(axes, 3)
    assert r.next_points((5.0, "mse")) == [(4.0, "mse"), (5.0, "mse"), (6.0, "mse")]
    assert r.next_points((6.0, "mse")) == [(5.5, "mse"), (6.0, "mse"), (6.5, "mse")]
    edge = Refiner(axes, 3)
    assert edge.next_points((9.0, "linear")) == [(8.0, "linear"), (9.0, "linear")]


def test_trust_region_is_the_default_search_with_max_power() -> None:
    """Without a grid the calibrator searches a trust region over idlePower, maxPower and calibrationFactor;
    setting a grid (or parameter/values) keeps the fixed grid search, as before."""
    s = CalibrationSettings()
    assert s.search == "trust_region"
    assert [a.parameter for a in s.trust_region] == [
        "cpuPowerModel.idlePower",
        "cpuPowerModel.maxPower",
        "cpuPowerModel.calibrationFactor",
    ]
    assert CalibrationSettings(values=[4.0, 6.0]).search == "grid"
    assert CalibrationSettings(grid=[{"parameter": "cpu.coreSpeed", "values": [1.0]}]).search == "grid"


def test_trust_region_points_scale_values_in_effect_within_physics() -> None:
    """A point multiplies every matched host's value in effect (heterogeneous hosts stay so); idle ≥ max,
    a negative power or a calibrationFactor below 1 is rejected with the reason, whatever the topology."""
    topo = _topo()
    region = parse_region(CalibrationSettings().trust_region, topo)
    c = scaled(topo, region.axes, (1.5, 1.0, 2.0))
    assert c.topology is not None
    assert [_model(c.topology, 0, h).idlePower for h in (0, 1)] == [45.0, 67.5]
    assert c.values == (45.0, 190.0, 8.0)
    assert "must be < maxPower" in scaled(topo, region.axes, (7.0, 1.0, 1.0)).reason
    assert "calibrationFactor must be >= 1" in scaled(topo, region.axes, (1.0, 1.0, 0.2)).reason
    assert "idlePower must be >= 0" in scaled(topo, region.axes, (-1.0, 1.0, 1.0)).reason
    with pytest.raises(SearchSpaceError, match="numeric power/speed leaf"):
        parse_region([TrustAxis(parameter="cpuPowerModel.modelType")], topo)


def test_trust_region_widens_on_the_edge_and_narrows_inside() -> None:
    """A step whose best point is on an axis's edge doubles that axis's radius (up to max_radius); an axis
    whose best value is the centre's halves it (down to min_radius)."""
    region = parse_region(CalibrationSettings().trust_region, _topo())
    centre = (1.0, 1.0, 1.0)
    pts = step_points(centre, (0.2, 0.2, 0.25))
    assert len(pts) == 27
    assert pts[0] == centre
    assert resize(region, centre, (1.2, 1.0, 0.75), (0.2, 0.2, 0.25)) == (0.4, 0.1, 0.5)
    assert resize(region, centre, (1.0, 1.0, 1.0), (0.006, 0.8, 0.25)) == (0.005, 0.4, 0.125)
    assert resize(region, centre, (1.8, 1.0, 1.0), (0.8, 0.2, 0.25))[0] == 1.0
