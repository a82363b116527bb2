"""compose.yaml, Dockerfile and Grafana provisioning are consistent with the code."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from opendt.configcheck import unknown_env_keys
from opendt.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def _compose() -> dict[str, object]:
    data: dict[str, object] = yaml.safe_load((REPO / "compose.yaml").read_text())
    return data


def test_compose_wires_kafka_grafana_and_opendt() -> None:
    """The opendt service uses the compose Kafka, a token and real settings only; Grafana is not anonymous."""
    services = _compose()["services"]
    assert isinstance(services, dict)
    assert set(services) >= {"kafka", "opendt", "grafana"}
    env = services["opendt"]["environment"]
    assert env["OPENDT_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert env["OPENDT_API__TOKEN"]
    assert unknown_env_keys(Settings, {k: str(v) for k, v in env.items()}) == []
    kafka_env = services["kafka"]["environment"]
    assert "controller" in kafka_env["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    genv = services["grafana"]["environment"]
    assert genv["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert "simpod-json-datasource" in genv["GF_INSTALL_PLUGINS"]
    for vol in services["grafana"]["volumes"]:
        src = vol.split(":")[0]
        if src.startswith("./"):
            assert (REPO / src).exists(), f"grafana volume source missing: {src}"


def test_compose_config_accepted_by_docker() -> None:
    """`docker compose config` (or docker-compose v1) accepts compose.yaml, when a compose client exists."""
    if (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode == 0
    ):
        cmd = ["docker", "compose", "-f", "compose.yaml", "config", "-q"]
    elif shutil.which("docker-compose"):
        cmd = ["docker-compose", "-f", "compose.yaml", "config", "-q"]
    else:
        pytest.skip("no docker compose client on this machine")
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr


def test_dockerfile_copies_what_exists_and_runs_the_daemon() -> None:
    """Every COPY source exists in the repo and the image runs `opendt run`."""
    text = (REPO / "Dockerfile").read_text()
    for line in text.splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (REPO / src).exists(), f"Dockerfile COPY source missing: {src}"
    assert 'ENTRYPOINT ["opendt"]' in text
    assert 'CMD ["run"]' in text
    assert re.search(r"EXPOSE 8080", text)


def test_grafana_datasource_points_at_the_daemon() -> None:
    """The provisioned datasource is the simpod JSON plugin on the daemon's /grafana, with the token."""
    ds = yaml.safe_load((REPO / "grafana/provisioning/datasources/opendt.yaml").read_text())["datasources"][0]
    assert ds["type"] == "simpod-json-datasource"
    assert ds["url"] == "http://opendt:8080/grafana"
    assert "OPENDT_API_TOKEN" in ds["secureJsonData"]["httpHeaderValue1"]


def test_prometheus_scrapes_the_daemon_and_grafana_reads_it() -> None:
    """compose's Prometheus scrapes the opendt service's /metrics with the mounted configuration, and the
    provisioned Prometheus datasource (the uid the Prometheus dashboard uses) points at that service."""
    services = _compose()["services"]
    assert isinstance(services, dict)
    prom = services["prometheus"]
    mount = next(v for v in prom["volumes"] if v.startswith("./"))
    src, dst = mount.split(":")[:2]
    assert dst == "/etc/prometheus/prometheus.yml"
    config = yaml.safe_load((REPO / src).read_text())
    (job,) = config["scrape_configs"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job["static_configs"][0]["targets"] == ["opendt:8080"]
    assert services["opendt"]["environment"]["OPENDT_API__PORT"] == "8080"
    ds = yaml.safe_load((REPO / "grafana/provisioning/datasources/prometheus.yaml").read_text())[
        "datasources"
    ][0]
    assert ds["type"] == "prometheus"
    assert ds["url"] == "http://prometheus:9090"
    assert not ds["isDefault"]  # the JSON datasource stays the default
