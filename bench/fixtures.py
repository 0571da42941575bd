"""The files a daemon run starts from: its config, its webhooks, its outbox.

Owns the TOML config of a run, the webhook layouts and the outboxes. Webhooks
are created in-process with ``Store`` and ``registry.create`` — the CLI costs
~0.3 s per webhook, and the benchmark measures the daemon, not the registry —
once per layout into a template state database that each run copies, so every
run starts from the same state. Outboxes are filled with the application's own
insert statement, ``executemany`` in one transaction. It measures nothing.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import orjson

from nevent_dispatch import registry
from nevent_dispatch.config import load
from nevent_dispatch.store.sqlite import Store
from nevent_dispatch.store.sqlite.sql import OUTBOX_SCHEMA, PUBLISH

from .payload import EVENT_TYPE, Payloads, org_name

#: The highest per-webhook limit the config accepts (``rate_limit.events_per_minute``):
#: no figure measures the token bucket.
UNLIMITED_PER_MINUTE = registry.MAX_RATE_LIMIT


@dataclass(frozen=True, slots=True)
class Layout:
    """Webhooks of a run: (organization, url, batch mode) each."""

    name: str
    webhooks: tuple[tuple[str, str, bool], ...]


def one_per_org(name: str, count: int, url: Callable[[int], str], *,
                batch: bool = False) -> Layout:
    """``count`` organizations with one webhook each (events spread by organization)."""
    return Layout(name, tuple((org_name(i), url(i), batch) for i in range(count)))


def one_org(name: str, count: int, url: Callable[[int], str]) -> Layout:
    """One organization with ``count`` webhooks (each event fans out to all of them)."""
    return Layout(name, tuple((org_name(0), url(i), False) for i in range(count)))


def _toml(value: object) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(path: Path, *, outbox: Path, state: Path, ca_file: Path, log_level: str,
                 max_in_flight: int = 256, per_webhook: int = 16,
                 overrides: Mapping[str, str] | None = None) -> Path:
    """The config of one run: the defaults, but for what loopback and the benchmark need.

    ``overrides`` maps dotted keys to TOML values (``{"outbox.poll_interval": "0.005"}``)
    and wins over everything else.
    """
    tables: dict[str, dict[str, str]] = {
        "database": {"outbox": _toml(outbox), "state": _toml(state)},
        # The receivers are on 127.0.0.1 with a certificate of the benchmark's own CA.
        "delivery": {"allow_private_networks": "true", "ca_file": _toml(ca_file),
                     "max_in_flight": str(max_in_flight),
                     "max_in_flight_per_webhook": str(per_webhook)},
        # The highest accepted values: the benchmark measures delivery, not the limiter.
        "rate_limit": {"events_per_minute": str(UNLIMITED_PER_MINUTE),
                       "burst": str(UNLIMITED_PER_MINUTE)},
        "log": {"level": _toml(log_level)},
        # A free port: the benchmark must not contend with a daemon running on the default.
        "api": {"listen": _toml("127.0.0.1:0")},
    }
    for dotted, value in (overrides or {}).items():
        table, _, key = dotted.partition(".")
        tables.setdefault(table, {})[key] = value
    lines = ["# One benchmark run of nevent-dispatch (written by bench/fixtures.py)."]
    for table, keys in tables.items():
        lines += ["", f"[{table}]", *(f"{key} = {value}" for key, value in keys.items())]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


async def _create(config_path: Path, layout: Layout) -> None:
    config = load(config_path)
    store = await Store.open(config)
    try:
        for index, (org, url, batch) in enumerate(layout.webhooks):
            now = time.time()
            webhook, _ = await registry.create(
                store, config, organization_id=org, url=url, name=f"bench {index}",
                batch=batch, now=now)
            await registry.set_active(store, webhook.id, True, now)
    finally:
        await store.close()


#: The management API token of every benchmark daemon (``token`` next to its state).
API_TOKEN = "bench-token-0123456789abcdef"


def write_token(state: Path) -> Path:
    """The token file ``init`` would have made next to ``state`` (the API reads it)."""
    path = state.with_name("token")
    path.write_text(API_TOKEN + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


def checkpoint(path: Path) -> None:
    """Fold the WAL into the main file, so that copying the file copies the database."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def state_template(folder: Path, layout: Layout, ca_file: Path) -> Path:
    """A state database holding ``layout``'s webhooks, active; made once per layout."""
    folder.mkdir(parents=True, exist_ok=True)
    state = folder / f"{layout.name}.state.db"
    if state.exists():
        return state
    scratch = folder / f"{layout.name}.scratch"
    scratch.mkdir(exist_ok=True)
    config = write_config(scratch / "config.toml", outbox=scratch / "outbox.db", state=state,
                          ca_file=ca_file, log_level="warning")
    asyncio.run(_create(config, layout))
    checkpoint(state)
    shutil.rmtree(scratch)
    return state


def copy_state(template: Path, dest: Path) -> Path:
    shutil.copyfile(template, dest)
    return dest


def add_webhooks(state: Path, count: int, *, first_org: int, per_org: int, url: str,
                 filter_every: int = 2, filter_doc: object = None) -> list[str]:
    """Add ``count`` active webhooks, ``per_org`` to an organization from ``first_org`` on,
    every ``filter_every``-th with ``filter_doc``; their ids.

    Rows as ``registry.create`` and ``set_active`` leave them, written by the store's own
    statement in one transaction (``registry.create`` would take minutes for 50,000); the
    triggers record every one as a change, as they would.
    """
    from nevent_dispatch.pipeline.filters import compile_filter
    from nevent_dispatch.store.sqlite.sql import QUERIES

    if filter_doc is not None:
        compile_filter(filter_doc)  # a document the daemon refuses would measure nothing
    now = time.time()
    ids = [f"wh_{n:016x}" for n in range(1, count + 1)]
    events = orjson.dumps(["*"]).decode()
    text = None if filter_doc is None else orjson.dumps(filter_doc).decode()
    rows = ({"id": webhook_id, "organization_id": org_name(first_org + n // per_org),
             "name": f"bench extra {n}", "url": url, "secret": registry.generate_secret(),
             "events": events, "filter": text if n % filter_every == 0 else None, "batch": 0,
             "retries": 1, "rate_limit": None, "active": 1, "created_at": now,
             "updated_at": now} for n, webhook_id in enumerate(ids))
    conn = sqlite3.connect(state)
    try:
        with conn:
            conn.executemany(QUERIES["insert_webhook"], rows)
    finally:
        conn.close()
    checkpoint(state)
    return ids


def make_outbox(path: Path, events: int, orgs: int, payloads: Payloads) -> float:
    """Create ``path`` with ``events`` events spread over ``orgs`` organizations; seconds taken."""
    started = time.monotonic()
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.executescript(OUTBOX_SCHEMA)
        rows = ((EVENT_TYPE, org_name(i % orgs), payloads.text(i)) for i in range(events))
        with conn:
            conn.executemany(PUBLISH, rows)
    finally:
        conn.close()
    checkpoint(path)
    return time.monotonic() - started


def add_backlog(state: Path, organization_id: str, count: int, rate_per_minute: int) -> None:
    """Give the webhook of ``organization_id`` a rate limit and ``count`` deliveries due now,
    one per outbox event 1..count, as after an outage of its endpoint (each with one failed
    attempt); the cursor is put past them so that intake does not take them in again."""
    from nevent_dispatch.pipeline.attempts import new_delivery_uuid

    conn = sqlite3.connect(state)
    try:
        with conn:
            (webhook_id,) = conn.execute("SELECT id FROM webhooks WHERE organization_id = ?",
                                         (organization_id,)).fetchone()
            conn.execute("UPDATE webhooks SET rate_limit = ? WHERE id = ?",
                         (rate_per_minute, webhook_id))
            now = time.time()
            conn.executemany(
                "INSERT INTO deliveries (uuid, webhook_id, kind, event_type, event_id, outbox_id,"
                " event_count, state, attempts, retry_base, next_at, created_at, updated_at,"
                " last_status, organization_id)"
                " VALUES (?, ?, 'event', ?, ?, ?, 1, 'pending', 1, 0, ?, ?, ?, 500, ?)",
                ((new_delivery_uuid(now), webhook_id, EVENT_TYPE, f"evt_backlog_{i}", i, now,
                  now, now, organization_id) for i in range(1, count + 1)))
            conn.execute("UPDATE meta SET value = max(value, ?) WHERE key = 'cursor'", (count,))
    finally:
        conn.close()


def remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
