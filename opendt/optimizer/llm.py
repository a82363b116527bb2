"""The LLM strategy: an OpenAI-compatible chat-completions client on aiohttp, a JSON-schema-constrained answer
turned into a validated topology patch, and the rules as fallback on any failure.

**Request.** ``POST {llm_base_url}/chat/completions`` with ``Authorization: Bearer $OPENAI_API_KEY``, the
model, ``temperature: 0``, a system message (the task, the knobs, the answer format) and a user message
holding compact JSON: the window, its statistics, the baseline results, the SLOs, the relative deltas and
score, the current topology, the bounds and the allowed paths. ``response_format`` is a strict
``json_schema`` (:func:`answer_schema`): ``{"changes": [{"path": <one of the allowed paths>, "value":
<number>}], "reason": <string>}``; the paths are the knobs (``count``, ``cpu.coreCount``, ``cpu.coreSpeed``)
unprefixed, per cluster and per host group, values absolute.

**Retries.** A 429, a 5xx or a connection error is retried up to ``llm_retries`` times after
``llm_backoff_s × 2^i`` seconds (at least the ``Retry-After`` of a 429, up to ``llm_timeout_s``). A timeout
(``llm_timeout_s`` per attempt) is not retried: a slow server stays slow and the round must not wait for it.
Any other status fails at once.

**Validation.** The answer must be JSON matching the schema, name only allowed paths (each once), apply
(:func:`~opendt.models.patch.apply_patch`) to a valid topology, and stay within the optimizer's bounds
(:func:`~opendt.optimizer.rules.bound_violations`). An empty ``changes`` (or one that changes nothing) is the
LLM's "maintain": no proposal, no fallback.

**Fallback.** Any failure (no key, HTTP error, timeout, malformed or out-of-schema answer, unknown path,
out-of-bounds value, invalid topology, anything unexpected) logs ``llm_fallback`` and returns the rules'
decision with ``fallback_reason = "llm: <why>"`` (also kept in :attr:`LlmStrategy.last_fallback_reason`).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import aiohttp
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from opendt.models.patch import PatchError, apply_patch, topology_diff
from opendt.models.topology import Topology
from opendt.optimizer.rules import (
    KNOBS,
    OptimizerContext,
    Proposal,
    RulesStrategy,
    Strategy,
    bound_violations,
)
from opendt.optimizer.scoring import Weights, deltas, score
from opendt.settings import OptimizerSettings

log = structlog.get_logger(component="optimizer")

API_KEY_ENV = "OPENAI_API_KEY"  # also in opendt.opendc.backends.SECRET_ENV (kept from simulators)
MAX_CHANGES = 64

SYSTEM_PROMPT = (
    "You are the optimizer of a datacenter digital twin whose topology follows OpenDC's model: clusters "
    "of host groups; a host group has `count` identical hosts with `cpu.coreCount` cores at `cpu.coreSpeed` "
    "MHz. "
    "You get the results of the last window simulated with the current topology and the service-level "
    "objectives (SLOs: targets per window, lower is better for every one; relative delta = (value - target) "
    "/ target, positive = over the target). Propose a topology change that meets the SLOs with the least "
    "energy, or no change. Fewer hosts, fewer cores or lower core speeds save energy but lengthen task wait "
    "and runtime; more cores do the opposite. You may only set the allowed paths (count, cpu.coreCount, "
    "cpu.coreSpeed; unprefixed = every host group, clusters[C]. = one cluster, clusters[C].hosts[H]. = one "
    "host group) to absolute values within the bounds given. Answer with JSON matching the schema: "
    '"changes" (path and new value) and a one-sentence "reason"; empty "changes" keeps the topology.'
)


class LlmError(Exception):
    """Why the LLM gave no usable proposal (the message is the recorded reason, without the ``llm:``)."""


class _Change(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str
    value: float = Field(strict=True, allow_inf_nan=False)


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    changes: list[_Change] = Field(max_length=MAX_CHANGES)
    reason: str = Field(min_length=1, max_length=4000)


def allowed_paths(topology: Topology) -> list[str]:
    """Every path an answer may set: each knob unprefixed, per cluster and per host group (no duplicates)."""
    out = list(KNOBS)
    for c in topology.clusters:
        out += [f"clusters[{c.name}].{k}" for k in KNOBS]
        for h in c.hosts:
            out += [f"clusters[{c.name}].hosts[{h.name}].{k}" for k in KNOBS]
    return list(dict.fromkeys(out))


def answer_schema(topology: Topology) -> dict[str, Any]:
    """The ``response_format`` of the request: a strict JSON schema of the answer."""
    return {
        "type": "json_schema",
        "json_schema": {
            "name": "topology_patch",
            "strict": True,
            "schema": {
                "type": "object",
                "properties": {
                    "changes": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "path": {"type": "string", "enum": allowed_paths(topology)},
                                "value": {"type": "number"},
                            },
                            "required": ["path", "value"],
                            "additionalProperties": False,
                        },
                    },
                    "reason": {"type": "string"},
                },
                "required": ["changes", "reason"],
                "additionalProperties": False,
            },
        },
    }


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


def build_messages(ctx: OptimizerContext, settings: OptimizerSettings) -> list[dict[str, str]]:
    """The system and user messages for ``ctx`` (the user message is compact JSON)."""
    breakdown = score(ctx.outcome, ctx.slo, Weights.from_settings(settings))
    payload = {
        "window": {
            "start": _iso(ctx.window_start_ms),
            "end": _iso(ctx.window_end_ms),
            "seconds": (ctx.window_end_ms - ctx.window_start_ms) / 1000,
        },
        "stats": dict(ctx.stats),
        "results": ctx.outcome.to_json_dict(),
        "slo": ctx.slo.to_json_dict(),
        "relative_deltas": {k: round(v, 4) for k, v in deltas(ctx.outcome, ctx.slo).items()},
        "score": {"value": round(breakdown.score, 4), "lower_is_better": True},
        "topology": ctx.topology.to_json_dict(),
        "physical_topology": None if ctx.physical is None else ctx.physical.to_json_dict(),
        "bounds": {
            "min_host_count": settings.min_host_count,
            "max_host_count": "the physical topology's count (the current one's when unknown)",
            "min_core_count": settings.min_core_count,
            "max_core_count": settings.max_core_count,
            "min_core_speed_mhz": settings.min_core_speed_mhz,
            "max_core_speed_mhz": "the physical topology's coreSpeed (the current one's when unknown)",
        },
        "max_task_cores": ctx.max_task_cores,
        "allowed_paths": allowed_paths(ctx.topology),
    }
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": json.dumps(payload, separators=(",", ":"), default=str)},
    ]


def _excerpt(body: bytes) -> str:
    try:
        doc = json.loads(body)
        msg = doc.get("error", {}).get("message") if isinstance(doc, dict) else None
        if isinstance(msg, str) and msg:
            return msg[:200]
    except (ValueError, AttributeError):
        pass
    return body[:200].decode("utf-8", "replace").strip()


def _retry_after(headers: Mapping[str, str]) -> float | None:
    try:
        v = float(headers.get("Retry-After", ""))
    except ValueError:
        return None
    return v if v >= 0 else None


class LlmClient:
    """A minimal OpenAI-compatible chat-completions client (one aiohttp session, opened on first use)."""

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str,
        timeout_s: float,
        retries: int = 2,
        backoff_s: float = 1.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self._sleep = sleep
        self._session: aiohttp.ClientSession | None = None
        self.attempts = 0
        """HTTP attempts made by the last :meth:`complete`."""

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _post(self, body: dict[str, Any]) -> tuple[int, bytes, Mapping[str, str]]:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        headers = {"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"}
        async with asyncio.timeout(self.timeout_s):
            async with self._session.post(self.url, data=json.dumps(body), headers=headers) as resp:
                return resp.status, await resp.read(), resp.headers

    async def complete(self, messages: list[dict[str, str]], response_format: dict[str, Any]) -> str:
        """The answer's message content; raises :class:`LlmError` with the reason on any failure."""
        body = {
            "model": self.model,
            "messages": messages,
            "response_format": response_format,
            "temperature": 0,
        }
        self.attempts = 0
        error = ""
        for attempt in range(self.retries + 1):
            self.attempts += 1
            delay = self.backoff_s * 2**attempt
            try:
                status, raw, headers = await self._post(body)
            except TimeoutError:
                raise LlmError(f"timeout after {self.timeout_s} s") from None
            except aiohttp.ClientError as e:
                error = f"connection error: {type(e).__name__}: {e}"
            else:
                if status == 200:
                    return _content(raw)
                error = f"HTTP {status}: {_excerpt(raw)}"
                if status != 429 and status < 500:
                    raise LlmError(error)
                after = _retry_after(headers) if status == 429 else None
                if after is not None:
                    delay = max(delay, min(after, self.timeout_s))
            if attempt < self.retries:
                log.info("llm_retry", attempt=attempt + 1, error=error, delay_s=delay)
                await self._sleep(delay)
        raise LlmError(f"{error} (after {self.attempts} attempt{'s' if self.attempts > 1 else ''})")


def _content(raw: bytes) -> str:
    try:
        doc = json.loads(raw)
    except ValueError:
        raise LlmError(f"response body is not JSON: {raw[:120].decode('utf-8', 'replace')!r}") from None
    try:
        message = doc["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        raise LlmError("response has no choices[0].message") from None
    if not isinstance(message, dict):
        raise LlmError("response has no choices[0].message")
    if message.get("refusal"):
        raise LlmError(f"refused: {str(message['refusal'])[:200]}")
    content = message.get("content")
    if not isinstance(content, str):
        raise LlmError("response message has no content")
    return content


def parse_answer(
    content: str, ctx: OptimizerContext, settings: OptimizerSettings
) -> tuple[Proposal | None, str]:
    """Validate the answer's content into a proposal (None: the LLM keeps the topology) and the LLM's reason;
    raises :class:`LlmError` naming what is wrong."""
    try:
        data = json.loads(content)
    except ValueError as e:
        raise LlmError(f"malformed JSON in the answer: {e}") from None
    try:
        answer = _Answer.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise LlmError(f"answer does not match the schema: {loc or 'answer'}: {first['msg']}") from None
    allowed = set(allowed_paths(ctx.topology))
    patch: dict[str, float] = {}
    for ch in answer.changes:
        if ch.path not in allowed:
            raise LlmError(f"unknown path {ch.path!r}")
        if ch.path in patch:
            raise LlmError(f"path {ch.path!r} given twice")
        patch[ch.path] = ch.value
    try:
        topology = apply_patch(ctx.topology, patch)
    except PatchError as e:
        raise LlmError(f"invalid patch: {e}") from None
    changes = tuple(topology_diff(ctx.topology, topology))
    if not changes:
        return None, answer.reason
    bad = bound_violations(ctx, topology, settings)
    if bad:
        raise LlmError(f"out of bounds: {'; '.join(bad)}")
    return Proposal(topology, changes, answer.reason, "llm", "llm"), answer.reason


class LlmStrategy:
    """Ask the LLM; fall back to the rules on any failure (see the module docstring)."""

    name = "llm"

    def __init__(
        self,
        settings: OptimizerSettings,
        *,
        api_key: str | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self.fallback = RulesStrategy(settings)
        self._api_key = api_key
        self._sleep = sleep
        self._client: LlmClient | None = None
        self.last_fallback_reason: str | None = None
        """The reason of the last round's fallback; None when the last round used the LLM's answer."""
        self.last_reason: str | None = None
        """The LLM's reason in the last round it answered validly (also when it kept the topology)."""

    async def _get_client(self) -> LlmClient:
        key = self._api_key or os.environ.get(API_KEY_ENV)
        if not key:
            raise LlmError(f"no API key ({API_KEY_ENV} is not set)")
        if self._client is not None and self._client.api_key != key:  # the key was rotated
            await self._client.close()
            self._client = None
        if self._client is None:
            s = self.settings
            self._client = LlmClient(
                base_url=s.llm_base_url,
                model=s.llm_model,
                api_key=key,
                timeout_s=s.llm_timeout_s,
                retries=s.llm_retries,
                backoff_s=s.llm_backoff_s,
                sleep=self._sleep,
            )
        return self._client

    async def _ask(self, ctx: OptimizerContext) -> Proposal | None:
        client = await self._get_client()
        content = await client.complete(build_messages(ctx, self.settings), answer_schema(ctx.topology))
        proposal, self.last_reason = parse_answer(content, ctx, self.settings)
        if proposal is None:
            log.info("llm_maintain", reason=self.last_reason, window_start=ctx.window_start_ms)
        return proposal

    async def propose(self, ctx: OptimizerContext) -> Proposal | None:
        try:
            proposal = await self._ask(ctx)
        except LlmError as e:
            reason = f"llm: {e}"
        except Exception as e:  # noqa: BLE001 - any failure falls back to the rules, with its reason recorded
            reason = f"llm: unexpected {type(e).__name__}: {e}"
        else:
            self.last_fallback_reason = None
            return proposal
        self.last_fallback_reason = reason
        log.warning("llm_fallback", reason=reason, window_start=ctx.window_start_ms)
        fallback = self.fallback.decide(ctx).proposal
        return None if fallback is None else replace(fallback, fallback_reason=reason)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def make_strategy(settings: OptimizerSettings) -> Strategy:
    """The strategy ``settings.strategy`` names."""
    if settings.strategy == "llm":
        return LlmStrategy(settings)
    return RulesStrategy(settings)
