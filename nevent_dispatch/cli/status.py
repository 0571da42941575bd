"""``status``: what the state database says about the daemon's work, for people and scripts.

Owns the one summary a script or an operator needs without a running daemon:
the outbox cursor and backlog, deliveries per state, and the lowest outbox id
still needed (the application may delete outbox rows below it). It must not
change anything.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..config import Config
from ..store.sqlite import Store
from .common import EXIT_OK, Command, add_json, print_json, with_store


async def _status(store: Store) -> dict[str, Any]:
    cursor = await store.cursor()
    newest = await store.outbox_max_id()
    return {
        "outbox_cursor": cursor,
        "outbox_backlog": max(0, newest - cursor),
        "outbox_needed_from": await store.outbox_needed_from(),
        "deliveries": await store.counts_by_state(),
    }


def _cmd_status(args: argparse.Namespace, config: Config) -> int:
    status = with_store(config, _status)
    if args.json:
        print_json(status)
        return EXIT_OK
    print(f"outbox cursor:       {status['outbox_cursor']} "
          f"({status['outbox_backlog']} rows not yet taken in)")
    print(f"outbox needed from:  {status['outbox_needed_from']} "
          "(rows with a lower id may be deleted)")
    counts = status["deliveries"]
    print("deliveries:          " + (", ".join(f"{state} {n}" for state, n in sorted(counts.items()))
                                     or "none"))
    return EXIT_OK


COMMANDS = (
    Command(("status",), "the daemon's progress: outbox cursor, deliveries per state, prunable ids",
            _cmd_status, add_json),
)
