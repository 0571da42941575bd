"""The only module that executes SQL (but the application-side insert).

Owns the two connections — the application's outbox database, only ever read
after ``init``, and the daemon's state database — their pragmas, the schema
migrations and every read and write, spoken in models rather than rows. Writes
happen in short ``BEGIN IMMEDIATE`` transactions serialized by one lock, and
the per-attempt results are grouped by the caller into one transaction per
flush. It must not decide anything about delivery: it stores what it is told.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite
import orjson

from ...config import Config
from ...errors import DispatchError, NotFound
from ...models import Attempt, Delivery, Kind, Outcome, State, Webhook
from .sql import OUTBOX_SCHEMA, QUERIES, STATE_MIGRATIONS

Q = QUERIES

#: Schema version this code reads and writes.
SCHEMA_VERSION = len(STATE_MIGRATIONS)

#: One outbox row as read: (id, event_id, type, organization_id, data, created), text as bytes.
OutboxRow = tuple[int, bytes, bytes, bytes, bytes, Any]


class StoreError(DispatchError):
    """A database cannot be opened, migrated or used."""


def _private_file(path: Path) -> None:
    """Create ``path`` readable by its owner only, before SQLite opens it."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)


async def _connect(path: Path, busy_timeout: float) -> aiosqlite.Connection:
    try:
        _private_file(path)
        db = await aiosqlite.connect(path, isolation_level=None)
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(f"database: cannot open {str(path)!r}: {exc}") from None
    try:
        await db.execute_fetchall(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    except BaseException:
        await db.close()  # its thread would keep the process alive
        raise
    return db


def _webhook(row: sqlite3.Row | tuple[Any, ...], columns: Sequence[str]) -> Webhook:
    r = dict(zip(columns, row, strict=True))
    return Webhook(
        id=r["id"], organization_id=r["organization_id"], name=r["name"], url=r["url"],
        secret=r["secret"], events=tuple(orjson.loads(r["events"])),
        filter=None if r["filter"] is None else orjson.loads(r["filter"]),
        batch=bool(r["batch"]), retries=bool(r["retries"]), rate_limit=r["rate_limit"],
        active=bool(r["active"]), created_at=r["created_at"], updated_at=r["updated_at"],
    )


def _webhook_params(w: Webhook) -> dict[str, Any]:
    return {
        "id": w.id, "organization_id": w.organization_id, "name": w.name, "url": w.url,
        "secret": w.secret, "events": orjson.dumps(list(w.events)).decode(),
        "filter": None if w.filter is None else orjson.dumps(w.filter).decode(),
        "batch": int(w.batch), "retries": int(w.retries), "rate_limit": w.rate_limit,
        "active": int(w.active), "created_at": w.created_at, "updated_at": w.updated_at,
    }


_DELIVERY_COLUMNS = ("id", "uuid", "webhook_id", "kind", "event_type", "event_id", "outbox_id",
                     "event_count", "state", "attempts", "retry_base", "next_at", "created_at",
                     "updated_at", "last_status", "last_error", "body")


def _delivery(row: tuple[Any, ...]) -> Delivery:
    r = dict(zip(_DELIVERY_COLUMNS, row, strict=True))
    del r["body"]
    r["kind"], r["state"] = Kind(r["kind"]), State(r["state"])
    return Delivery(**r)


def _attempt(row: tuple[Any, ...]) -> Attempt:
    _id, delivery_id, number, started_at, latency_ms, outcome, status, error, response = row
    return Attempt(delivery_id, number, started_at, latency_ms, Outcome(outcome), status, error,
                   response)


class Store:
    """The daemon's and the CLI's handle on both databases."""

    def __init__(self, config: Config, state: aiosqlite.Connection,
                 outbox: aiosqlite.Connection) -> None:
        self.config = config
        self._state = state
        self._outbox = outbox
        self._write_lock = asyncio.Lock()

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    async def open(cls, config: Config, *, migrate: bool = True) -> Store:
        """Open both databases (creating and migrating them unless ``migrate`` is false)."""
        db = config.database
        state = await _connect(db.state, db.busy_timeout)
        try:
            outbox = await _connect(db.outbox, db.busy_timeout)
        except BaseException:
            await state.close()
            raise
        # The outbox is read as bytes so that one row of invalid UTF-8 is rejected on its own.
        outbox.text_factory = bytes
        store = cls(config, state, outbox)
        try:
            if migrate:
                await store.migrate()
            await state.execute_fetchall("PRAGMA synchronous = NORMAL")
        except BaseException:
            await store.close()
            raise
        return store

    async def close(self) -> None:
        for db in (self._outbox, self._state):
            with contextlib.suppress(Exception):
                await db.close()

    async def migrate(self) -> int:
        """Create the outbox table and bring the state schema up to date; idempotent."""
        try:
            # WAL lets the daemon read while the application writes, never blocking its commits.
            for db in (self._outbox, self._state):
                # Fetched to the end: a statement left open would hold a read lock.
                await db.execute_fetchall("PRAGMA journal_mode = WAL")
            await self._outbox.executescript(OUTBOX_SCHEMA)
            async with self._write_lock:
                row = await (await self._state.execute("PRAGMA user_version")).fetchone()
                version = int(row[0]) if row else 0
                if version > SCHEMA_VERSION:
                    raise StoreError(
                        f"database.state: schema version {version} is newer than this "
                        f"nevent-dispatch understands ({SCHEMA_VERSION}); upgrade nevent-dispatch")
                for n in range(version, SCHEMA_VERSION):
                    # executescript commits on its own; the version bump rides in the same script.
                    await self._state.executescript(
                        f"BEGIN IMMEDIATE;\n{STATE_MIGRATIONS[n]}\nPRAGMA user_version = {n + 1};\n"
                        "COMMIT;")
        except sqlite3.Error as exc:
            raise StoreError(f"database: cannot initialise: {exc}") from None
        return SCHEMA_VERSION

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[aiosqlite.Connection]:
        """One short write transaction on the state database, serialized with the others."""
        # The connection runs statements in order on its own thread: a statement a
        # cancelled caller no longer waits for still runs, so the ROLLBACK queued
        # behind it always undoes it before the next transaction can begin.
        async with self._write_lock:
            try:
                await asyncio.shield(self._state.execute("BEGIN IMMEDIATE"))
                yield self._state
            except BaseException:
                await asyncio.shield(self._state.rollback())
                raise
            await asyncio.shield(self._state.commit())

    async def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = await self._state.execute_fetchall(sql, params)  # one trip to the thread
        return next((row[0] for row in rows), None)

    # -- webhooks --------------------------------------------------------------------------

    async def insert_webhook(self, webhook: Webhook) -> None:
        async with self._write() as db:
            await db.execute(Q["insert_webhook"], _webhook_params(webhook))

    async def update_webhook(self, webhook: Webhook) -> None:
        async with self._write() as db:
            cur = await db.execute(Q["update_webhook"], _webhook_params(webhook))
            if cur.rowcount == 0:
                raise NotFound(f"webhook {webhook.id!r} not found")

    async def delete_webhook(self, webhook_id: str, now: float | None = None) -> None:
        """Delete a webhook; its unfinished deliveries end as failed, its history stays."""
        now = time.time() if now is None else now
        async with self._write() as db:
            cur = await db.execute(Q["delete_webhook"], (webhook_id,))
            if cur.rowcount == 0:
                raise NotFound(f"webhook {webhook_id!r} not found")
            await db.execute(Q["fail_orphans"], (now, webhook_id))
            await db.execute(Q["forget_waiting"], (webhook_id,))

    async def get_webhook(self, webhook_id: str) -> Webhook:
        cur = await self._state.execute(Q["get_webhook"], (webhook_id,))
        row = await cur.fetchone()
        if row is None:
            raise NotFound(f"webhook {webhook_id!r} not found")
        return _webhook(row, [c[0] for c in cur.description])

    async def list_webhooks(self, organization_id: str | None = None) -> list[Webhook]:
        if organization_id is None:
            cur = await self._state.execute(Q["list_webhooks"])
        else:
            cur = await self._state.execute(Q["list_webhooks_of_org"], (organization_id,))
        columns = [c[0] for c in cur.description]
        return [_webhook(row, columns) for row in await cur.fetchall()]

    async def webhooks_rev(self) -> int:
        return int(await self._one(Q["get_meta"], ("webhooks_rev",)))

    # -- outbox ----------------------------------------------------------------------------

    async def outbox_version(self) -> int:
        """PRAGMA data_version of the outbox connection: changes when another connection commits."""
        rows = await self._outbox.execute_fetchall("PRAGMA data_version")
        return next((int(row[0]) for row in rows), 0)

    async def outbox_page(self, after: int, limit: int) -> list[OutboxRow]:
        rows = await self._outbox.execute_fetchall(Q["outbox_page"], (after, limit))
        return list(rows)  # type: ignore[arg-type]

    async def outbox_rows(self, ids: Iterable[int]) -> dict[int, OutboxRow]:
        ids = list(ids)
        found: dict[int, OutboxRow] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            sql = Q["outbox_rows_by_id"].format(ids=",".join("?" * len(chunk)))
            for row in await self._outbox.execute_fetchall(sql, chunk):
                found[row[0]] = row  # type: ignore[assignment]
        return found

    async def outbox_max_id(self) -> int:
        row = await (await self._outbox.execute(Q["outbox_max_id"])).fetchone()
        return int(row[0]) if row else 0

    async def cursor(self) -> int:
        return int(await self._one(Q["get_meta"], ("cursor",)))

    # -- deliveries: the daemon's writes ----------------------------------------------------

    async def record_intake(self, deliveries: Sequence[tuple[Any, ...]],
                            waiting: Sequence[tuple[str, int, str]], cursor: int) -> int:
        """Insert a page's deliveries and waiting batch events and advance the cursor, atomically.

        Deliveries follow ``insert_delivery`` without the id; they get consecutive ids
        after the returned base (assigned under the write lock, so no other writer can
        interleave). ``waiting`` rows follow ``insert_batch_waiting``.
        """
        async with self._write() as db:
            base = 0
            if deliveries:
                base = await self.delivery_mark()
                await db.executemany(Q["insert_delivery"],
                                     [(base + i, *row) for i, row in enumerate(deliveries, 1)])
            if waiting:
                await db.executemany(Q["insert_batch_waiting"], waiting)
            await db.execute(Q["set_cursor"], (cursor,))
        return base

    async def delivery_mark(self) -> int:
        """The highest delivery id: lanes refill only deliveries created after it (and, under
        the write lock, new deliveries take the ids after it)."""
        return int(await self._one(Q["max_delivery_id"]))

    async def spilled_deliveries(self, webhook_id: str, after: int, limit: int) -> list[Delivery]:
        cur = await self._state.execute(Q["spilled_deliveries"], (webhook_id, after, limit))
        return [_delivery(tuple(row)) for row in await cur.fetchall()]

    async def waiting_events(self, webhook_id: str, after: int,
                             limit: int) -> list[tuple[int, str, str]]:
        """The oldest events of a batch-mode webhook waiting for a batch, after an outbox id.

        (outbox_id, event_id, type) in outbox order; events already in a batch are skipped.
        """
        mark = await self._one(Q["batch_mark"], (webhook_id,))
        after = max(after, mark or 0)
        events: list[tuple[int, str, str]] = []
        for (blob,) in await self._state.execute_fetchall(Q["waiting_rows"],
                                                          (webhook_id, after, limit)):
            events.extend((e[0], e[1], e[2]) for e in orjson.loads(blob) if e[0] > after)
        return events[:limit]

    async def release_claimed(self, delivery_ids: Sequence[int], now: float) -> None:
        async with self._write() as db:
            await db.executemany(Q["release_claimed"], [(now, now, i) for i in delivery_ids])

    async def release_spilled(self, webhook_id: str, after: int, now: float) -> None:
        async with self._write() as db:
            await db.execute(Q["release_spilled"], (now, now, webhook_id, after))

    async def pending_count(self) -> int:
        return int(await self._one(Q["pending_count"]))

    async def insert_delivery(self, row: tuple[Any, ...]) -> int:
        """Insert one delivery (a test, a batch) and return its id."""
        async with self._write() as db:
            return await self._insert_one(db, row)

    async def _insert_one(self, db: aiosqlite.Connection, row: tuple[Any, ...]) -> int:
        base = await self.delivery_mark()
        await db.execute(Q["insert_delivery"], (base + 1, *row))
        return base + 1

    async def create_batches(self, batches: Sequence[tuple[tuple[Any, ...], str,
                                                          Sequence[tuple[int, str, str]]]]
                             ) -> list[int]:
        """Insert batch deliveries with their events and mark those events batched, atomically.

        Each batch is (deliveries row without the id, webhook id, events in outbox
        order). Every batch formed meanwhile by any lane is written in one transaction.
        """
        async with self._write() as db:
            base = await self.delivery_mark()
            ids = range(base + 1, base + 1 + len(batches))
            await db.executemany(Q["insert_delivery"],
                                 [(i, *row) for i, (row, _, _) in zip(ids, batches, strict=True)])
            await db.executemany(Q["insert_batch_contents"],
                                 [(i, orjson.dumps(events).decode())
                                  for i, (_, _, events) in zip(ids, batches, strict=True)])
            last: dict[str, int] = {}
            for _, webhook_id, events in batches:
                last[webhook_id] = max(last.get(webhook_id, 0), events[-1][0])
            await db.executemany(Q["set_batch_mark"], list(last.items()))
            await db.executemany(Q["drop_batched_waiting"], list(last.items()))
        return list(ids)

    async def record_results(self, attempts: Sequence[tuple[Any, ...]],
                             finishes: Sequence[tuple[Any, ...]]) -> None:
        """Write a flush's attempts and delivery states in one transaction."""
        async with self._write() as db:
            await db.executemany(Q["insert_attempt"], attempts)
            await db.executemany(Q["finish_attempt"], finishes)

    async def recover_claimed(self, now: float) -> int:
        async with self._write() as db:
            cur = await db.execute(Q["recover_claimed"], (now, now))
            return cur.rowcount

    async def waiting_webhooks(self) -> list[str]:
        cur = await self._state.execute(Q["waiting_webhooks"])
        return [r[0] for r in await cur.fetchall()]

    async def batch_events(self, delivery_id: int) -> list[tuple[int, str, str]]:
        """The events a batch delivery carries: (outbox_id, event_id, type) in order."""
        blob = await self._one(Q["batch_contents_of"], (delivery_id,))
        return [] if blob is None else [(e[0], e[1], e[2]) for e in orjson.loads(blob)]

    async def claim_due(self, now: float, limit: int) -> list[tuple[Delivery, bytes | None]]:
        """Take up to ``limit`` due deliveries into the daemon; returns them with test bodies."""
        async with self._write() as db:
            rows = list(await db.execute_fetchall(Q["due_deliveries"], (now, limit)))
            await db.executemany(Q["claim_delivery"], [(now, row[0]) for row in rows])
        return [(_delivery(tuple(row)), row[-1]) for row in rows]

    async def next_due_at(self) -> float | None:
        return await self._one(Q["next_due_at"])

    # -- history: the CLI's reads and replays ------------------------------------------------

    async def get_delivery(self, ref: str | int) -> Delivery:
        text = str(ref)
        query = Q["get_delivery"] if text.isdigit() else Q["get_delivery_by_uuid"]
        row = await (await self._state.execute(query, (text,))).fetchone()
        if row is None:
            raise NotFound(f"delivery {text!r} not found")
        return _delivery(tuple(row))

    async def delivery_body(self, delivery_id: int) -> bytes | None:
        row = await (await self._state.execute(Q["delivery_body"], (delivery_id,))).fetchone()
        return None if row is None else row[0]

    async def list_deliveries(self, *, webhook_id: str | None = None, state: str | None = None,
                              since: float | None = None, limit: int = 50) -> list[Delivery]:
        cur = await self._state.execute(Q["list_deliveries"], {
            "webhook_id": webhook_id, "state": state, "since": since, "limit": limit})
        return [_delivery(tuple(row)) for row in await cur.fetchall()]

    async def attempts(self, delivery_id: int) -> list[Attempt]:
        cur = await self._state.execute(Q["attempts_of"], (delivery_id,))
        return [_attempt(tuple(row)) for row in await cur.fetchall()]

    async def replay(self, delivery_id: int, now: float) -> bool:
        async with self._write() as db:
            cur = await db.execute(Q["replay_delivery"], (now, now, delivery_id))
            return cur.rowcount == 1

    async def replay_webhook(self, webhook_id: str, state: str, since: float, now: float) -> int:
        async with self._write() as db:
            cur = await db.execute(Q["replay_webhook"], (now, now, webhook_id, state, since))
            return cur.rowcount

    async def counts_by_state(self) -> dict[str, int]:
        cur = await self._state.execute(Q["count_by_state"])
        return {state: count for state, count in await cur.fetchall()}
