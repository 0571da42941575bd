"""The ``init`` and ``webhooks …`` verbs: the registry, as the customers' UI offers it."""

from __future__ import annotations

import argparse
import os
import sys

import orjson

from .. import registry
from ..api.auth import create_token_file
from ..config import Config, api_token_file
from ..errors import ValidationError
from ..models import Webhook
from ..store.sqlite import Store
from ..views import webhook_json
from .common import (
    EXIT_OK,
    Command,
    add_json,
    add_webhook_id,
    invocation,
    now,
    print_json,
    print_table,
    print_webhook,
    read_secret,
    with_store,
    yes_no,
)

# -- init ------------------------------------------------------------------------------------


def _cmd_init(args: argparse.Namespace, config: Config) -> int:
    version = with_store(config, lambda store: store.migrate(), migrate=True)
    print(f"initialised outbox {os.path.abspath(config.database.outbox)} and state "
          f"{os.path.abspath(config.database.state)} (schema v{version})")
    token_file = api_token_file(config)
    if create_token_file(token_file) is not None:
        print(f"created the management API's token file {os.path.abspath(token_file)} "
              "(mode 0600; send its token as Authorization: Bearer <token>)")
    else:
        print(f"management API tokens: {os.path.abspath(token_file)} (kept as it is)")
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
    add_json(parser)


def _cmd_webhooks_create(args: argparse.Namespace, config: Config) -> int:
    secret = read_secret(args.secret)
    webhook, generated = with_store(config, lambda store: registry.create(
        store, config, organization_id=args.org, url=args.url, name=args.name, secret=secret,
        events=args.events, filter=args.filter, batch=args.batch, retries=args.retries,
        rate_limit=args.rate_limit, now=now()))
    if args.json:
        out = webhook_json(webhook)
        if generated is not None:
            out["generated_secret"] = generated
        print_json(out)
        return EXIT_OK
    print(f"created webhook {webhook.id} ({webhook.name}), inactive")
    if generated is not None:
        print(f"secret: {generated} (shown once: store it now)")
    else:
        print(f"secret: {registry.mask_secret(webhook.secret)} (as given)")
    print(f"send a test event:  {invocation()} webhooks test {webhook.id}")
    print(f"then enable it:     {invocation()} webhooks enable {webhook.id}")
    return EXIT_OK


def _args_webhooks_list(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--org", metavar="ORG", help="only this organization's webhooks")
    add_json(parser)


def _cmd_webhooks_list(args: argparse.Namespace, config: Config) -> int:
    webhooks = with_store(config, lambda store: store.list_webhooks(args.org))
    if args.json:
        # One webhook per line: readable, and still one JSON document.
        lines = [orjson.dumps(webhook_json(w)).decode() for w in webhooks]
        print("[\n" + ",\n".join(lines) + "\n]" if lines else "[]")
        return EXIT_OK
    if not webhooks:
        print("no webhooks")
        return EXIT_OK
    print_table(
        ("ID", "ORG", "ACTIVE", "BATCH", "EVENTS", "URL", "NAME"),
        [(w.id, w.organization_id, yes_no(w.active), yes_no(w.batch), ",".join(w.events),
          w.url, w.name) for w in webhooks],
    )
    return EXIT_OK


def _args_webhooks_show(parser: argparse.ArgumentParser) -> None:
    add_webhook_id(parser)
    add_json(parser)


def _cmd_webhooks_show(args: argparse.Namespace, config: Config) -> int:
    webhook = with_store(config, lambda store: store.get_webhook(args.webhook_id))
    if args.json:
        print_json(webhook_json(webhook))
    else:
        print_webhook(webhook, config)
    return EXIT_OK


def _args_webhooks_update(parser: argparse.ArgumentParser) -> None:
    add_webhook_id(parser)
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
    add_json(parser)


#: The options of ``webhooks update`` that change something, as (dest, field) pairs.
_UPDATE_OPTIONS = (("url", "url"), ("name", "name"), ("secret", "secret"), ("events", "events"),
                   ("filter", "filter"), ("clear_filter", "filter"), ("batch", "batch"),
                   ("retries", "retries"), ("rate_limit", "rate_limit"),
                   ("clear_rate_limit", "rate_limit"))


def _cmd_webhooks_update(args: argparse.Namespace, config: Config) -> int:
    # None is "not given"; False is an answer (--no-batch) unless the option is a switch.
    if all(getattr(args, dest) is None or (dest.startswith("clear_") and not getattr(args, dest))
           for dest, _ in _UPDATE_OPTIONS):
        raise ValidationError("update: nothing to change (give --url, --name, --secret, --events, "
                              "--filter, --batch, --retries, --rate-limit or their opposites)")
    secret = read_secret(args.secret)

    async def work(store: Store) -> tuple[Webhook, Webhook]:
        before = await store.get_webhook(args.webhook_id)
        after = await registry.update(
            store, config, args.webhook_id, url=args.url, name=args.name, secret=secret,
            events=args.events, filter=args.filter, clear_filter=args.clear_filter,
            batch=args.batch, retries=args.retries, rate_limit=args.rate_limit,
            clear_rate_limit=args.clear_rate_limit, now=now())
        return before, after

    before, after = with_store(config, work)
    if args.json:
        print_json(webhook_json(after))
        return EXIT_OK
    fields = dict.fromkeys(field for _, field in _UPDATE_OPTIONS)
    changed = [f for f in fields if getattr(before, f) != getattr(after, f)]
    if changed:
        print(f"updated webhook {after.id} ({after.name}): {', '.join(changed)} changed")
    else:
        print(f"webhook {after.id} ({after.name}) unchanged: the values were already set")
    return EXIT_OK


def _args_webhook_id_json(parser: argparse.ArgumentParser) -> None:
    add_webhook_id(parser)
    add_json(parser)


def _set_active(args: argparse.Namespace, config: Config, active: bool) -> int:
    async def work(store: Store) -> tuple[bool, Webhook]:
        was = (await store.get_webhook(args.webhook_id)).active
        return was, await registry.set_active(store, args.webhook_id, active, now())

    was, webhook = with_store(config, work)
    if args.json:
        print_json(webhook_json(webhook))
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


def _args_webhooks_delete(parser: argparse.ArgumentParser) -> None:
    _args_webhook_id_json(parser)
    parser.add_argument("--yes", "-y", action="store_true",
                        help="do not ask for confirmation (needed when stdin is not a terminal)")


def _confirm_delete(args: argparse.Namespace, config: Config) -> None:
    """Ask on a terminal; refuse without --yes elsewhere (a script must say it means it)."""
    if args.yes:
        return
    webhook = with_store(config, lambda store: store.get_webhook(args.webhook_id))
    if not sys.stdin.isatty():
        raise ValidationError(f"delete: {webhook.id} ({webhook.name}) is not deleted without "
                              "--yes when stdin is not a terminal")
    answer = input(f"delete webhook {webhook.id} ({webhook.name}, {webhook.url}) of "
                   f"{webhook.organization_id}? Its history is kept. [y/N] ")
    if answer.strip().lower() not in ("y", "yes"):
        raise ValidationError(f"delete: {webhook.id} kept (answer y to delete)")


def _cmd_webhooks_delete(args: argparse.Namespace, config: Config) -> int:
    _confirm_delete(args, config)
    webhook = with_store(config, lambda store: registry.delete(store, args.webhook_id, now()))
    if args.json:
        print_json({"deleted": webhook.id})
    else:
        print(f"deleted webhook {webhook.id} ({webhook.name}); its delivery history is kept")
    return EXIT_OK




COMMANDS: tuple[Command, ...] = (
    Command(("init",), "create or migrate the outbox and state databases", _cmd_init),
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
            _cmd_webhooks_delete, _args_webhooks_delete),
)
