"""Atomic writes of the run's files, and the one error a full disk becomes.

Every file the twin makes durable is written to ``<name>.tmp`` and renamed over ``<name>`` (atomic on POSIX):
a crash or a full disk leaves the previous file, never a torn one, and the temporary file is removed on
failure. Running out of space (or quota) is :class:`DiskFull`: the daemon stops with that one message
(exit 1), every file stays readable, and a restart once space is freed resumes where it stopped.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

_FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(OSError):
    """The run directory's device is full; the message names the file and what to do."""


def is_disk_full(exc: BaseException) -> bool:
    """An out-of-space error, as the OS or polars' writers (which wrap it in a ComputeError) report it."""
    if isinstance(exc, OSError) and exc.errno in _FULL:
        return True
    text = str(exc)
    return any(f"os error {n}" in text for n in _FULL) or "No space left on device" in text


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` then rename ``tmp`` over ``path``; :class:`DiskFull` when the device is full."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        tmp.replace(path)
    except Exception as e:
        tmp.unlink(missing_ok=True)
        if is_disk_full(e):
            raise DiskFull(
                errno.ENOSPC,
                f"no space left on the device of {path.parent} (writing {path.name}): free space and run "
                "the same command again, the twin resumes where it stopped",
            ) from None
        raise
