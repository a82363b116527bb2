"""Kafka security settings (issue 24 item 4) without a broker: what every client gets, what is refused at
load, and that the secrets are never printed by `opendt config show`."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from opendt.kafka.client import make_consumer, make_producer
from opendt.kafka.security import KafkaAccessError, client_options
from opendt.settings import ConfigError, KafkaSettings, load_settings

REPO = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-Pa55-never-printed"
KEY_SECRET = "k3y-Pa55-never-printed"


def _sasl(**kw: object) -> KafkaSettings:
    base: dict[str, object] = {
        "bootstrap_servers": "kafka.example:9093",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": "twin",
        "sasl_password": SECRET,
    }
    return KafkaSettings.model_validate(base | kw)


def test_plaintext_adds_nothing() -> None:
    """The default (PLAINTEXT) passes no security option: clients keep aiokafka's defaults."""
    assert client_options(KafkaSettings()) == {}


async def test_sasl_ssl_reaches_every_client() -> None:
    """SASL_SSL with SCRAM: the protocol, mechanism, user, password and a TLS context (system CAs, hostname
    checked) reach the producer's and the consumer's connection settings."""
    s = _sasl()
    opts = client_options(s)
    assert opts["security_protocol"] == "SASL_SSL"
    assert opts["sasl_mechanism"] == "SCRAM-SHA-512"
    assert opts["sasl_plain_username"] == "twin"
    assert opts["sasl_plain_password"] == SECRET
    ctx = opts["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.check_hostname
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    producer = make_producer("kafka.example:9093", s)
    consumer = make_consumer("kafka.example:9093", ["t"], "g", s)
    for client in (producer.client, consumer._client):
        assert client._security_protocol == "SASL_SSL"
        assert client._sasl_mechanism == "SCRAM-SHA-512"
        assert client._sasl_plain_password == SECRET
        assert isinstance(client._ssl_context, ssl.SSLContext)
    await producer.stop()
    await consumer.stop()


def test_plain_over_sasl_plaintext_has_no_tls() -> None:
    opts = client_options(_sasl(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN"))
    assert opts["sasl_mechanism"] == "PLAIN"
    assert "ssl_context" not in opts


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"sasl_password": None}, "sasl_password"),
        ({"sasl_mechanism": "GSSAPI"}, "sasl_mechanism"),
        ({"security_protocol": "PLAINTEXT"}, "sasl_mechanism is set"),
        ({"security_protocol": "TLS"}, "security_protocol"),
        ({"ssl_certfile": "/x.pem"}, "ssl_keyfile"),
        ({"bootstrap_servers": None}, "embedded broker"),
    ],
)
def test_incomplete_settings_are_refused(change: dict[str, object], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        _sasl(**change)


def test_unreadable_tls_file_is_one_line(tmp_path: Path) -> None:
    """A CA file that is not there is a KafkaAccessError naming it (a config error: exit 2)."""
    missing = tmp_path / "nope.pem"
    with pytest.raises(KafkaAccessError, match=str(missing)) as e:
        client_options(_sasl(ssl_cafile=missing))
    assert isinstance(e.value, ConfigError)
    assert "\n" not in str(e.value)


def test_config_show_masks_the_secrets() -> None:
    """`opendt config show` with the password and key password set by environment prints the other Kafka
    settings but neither secret (masked), on stdout or stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENDT_")}
    env |= {
        "OPENDT_KAFKA__BOOTSTRAP_SERVERS": "kafka.example:9093",
        "OPENDT_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
        "OPENDT_KAFKA__SASL_MECHANISM": "SCRAM-SHA-256",
        "OPENDT_KAFKA__SASL_USERNAME": "twin",
        "OPENDT_KAFKA__SASL_PASSWORD": SECRET,
        "OPENDT_KAFKA__SSL_KEY_PASSWORD": KEY_SECRET,
    }
    done = subprocess.run(
        [sys.executable, "-m", "opendt", "config", "show"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "security_protocol: SASL_SSL" in done.stdout
    assert "sasl_username: twin" in done.stdout
    assert "sasl_password: '**********'" in done.stdout
    assert "ssl_key_password: '**********'" in done.stdout
    for secret in (SECRET, KEY_SECRET):
        assert secret not in done.stdout
        assert secret not in done.stderr


def test_settings_repr_hides_the_password() -> None:
    """A settings object that reaches a log or a traceback (repr) does not carry the password in clear."""
    s = load_settings(
        kafka=_sasl(ssl_key_password=KEY_SECRET).model_dump(mode="python"),
    )
    assert SECRET not in repr(s)
    assert SECRET not in str(s.kafka)
    assert KEY_SECRET not in repr(s)
