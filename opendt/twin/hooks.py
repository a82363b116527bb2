"""Observers of the window loop: the calibrator, the kept history and the optimizer ride on its windows."""

from __future__ import annotations

from typing import Protocol

import polars as pl

from opendt.stream.windowing import Window


class WindowHooks(Protocol):
    """Observers of the window loop (calibrator, history): awaited in order, within the window."""

    async def before_window(self, w: Window) -> None: ...

    async def after_window(
        self, w: Window, tasks: pl.DataFrame, fragments: pl.DataFrame, *, replayed: bool = False
    ) -> None: ...


class HookChain:
    """Several :class:`WindowHooks` as one, called in the given order."""

    def __init__(self, *hooks: WindowHooks | None) -> None:
        self.hooks = [h for h in hooks if h is not None]

    async def before_window(self, w: Window) -> None:
        for h in self.hooks:
            await h.before_window(w)

    async def after_window(
        self, w: Window, tasks: pl.DataFrame, fragments: pl.DataFrame, *, replayed: bool = False
    ) -> None:
        for h in self.hooks:
            await h.after_window(w, tasks, fragments, replayed=replayed)
