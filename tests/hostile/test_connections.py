"""Connections cannot starve the twin (issue 20, case 6): ``opendt run`` with a file limit of 256 keeps
simulating and writing its results while 245 idle connections, 200 half-open ones, a slow-header and a
slow-body client hold on to it; the API answers throughout and the run ends cleanly."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from .conftest import RSS_BOUND_MB, Daemon, call, start_daemon

TIMEOUT_S = 2.0


def _address(daemon: Daemon) -> tuple[str, int]:
    host, port = daemon.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


OPENED: list[socket.socket] = []


def _open(daemon: Daemon, n: int) -> list[socket.socket]:
    socks = [socket.create_connection(_address(daemon), timeout=10) for _ in range(n)]
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
    1. 245 idle connections while the replay runs: beyond the cap (a quarter of the limit, 64) they are
    answered 503 at once, the others closed by the server after api.request_timeout_s (2 s), while windows
    keep becoming durable and /health answers; 2. 200 half-open connections are all closed within the timeout;
    3. a client sending its headers a byte at a time is closed; one that never finishes its body gets 408;
    4. the replay is fully simulated (no failed window, no EMFILE), memory stays under the suite's bound,
    and SIGTERM ends the run with exit 0."""
    daemon = start_daemon(
        tmp_path, "--speed", "3000", env={"OPENDT_API__REQUEST_TIMEOUT_S": str(TIMEOUT_S)}, nofile=256
    )
    try:
        listening = daemon.events("api_listening")[0]
        assert listening["max_connections"] == 64
        start = _progress(daemon)

        idle = _open(daemon, 245)
        time.sleep(1)  # every connection accepted: within the cap kept, beyond it answered 503 and closed
        busy = [s for s in idle if (_first_bytes(s, 0.01) or b"").startswith(b"HTTP/1.1 503")]
        assert len(busy) == 245 - 64, len(busy)
        kept = [s for s in idle if s not in busy]
        assert call(daemon.url, "GET", "/health", timeout=10).status in (
            200,
            503,
        )  # at the cap: 503, never hung
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
