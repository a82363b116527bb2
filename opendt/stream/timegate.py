"""Time sanity for the input streams (pure logic; a live twin's wall clock injected): the times believed.

A datacenter's streams move forward steadily: within one partition, each message (event or heartbeat) is
close in time to the one before it (the replay sends a heartbeat every ``replay.heartbeat_s`` of trace
time). One message far from its neighbours is an outlier (a clock error, a forged or corrupted record), and
believing it costs dearly: a heartbeat a day ahead closes a day of windows before their events arrive, a
task dated a year ahead makes a year of empty windows, one dated 1970 starts the run 54 years early.

The gate, per partition:

* A message within ``max_skew_ms`` ahead of the partition's accepted time (or at any earlier time) passes.
* One further ahead is **held**, neither accepted nor rejected, and the partition's accepted time (hence
  the watermark) does not move. The partition's next messages decide: when ``confirm`` more messages in a
  row are near the held one (within ``max_skew_ms``) and beyond the old accepted time's reach, the
  partition really jumped (a gap in a stream without heartbeats): they all pass. A message back at the old
  time first rejects every held one as an outlier, so a forged record (or two, or ``confirm`` of them: a
  forged heartbeat on each topic, its copy behind it) cannot move time while the real stream goes on.
  What it costs a real jump: it is believed ``confirm`` messages late (held, not lost).
* In a live twin (``--no-replay``) no message more than ``max_skew_ms`` ahead of the wall clock is believed.
* A partition's first message is held the same way until the next one corroborates it, so no run (and
  no restart) starts from a single outlier.
* A message more than ``max_skew_ms`` before the run's start (the first window's start) is rejected, except
  on a step series (carbon: a step from long before is the intensity in effect at the start).
* A final heartbeat (a partition's end) is never held; it is rejected when it is the partition's first
  message or more than ``max_skew_ms`` ahead of the partition's accepted time.

Physical topologies (``dc.topology``, no heartbeats) before the run's start by more than ``max_skew_ms`` are
rejected; one dated ahead waits until the stream reaches its time (the consumer bounds how many may wait).

Rejected messages are counted and handed back (the consumer logs and dead-letters them: nothing is dropped
silently); held messages are released or rejected by the next messages of their partition. The gate holds at
most ``confirm + 1`` messages per partition: its memory does not grow with the stream.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

from opendt.models.messages import iso_ms

T = TypeVar("T")


@dataclass(frozen=True)
class Judged(Generic[T]):
    item: T
    t_ms: int
    accepted: bool
    reason: str = ""
    """Why a rejected message was rejected (empty when accepted)."""


@dataclass
class GateStats:
    held: int = 0
    """Messages held for a while (a partition's first message, an outlier candidate)."""
    rejected: int = 0
    """Messages rejected as outliers (too far ahead of their partition, or before the run's start)."""
    jumps: int = 0
    """Jumps of a partition confirmed by its next message (a real gap without heartbeats)."""


@dataclass
class _Held(Generic[T]):
    item: T
    t_ms: int


class TimeGate(Generic[T]):
    """Judges the message times of each partition (see the module's doc). ``T`` is whatever the caller
    needs back with a verdict (the record, the decoded row)."""

    def __init__(
        self,
        max_skew_ms: int,
        *,
        run_start_ms: int | None = None,
        resume_ms: int | None = None,
        confirm: int = 3,
        now_ms: Callable[[], int] | None = None,
    ) -> None:
        if max_skew_ms <= 0:
            raise ValueError("max_skew_ms must be > 0")
        self.max_skew_ms = max_skew_ms
        self.confirm = confirm
        """Messages near a jump, after it, that a partition's jump needs before it is believed."""
        self.now_ms = now_ms
        """A live twin's wall clock (epoch ms): nothing more than ``max_skew_ms`` ahead of it is believed."""
        self.run_start_ms = run_start_ms
        """The run's first window start (set by the consumer once known; from the checkpoint on a restart)."""
        self.resume_ms = resume_ms
        """A restart's resume point (the first window not yet durable): a partition whose first message after
        the restart is its end (all before it was durable) judges that end by this time."""
        self._accepted: dict[Hashable, int] = {}
        self._held: dict[Hashable, list[_Held[T]]] = {}
        self.stats = GateStats()

    def accepted_ms(self, source: Hashable) -> int | None:
        return self._accepted.get(source)

    @property
    def frontier_ms(self) -> int | None:
        """The newest accepted time of any partition (None before one is accepted)."""
        return max(self._accepted.values(), default=None)

    def holding(self, source: Hashable) -> bool:
        return source in self._held

    def _early(self, t_ms: int) -> bool:
        return self.run_start_ms is not None and t_ms < self.run_start_ms - self.max_skew_ms

    def _reject(self, item: T, t_ms: int, reason: str) -> Judged[T]:
        self.stats.rejected += 1
        return Judged(item, t_ms, False, reason)

    def _accept(self, source: Hashable, item: T, t_ms: int) -> Judged[T]:
        prev = self._accepted.get(source)
        self._accepted[source] = t_ms if prev is None else max(prev, t_ms)
        return Judged(item, t_ms, True)

    def accept_run(self, source: Hashable, times: npt.NDArray[np.int64]) -> bool:
        """Accept a partition's messages (``times`` in their order, none a final heartbeat) at once when
        :meth:`offer` would accept each in turn: nothing held, the partition has spoken, none before the run's
        start, none beyond ``max_skew_ms`` ahead of the newest before it. Otherwise False and nothing changes
        (the caller offers them one by one)."""
        acc = self._accepted.get(source)
        if acc is None or source in self._held:
            return False
        if times.size == 0:
            return True
        if self._early(int(times.min())):
            return False
        before = np.maximum.accumulate(np.concatenate(([acc], times[:-1])))
        if bool(np.any(times > before + self.max_skew_ms)):
            return False
        self._accepted[source] = max(acc, int(times.max()))
        return True

    def offer(
        self, source: Hashable, t_ms: int, item: T, *, final: bool = False, series: bool = False
    ) -> list[Judged[T]]:
        """Judge one message of ``source``; returns the verdicts now known, in the order to apply them (a
        held message's verdict comes before the current one's; the current one may be held: no verdict).

        A ``final`` heartbeat (the partition's end) is never held. A message held before it passes when it
        is near that end, or (the partition having spoken before) between its accepted time and that end.
        ``series``: a step series (carbon intensity), whose steps long before the run's start are the value
        in effect at its start, not outliers (the rest of the rules apply).

        The end itself passes when it is within ``max_skew_ms`` of the partition's accepted time (a real end
        follows the partition's last heartbeat); one far ahead of it, or a partition's very first message,
        is rejected (a forged end dated far ahead would otherwise close every window up to it at once)."""
        if not series and self._early(t_ms):
            return [
                self._reject(
                    item,
                    t_ms,
                    f"{iso_ms(t_ms)} is before the run's start {iso_ms(self.run_start_ms or 0)} "
                    f"by more than windowing.max_skew_s ({self.max_skew_ms // 1000} s)",
                )
            ]
        if self.now_ms is not None and t_ms > self.now_ms() + self.max_skew_ms:
            why = f"{iso_ms(t_ms)} is ahead of the wall clock by more than windowing.max_skew_s (a live twin)"
            return [self._reject(item, t_ms, why)]
        acc = self._accepted.get(source)
        held = self._held.pop(source, [])
        if final:
            return self._offer_final(source, t_ms, item, acc, held)
        out: list[Judged[T]] = []
        if held:
            near_held = abs(t_ms - held[0].t_ms) <= self.max_skew_ms
            beyond = acc is None or t_ms > acc + self.max_skew_ms
            if near_held and beyond:  # one more message near the held ones
                held.append(_Held(item, t_ms))
                if len(held) > (1 if acc is None else self.confirm):  # the first message, or a real jump
                    if acc is not None:
                        self.stats.jumps += 1
                    return [self._accept(source, h.item, h.t_ms) for h in held]
                self._held[source] = held
                self.stats.held += 1
                return []
            out += [self._reject(h.item, h.t_ms, self._unconfirmed(h, acc, t_ms)) for h in held]
        if acc is None or t_ms > acc + self.max_skew_ms:
            self._held[source] = [_Held(item, t_ms)]
            self.stats.held += 1
            return out
        out.append(self._accept(source, item, t_ms))
        return out

    def _unconfirmed(self, held: _Held[T], acc: int | None, t_ms: int) -> str:
        if acc is None:
            return f"{iso_ms(held.t_ms)} is not confirmed by the partition's next message ({iso_ms(t_ms)})"
        return (
            f"{iso_ms(held.t_ms)} is {(held.t_ms - acc) / 1000:.0f} s ahead of its partition ({iso_ms(acc)}; "
            f"windowing.max_skew_s {self.max_skew_ms // 1000} s) and the partition went on at {iso_ms(t_ms)} "
            f"before {self.confirm} more messages confirmed the jump"
        )

    def _offer_final(
        self, source: Hashable, t_ms: int, item: T, acc: int | None, held: list[_Held[T]]
    ) -> list[Judged[T]]:
        """A final heartbeat: never held. It passes when near held messages (they confirm each other: an end
        is believed only once every partition is read to its end, and taken back if more follows) or within
        the skew of the partition's accepted time (else of a restart's resume point); what is held passes with
        it when it lies between the accepted time and the end. A rejected end leaves what is held to the
        partition's next message."""
        if held and abs(t_ms - held[0].t_ms) <= self.max_skew_ms:
            return [*(self._accept(source, h.item, h.t_ms) for h in held), self._accept(source, item, t_ms)]
        ref = acc if acc is not None else self.resume_ms
        if ref is None or t_ms > ref + self.max_skew_ms:  # an end no message of the partition leads to
            if held:
                self._held[source] = held
            where = (
                "is the partition's first message"
                if ref is None
                else f"is {(t_ms - ref) / 1000:.0f} s ahead of its partition ({iso_ms(ref)}; "
                f"windowing.max_skew_s {self.max_skew_ms // 1000} s)"
            )
            return [self._reject(item, t_ms, f"final heartbeat {iso_ms(t_ms)} {where}")]
        out: list[Judged[T]] = []
        for h in held:
            if acc is not None and acc <= t_ms and h.t_ms <= t_ms + self.max_skew_ms:
                out.append(self._accept(source, h.item, h.t_ms))
            else:
                why = f"{iso_ms(h.t_ms)} is not confirmed by the partition's end ({iso_ms(t_ms)})"
                out.append(self._reject(h.item, h.t_ms, why))
        out.append(self._accept(source, item, t_ms))
        return out

    def judge_topology(self, t_ms: int) -> str | None:
        """Why a physical topology dated ``t_ms`` is rejected (before the run's start by more than the skew),
        or None when it is believed. One dated ahead is believed: it applies only once the stream reaches its
        time (the caller bounds how many may wait); the newest time the streams have reached says nothing
        about a topology's (carbon steps may be read long before events, a batch producer may lag)."""
        if self._early(t_ms):
            return f"{iso_ms(t_ms)} is before the run's start by more than windowing.max_skew_s"
        return None
