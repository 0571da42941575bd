"""``prune``: retention by hand — what the daemon's retention task does every few minutes.

Owns the command line of ``ops/retention.prune``: ``--older-than`` (default
``retention.deliveries``), ``--dry-run`` (count, change nothing) and the one- or two-line
report. It is a writer beside a running daemon, in the same small paced transactions,
waiting for the lock up to ``database.busy_timeout``; it takes no state lock, and refuses
a state database that needs ``init``. Unlike the daemon it gives every free page back.
It must not decide what is prunable: ``ops/retention.py`` does.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..config import Config, parse_duration
from ..errors import ConfigError, DispatchError
from ..ops.retention import Report, deliveries_keep_s, outbox_keep_s, prune
from .common import EXIT_OK, Command, add_json, now, print_json, timestamp, with_store


def _older_than(text: str) -> float:
    """``--older-than``: a duration above zero, else a usage error (exit 2)."""
    try:
        value = parse_duration("--older-than", text)
    except ConfigError:
        value = None
    if not value:
        raise argparse.ArgumentTypeError(
            f"expected a duration above 0 such as \"7d\", \"12h\", \"90m\", got {text!r}")
    return float(value)


def _args_prune(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--older-than", metavar="DURATION", type=_older_than, default=None,
                        help="prune finished deliveries last changed longer ago than this: "
                             "\"30d\", \"12h\", \"90m\" (default: retention.deliveries)")
    parser.add_argument("--dry-run", action="store_true",
                        help="count what would be pruned; change nothing")
    add_json(parser)


def report_json(report: Report) -> dict[str, Any]:
    def at(t: float | None) -> str | None:
        return None if t is None else timestamp(t)
    return {"dry_run": report.dry_run, "deliveries": report.deliveries,
            "attempts": report.attempts, "batches": report.batches, "outbox": report.outbox,
            "deliveries_before": at(report.deliveries_before),
            "outbox_before": at(report.outbox_before), "outbox_below_id": report.outbox_below,
            "released_bytes": report.released_bytes, "seconds": report.seconds}


def report_lines(report: Report) -> list[str]:
    verb = "would prune" if report.dry_run else "pruned"
    if report.deliveries_before is None:
        first = "deliveries: none pruned (retention.deliveries = \"0\" keeps every one)"
    else:
        first = (f"{verb} {report.deliveries:,} deliveries ({report.attempts:,} attempts, "
                 f"{report.batches:,} batches) finished before "
                 f"{timestamp(report.deliveries_before)}")
    if report.outbox_before is None:
        second = "outbox: not pruned (retention.outbox = \"off\")"
    else:
        second = (f"{verb} {report.outbox:,} outbox rows (below id {report.outbox_below}, "
                  f"created before {timestamp(report.outbox_before)})")
    if report.dry_run:
        second += f"; {report.seconds:.2f} s, nothing changed"
    else:
        second += (f"; {report.released_bytes / 1e6:,.1f} MB given back to the file system; "
                   f"{report.seconds:.2f} s")
    return [first, second]


def _cmd_prune(args: argparse.Namespace, config: Config) -> int:
    keep = args.older_than if args.older_than is not None else deliveries_keep_s(config)
    current = now()
    report = with_store(config, lambda store: prune(
        store, current, keep_deliveries_s=keep, keep_outbox_s=outbox_keep_s(config),
        dry_run=args.dry_run))
    if args.json:
        print_json(report_json(report))
    else:
        for line in report_lines(report):
            print(line)
    if report.outbox_error is not None:  # what was pruned is said above; exit 1
        raise DispatchError(report.outbox_error)
    return EXIT_OK


COMMANDS = (
    Command(("prune",), "delete finished deliveries and handled outbox rows past their "
            "retention, now (the daemon does it every few minutes)", _cmd_prune, _args_prune),
)
