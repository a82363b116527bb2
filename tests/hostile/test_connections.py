"""Connections cannot starve the twin (issue 20, case 6): ``opendt run`` with a file limit of 256 keeps
simulating and writing its results while 245 idle connections, 200 half-open ones, a slow-header and a
slow-body client hold on to it; the API answers throughout and the run ends cleanly. Issue 29: ``/health``
has its own budget (idle connections that fill the cap do not make it 503), one client address holds at most
``api.max_connections_per_client``, and every request, reads included, must name an allowed Host."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from ..pipeline.conftest import write_small_workload
from .conftest import RSS_BOUND_MB, Daemon, call, start_daemon

TIMEOUT_S = 2.0


def _address(daemon: Daemon) -> tuple[str, int]:
    host, port = daemon.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


OPENED: list[socket.socket] = []


def _open(daemon: Daemon, n: int, source: str | None = None) -> list[socket.socket]:
    src = None if source is None else (source, 0)
    socks = [socket.create_connection(_address(daemon), timeout=10, source_address=src) for _ in range(n)]
    OPENED.extend(socks)
    return socks


def _first_bytes(sock: socket.socket, wait: float) -> bytes | None:
    """What the server sent within ``wait`` s (b"" = it closed the connection; None = nothing yet)."""
    sock.settimeout(wait)
    try:
        return sock.recv(4096)
    except TimeoutError:
        return None
    except ConnectionResetError:
        return b""


def _closed_by_server(socks: list[socket.socket], within: float) -> int:
    """How many of ``socks`` the server closes within ``within`` s (reading what it sent before)."""
    deadline = time.monotonic() + within
    closed = 0
    for s in socks:
        while True:
            left = deadline - time.monotonic()
            data = _first_bytes(s, max(left, 0.01))
            if data == b"":
                closed += 1
                break
            if data is None and left <= 0:
                break
    return closed


def _progress(daemon: Daemon) -> int:
    answer = call(daemon.url, "GET", "/api/status", timeout=10)
    assert answer.status == 200, answer
    durable: int = answer.json()["simulation"]["windows_durable"]
    return durable


def test_idle_half_open_and_slow_connections_cannot_starve_the_twin(tmp_path: Path) -> None:
    """With RLIMIT_NOFILE 256 (245 idle connections made the results write fail with EMFILE before):
    1. 245 idle connections from one address while the replay runs: beyond the per-client cap (32; the cap,
    a quarter of the limit, is 64) and the /health lane's 2 per client they are answered 503 at once, the
    others closed by the server after api.request_timeout_s (2 s), while windows keep becoming durable and
    /health answers 200; 2. 200 half-open connections are all closed within the timeout;
    3. a client sending its headers a byte at a time is closed; one that never finishes its body gets 408;
    4. the replay is fully simulated (no failed window, no EMFILE), memory stays under the suite's bound,
    and SIGTERM ends the run with exit 0."""
    daemon = start_daemon(
        tmp_path, "--speed", "3000", env={"OPENDT_API__REQUEST_TIMEOUT_S": str(TIMEOUT_S)}, nofile=256
    )
    try:
        listening = daemon.events("api_listening")[0]
        assert listening["max_connections"] == 64
        assert listening["max_connections_per_client"] == 32
        start = _progress(daemon)

        idle = _open(daemon, 245)
        time.sleep(1)  # every connection accepted: within the caps kept, beyond them answered 503 and closed
        busy = [s for s in idle if (_first_bytes(s, 0.01) or b"").startswith(b"HTTP/1.1 503")]
        assert len(busy) == 245 - 32 - 2, len(busy)
        kept = [s for s in idle if s not in busy]
        # from another address: that client's /health lane is free whatever the idle ones hold
        assert call(daemon.url, "GET", "/health", timeout=10, source="127.0.0.2").status == 200
        assert _closed_by_server(kept, TIMEOUT_S + 5) == len(kept)
        assert call(daemon.url, "GET", "/health", timeout=10).status == 200
        assert _progress(daemon) > start, "no window became durable while the connections were held"

        half_open = _open(daemon, 200)
        t0 = time.monotonic()
        assert _closed_by_server(half_open, TIMEOUT_S + 5) == 200
        assert time.monotonic() - t0 < TIMEOUT_S + 5

        [slow] = _open(daemon, 1)
        slow.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        t0 = time.monotonic()
        closed = False
        while time.monotonic() - t0 < TIMEOUT_S + 5:
            try:
                slow.sendall(b"X")
            except OSError:
                closed = True
                break
            if _first_bytes(slow, 0.3) == b"":
                closed = True
                break
        assert closed, "a client trickling its headers was never closed"

        [body] = _open(daemon, 1)
        body.sendall(
            b"POST /api/whatif HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"start":'
        )
        answer = _first_bytes(body, TIMEOUT_S + 5)
        assert answer is not None
        assert answer.startswith(b"HTTP/1.1 408"), answer

        snap = daemon.wait_done(timeout=240)
        assert snap["simulation"]["windows_failed"] == 0
        assert call(daemon.url, "GET", "/health").status == 200
        assert not [e for e in daemon.log if "Too many open files" in str(e) or "EMFILE" in str(e)]
        assert daemon.events("api_connection_refused")
        assert daemon.rss_peak_mb < RSS_BOUND_MB, daemon.rss_peak_mb
    finally:
        for s in OPENED:
            s.close()
        code = daemon.stop()
    assert code == 0, daemon.tail()


def test_health_has_its_own_budget_clients_their_share_and_every_request_an_allowed_host(
    tmp_path: Path,
) -> None:
    """Defaults (cap 128, 32 per client): 1. one address's 33rd and 34th connections go to the /health lane
    and its 35th is answered 503 at once (before: all kept, one client could hold the whole cap); 2. 128 idle
    connections from 4 addresses fill the cap: /health still answers 200 (before: 503, a liveness probe
    would restart a healthy twin), from a fresh address and from one at its share, while anything else over
    the cap is 503; 3. GETs naming a Host that DNS rebinding produces (``rebound.example``, even
    ``localhost.evil.example``) are 403 naming Host — status, run directory, Kafka address stay unread —
    while localhost, an IP and no Host at all pass; 4. the twin is unharmed and stops with exit 0."""
    daemon = start_daemon(
        tmp_path / "data",
        "--speed",
        "max",
        workload=write_small_workload(tmp_path / "wl"),
        env={"OPENDT_API__REQUEST_TIMEOUT_S": "60"},
        nofile=4096,
    )
    try:
        listening = daemon.events("api_listening")[0]
        assert (listening["max_connections"], listening["max_connections_per_client"]) == (128, 32)
        port = _address(daemon)[1]

        one = _open(daemon, 35, "127.0.0.2")
        time.sleep(0.5)
        answers = [_first_bytes(s, 0.05) for s in one]
        busy = [i for i, a in enumerate(answers) if (a or b"").startswith(b"HTTP/1.1 503")]
        assert busy == [34], busy

        for k in (3, 4, 5):
            _open(daemon, 32, f"127.0.0.{k}")
        time.sleep(0.5)  # 128 open in the main lane: the cap
        assert call(daemon.url, "GET", "/health", timeout=10).status == 200
        [probe] = _open(daemon, 1, "127.0.0.6")
        probe.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = _first_bytes(probe, 10)
        assert answer is not None
        assert answer.startswith(b"HTTP/1.1 200"), answer
        [other] = _open(daemon, 1, "127.0.0.7")
        other.sendall(b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = _first_bytes(other, 10)
        assert answer is not None
        assert answer.startswith(b"HTTP/1.1 503"), answer

        for s in OPENED:
            s.close()
        OPENED.clear()
        time.sleep(0.5)
        for host in (f"rebound.example:{port}", "localhost.evil.example", "127.0.0.1.nip.io"):
            for path in ("/api/status", "/health", "/api/windows", "/"):
                refused = call(daemon.url, "GET", path, headers={"Host": host}, timeout=10)
                assert refused.status == 403, (host, path, refused)
                assert refused.json()["field"] == "Host", refused
                assert b"run_dir" not in refused.body
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", "app.localhost"):
            assert call(daemon.url, "GET", "/api/status", headers={"Host": host}).status == 200, host
        with socket.create_connection(_address(daemon), timeout=10) as conn:
            conn.sendall(b"GET /health HTTP/1.0\r\n\r\n")
            assert (_first_bytes(conn, 10) or b"").startswith(b"HTTP/1.0 200")
        daemon.wait_done(timeout=120)
    finally:
        for s in OPENED:
            s.close()
        OPENED.clear()
        code = daemon.stop()
    assert code == 0, daemon.tail()
