"""The daemon and the history: ``run``, ``webhooks test|replay``, ``deliveries …``.

Owns the terminal and JSON renderings of deliveries and attempts, and the
parsing of ``--since``. It must not deliver anything itself: ``run`` hands
over to ``daemon.py`` and ``webhooks test`` to ``pipeline.attempts.send_test``, both
imported when the command runs, so that ``--help`` and the reading commands start fast.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .. import history, logs, registry, statelock
from ..config import Config, parse_duration
from ..errors import ConfigError, ValidationError
from ..models import Attempt, Delivery, State, Webhook
from ..pipeline.matcher import type_predicate
from ..store.sqlite import Store
from ..views import delivery_detail_json, delivery_json
from .common import (
    EXIT_OK,
    EXIT_REFUSED,
    PROG,
    STATE_COLOURS,
    Command,
    add_json,
    add_webhook_id,
    bounded,
    footer,
    hint,
    now,
    paint,
    print_json,
    print_table,
    relative,
    when,
    with_store,
)


def parse_since(text: str, current: float) -> float:
    """``30m``, ``2h``, ``7d`` ago; a unix time; or an ISO 8601 date/time (``history``)."""
    return history.parse_time(text, current, "since")


def printable(text: str) -> str:
    """Text a receiver controls, control characters escaped so it cannot drive the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _last(d: Delivery) -> str:
    if d.last_status is not None:
        return str(d.last_status)
    return printable(d.last_error or "-")[:40]


# -- run ---------------------------------------------------------------------------------------


def _args_run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--until-idle", action="store_true",
                        help="exit once every event is delivered, failed or rejected")
    parser.add_argument("--max-wait", metavar="T",
                        help="with --until-idle: stop after T (90s, 5m, 2h) even if retries "
                             "are still pending (exit 1; they are kept for the next run)")


def _cmd_run(args: argparse.Namespace, config: Config) -> int:
    max_wait = None
    if args.max_wait is not None:
        if not args.until_idle:
            raise ValidationError("max-wait: only with --until-idle")
        try:
            max_wait = parse_duration("max-wait", args.max_wait)
        except ConfigError as exc:  # a bad value on the command line is refused input
            raise ValidationError(str(exc)) from None
    from .. import daemon  # the pipeline and aiohttp: only the commands that deliver load them

    logs.configure(fmt=config.log.format, level=config.log.level)
    left = daemon.run(config, until_idle=args.until_idle, max_wait=max_wait,
                      on_waiting=_print_waiting if args.until_idle else None)
    if left is not None:
        print(f"{PROG}: stopped waiting after {args.max_wait}: {_waiting_text(left, now())}; "
              "the work is kept and the next run goes on with it", file=sys.stderr)
        return EXIT_REFUSED
    return EXIT_OK


def _waiting_text(w: dict[str, Any], current: float) -> str:
    parts = []
    if w["retries"]:
        parts.append(f"{w['retries']} pending {'retry' if w['retries'] == 1 else 'retries'} "
                     f"(next at {when(w['next_retry_at'], current)})")
    if w["in_flight"] or w["in_memory"]:
        parts.append(f"{w['in_flight']} in flight, {w['in_memory']} queued")
    if w["outbox_backlog"]:
        parts.append(f"{w['outbox_backlog']} outbox rows to take in")
    if not parts and w["waiting_webhooks"]:
        parts.append(f"deliveries waiting for {w['waiting_webhooks']} webhooks")
    return ", ".join(parts) or "the last deliveries"


def _print_waiting(w: dict[str, Any]) -> None:
    """``run --until-idle``'s progress, on stderr (the logs are on stdout)."""
    print(paint(f"waiting for {_waiting_text(w, now())} (Ctrl-C stops; --max-wait bounds "
                "the wait)", "dim", stream=sys.stderr), file=sys.stderr, flush=True)


# -- webhooks test / replay ----------------------------------------------------------------------


def _args_test(parser: argparse.ArgumentParser) -> None:
    add_webhook_id(parser)
    parser.add_argument("--type", default="purchase.completed", metavar="TYPE",
                        help="event type of the sample (default purchase.completed)")
    add_json(parser)


def _cmd_test(args: argparse.Namespace, config: Config) -> int:
    registry.validate_event_type(args.type, config.events.extra_types)
    logs.configure(fmt=config.log.format, level="error")  # the result is printed below

    from ..pipeline.attempts import send_test

    async def work(store: Store) -> tuple[Delivery, Any, Webhook]:
        webhook = await store.get_webhook(args.webhook_id)
        return (*await send_test(config, store, webhook, args.type), webhook)

    delivery, result, webhook = with_store(config, work)
    if args.json:
        print_json({**delivery_json(delivery), "latency_ms": round(result.latency_ms, 1),
                    "outcome": result.outcome.value, "response": result.response})
    else:
        status = result.status if result.status is not None else result.outcome.value
        ok = delivery.state is State.DELIVERED
        shape = " (as a batch of one: the webhook is in batch mode)" if webhook.batch else ""
        print(f"sent test {args.type} to {args.webhook_id}{shape}: "
              f"{paint(str(status), 'green' if ok else 'red')} in "
              f"{result.latency_ms:.0f} ms (delivery {delivery.uuid})")
        if not type_predicate(webhook.events)(args.type):
            print(f"note: {args.webhook_id} is not subscribed to {args.type} "
                  f"(events: {', '.join(webhook.events)}); real ones will not be sent to it")
        if result.error:
            print(f"error: {printable(result.error)}")
            if "private" in result.error and not config.delivery.allow_private_networks:
                print("hint: local receivers need delivery.allow_private_networks = true "
                      "(and allow_http for http://) in the config file")
        if result.response:
            print(f"response: {printable(result.response[:200])}")
    return EXIT_OK if delivery.state is State.DELIVERED else EXIT_REFUSED


def _args_replay(parser: argparse.ArgumentParser) -> None:
    add_webhook_id(parser)
    parser.add_argument("--status", default="failed", choices=["failed"],
                        help="which deliveries to replay (failed)")
    parser.add_argument("--since", metavar="T", help="only those created since T (30m, 2h, 7d, date)")
    add_json(parser)


def _cmd_replay(args: argparse.Namespace, config: Config) -> int:
    current = now()
    since = parse_since(args.since, current) if args.since else None

    async def work(store: Store) -> tuple[bool, int]:
        webhook = await store.get_webhook(args.webhook_id)
        return webhook.active, await history.replay_webhook(store, webhook, status=args.status,
                                                            since=since, now=current)

    active, count = with_store(config, work)
    if args.json:
        print_json({"webhook_id": args.webhook_id, "requeued": count, "webhook_active": active,
                    "daemon_running": _daemon_pid(config) is not None})
    elif count == 0:
        print(f"no {args.status} deliveries of {args.webhook_id}"
              f"{' since ' + args.since if args.since else ''}: nothing requeued")
    else:
        print(f"requeued {count} {args.status} deliveries of {args.webhook_id} "
              f"(same delivery ids); {_when_sent(config, active, 'they')}")
    return EXIT_OK


def _daemon_pid(config: Config) -> int | None:
    return statelock.running_pid(config.database.state)


def _when_sent(config: Config, active: bool, what: str) -> str:
    """When requeued work goes out (``what``: "it" or "they"): only active webhooks receive
    anything, and only while a daemon runs."""
    if not active:
        return f"the webhook is disabled: {what} will be sent once it is enabled"
    pid = _daemon_pid(config)
    if pid is None:
        return hint(f"no daemon is running: {what} will be sent when "
                    "`nevent-dispatch run` starts")
    return f"the running daemon (pid {pid}) sends {'it' if what == 'it' else 'them'} now"


# -- deliveries ------------------------------------------------------------------------------------


def _args_list(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--org", metavar="ORG", help="only this organization's deliveries")
    parser.add_argument("--webhook", metavar="ID", help="only this webhook's deliveries")
    parser.add_argument("--status", choices=[s.value for s in State], help="only this state")
    parser.add_argument("--type", metavar="TYPE", help="only this event type (batch: 'batch')")
    parser.add_argument("--event", metavar="EVT", help="only the deliveries of this event id")
    parser.add_argument("--since", metavar="T", help="created since T (30m, 2h, 7d, date)")
    parser.add_argument("--limit", type=bounded(int, 1, history.MAX_LIMIT), default=50,
                        metavar="N",
                        help=f"at most N (default 50, up to {history.MAX_LIMIT})")
    parser.add_argument("--cursor", metavar="C", help="the next page, as the footer says")
    add_json(parser)


def _cmd_list(args: argparse.Namespace, config: Config) -> int:
    current = now()
    if args.org is not None:
        registry.validate_org(args.org)
    since = parse_since(args.since, current) if args.since else None
    page = with_store(config, lambda store: history.list_deliveries(
        store, organization_id=args.org, webhook_id=args.webhook, status=args.status,
        event_type=args.type, event_id=args.event, since=since, limit=args.limit,
        cursor=args.cursor))
    deliveries = page.deliveries
    if args.json:
        print_json([delivery_json(d) for d in deliveries])
        return EXIT_OK
    if not deliveries:
        print("no deliveries")
        return EXIT_OK
    print_table(
        ("ID", "DELIVERY", "WEBHOOK", "TYPE", "EVENTS", "STATE", "TRIES", "LAST", "CREATED", "NEXT"),
        [(str(d.id), d.uuid, d.webhook_id or "-", d.event_type, str(d.event_count), d.state.value,
          str(d.attempts), _last(d), when(d.created_at, current),
          relative(d.next_at, current)) for d in deliveries])
    footer(len(deliveries), None, page.next_cursor)
    return EXIT_OK


def _args_delivery(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("delivery", metavar="ID", help="delivery number or X-Nevent-Delivery uuid")
    add_json(parser)


def _cmd_show(args: argparse.Namespace, config: Config) -> int:
    current = now()

    async def work(store: Store) -> tuple[Delivery, list[Attempt], list[tuple[Any, ...]]]:
        delivery = await store.get_delivery(args.delivery)
        return delivery, await store.attempts(delivery.id), await store.batch_events(delivery.id)

    delivery, attempts, items = with_store(config, work)
    if args.json:
        print_json(delivery_detail_json(delivery, attempts, items))
        return EXIT_OK
    rows = [("delivery", f"{delivery.id} ({delivery.uuid})"),
            ("webhook", delivery.webhook_id or "- (rejected before matching)"),
            ("kind", delivery.kind.value), ("type", delivery.event_type),
            ("event", delivery.event_id or f"{delivery.event_count} events"),
            ("state", paint(delivery.state.value, STATE_COLOURS.get(delivery.state.value))),
            ("attempts", str(delivery.attempts)),
            ("created", when(delivery.created_at, current)),
            ("next attempt", when(delivery.next_at, current))]
    if delivery.last_error:
        rows.append(("last error", printable(delivery.last_error)))
    width = max(len(label) for label, _ in rows) + 2
    for label, value in rows:
        print(f"{label + ':':<{width}}{value}")
    if items:
        print(f"\nevents in this batch ({len(items)}):")
        for _outbox_id, event_id, event_type in items:
            print(f"  {event_id}  {event_type}")
    if attempts:
        print("\nattempts:")
        print_table(("#", "WHEN", "OUTCOME", "STATUS", "LATENCY", "ERROR", "RESPONSE"),
                    [(str(a.number), when(a.started_at, current), a.outcome.value,
                      "-" if a.status is None else str(a.status), f"{a.latency_ms:.0f} ms",
                      printable(a.error or "-"), printable((a.response or "-").replace("\n", " "))[:60])
                     for a in attempts])
    return EXIT_OK


def _cmd_retry(args: argparse.Namespace, config: Config) -> int:
    current = now()
    delivery, active = with_store(config, lambda store: history.retry_delivery(
        store, args.delivery, None, current))
    if args.json:
        print_json({"id": delivery.id, "delivery_id": delivery.uuid, "requeued": True})
    else:
        print(f"requeued delivery {delivery.id} ({delivery.uuid}); "
              f"{_when_sent(config, active, 'it')}")
    return EXIT_OK


COMMANDS: tuple[Command, ...] = (
    Command(("run",), "run the daemon: deliver the outbox to the webhooks", _cmd_run, _args_run),
    Command(("webhooks", "test"), "send a sample event to a webhook now (even inactive)",
            _cmd_test, _args_test),
    Command(("webhooks", "replay"), "requeue a webhook's failed deliveries", _cmd_replay,
            _args_replay),
    Command(("deliveries", "list"), "list deliveries, newest first", _cmd_list, _args_list),
    Command(("deliveries", "show"), "show a delivery with every attempt", _cmd_show, _args_delivery),
    Command(("deliveries", "retry"), "requeue one failed delivery", _cmd_retry, _args_delivery),
)
