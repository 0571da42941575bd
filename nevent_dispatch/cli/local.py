"""Local testing without tunnels: ``emit``, ``listen`` and ``demo``.

Owns the commands a newcomer runs first. ``emit`` goes through ``publish()``
like the application; ``listen`` is ``receiver.serve``; ``demo`` wires both to
the real dispatcher. It must not reimplement any of them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import secrets
import shutil
import signal
import socket
import sqlite3
import sys
from pathlib import Path

import orjson

from .. import history, logs, registry, statelock
from ..catalog import EVENT_TYPES
from ..config import Config, parse_duration
from ..errors import ConfigError, DispatchError, ValidationError
from ..models import State
from ..pipeline.matcher import type_predicate
from ..store.sqlite import Store
from ..wire.samples import sample_data
from .common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    Command,
    add_json,
    bounded,
    invocation,
    now,
    print_json,
)


def _args_emit(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("type", metavar="TYPE", help="event type, e.g. purchase.completed")
    parser.add_argument("--org", required=True, metavar="ORG", help="organization id")
    parser.add_argument("--data", metavar="JSON",
                        help="the event's data object (default: a realistic sample of TYPE)")
    parser.add_argument("--count", type=bounded(int, 1, 10_000_000), default=1, metavar="N",
                        help="insert N events")
    add_json(parser)


def _cmd_emit(args: argparse.Namespace, config: Config) -> int:
    from ..publish import publish

    # A typo would be delivered to every '*' webhook; types beyond the 17 go in events.extra_types.
    registry.validate_event_type(args.type, config.events.extra_types)
    registry.validate_org(args.org)
    if args.data is None:
        data = sample_data(args.type)
    else:
        try:
            data = orjson.loads(args.data)
        except orjson.JSONDecodeError as exc:
            raise ValidationError(f"data: not valid JSON: {exc}") from None
    # The outbox table must exist: `init` creates it. Refused, never migrated, if it has not run.
    receivers = asyncio.run(_active_webhooks(config, args.org, args.type))
    conn = sqlite3.connect(config.database.outbox, timeout=config.database.busy_timeout)
    try:
        ids = []
        with conn:
            for _ in range(args.count):
                ids.append(publish(conn, args.type, args.org, data))
    finally:
        conn.close()
    event_ids = asyncio.run(_event_ids(config, ids[0], ids[-1]))
    if args.json:
        print_json({"type": args.type, "organization_id": args.org, "outbox_ids": ids[:1000],
                    "event_ids": event_ids, "count": len(ids), "active_webhooks": receivers})
        return EXIT_OK
    shown = (f"{event_ids[0]}, outbox id {ids[0]}" if len(ids) == 1 else
             f"{event_ids[0]}..{event_ids[-1]}, outbox ids {ids[0]}..{ids[-1]}")
    print(f"emitted {len(ids)} {args.type} for {args.org} ({shown})")
    if not receivers:
        print(f"warning: no active webhook of {args.org} receives {args.type}: nothing will be "
              "sent (webhooks receive only what is emitted while they are active)",
              file=sys.stderr)
    return EXIT_OK


async def _active_webhooks(config: Config, org: str, event_type: str) -> list[str]:
    """The ids of the organization's active webhooks subscribed to ``event_type``."""
    store = await Store.open(config, migrate=False)
    try:
        webhooks = await store.list_webhooks(org)
    finally:
        await store.close()
    return [w.id for w in webhooks if w.active and type_predicate(w.events)(event_type)]


async def _event_ids(config: Config, first: int, last: int) -> list[str]:
    store = await Store.open(config, migrate=False)
    try:
        return await store.outbox_event_ids(first, last)
    finally:
        await store.close()


#: ``listen``'s port (the receiver's default, without importing aiohttp's server for --help).
LISTEN_PORT = 8787


def _statuses(text: str) -> list[int]:
    """``500,500,200``: final statuses (1xx are interim answers: the receiver refuses them)."""
    try:
        codes = [int(code) for code in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected codes like 500,200, got {text!r}") from None
    if not all(200 <= code <= 599 for code in codes):
        raise argparse.ArgumentTypeError(f"codes must be 200..599, got {text!r}")
    return codes


def _args_listen(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--port", type=bounded(int, 0, 65535), default=LISTEN_PORT,
                        help=f"port 0..65535 (default {LISTEN_PORT})")
    parser.add_argument("--secret", metavar="S", help="verify signatures with this secret")
    parser.add_argument("--tls", action="store_true",
                        help="serve HTTPS with a generated local certificate")
    parser.add_argument("--status", metavar="CODES", type=_statuses,
                        help="answer these statuses in turn, e.g. 500,500,200")
    parser.add_argument("--fail-rate", type=bounded(float, 0, 1), default=0.0, metavar="P",
                        help="answer 500 with probability P (0..1)")
    parser.add_argument("--json", action="store_true", help="one JSON object per request")


def _cmd_listen(args: argparse.Namespace, config: Config) -> int:
    from .. import receiver

    cert_dir = Path(config.database.state).parent / "listen-tls"
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(receiver.serve(host=args.host, port=args.port, secret=args.secret,
                                   tls=args.tls, cert_dir=cert_dir, statuses=args.status,
                                   fail_rate=args.fail_rate, json_lines=args.json))
    return EXIT_OK


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _args_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--org", default=None,
                        help="organization of the demo events (default: a new one per run)")
    parser.add_argument("--max-wait", default="60s", metavar="T",
                        help="give up after T (default 60s)")


def _cmd_demo(args: argparse.Namespace, config: Config) -> int:
    try:
        max_wait = parse_duration("max-wait", args.max_wait)
    except ConfigError as exc:
        raise ValidationError(str(exc)) from None
    org = args.org or f"org_demo_{secrets.token_hex(4)}"
    registry.validate_org(org)
    # A dispatcher on the state, like `run`: it holds the state lock (and may migrate).
    with statelock.hold(config.database.state):
        return asyncio.run(_demo(org, config, max_wait or 60.0))


async def _demo(org: str, config: Config, max_wait: float) -> int:
    """Receiver, webhook, one event of each type, the daemon until they are delivered; on
    every way out (done, timeout, error, Ctrl-C, SIGTERM) the webhook is deleted, so no
    later run sends to the receiver that is gone."""
    from .. import receiver
    from ..pipeline.dispatcher import Dispatcher
    from ..publish import publish

    logs.configure(fmt="console", level="warning", stream=io.StringIO())
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    signals: list[str] = []

    def stop(signum: signal.Signals) -> None:
        signals.append(signum.name)
        main.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop, signum)
    tls = shutil.which("openssl") is not None
    cert_dir = Path(config.database.state).parent / "listen-tls"
    ca_file = None
    if tls:
        _, ca_file = await asyncio.to_thread(receiver.make_ssl_context, cert_dir)
    # The demo talks to 127.0.0.1: allow it for this command only.
    demo_config = config.replace(delivery={"allow_private_networks": True, "allow_http": not tls,
                                           "ca_file": ca_file})
    secret = registry.generate_secret()
    printed = io.StringIO()
    ready, stopping = asyncio.Event(), asyncio.Event()
    port = _free_port()
    server = asyncio.create_task(receiver.serve(
        port=port, secret=secret, tls=tls, cert_dir=cert_dir, out=printed, ready=ready,
        stop=stopping))
    store = await Store.open(demo_config)
    webhook = None
    dispatcher = Dispatcher(demo_config, store)
    running: asyncio.Task[None] | None = None
    try:
        await asyncio.wait_for(ready.wait(), 30)
        url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/webhooks/nevent"
        webhook, _ = await registry.create(store, demo_config, organization_id=org, url=url,
                                           name="demo receiver", secret=secret, now=now())
        await registry.set_active(store, webhook.id, True, now())
        print(f"1. local receiver on {url} (signature check on)")
        print(f"2. webhook {webhook.id} created and enabled for {org} (deleted at the end)")
        conn = sqlite3.connect(demo_config.database.outbox, timeout=config.database.busy_timeout)
        try:
            with conn:
                for event_type in EVENT_TYPES:
                    publish(conn, event_type, org, sample_data(event_type))
        finally:
            conn.close()
        print(f"3. emitted one event of each of the {len(EVENT_TYPES)} types")
        print(f"4. running the daemon until the {len(EVENT_TYPES)} deliveries are done "
              f"(at most {max_wait:g} s)...", flush=True)
        running = asyncio.create_task(dispatcher.run())
        done = await _wait_delivered(store, webhook.id, len(EVENT_TYPES), max_wait, running)
        print(f"\n{printed.getvalue().rstrip()}")
        if done < len(EVENT_TYPES):
            raise DispatchError(f"demo: {done} of {len(EVENT_TYPES)} delivered after "
                                f"{max_wait:g} s (--max-wait); see the attempts with: "
                                f"`nevent-dispatch deliveries list --webhook {webhook.id}`")
        print(f"\ndelivered {done} of {len(EVENT_TYPES)}; see them with: "
              f"{invocation()} deliveries list --webhook {webhook.id}")
    except asyncio.CancelledError:
        if not signals:
            raise
        print(f"\ndemo: stopped by {signals[0]}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):  # a second signal must not cut tidying
            loop.add_signal_handler(signum, signals.append, signum.name)
        dispatcher.stop()
        if running is not None:
            await asyncio.gather(running, return_exceptions=True)
        stopping.set()
        await asyncio.gather(server, return_exceptions=True)
        if webhook is not None:
            await registry.delete(store, webhook.id, now())
        await store.close()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    return EXIT_OK


async def _wait_delivered(store: Store, webhook_id: str, count: int, max_wait: float,
                          running: asyncio.Task[None]) -> int:
    """Wait until the webhook's ``count`` deliveries are delivered (or ``max_wait``); how
    many were. Progress on a terminal; a dead pipeline is raised, not waited for."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_wait
    tty = sys.stdout.isatty()
    delivered = 0
    while True:
        page = await history.list_deliveries(store, webhook_id=webhook_id, limit=count)
        delivered = sum(d.state is State.DELIVERED for d in page.deliveries)
        if tty:
            print(f"\r   {delivered}/{count} delivered", end="", flush=True)
        if delivered >= count or loop.time() >= deadline:
            break
        if running.done():
            running.result()  # raises what stopped it
            break
        await asyncio.sleep(0.1)
    if tty:
        print()
    return delivered


COMMANDS: tuple[Command, ...] = (
    Command(("emit",), "insert an event into the outbox (a realistic sample by default)",
            _cmd_emit, _args_emit),
    Command(("listen",), "receive, verify and print webhooks locally", _cmd_listen, _args_listen),
    Command(("demo",), "see it work: local receiver, webhook, 17 events, delivered",
            _cmd_demo, _args_demo),
)
