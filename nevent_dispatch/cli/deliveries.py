"""The daemon and the history: ``run``, ``webhooks test|replay``, ``deliveries …``.

Owns the terminal and JSON renderings of deliveries and attempts, and the
parsing of ``--since``. It must not deliver anything itself: ``run`` hands
over to ``daemon.py`` and ``webhooks test`` to ``dispatcher.send_test``.
"""

from __future__ import annotations

import argparse
import re
from datetime import datetime
from typing import Any

from .. import daemon, logs
from ..catalog import EVENT_TYPES
from ..config import Config
from ..errors import NotFound, ValidationError
from ..models import Attempt, Delivery, State
from ..pipeline.attempts import send_test
from ..store.sqlite import Store
from .common import (
    EXIT_OK,
    EXIT_REFUSED,
    Command,
    add_json,
    add_webhook_id,
    now,
    print_json,
    print_table,
    with_store,
)

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, current: float) -> float:
    """``30m``, ``2h``, ``7d`` ago; a unix time; or an ISO 8601 date/time."""
    text = text.strip()
    match = _DURATION.match(text)
    if match:
        return current - float(match[1]) * _UNITS[match[2]]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError(
            f"since: expected a duration like 30m, 2h or 7d, a unix time or an ISO date, "
            f"got {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.astimezone()
    return moment.timestamp()


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


def delivery_json(d: Delivery) -> dict[str, Any]:
    return {
        "id": d.id, "delivery_id": d.uuid, "webhook_id": d.webhook_id, "kind": d.kind.value,
        "event_type": d.event_type, "event_id": d.event_id, "event_count": d.event_count,
        "state": d.state.value, "attempts": d.attempts, "next_at": d.next_at,
        "created_at": d.created_at, "updated_at": d.updated_at, "last_status": d.last_status,
        "last_error": d.last_error,
    }


def attempt_json(a: Attempt) -> dict[str, Any]:
    return {"number": a.number, "started_at": a.started_at, "latency_ms": a.latency_ms,
            "outcome": a.outcome.value, "status": a.status, "error": a.error,
            "response": a.response}


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


def _cmd_run(args: argparse.Namespace, config: Config) -> int:
    logs.configure(fmt=config.log.format, level=config.log.level)
    daemon.run(config, until_idle=args.until_idle)
    return EXIT_OK


# -- webhooks test / replay ----------------------------------------------------------------------


def _args_test(parser: argparse.ArgumentParser) -> None:
    add_webhook_id(parser)
    parser.add_argument("--type", default="purchase.completed", metavar="TYPE",
                        help="event type of the sample (default purchase.completed)")
    add_json(parser)


def _cmd_test(args: argparse.Namespace, config: Config) -> int:
    if args.type not in EVENT_TYPES and args.type not in config.events.extra_types:
        raise ValidationError(f"type: unknown event type {args.type!r} "
                              f"(one of: {', '.join(EVENT_TYPES)})")
    logs.configure(fmt=config.log.format, level="warning")

    async def work(store: Store) -> tuple[Delivery, Any]:
        webhook = await store.get_webhook(args.webhook_id)
        return await send_test(config, store, webhook, args.type)

    delivery, result = with_store(config, work)
    if args.json:
        print_json({**delivery_json(delivery), "latency_ms": round(result.latency_ms, 1),
                    "outcome": result.outcome.value, "response": result.response})
    else:
        status = result.status if result.status is not None else result.outcome.value
        print(f"sent test {args.type} to {args.webhook_id}: {status} in "
              f"{result.latency_ms:.0f} ms (delivery {delivery.uuid})")
        if result.error:
            print(f"error: {result.error}")
        if result.response:
            print(f"response: {result.response[:200]}")
    return EXIT_OK if delivery.state is State.DELIVERED else EXIT_REFUSED


def _args_replay(parser: argparse.ArgumentParser) -> None:
    add_webhook_id(parser)
    parser.add_argument("--status", default="failed", choices=["failed"],
                        help="which deliveries to replay (failed)")
    parser.add_argument("--since", metavar="T", help="only those created since T (30m, 2h, 7d, date)")
    add_json(parser)


def _cmd_replay(args: argparse.Namespace, config: Config) -> int:
    current = now()
    since = parse_since(args.since, current) if args.since else 0.0

    async def work(store: Store) -> tuple[bool, int]:
        active = (await store.get_webhook(args.webhook_id)).active
        return active, await store.replay_webhook(args.webhook_id, args.status, since, current)

    active, count = with_store(config, work)
    if args.json:
        print_json({"webhook_id": args.webhook_id, "replayed": count, "webhook_active": active})
    else:
        print(f"requeued {count} {args.status} deliveries of {args.webhook_id} "
              f"(same delivery ids; {_when_sent(active, 'them')})")
    return EXIT_OK


def _when_sent(active: bool, what: str) -> str:
    """When requeued work goes out: only active webhooks receive anything."""
    if active:
        return f"the running daemon sends {what} now"
    return f"the webhook is disabled: {what} will be sent once it is enabled"


# -- deliveries ------------------------------------------------------------------------------------


def _args_list(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--webhook", metavar="ID", help="only this webhook's deliveries")
    parser.add_argument("--status", choices=[s.value for s in State], help="only this state")
    parser.add_argument("--since", metavar="T", help="created since T (30m, 2h, 7d, date)")
    parser.add_argument("--limit", type=int, default=50, metavar="N", help="at most N (default 50)")
    add_json(parser)


def _cmd_list(args: argparse.Namespace, config: Config) -> int:
    current = now()
    if args.limit < 1:
        raise ValidationError(f"limit: must be >= 1, got {args.limit}")
    since = parse_since(args.since, current) if args.since else None
    deliveries = with_store(config, lambda store: store.list_deliveries(
        webhook_id=args.webhook, state=args.status, since=since, limit=args.limit))
    if args.json:
        print_json([delivery_json(d) for d in deliveries])
        return EXIT_OK
    if not deliveries:
        print("no deliveries")
        return EXIT_OK
    print_table(
        ("ID", "DELIVERY", "WEBHOOK", "TYPE", "EVENTS", "STATE", "TRIES", "LAST", "CREATED", "NEXT"),
        [(str(d.id), d.uuid, d.webhook_id or "-", d.event_type, str(d.event_count), d.state.value,
          str(d.attempts), _last(d), relative(d.created_at, current),
          relative(d.next_at, current)) for d in deliveries])
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
        print_json({**delivery_json(delivery), "attempts": [attempt_json(a) for a in attempts],
                    "events": [{"id": i[1], "type": i[2]} for i in items]})
        return EXIT_OK
    rows = [("delivery", f"{delivery.id} ({delivery.uuid})"),
            ("webhook", delivery.webhook_id or "- (rejected before matching)"),
            ("kind", delivery.kind.value), ("type", delivery.event_type),
            ("event", delivery.event_id or f"{delivery.event_count} events"),
            ("state", delivery.state.value), ("attempts", str(delivery.attempts)),
            ("created", relative(delivery.created_at, current)),
            ("next attempt", relative(delivery.next_at, current))]
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
                    [(str(a.number), relative(a.started_at, current), a.outcome.value,
                      "-" if a.status is None else str(a.status), f"{a.latency_ms:.0f} ms",
                      printable(a.error or "-"), printable((a.response or "-").replace("\n", " "))[:60])
                     for a in attempts])
    return EXIT_OK


def _cmd_retry(args: argparse.Namespace, config: Config) -> int:
    current = now()

    async def work(store: Store) -> tuple[Delivery, bool, bool]:
        delivery = await store.get_delivery(args.delivery)
        try:
            active = (await store.get_webhook(delivery.webhook_id or "")).active
        except NotFound:  # deleted since: the replay stays pending with nobody to send it to
            active = False
        return delivery, await store.replay(delivery.id, current), active

    delivery, done, active = with_store(config, work)
    if not done:
        raise ValidationError(f"delivery {delivery.id} is {delivery.state.value}: only failed "
                              "deliveries can be retried")
    if args.json:
        print_json({"id": delivery.id, "delivery_id": delivery.uuid, "requeued": True})
    else:
        print(f"requeued delivery {delivery.id} ({delivery.uuid}); {_when_sent(active, 'it')}")
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
