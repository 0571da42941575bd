"""``status``: the daemon's health and headline figures, for people and scripts.

Owns the one summary an operator or a script needs: whether a daemon runs on this
state (the pid its lock file ``<database.state>.lock`` holds), its readiness and why
not (``GET /readyz`` of its API at ``api.listen``, asked with the standard library's
HTTP client), the outbox cursor and backlog, the lowest outbox id still needed (the
application may delete rows below it), deliveries per state, retries scheduled and
the next one, failing webhooks (those with a delivery waiting for a later attempt).
Without a daemon, or without its API, the databases alone answer (they are read
while a daemon writes). It must not change anything, nor import the HTTP server or
Prometheus: the command line starts light.
"""

from __future__ import annotations

import argparse
import http.client
import socket
from typing import Any

import orjson

from .. import statelock
from ..config import Config, parse_listen
from ..store.sqlite import Store
from .common import EXIT_OK, Command, add_json, now, paint, print_json, timestamp, when, with_store

#: Seconds the API of a running daemon has to answer /readyz.
READYZ_TIMEOUT_S = 3.0
#: Failing webhooks named in the text output (all of them in --json).
SHOWN_FAILING = 10
_STATUS_COLOURS = {"ok": "green", "starting": "yellow", "stopping": "yellow", "stalled": "red",
                   "not_running": "dim", "unknown": "yellow"}


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over the API's Unix socket (``api.listen = "unix:/path"``)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def _unknown(reason: str) -> dict[str, Any]:
    return {"status": "unknown", "reasons": [reason]}


def ask_readiness(config: Config) -> dict[str, Any]:
    """The running daemon's ``/readyz`` answer (its status and reasons), or why it is unknown."""
    listen = config.api.listen
    if not listen:
        return _unknown('the API is off (api.listen = ""): readiness is served by the API')
    where = parse_listen(listen)
    if isinstance(where, str):
        conn: http.client.HTTPConnection = _UnixConnection(where, READYZ_TIMEOUT_S)
    else:
        host, port = where
        if port == 0:
            return _unknown("api.listen picks a free port (:0): the daemon's api_listening "
                            "log line names it")
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
        conn = http.client.HTTPConnection(host, port, timeout=READYZ_TIMEOUT_S)
    try:
        conn.request("GET", "/readyz")
        response = conn.getresponse()
        body = orjson.loads(response.read())
    except (OSError, http.client.HTTPException, orjson.JSONDecodeError) as exc:
        return _unknown(f"cannot ask the API at {listen}: {exc}")
    finally:
        conn.close()
    if not isinstance(body, dict) or "status" not in body:
        return _unknown(f"the API at {listen} answered /readyz with {response.status}")
    return {"status": str(body["status"]), "reasons": [str(r) for r in body.get("reasons", [])]}


async def _figures(store: Store, current: float) -> dict[str, Any]:
    cursor = await store.cursor()
    newest = await store.outbox_max_id()
    retries = await store.retries_by_webhook(current)
    oldest = await store.oldest_due(current)
    next_at = min((at for _, _, at in retries), default=None)
    return {
        "outbox_cursor": cursor,
        "outbox_backlog": max(0, newest - cursor),
        "outbox_needed_from": await store.outbox_needed_from(),
        "deliveries": await store.counts_by_state(),
        "oldest_pending_s": 0.0 if oldest is None else round(max(0.0, current - oldest), 3),
        "retries": {"scheduled": sum(n for _, n, _ in retries),
                    "next_at": None if next_at is None else timestamp(next_at),
                    "next_in_s": None if next_at is None else round(next_at - current, 3)},
        "failing_webhooks": [{"id": webhook_id, "retries_scheduled": n, "next_at": timestamp(at)}
                             for webhook_id, n, at in sorted(retries, key=lambda r: (-r[1], r[0]))],
    }


def status(config: Config, current: float) -> dict[str, Any]:
    """The whole summary: the daemon (and its readiness), then the databases' figures."""
    pid = statelock.running_pid(config.database.state)
    figures = with_store(config, lambda store: _figures(store, current))
    if pid is None:
        readiness = {"status": "not_running", "reasons": ["no daemon holds this state's lock"]}
    else:
        readiness = ask_readiness(config)
    return {"daemon": {"running": pid is not None, "pid": pid if pid and pid > 0 else None},
            "readiness": readiness, **figures}


def _cmd_status(args: argparse.Namespace, config: Config) -> int:
    current = now()
    summary = status(config, current)
    if args.json:
        print_json(summary)
        return EXIT_OK
    daemon, readiness = summary["daemon"], summary["readiness"]
    state = readiness["status"]
    shown = paint("ready" if state == "ok" else state.replace("_", " "), _STATUS_COLOURS.get(state))
    if daemon["running"]:
        print(f"daemon:              running (pid {daemon['pid'] or '?'}), {shown}")
    else:
        print(f"daemon:              {shown}")
    if daemon["running"]:
        for reason in readiness["reasons"]:
            print(f"                     - {reason}")
    print(f"outbox cursor:       {summary['outbox_cursor']} "
          f"({summary['outbox_backlog']} rows not yet taken in)")
    print(f"outbox needed from:  {summary['outbox_needed_from']} "
          "(rows with a lower id may be deleted)")
    counts = summary["deliveries"]
    print("deliveries:          " + (", ".join(f"{state} {n}" for state, n in sorted(counts.items()))
                                     or "none"))
    if summary["oldest_pending_s"]:
        print(f"oldest due:          {summary['oldest_pending_s']:.0f} s ago, not yet done")
    retries = summary["retries"]
    if retries["scheduled"]:
        next_at = current + retries["next_in_s"]
        print(f"retries:             {retries['scheduled']} scheduled, next {when(next_at, current)}")
    else:
        print("retries:             none scheduled")
    failing = summary["failing_webhooks"]
    names = ", ".join(f"{w['id']} ({w['retries_scheduled']} waiting)" for w in failing[:SHOWN_FAILING])
    more = f", and {len(failing) - SHOWN_FAILING} more" if len(failing) > SHOWN_FAILING else ""
    print(f"failing webhooks:    {len(failing)}{': ' + names + more if failing else ''}")
    return EXIT_OK


COMMANDS = (
    Command(("status",), "the daemon's health and progress: running, ready, backlog, deliveries "
            "per state, retries, failing webhooks", _cmd_status, add_json),
)
