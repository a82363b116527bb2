"""Settings: YAML + environment, strict keys, clear messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from opendt.cli import main
from opendt.settings import ConfigError, load_settings


def test_defaults_load_from_the_embedded_yaml() -> None:
    """The shipped config/default.yaml validates and sets the documented defaults."""
    s = load_settings()
    assert s.windowing.window_s == 300
    assert s.simulation.export_interval_s == 150
    assert s.kafka.bootstrap_servers is None
    assert s.replay.workload.name == "demo"


def test_environment_overrides_yaml(monkeypatch: pytest.MonkeyPatch) -> None:
    """OPENDT_<SECTION>__<KEY> wins over the file, with type conversion."""
    monkeypatch.setenv("OPENDT_API__PORT", "9123")
    monkeypatch.setenv("OPENDT_CALIBRATION__ENABLED", "true")
    monkeypatch.setenv("OPENDT_REPLAY__SPEED", "max")
    s = load_settings()
    assert s.api.port == 9123
    assert s.calibration.enabled is True
    assert s.replay.speed == "max"


def test_unknown_yaml_key_is_named(tmp_path: Path) -> None:
    """A misspelt key in the YAML is an error naming section and key."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("windowing:\n  windw_s: 60\n")
    with pytest.raises(ConfigError, match=r"windowing\.windw_s: unknown key"):
        load_settings(cfg)


def test_unknown_section_is_named(tmp_path: Path) -> None:
    """An unknown top-level section is rejected too."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("kafak:\n  partitions: 2\n")
    with pytest.raises(ConfigError, match=r"kafak: unknown key"):
        load_settings(cfg)


def test_unknown_env_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """OPENDT_ variables that name no setting are errors, not silently ignored."""
    monkeypatch.setenv("OPENDT_API__PROT", "1")
    with pytest.raises(ConfigError, match="OPENDT_API__PROT"):
        load_settings()


def test_bad_value_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    """A value of the wrong type or range names the field."""
    monkeypatch.setenv("OPENDT_WINDOWING__WINDOW_S", "-5")
    with pytest.raises(ConfigError, match=r"windowing\.window_s"):
        load_settings()


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    """Broken YAML and a missing file give one-line errors naming the file."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("kafka: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.yaml")


def test_config_show_prints_effective_config(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`opendt config show` prints the merged configuration as YAML."""
    monkeypatch.setenv("OPENDT_WINDOWING__WINDOW_S", "60")
    assert main(["config", "show"]) == 0
    out = capsys.readouterr().out
    assert "window_s: 60" in out
    assert "bootstrap_servers: null" in out


def test_cli_unknown_key_exits_2_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI reports a bad config in one message and exits 2 (no traceback)."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("api:\n  prot: 1\n")
    assert main(["--config", str(cfg), "config", "show"]) == 2
    err = capsys.readouterr().err
    assert "api.prot: unknown key" in err
    assert "Traceback" not in err
