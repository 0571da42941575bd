"""Logging: structlog configured once: JSON lines on stdout for journald, console lines
(coloured unless NO_COLOR is set) on a terminal.

Owns the processor chain and the rule that nothing named like a secret is ever
rendered. It must not be configured from anywhere but the process shell
(``daemon.py`` and the CLI).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import orjson
import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}
_SECRET_WORDS = ("secret", "password", "token", "authorization", "signature")
#: The configured threshold, so hot paths can skip building a line nobody will see.
_threshold = logging.INFO
#: Verdicts per key name: log lines reuse a handful of keys, so each is judged once.
_SECRET_KEYS: dict[str, bool] = {}


def _names_secret(key: str) -> bool:
    verdict = _SECRET_KEYS.get(key)
    if verdict is None:
        verdict = any(word in key.lower() for word in _SECRET_WORDS)
        if len(_SECRET_KEYS) < 10_000:
            _SECRET_KEYS[key] = verdict
    return verdict


def _drop_secrets(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """Mask any key that names a secret, whatever a caller passed."""
    for key in event:
        if _names_secret(key):
            event[key] = "[masked]"
    return event


def configure(*, fmt: str = "json", level: str = "info", stream: Any = None) -> None:
    """Configure structlog for the whole process (idempotent)."""
    global _threshold
    _threshold = _LEVELS[level]
    stream = stream or sys.stdout
    tty = _is_tty(stream)
    if fmt == "auto":
        fmt = "console" if tty else "json"
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _drop_secrets,
    ]
    if fmt == "console":
        processors = [*shared, structlog.dev.ConsoleRenderer(
            colors=tty and not os.environ.get("NO_COLOR"))]
        factory: Any = structlog.PrintLoggerFactory(stream)
    else:
        processors = [*shared, structlog.processors.format_exc_info,
                      structlog.processors.JSONRenderer(serializer=orjson.dumps)]
        factory = structlog.BytesLoggerFactory(getattr(stream, "buffer", stream))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def enabled(level: str) -> bool:
    """Whether lines of ``level`` are written (checked before building costly ones)."""
    return _LEVELS[level] >= _threshold


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
