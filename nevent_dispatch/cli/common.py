"""Plumbing shared by the command modules: the Command record, store access, output.

It must not define commands: each group of verbs has its own module.
"""


from __future__ import annotations

import argparse
import asyncio
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


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    for row in (header, *rows):
        line = "  ".join(f"{cell:<{width}}" for cell, width in zip(row, widths, strict=True))
        print(line.rstrip())


def read_secret(value: str | None) -> str | None:
    """``--secret -`` reads the secret from stdin, keeping it out of the process list."""
    if value != "-":
        return value
    return sys.stdin.readline().rstrip("\r\n")


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def add_webhook_id(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("webhook_id", metavar="ID", help="webhook id (wh_…)")


