"""The LLM strategy against a local OpenAI-compatible test server: the request it sends, good answers, and every
failure mode falling back to the rules with the reason recorded."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from opendt.optimizer.llm import (
    LlmStrategy,
    allowed_paths,
    answer_schema,
    build_messages,
    make_strategy,
    parse_answer,
)
from opendt.optimizer.rules import OptimizerContext, RulesStrategy, decide
from opendt.settings import OptimizerSettings

from .conftest import context, outcome, two_clusters

Responder = Callable[[web.Request], Awaitable[web.StreamResponse]]


def completion(content: str | None, **message: Any) -> Responder:
    """A 200 chat completion whose first choice carries ``content`` (and extra message keys)."""

    async def respond(request: web.Request) -> web.StreamResponse:
        msg = {"role": "assistant", "content": content, **message}
        doc = {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "model": "test-model",
            "choices": [{"index": 0, "message": msg, "finish_reason": "stop"}],
        }
        return web.json_response(doc)

    return respond


def answer(changes: list[dict[str, Any]], reason: str = "test reason") -> Responder:
    """A completion whose content is a well-formed answer."""
    return completion(json.dumps({"changes": changes, "reason": reason}))


def status(code: int, headers: dict[str, str] | None = None) -> Responder:
    """An error status with an OpenAI-style error body."""

    async def respond(request: web.Request) -> web.StreamResponse:
        return web.json_response({"error": {"message": f"test error {code}"}}, status=code, headers=headers)

    return respond


def raw(text: str, code: int = 200) -> Responder:
    """A body that is not JSON."""

    async def respond(request: web.Request) -> web.StreamResponse:
        return web.Response(text=text, status=code, content_type="text/html")

    return respond


@dataclass
class FakeLlm:
    """The test server's state: the responders still to use (the last one repeats) and what it received."""

    url: str = ""
    script: list[Responder] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def slow(self) -> Responder:
        """Answers only when the test ends (beyond any client timeout)."""

        async def respond(request: web.Request) -> web.StreamResponse:
            await self.release.wait()
            return await answer([])(request)

        return respond


@pytest.fixture
async def llm_server() -> AsyncIterator[FakeLlm]:
    """An OpenAI-compatible server on 127.0.0.1 (free port) implementing POST /v1/chat/completions."""
    fake = FakeLlm()

    async def handle(request: web.Request) -> web.StreamResponse:
        fake.requests.append(
            {"path": request.path, "headers": dict(request.headers), "body": json.loads(await request.read())}
        )
        responder = fake.script.pop(0) if len(fake.script) > 1 else fake.script[0]
        return await responder(request)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    fake.url = f"http://{host}:{port}/v1"
    yield fake
    fake.release.set()
    await runner.cleanup()


@dataclass
class Harness:
    """Strategies made for one test (closed at its end) and the backoff delays they slept."""

    server: FakeLlm
    delays: list[float] = field(default_factory=list)
    made: list[LlmStrategy] = field(default_factory=list)

    def strategy(self, api_key: str | None = "sk-test", **settings: Any) -> LlmStrategy:
        async def sleep(s: float) -> None:
            self.delays.append(s)

        base: dict[str, Any] = {
            "strategy": "llm",
            "llm_base_url": self.server.url,
            "llm_model": "test-model",
            "llm_timeout_s": 2.0,
            "llm_retries": 2,
            "llm_backoff_s": 0.25,
        }
        s = LlmStrategy(OptimizerSettings(**{**base, **settings}), api_key=api_key, sleep=sleep)
        self.made.append(s)
        return s


@pytest.fixture
async def harness(llm_server: FakeLlm) -> AsyncIterator[Harness]:
    """A Harness over the test server; its strategies' HTTP sessions are closed afterwards."""
    h = Harness(llm_server)
    yield h
    for s in h.made:
        await s.aclose()


def over_energy() -> OptimizerContext:
    """Energy +40 %: the rules propose massive_downscale."""
    return context(out=outcome(1.4, 50.0), max_task_cores=32)


GOOD = [{"path": "clusters[east].hosts[A].count", "value": 3}, {"path": "cpu.coreSpeed", "value": 2000}]


# --- request and good answers ------------------------------------------------------------------------------


async def test_good_answer_becomes_an_llm_proposal(harness: Harness) -> None:
    """A valid answer gives a proposal from the LLM: its changes applied, its reason, no fallback."""
    harness.server.script = [answer(GOOD, "fewer A hosts and a lower clock")]
    s = harness.strategy()
    ctx = over_energy()
    p = await s.propose(ctx)
    assert p is not None
    assert (p.source, p.rule, p.fallback_reason) == ("llm", "llm", None)
    assert p.reason == "fewer A hosts and a lower clock"
    assert [h.count for c in p.topology.clusters for h in c.hosts] == [3, 2, 3]
    assert [h.cpu.coreSpeed for c in p.topology.clusters for h in c.hosts] == [2000.0, 2000.0, 2000.0]
    assert {c.path for c in p.changes} == {
        "clusters[east].hosts[A].count",
        "clusters[east].hosts[A].cpu.coreSpeed",
        "clusters[west].hosts[C].cpu.coreSpeed",
    }
    assert s.last_fallback_reason is None
    assert s.last_reason == "fewer A hosts and a lower clock"


async def test_request_carries_model_messages_schema_and_key(harness: Harness) -> None:
    """The request: POST /v1/chat/completions, Bearer key, the model, temperature 0, a system message, a user
    message with the window's results, the SLOs, the deltas and the topology, and the strict JSON schema."""
    harness.server.script = [answer(GOOD)]
    ctx = over_energy()
    await harness.strategy().propose(ctx)
    [req] = harness.server.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == "Bearer sk-test"
    body = req["body"]
    assert body["model"] == "test-model"
    assert body["temperature"] == 0
    system, user = body["messages"]
    assert system["role"] == "system"
    assert "cpu.coreSpeed" in system["content"]
    assert user["role"] == "user"
    payload = json.loads(user["content"])
    assert payload["slo"] == {"energy_kwh_per_window": 1.0, "task_wait_p95_s": 100.0}
    assert payload["results"]["energy_kwh"] == 1.4
    assert payload["relative_deltas"]["energy_kwh_per_window"] == pytest.approx(0.4)
    assert payload["topology"] == ctx.topology.to_json_dict()
    assert payload["window"]["start"] == "2024-03-04T00:00:00Z"
    assert payload["window"]["seconds"] == 300
    assert payload["max_task_cores"] == 32
    assert payload["bounds"]["min_core_speed_mhz"] == 1800.0
    assert " " not in user["content"].split('"topology"')[1][:40]  # compact JSON
    rf = body["response_format"]
    assert rf == answer_schema(ctx.topology)
    assert rf["type"] == "json_schema"
    assert rf["json_schema"]["strict"] is True
    item = rf["json_schema"]["schema"]["properties"]["changes"]["items"]
    assert item["properties"]["path"]["enum"] == allowed_paths(ctx.topology)
    assert item["additionalProperties"] is False


def test_allowed_paths_are_the_knobs_at_every_level() -> None:
    """Unprefixed, per cluster and per host group, for count, cpu.coreCount and cpu.coreSpeed."""
    paths = allowed_paths(two_clusters())
    assert paths[:3] == ["count", "cpu.coreCount", "cpu.coreSpeed"]
    assert "clusters[west].cpu.coreCount" in paths
    assert "clusters[east].hosts[B].cpu.coreSpeed" in paths
    assert len(paths) == 3 * (1 + 2 + 3)
    assert not any("cpuPowerModel" in p for p in paths)


async def test_api_key_from_the_environment(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an explicit key, OPENAI_API_KEY is used."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    harness.server.script = [answer(GOOD)]
    p = await harness.strategy(api_key=None).propose(over_energy())
    assert p is not None
    assert p.source == "llm"
    assert harness.server.requests[0]["headers"]["Authorization"] == "Bearer sk-from-env"


async def test_empty_changes_is_the_llms_maintain(harness: Harness) -> None:
    """An answer with no change (or only no-op changes) is no proposal, and not a fallback."""
    harness.server.script = [
        answer([], "all fine"),
        answer([{"path": "clusters[east].hosts[A].count", "value": 4}]),
    ]
    s = harness.strategy()
    with capture_logs() as logs:
        assert await s.propose(over_energy()) is None
    assert s.last_fallback_reason is None
    assert s.last_reason == "all fine"
    assert any(e["event"] == "llm_maintain" for e in logs)
    assert await s.propose(over_energy()) is None
    assert s.last_fallback_reason is None


# --- failure modes: each falls back to the rules with the reason -------------------------------------------


async def _fallback(s: LlmStrategy, ctx: OptimizerContext | None = None) -> str:
    """Run one round that must fall back; check the rules' proposal came back; return the reason."""
    ctx = ctx or over_energy()
    with capture_logs() as logs:
        p = await s.propose(ctx)
    assert p is not None
    expected = decide(ctx, s.settings).proposal
    assert expected is not None
    assert (p.source, p.rule, p.topology) == ("rules", "massive_downscale", expected.topology)
    assert p.fallback_reason is not None
    assert p.fallback_reason == s.last_fallback_reason
    warned = [e for e in logs if e["event"] == "llm_fallback"]
    assert len(warned) == 1
    assert warned[0]["log_level"] == "warning"
    assert warned[0]["reason"] == p.fallback_reason
    return p.fallback_reason


async def test_no_api_key_falls_back_without_a_request(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No key anywhere: immediate fallback, reason 'no API key', nothing sent."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    harness.server.script = [answer(GOOD)]
    reason = await _fallback(harness.strategy(api_key=None))
    assert reason == "llm: no API key (OPENAI_API_KEY is not set)"
    assert harness.server.requests == []


async def test_malformed_json_content(harness: Harness) -> None:
    """Content that is not JSON: fallback, 'malformed JSON in the answer'."""
    harness.server.script = [completion('{"changes": [{"path": "count", "value": 3}], "reason": ')]
    reason = await _fallback(harness.strategy())
    assert reason.startswith("llm: malformed JSON in the answer: Expecting value")


async def test_non_json_body(harness: Harness) -> None:
    """A 200 whose body is not JSON at all: fallback, 'response body is not JSON', no retry."""
    harness.server.script = [raw("<html>gateway</html>")]
    reason = await _fallback(harness.strategy())
    assert reason == "llm: response body is not JSON: '<html>gateway</html>'"
    assert len(harness.server.requests) == 1


async def test_slow_server_times_out_without_retry(harness: Harness) -> None:
    """An answer slower than llm_timeout_s: fallback 'timeout after 0.2 s' after one attempt."""
    harness.server.script = [harness.server.slow()]
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    reason = await _fallback(harness.strategy(llm_timeout_s=0.2))
    assert reason == "llm: timeout after 0.2 s"
    assert loop.time() - t0 >= 0.2
    assert loop.time() - t0 < 1.5
    assert len(harness.server.requests) == 1
    assert harness.delays == []


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        (
            [{"path": "clusters[east].hosts[A].cpu.coreCount", "value": 64}],
            "coreCount: 64 is above the cap 48",
        ),
        ([{"path": "cpu.coreSpeed", "value": 1000}], "coreSpeed: 1000 is below the floor 1800"),
        ([{"path": "clusters[east].hosts[A].count", "value": 40}], "count: 40 is above the cap 4"),
        ([{"path": "clusters[east].hosts[B].cpu.coreCount", "value": 16}], "no host spec left with 32 cores"),
    ],
)
async def test_out_of_bounds_values(harness: Harness, changes: list[dict[str, Any]], fragment: str) -> None:
    """Values outside the optimizer's bounds: fallback 'out of bounds: <what>'."""
    harness.server.script = [answer(changes)]
    reason = await _fallback(harness.strategy())
    assert reason.startswith("llm: out of bounds: ")
    assert fragment in reason


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ([{"path": "cpuPowerModel.idlePower", "value": 10}], "llm: unknown path 'cpuPowerModel.idlePower'"),
        ([{"path": "clusters[mars].count", "value": 1}], "llm: unknown path 'clusters[mars].count'"),
        (
            [{"path": "count", "value": 2}, {"path": "count", "value": 3}],
            "llm: path 'count' given twice",
        ),
    ],
)
async def test_unknown_or_repeated_path(
    harness: Harness, changes: list[dict[str, Any]], expected: str
) -> None:
    """A path outside the allowed ones, or one given twice: fallback naming it."""
    harness.server.script = [answer(changes)]
    assert await _fallback(harness.strategy()) == expected


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (
            '{"changes": [{"path": "count", "value": "3"}], "reason": "x"}',
            "changes.0.value: Input should be a valid number",
        ),
        ('{"changes": [{"path": "count", "value": 3}]}', "reason: Field required"),
        ('{"changes": [], "reason": "x", "extra": 1}', "extra: Extra inputs are not permitted"),
        ('["count", 3]', "answer: Input should be a valid dictionary"),
    ],
)
async def test_schema_violations(harness: Harness, content: str, fragment: str) -> None:
    """JSON that does not match the schema: fallback 'answer does not match the schema: <where>'."""
    harness.server.script = [completion(content)]
    reason = await _fallback(harness.strategy())
    assert reason.startswith("llm: answer does not match the schema: ")
    assert fragment in reason


async def test_invalid_topology_after_patch(harness: Harness) -> None:
    """A patch the topology model refuses (count 0): fallback 'invalid patch: …'."""
    harness.server.script = [answer([{"path": "count", "value": 0}])]
    reason = await _fallback(harness.strategy())
    assert reason.startswith('llm: invalid patch: patch {"count": 0.0} makes an invalid topology')


async def test_refusal_and_missing_content(harness: Harness) -> None:
    """A refusal, or a message without content: fallback naming it."""
    harness.server.script = [completion(None, refusal="I cannot help with that")]
    assert await _fallback(harness.strategy()) == "llm: refused: I cannot help with that"
    harness.server.script = [completion(None)]
    assert await _fallback(harness.strategy()) == "llm: response message has no content"


async def test_server_error_then_good_answer_retries_with_backoff(harness: Harness) -> None:
    """500, 502, then a good answer: two retries after 0.25 s and 0.5 s, and the LLM's proposal."""
    harness.server.script = [status(500), status(502), answer(GOOD)]
    s = harness.strategy()
    p = await s.propose(over_energy())
    assert p is not None
    assert p.source == "llm"
    assert len(harness.server.requests) == 3
    assert harness.delays == [0.25, 0.5]


async def test_rate_limited_honours_retry_after(harness: Harness) -> None:
    """429 with Retry-After: 1.5 waits 1.5 s (more than the 0.25 s backoff), then the answer is used."""
    harness.server.script = [status(429, {"Retry-After": "1.5"}), answer(GOOD)]
    p = await harness.strategy().propose(over_energy())
    assert p is not None
    assert p.source == "llm"
    assert harness.delays == [1.5]


async def test_persistent_429_falls_back_after_the_retries(harness: Harness) -> None:
    """429 every time: 1 + llm_retries attempts with exponential backoff, then fallback naming the status."""
    harness.server.script = [status(429)]
    reason = await _fallback(harness.strategy(llm_retries=3, llm_backoff_s=0.1))
    assert reason == "llm: HTTP 429: test error 429 (after 4 attempts)"
    assert harness.delays == pytest.approx([0.1, 0.2, 0.4])
    assert len(harness.server.requests) == 4


async def test_client_error_status_is_not_retried(harness: Harness) -> None:
    """401 (a bad key) fails at once: one request, fallback 'HTTP 401'."""
    harness.server.script = [status(401)]
    assert await _fallback(harness.strategy()) == "llm: HTTP 401: test error 401"
    assert len(harness.server.requests) == 1
    assert harness.delays == []


async def test_connection_refused_is_retried_then_falls_back(harness: Harness) -> None:
    """Nothing listening: connection errors, retried, then fallback naming the connection error."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    s = harness.strategy(llm_base_url=f"http://127.0.0.1:{port}/v1", llm_retries=1)
    reason = await _fallback(s)
    assert reason.startswith("llm: connection error: ClientConnectorError")
    assert reason.endswith("(after 2 attempts)")
    assert harness.delays == [0.25]


async def test_fallback_when_the_rules_maintain_returns_none(harness: Harness) -> None:
    """A failure in a window the rules would leave alone: no proposal, the reason still recorded."""
    harness.server.script = [status(503)]
    s = harness.strategy(llm_retries=0)
    assert await s.propose(context()) is None
    assert s.last_fallback_reason == "llm: HTTP 503: test error 503 (after 1 attempt)"


async def test_a_later_success_clears_the_fallback_reason(harness: Harness) -> None:
    """last_fallback_reason describes the last round only."""
    harness.server.script = [status(400), answer(GOOD)]
    s = harness.strategy()
    await _fallback(s)
    assert s.last_fallback_reason is not None
    p = await s.propose(over_energy())
    assert p is not None
    assert p.source == "llm"
    assert s.last_fallback_reason is None


def test_parse_answer_directly() -> None:
    """parse_answer validates without HTTP: a proposal and the reason, or (None, reason) when nothing changes."""
    ctx = over_energy()
    s = OptimizerSettings()
    p, why = parse_answer(json.dumps({"changes": GOOD, "reason": "r"}), ctx, s)
    assert p is not None
    assert why == "r"
    assert p.patch["clusters[east].hosts[A].count"] == 3
    assert parse_answer('{"changes": [], "reason": "keep"}', ctx, s) == (None, "keep")


def test_build_messages_includes_stats_and_physical() -> None:
    """The user message carries the window statistics and the physical topology when given."""
    ctx = context(stats={"tasks": 12, "mean_utilization": 0.4}, physical=two_clusters())
    payload = json.loads(build_messages(ctx, OptimizerSettings())[1]["content"])
    assert payload["stats"] == {"tasks": 12, "mean_utilization": 0.4}
    assert payload["physical_topology"] == two_clusters().to_json_dict()


async def test_make_strategy_follows_the_settings() -> None:
    """make_strategy: rules by default, the LLM strategy for strategy='llm'."""
    rules = make_strategy(OptimizerSettings())
    assert isinstance(rules, RulesStrategy)
    llm = make_strategy(OptimizerSettings(strategy="llm"))
    assert isinstance(llm, LlmStrategy)
    assert llm.name == "llm"
    await llm.aclose()
