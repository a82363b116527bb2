"""What a commit may not pass: per open window, per partition, the offset of the first record windowed there.

Offsets are committed when a window is durable (DESIGN §8): every message below the committed offset must
belong to a durable window. So a partition's commit stops at the lowest first offset over the windows still
open. Windows close in order; lazy heaps keep both the closing and the lowest offset O(log n), however many
windows are open (a fast feed opens many ahead of the simulator).
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable


class FirstOffsets:
    def __init__(self) -> None:
        self._by_start: dict[int, dict[Hashable, int]] = {}
        self._starts: list[int] = []  # heap of the open starts
        self._lowest: dict[Hashable, list[tuple[int, int]]] = {}  # per partition: heap of (offset, start)

    def __len__(self) -> int:
        return len(self._by_start)

    def note(self, start: int, partition: Hashable, offset: int) -> None:
        """A record at ``offset`` of ``partition`` was windowed in the window starting at ``start`` (the first
        one noted per window and partition counts)."""
        firsts = self._by_start.get(start)
        if firsts is None:
            firsts = self._by_start[start] = {}
            heapq.heappush(self._starts, start)
        if partition not in firsts:
            firsts[partition] = offset
            heapq.heappush(self._lowest.setdefault(partition, []), (offset, start))

    def close_before(self, end_ms: int) -> None:
        """The windows starting before ``end_ms`` are closed (late records merged into the closing one)."""
        while self._starts and self._starts[0] < end_ms:
            self._by_start.pop(heapq.heappop(self._starts), None)

    def lowest(self, partition: Hashable) -> int | None:
        """The lowest first offset of ``partition`` over the open windows (None: none has a record of it)."""
        heap = self._lowest.get(partition)
        while heap:
            offset, start = heap[0]
            if self._by_start.get(start, {}).get(partition) == offset:
                return offset
            heapq.heappop(heap)
        return None
