"""Observers of the window loop: the calibrator, the kept history and the optimizer ride on its windows."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import polars as pl

from opendt.stream.windowing import Window


class WindowHooks(Protocol):
    """Observers of the window loop (calibrator, history): awaited in order, within the window."""

    async def before_window(self, w: Window) -> None: ...

    async def after_window(
        self, w: Window, tasks: pl.DataFrame, fragments: pl.DataFrame, *, replayed: bool = False
    ) -> None: ...


@runtime_checkable
class Checkpointed(Protocol):
    """A hook with state of its own that a checkpoint keeps (under ``checkpoint_key``)."""

    checkpoint_key: str

    def checkpoint_state(self) -> dict[str, Any]: ...

    def restore_checkpoint(self, state: dict[str, Any]) -> None: ...


class HookChain:
    """Several :class:`WindowHooks` as one, called in the given order."""

    def __init__(self, *hooks: WindowHooks | None) -> None:
        self.hooks = [h for h in hooks if h is not None]

    @property
    def batch_safe(self) -> bool:
        """Whether windows may be simulated in batches (:mod:`opendt.twin.batch`): every hook says so (its
        ``batch_safe``: it needs no engine state between windows, its ``before_window`` may be repeated)."""
        return all(getattr(h, "batch_safe", False) for h in self.hooks)

    async def before_window(self, w: Window) -> None:
        for h in self.hooks:
            await h.before_window(w)

    async def after_window(
        self, w: Window, tasks: pl.DataFrame, fragments: pl.DataFrame, *, replayed: bool = False
    ) -> None:
        for h in self.hooks:
            await h.after_window(w, tasks, fragments, replayed=replayed)

    def checkpoint_state(self) -> dict[str, Any]:
        return {h.checkpoint_key: h.checkpoint_state() for h in self.hooks if isinstance(h, Checkpointed)}

    def restore_checkpoint(self, state: dict[str, Any]) -> None:
        for h in self.hooks:
            if isinstance(h, Checkpointed) and h.checkpoint_key in state:
                h.restore_checkpoint(state[h.checkpoint_key])
