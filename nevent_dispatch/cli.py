"""The ``nevent-dispatch`` command: one function per verb, registered in ``COMMANDS``.

Owns argument parsing, the choice of config file (``--config``, else
$NEVENT_DISPATCH_CONFIG, else the embedded defaults), the text and ``--json``
renderings, and the one place where errors become exit codes:

    0    done
    1    refused input or unknown id (any ``DispatchError`` but a config error)
    2    bad command line or bad config
    70   internal error (a bug); traceback with NEVENT_DISPATCH_DEBUG=1
    130  interrupted

It must not validate webhooks (``registry.py`` does) or run SQL (``store.py``
does). It reads the wall clock (``clock.SYSTEM``) once per command and hands
it down. Nothing here prints a secret, except the generated one, once, at
creation.

To add a command: write ``_cmd_name(args, config) -> int`` and, if it takes
options, ``_args_name(parser)``, then add a ``Command`` to ``COMMANDS``. A
command path of two words (``("deliveries", "list")``) puts it under a group
whose help is in ``GROUPS``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson

from . import registry
from .clock import SYSTEM
from .config import CONFIG_ENV, Config, load
from .errors import ConfigError, DispatchError, ValidationError
from .models import Webhook
from .store import Store

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


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    pass


@dataclass(frozen=True, slots=True)
class Command:
    """One verb: where it sits on the command line, its options and its handler."""

    path: tuple[str, ...]
    help: str
    run: Handler
    arguments: Callable[[argparse.ArgumentParser], None] = _no_arguments


# -- shared plumbing -------------------------------------------------------------------------


def _now() -> float:
    """The wall clock, read once per command and handed to everything below."""
    return SYSTEM.time()


def _with_store(config: Config, work: Callable[[Store], Awaitable[T]]) -> T:
    """Open both databases, run ``work`` on them and always close them."""

    async def run() -> T:
        store = await Store.open(config)
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(run())


def _print_json(value: Any, *, indent: bool = True) -> None:
    option = orjson.OPT_INDENT_2 if indent else 0
    sys.stdout.write(orjson.dumps(value, option=option).decode() + "\n")


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def _timestamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _webhook_json(webhook: Webhook) -> dict[str, Any]:
    """A webhook as scripts see it: every field, the secret masked."""
    return {
        "id": webhook.id,
        "organization_id": webhook.organization_id,
        "name": webhook.name,
        "url": webhook.url,
        "secret": registry.mask_secret(webhook.secret),
        "events": list(webhook.events),
        "filter": webhook.filter,
        "batch": webhook.batch,
        "retries": webhook.retries,
        "rate_limit": webhook.rate_limit,
        "active": webhook.active,
        "created_at": webhook.created_at,
        "updated_at": webhook.updated_at,
    }


def _print_webhook(webhook: Webhook, config: Config) -> None:
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
        ("batch", _yes_no(webhook.batch)),
        ("retries", _yes_no(webhook.retries)),
        ("rate limit", rate),
        ("active", _yes_no(webhook.active)),
        ("created", _timestamp(webhook.created_at)),
        ("updated", _timestamp(webhook.updated_at)),
    ]
    width = max(len(label) for label, _ in rows) + 2
    for label, value in rows:
        print(f"{label + ':':<{width}}{value}")


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    for row in (header, *rows):
        line = "  ".join(f"{cell:<{width}}" for cell, width in zip(row, widths, strict=True))
        print(line.rstrip())


def _read_secret(value: str | None) -> str | None:
    """``--secret -`` reads the secret from stdin, keeping it out of the process list."""
    if value != "-":
        return value
    return sys.stdin.readline().rstrip("\r\n")


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def _add_webhook_id(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("webhook_id", metavar="ID", help="webhook id (wh_…)")


# -- init ------------------------------------------------------------------------------------


def _cmd_init(args: argparse.Namespace, config: Config) -> int:
    version = _with_store(config, lambda store: store.migrate())
    print(f"initialised outbox {os.path.abspath(config.database.outbox)} and state "
          f"{os.path.abspath(config.database.state)} (schema v{version})")
    return EXIT_OK


# -- webhooks --------------------------------------------------------------------------------


def _args_webhooks_create(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--org", required=True, metavar="ORG", help="organization id")
    parser.add_argument("--url", required=True, help="https:// URL the events are POSTed to")
    parser.add_argument("--name", required=True, help="descriptive name")
    parser.add_argument("--secret", metavar="S",
                        help="signing secret ('-' reads it from stdin); generated when omitted")
    parser.add_argument("--events", default=registry.ALL_EVENTS, metavar="SPEC",
                        help="comma-separated types or patterns: '*' (default), 'purchase.*', "
                             "'fan.created'")
    parser.add_argument("--filter", metavar="JSON", help="Mongo-style filter document")
    parser.add_argument("--batch", action="store_true", help="send up to 100 events per request")
    parser.add_argument("--no-retries", dest="retries", action="store_false",
                        help="do not retry failed deliveries")
    parser.add_argument("--rate-limit", type=int, metavar="N",
                        help="events per minute (default: rate_limit.events_per_minute)")
    _add_json(parser)


def _cmd_webhooks_create(args: argparse.Namespace, config: Config) -> int:
    secret = _read_secret(args.secret)
    webhook, generated = _with_store(config, lambda store: registry.create(
        store, config, organization_id=args.org, url=args.url, name=args.name, secret=secret,
        events=args.events, filter=args.filter, batch=args.batch, retries=args.retries,
        rate_limit=args.rate_limit, now=_now()))
    if args.json:
        out = _webhook_json(webhook)
        if generated is not None:
            out["generated_secret"] = generated
        _print_json(out)
        return EXIT_OK
    print(f"created webhook {webhook.id} ({webhook.name}), inactive")
    if generated is not None:
        print(f"secret: {generated} (shown once: store it now)")
    else:
        print(f"secret: {registry.mask_secret(webhook.secret)} (as given)")
    print(f"send a test event:  {PROG} webhooks test {webhook.id}")
    print(f"then enable it:     {PROG} webhooks enable {webhook.id}")
    return EXIT_OK


def _args_webhooks_list(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--org", metavar="ORG", help="only this organization's webhooks")
    _add_json(parser)


def _cmd_webhooks_list(args: argparse.Namespace, config: Config) -> int:
    webhooks = _with_store(config, lambda store: store.list_webhooks(args.org))
    if args.json:
        # One webhook per line: readable, and still one JSON document.
        lines = [orjson.dumps(_webhook_json(w)).decode() for w in webhooks]
        print("[\n" + ",\n".join(lines) + "\n]" if lines else "[]")
        return EXIT_OK
    if not webhooks:
        print("no webhooks")
        return EXIT_OK
    _print_table(
        ("ID", "ORG", "ACTIVE", "BATCH", "EVENTS", "URL", "NAME"),
        [(w.id, w.organization_id, _yes_no(w.active), _yes_no(w.batch), ",".join(w.events),
          w.url, w.name) for w in webhooks],
    )
    return EXIT_OK


def _args_webhooks_show(parser: argparse.ArgumentParser) -> None:
    _add_webhook_id(parser)
    _add_json(parser)


def _cmd_webhooks_show(args: argparse.Namespace, config: Config) -> int:
    webhook = _with_store(config, lambda store: store.get_webhook(args.webhook_id))
    if args.json:
        _print_json(_webhook_json(webhook))
    else:
        _print_webhook(webhook, config)
    return EXIT_OK


def _args_webhooks_update(parser: argparse.ArgumentParser) -> None:
    _add_webhook_id(parser)
    parser.add_argument("--url", help="new https:// URL")
    parser.add_argument("--name", help="new descriptive name")
    parser.add_argument("--secret", metavar="S", help="new signing secret ('-' reads stdin)")
    parser.add_argument("--events", metavar="SPEC", help="new subscription (replaces the old)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--filter", metavar="JSON", help="new filter document")
    group.add_argument("--no-filter", dest="clear_filter", action="store_true",
                       help="remove the filter")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--batch", dest="batch", action="store_const", const=True,
                       help="turn batch mode on")
    group.add_argument("--no-batch", dest="batch", action="store_const", const=False,
                       help="turn batch mode off")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--retries", dest="retries", action="store_const", const=True,
                       help="turn automatic retries on")
    group.add_argument("--no-retries", dest="retries", action="store_const", const=False,
                       help="turn automatic retries off")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--rate-limit", type=int, metavar="N", help="events per minute")
    group.add_argument("--default-rate-limit", dest="clear_rate_limit", action="store_true",
                       help="use rate_limit.events_per_minute again")
    _add_json(parser)


#: The options of ``webhooks update`` that change something, as (dest, field) pairs.
_UPDATE_OPTIONS = (("url", "url"), ("name", "name"), ("secret", "secret"), ("events", "events"),
                   ("filter", "filter"), ("clear_filter", "filter"), ("batch", "batch"),
                   ("retries", "retries"), ("rate_limit", "rate_limit"),
                   ("clear_rate_limit", "rate_limit"))


def _cmd_webhooks_update(args: argparse.Namespace, config: Config) -> int:
    if all(getattr(args, dest) in (None, False) for dest, _ in _UPDATE_OPTIONS):
        raise ValidationError("update: nothing to change (give --url, --name, --secret, --events, "
                              "--filter, --batch, --retries, --rate-limit or their opposites)")
    secret = _read_secret(args.secret)

    async def work(store: Store) -> tuple[Webhook, Webhook]:
        before = await store.get_webhook(args.webhook_id)
        after = await registry.update(
            store, config, args.webhook_id, url=args.url, name=args.name, secret=secret,
            events=args.events, filter=args.filter, clear_filter=args.clear_filter,
            batch=args.batch, retries=args.retries, rate_limit=args.rate_limit,
            clear_rate_limit=args.clear_rate_limit, now=_now())
        return before, after

    before, after = _with_store(config, work)
    if args.json:
        _print_json(_webhook_json(after))
        return EXIT_OK
    fields = dict.fromkeys(field for _, field in _UPDATE_OPTIONS)
    changed = [f for f in fields if getattr(before, f) != getattr(after, f)]
    if changed:
        print(f"updated webhook {after.id} ({after.name}): {', '.join(changed)} changed")
    else:
        print(f"webhook {after.id} ({after.name}) unchanged: the values were already set")
    return EXIT_OK


def _args_webhook_id_json(parser: argparse.ArgumentParser) -> None:
    _add_webhook_id(parser)
    _add_json(parser)


def _set_active(args: argparse.Namespace, config: Config, active: bool) -> int:
    async def work(store: Store) -> tuple[bool, Webhook]:
        was = (await store.get_webhook(args.webhook_id)).active
        return was, await registry.set_active(store, args.webhook_id, active, _now())

    was, webhook = _with_store(config, work)
    if args.json:
        _print_json(_webhook_json(webhook))
        return EXIT_OK
    verb = "enabled" if active else "disabled"
    if was == active:
        print(f"webhook {webhook.id} ({webhook.name}) was already {verb}")
    elif active:
        print(f"enabled webhook {webhook.id} ({webhook.name}): it now receives "
              f"{', '.join(webhook.events)} events of {webhook.organization_id}")
    else:
        print(f"disabled webhook {webhook.id} ({webhook.name}): it receives no new events")
    return EXIT_OK


def _cmd_webhooks_enable(args: argparse.Namespace, config: Config) -> int:
    return _set_active(args, config, True)


def _cmd_webhooks_disable(args: argparse.Namespace, config: Config) -> int:
    return _set_active(args, config, False)


def _cmd_webhooks_delete(args: argparse.Namespace, config: Config) -> int:
    webhook = _with_store(config, lambda store: registry.delete(store, args.webhook_id, _now()))
    if args.json:
        _print_json({"deleted": webhook.id})
    else:
        print(f"deleted webhook {webhook.id} ({webhook.name}); its delivery history is kept")
    return EXIT_OK


# -- registration ----------------------------------------------------------------------------

#: Help of the command groups (first word of a two-word command).
GROUPS: dict[str, str] = {
    "webhooks": "create, inspect and change webhooks",
    # "deliveries": "inspect the delivery history and replay failed deliveries",
}

#: Every command, in the order ``--help`` lists them.
COMMANDS: tuple[Command, ...] = (
    Command(("init",), "create or migrate the outbox and state databases", _cmd_init),
    # Command(("run",), ...)                  the daemon
    # Command(("emit",), ...)                 insert a sample event into the outbox
    # Command(("listen",), ...)               receive, verify and print webhooks locally
    # Command(("demo",), ...)
    Command(("webhooks", "create"), "register a new webhook (created inactive)",
            _cmd_webhooks_create, _args_webhooks_create),
    Command(("webhooks", "list"), "list webhooks", _cmd_webhooks_list, _args_webhooks_list),
    Command(("webhooks", "show"), "show one webhook (secret masked)", _cmd_webhooks_show,
            _args_webhooks_show),
    Command(("webhooks", "update"), "change a webhook's settings", _cmd_webhooks_update,
            _args_webhooks_update),
    Command(("webhooks", "enable"), "start sending events to a webhook", _cmd_webhooks_enable,
            _args_webhook_id_json),
    Command(("webhooks", "disable"), "stop sending events to a webhook", _cmd_webhooks_disable,
            _args_webhook_id_json),
    Command(("webhooks", "delete"), "remove a webhook (its history stays)",
            _cmd_webhooks_delete, _args_webhook_id_json),
    # Command(("webhooks", "test"), ...)      send a sample event to a webhook
    # Command(("webhooks", "replay"), ...)    replay a webhook's failed deliveries
    # Command(("deliveries", "list"), ...), Command(("deliveries", "show"), ...),
    # Command(("deliveries", "replay"), ...)
)


def build_parser(commands: Sequence[Command] = COMMANDS) -> argparse.ArgumentParser:
    """The argument parser: ``--config`` is accepted before or after the command."""
    # Sub-parsers must not overwrite a --config given before the command with their default.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                        help=f"TOML config file (default: ${CONFIG_ENV}, else built-in defaults)")

    parser = argparse.ArgumentParser(
        prog=PROG, description="Webhook delivery daemon of the Nevent platform.")
    parser.add_argument("--config", metavar="PATH", default=None,
                        help=f"TOML config file (default: ${CONFIG_ENV}, else built-in defaults)")
    top = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction[argparse.ArgumentParser]] = {}
    for command in commands:
        *group_path, verb = command.path
        actions = top
        if group_path:
            (group,) = group_path
            if group not in groups:
                group_parser = top.add_parser(group, help=GROUPS.get(group), parents=[common],
                                              description=GROUPS.get(group))
                groups[group] = group_parser.add_subparsers(
                    title="commands", metavar="COMMAND", required=True)
            actions = groups[group]
        sub = actions.add_parser(verb, help=command.help, description=command.help,
                                 parents=[common])
        command.arguments(sub)
        sub.set_defaults(handler=command.run)
    return parser


def _fail(message: str) -> None:
    line = " ".join(message.split("\n"))
    print(f"{PROG}: {line}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit status (usage errors exit 2 through argparse)."""
    args = build_parser().parse_args(argv)
    try:
        config = load(args.config)
        return int(args.handler(args, config))
    except ConfigError as exc:
        _fail(str(exc))
        return EXIT_USAGE
    except DispatchError as exc:
        _fail(str(exc))
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:
        if os.environ.get(DEBUG_ENV) == "1":
            traceback.print_exc()
        _fail(f"internal error: {type(exc).__name__}: {exc}")
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
