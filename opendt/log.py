"""structlog configuration, done once by the entry point; elsewhere only ``structlog.get_logger()``.

Tracebacks never carry local variables (they could hold the settings and so a secret), and below
``debug`` they are not printed at all: an event logged with an exception gets one ``error`` field naming its
type, message and the innermost frame instead. ``--log-level debug`` prints the whole traceback.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog
from structlog.tracebacks import ExceptionDictTransformer

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class StatusLine:
    """One line at the bottom of a terminal (a progress bar) that log lines scroll above: a log write clears
    it first and draws it again after the line. Only the CLI sets it, and only on a terminal."""

    text: str | None = None
    _mid_line = False

    @classmethod
    def show(cls, text: str) -> None:
        cls.text = text
        if not cls._mid_line:
            sys.stderr.write("\r\x1b[K" + text)
            sys.stderr.flush()

    @classmethod
    def clear(cls) -> None:
        if cls.text is not None and not cls._mid_line:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
        cls.text = None


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at write time (not the object it was when logging was configured:
    a test harness or a redirect may replace and close that one), above the :class:`StatusLine` if any."""

    def write(self, text: str) -> int:
        status = StatusLine.text
        if status is None:
            return sys.stderr.write(text)
        prefix = "" if StatusLine._mid_line else "\r\x1b[K"
        StatusLine._mid_line = not text.endswith("\n")
        suffix = "" if StatusLine._mid_line else status
        sys.stderr.write(prefix + text + suffix)
        return len(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def describe_exception(exc: BaseException) -> str:
    """``Type: message (at file:line)``: one line, the innermost frame of the exception's own traceback."""
    where = ""
    tb = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ is not None else []
    if tb:
        frame = tb[-1]
        where = f" (at {frame.filename.rsplit('/opendt/', 1)[-1]}:{frame.lineno})"
    text = str(exc)
    return f"{type(exc).__name__}: {text}{where}" if text else f"{type(exc).__name__}{where}"


def _exc_of(value: Any) -> BaseException | None:
    if isinstance(value, BaseException):
        return value
    if isinstance(value, tuple) and len(value) == 3 and isinstance(value[1], BaseException):
        return value[1]
    if value is True:
        return sys.exc_info()[1]
    return None


def _one_line_exceptions(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Replace ``exc_info`` by an ``exception`` field of one line (below debug)."""
    info = event.pop("exc_info", None)
    exc = _exc_of(info)
    if exc is not None:
        event.setdefault("exception", describe_exception(exc))
    return event


class _OneLineStdlib(logging.Filter):
    """The same for the libraries that log through stdlib logging (aiohttp, aiokafka)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            record.msg = f"{record.getMessage()}: {describe_exception(record.exc_info[1])}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


def _no_slow_callback_notes(record: logging.LogRecord) -> bool:
    """asyncio's debug mode (PYTHONASYNCIODEBUG) notes every callback slower than 0.1 s ("Executing <Task …>
    took 0.25 seconds"): a profiling aid shown at --log-level debug only, not a warning about the run."""
    return not (
        record.name == "asyncio"
        and record.levelno == logging.WARNING
        and str(record.msg).startswith("Executing ")
    )


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    out: TextIO = stream if stream is not None else _CurrentStderr()  # type: ignore[assignment]
    use_console = fmt == "console" or (fmt == "auto" and out.isatty())
    debug = level == "debug"
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if not debug:
        processors.append(_one_line_exceptions)
    if use_console:
        processors.append(structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback))
    else:
        no_locals = ExceptionDictTransformer(show_locals=False)
        processors += [structlog.processors.ExceptionRenderer(no_locals), structlog.processors.JSONRenderer()]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )
    # aiokafka and aiohttp log through stdlib logging: keep their warnings, in the same stream.
    logging.basicConfig(level=max(_LEVELS[level], logging.WARNING), stream=out, format="%(name)s %(message)s")
    if not debug:
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is out:
                handler.addFilter(_OneLineStdlib())
                handler.addFilter(_no_slow_callback_notes)
