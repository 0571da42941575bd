"""Plumbing shared by the command modules: the Command record, store access, output.

It must not define commands: each group of verbs has its own module.
"""


from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson

from .. import registry
from ..clock import SYSTEM
from ..config import Config
from ..models import Webhook
from ..store.sqlite import Store

PROG = "nevent-dispatch"
#: Set to 1 for a traceback on internal errors.
DEBUG_ENV = "NEVENT_DISPATCH_DEBUG"

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130

T = TypeVar("T")
Handler = Callable[[argparse.Namespace, Config], int]


def no_arguments(parser: argparse.ArgumentParser) -> None:
    pass


@dataclass(frozen=True, slots=True)
class Command:
    """One verb: where it sits on the command line, its options and its handler."""

    path: tuple[str, ...]
    help: str
    run: Handler
    arguments: Callable[[argparse.ArgumentParser], None] = no_arguments


# -- shared plumbing -------------------------------------------------------------------------


def now() -> float:
    """The wall clock, read once per command and handed to everything below."""
    return SYSTEM.time()


def with_store(config: Config, work: Callable[[Store], Awaitable[T]], *,
               migrate: bool = False) -> T:
    """Open both databases, run ``work`` on them and always close them.

    Only ``init`` migrates (``run`` does in the daemon): a command of a newer install
    must not change the schema under a running older daemon. Without ``migrate``, a
    state database that is missing or of another schema version is refused in one
    line saying what to run.
    """

    async def run() -> T:
        store = await Store.open(config, migrate=migrate)
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(run())


def print_json(value: Any, *, indent: bool = True) -> None:
    option = orjson.OPT_INDENT_2 if indent else 0
    sys.stdout.write(orjson.dumps(value, option=option).decode() + "\n")


def yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def timestamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def relative(t: float | None, current: float) -> str:
    """A time as people read it in a terminal: '3m ago', 'in 2h', '-'."""
    if t is None:
        return "-"
    delta = current - t
    future = delta < 0
    delta = abs(delta)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= size:
            amount = f"{int(delta // size)}{unit}"
            break
    else:
        amount = f"{int(delta)}s"
    return f"in {amount}" if future else f"{amount} ago"


def when(t: float | None, current: float) -> str:
    """ISO 8601 beside the relative time: ``2026-12-02T10:30:05Z (3m ago)``."""
    return "-" if t is None else f"{timestamp(t)} ({relative(t, current)})"


def invocation() -> str:
    """How this command was typed, for the hints it prints: ``nevent-dispatch`` when that
    name on $PATH is this program, else the path as typed (``.venv/bin/nevent-dispatch``)."""
    typed = sys.argv[0] if sys.argv and sys.argv[0] else PROG
    if typed.endswith("__main__.py"):
        return "python -m nevent_dispatch"
    found = shutil.which(PROG)
    if found and os.path.realpath(found) == os.path.realpath(typed):
        return PROG
    return typed if os.sep in typed else PROG


def hint(text: str) -> str:
    """``text`` with each `nevent-dispatch …` command written the way it was invoked."""
    typed = invocation()
    return text if typed == PROG else text.replace(f"`{PROG} ", f"`{typed} ")


# -- colour: only on a terminal, never with NO_COLOR (https://no-color.org) ----------------------

_COLOURS = {"green": "32", "red": "31", "yellow": "33", "blue": "34", "dim": "2", "bold": "1"}
#: The colour of each delivery state and attempt outcome in tables.
STATE_COLOURS = {"delivered": "green", "success": "green", "failed": "red", "rejected": "red",
                 "pending": "yellow", "queued": "blue", "in_flight": "blue",
                 "http_error": "red", "timeout": "red", "connection_error": "red",
                 "tls_error": "red", "refused": "red", "gone": "red", "yes": "green"}


def colour_enabled(stream: Any = None) -> bool:
    stream = stream or sys.stdout
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def paint(text: str, colour: str | None, *, stream: Any = None) -> str:
    if colour is None or not colour_enabled(stream):
        return text
    return f"\x1b[{_COLOURS[colour]}m{text}\x1b[0m"


def print_webhook(webhook: Webhook, config: Config) -> None:
    rate = (f"{webhook.rate_limit}/min" if webhook.rate_limit is not None
            else f"{config.rate_limit.events_per_minute}/min (default)")
    rows = [
        ("id", webhook.id),
        ("organization", webhook.organization_id),
        ("name", webhook.name),
        ("url", webhook.url),
        ("secret", registry.mask_secret(webhook.secret)),
        ("events", ", ".join(webhook.events)),
        ("filter", "none" if webhook.filter is None else orjson.dumps(webhook.filter).decode()),
        ("batch", yes_no(webhook.batch)),
        ("retries", yes_no(webhook.retries)),
        ("rate limit", rate),
        ("active", yes_no(webhook.active)),
        ("created", timestamp(webhook.created_at)),
        ("updated", timestamp(webhook.updated_at)),
    ]
    width = max(len(label) for label, _ in rows) + 2
    for label, value in rows:
        print(f"{label + ':':<{width}}{value}")


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]], *,
                colour: Sequence[str] = ("STATE", "OUTCOME")) -> None:
    """Aligned columns; on a terminal the header is bold and the ``colour`` columns take
    their value's colour (``STATE_COLOURS``)."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    painted = {i for i, name in enumerate(header) if name in colour}
    print(paint("  ".join(f"{cell:<{width}}" for cell, width in zip(header, widths, strict=True))
                .rstrip(), "bold"))
    for row in rows:
        cells = [f"{cell:<{width}}" for cell, width in zip(row, widths, strict=True)]
        for i in painted:
            cells[i] = paint(cells[i], STATE_COLOURS.get(str(row[i])))
        print("  ".join(cells).rstrip())


def footer(shown: int, total: int | None, more: str | None) -> None:
    """What a list left out, on stderr (stdout stays the rows): ``50 of 518 — …``."""
    if more is None and (total is None or shown >= total):
        return
    of = f"{shown} of {total}" if total is not None else f"{shown} shown"
    how = f"--cursor {more} for the next page, --limit N for more per page" if more else \
        "--limit N for more"
    print(paint(f"{of} — {how}", "dim", stream=sys.stderr), file=sys.stderr)


def bounded(kind: type[int] | type[float], low: float, high: float) -> Callable[[str], Any]:
    """An argparse type: a number within [low, high], else a usage error (exit 2)."""
    span = f"{kind(low)}..{kind(high)}" if kind is int else f"{low:g}..{high:g}"

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number {span}, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {span}, got {text!r}")
        return value
    return parse


def read_secret(value: str | None) -> str | None:
    """``--secret -`` reads the secret from stdin, keeping it out of the process list."""
    if value != "-":
        return value
    return sys.stdin.readline().rstrip("\r\n")


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def add_webhook_id(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("webhook_id", metavar="ID", help="webhook id (wh_…)")


