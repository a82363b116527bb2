"""The errors every command reports as one line: :class:`UsageError` (exit 2: a bad option, value or path, a
busy port: something the user fixes) and :class:`CommandError` (exit 1: the command itself failed)."""

from __future__ import annotations

EXIT_FAILED = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A usage or configuration error: printed as one line naming the problem and what to do, exit 2."""


class CommandError(Exception):
    """A command that failed at its work: printed as one line, exit 1."""
