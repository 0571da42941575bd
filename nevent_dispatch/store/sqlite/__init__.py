"""The only module that executes SQL (but the application-side insert).

Owns the connections — the application's outbox database, only ever read
after ``init``, and the daemon's state database, opened twice: one connection
for write transactions, one for reads — their pragmas, the schema migrations
and every read and write, spoken in models rather than rows.

A write transaction is one unit (``_transact``): one coroutine's function run
under the write lock between ``BEGIN IMMEDIATE`` and ``COMMIT``. Reads go
through the other connection, so no read can see a transaction's uncommitted
rows, and no other coroutine's statement can land inside one. A daemon store
(``wait_on_storage``) rides out a full disk or a locked database by retrying
the whole transaction with a backoff, logging the file and the cause; the
CLI's store fails at once with one line. It must not decide anything about
delivery: it stores what it is told.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import aiosqlite
import orjson

from ...config import Config
from ...errors import DispatchError, NotFound
from ...logs import get_logger
from ...models import Attempt, Delivery, Kind, Outcome, State, Webhook
from .sql import OUTBOX_SCHEMA, QUERIES, STATE_MIGRATIONS

Q = QUERIES

#: Schema version this code reads and writes.
SCHEMA_VERSION = len(STATE_MIGRATIONS)

#: One outbox row as read: (id, event_id, type, organization_id, data, created), text as bytes.
OutboxRow = tuple[int, bytes, bytes, bytes, bytes, Any]


log = get_logger("nevent_dispatch")
T = TypeVar("T")

#: SQLite result codes (primary) after which a write may succeed if tried again later.
_TRANSIENT = {5: "database is locked", 6: "database table is locked", 10: "disk I/O error",
              13: "database or disk is full"}
#: Seconds between two tries of a write the storage refused, growing up to the last.
STORAGE_BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0)


class StoreError(DispatchError):
    """A database cannot be opened, migrated or used."""


class Row(NamedTuple):
    """A deliveries row to insert: everything but the id and the counters."""

    uuid: str
    webhook_id: str | None
    kind: str
    event_type: str
    event_id: str | None
    outbox_id: int | None
    event_count: int
    state: str
    next_at: float | None
    created_at: float
    updated_at: float
    last_error: str | None
    body: bytes | None
    #: None: the organization of ``webhook_id`` (looked up by the insert).
    organization_id: str | None


class Finish(NamedTuple):
    """A delivery's state after one attempt (``finish_attempt``)."""

    state: str
    attempts: int
    retry_base: int
    next_at: float | None
    updated_at: float
    last_status: int | None
    last_error: str | None
    delivery_id: int


class WebhookChanges(NamedTuple):
    """What changed among the webhooks since a revision (``webhook_changes_since``)."""

    #: The webhooks revision the changes bring the reader to.
    rev: int
    #: The webhooks changed (created, updated or deleted), each once, in the order of their
    #: first change; None when some changes were pruned before they were read (a daemon
    #: stopped for long, a database restored): only a full reload is then right.
    webhook_ids: list[str] | None


def _transient(exc: sqlite3.Error) -> str | None:
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(exc, sqlite3.OperationalError) and code is not None:
        return _TRANSIENT.get(code & 0xFF)
    return None


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
                     "updated_at", "last_status", "last_error", "body", "organization_id")
_BODY = _DELIVERY_COLUMNS.index("body")
#: Above every delivery id (SQLite's largest integer): "no cursor yet".
_MAX_ID = 2**63 - 1


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

    def __init__(self, config: Config, state: aiosqlite.Connection, reader: aiosqlite.Connection,
                 outbox: aiosqlite.Connection, *, wait_on_storage: bool = False) -> None:
        self.config = config
        self._state = state
        self._read = reader
        self._outbox = outbox
        #: Opened on the first outbox prune (``retention.outbox``): a delete waiting for the
        #: application's lock must not hold up the reads of the outbox connection.
        self._outbox_writer: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._wait_on_storage = wait_on_storage
        #: While a write is refused by the storage (disk full, locked): why, for health checks.
        self.storage_problem: str | None = None
        #: Since when (monotonic) the write under way has been trying (None: no write is),
        #: and when the last one committed: a locked database shows here first.
        self.write_since: float | None = None
        self.last_write_at = 0.0

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    async def open(cls, config: Config, *, migrate: bool = True,
                   wait_on_storage: bool = False) -> Store:
        """Open the databases (creating and migrating them unless ``migrate`` is false).

        ``wait_on_storage``: writes the storage refuses are retried until they pass (the
        daemon), instead of raising ``StoreError`` (the CLI).
        """
        db = config.database
        if not migrate:  # nothing is created where no `init` ran (a command in a wrong folder)
            for key, path in (("state", db.state), ("outbox", db.outbox)):
                if not Path(path).exists():
                    raise StoreError(f"database.{key}: {os.path.abspath(path)} does not exist; "
                                     "run `nevent-dispatch init` to create the databases")
        opened: list[aiosqlite.Connection] = []
        try:
            for path in (db.state, db.state, db.outbox):
                opened.append(await _connect(path, db.busy_timeout))
        except BaseException:
            for conn in opened:
                await conn.close()
            raise
        state, reader, outbox = opened
        # The outbox is read as bytes so that one row of invalid UTF-8 is rejected on its own.
        outbox.text_factory = bytes
        store = cls(config, state, reader, outbox, wait_on_storage=wait_on_storage)
        try:
            if migrate:
                await store.migrate()
            else:
                await store.check_schema()
            await state.execute_fetchall("PRAGMA synchronous = NORMAL")
        except BaseException:
            await store.close()
            raise
        return store

    async def close(self) -> None:
        for db in (self._outbox_writer, self._outbox, self._read, self._state):
            if db is None:
                continue
            with contextlib.suppress(Exception):
                await db.close()

    async def migrate(self) -> int:
        """Create the outbox table and bring the state schema up to date; idempotent."""
        try:
            # Asked before the first page of a new file is written (journal_mode = WAL writes
            # it); an existing file keeps its mode until a VACUUM (version 5 runs one). Only
            # when not set yet: setting it again writes, and a daemon starting while another
            # process holds the write lock must not wait here.
            if int(await self._one(Q["auto_vacuum"], db=self._state)) != 2:
                await self._state.execute_fetchall(Q["set_incremental_vacuum"])
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
                    if n + 1 == 5:
                        await self._take_incremental_vacuum(new=version == 0)
                    # executescript commits on its own; the version bump rides in the same script.
                    await self._state.executescript(
                        f"BEGIN IMMEDIATE;\n{STATE_MIGRATIONS[n]}\nPRAGMA user_version = {n + 1};\n"
                        "COMMIT;")
        except sqlite3.Error as exc:
            raise StoreError(f"database: cannot initialise: {exc}") from None
        return SCHEMA_VERSION

    async def _take_incremental_vacuum(self, *, new: bool) -> None:
        """Version 5: the state file in incremental vacuum mode, through a VACUUM when it holds
        tables already (see state_v5.sql); not when it is also the application's database
        and not new, since the VACUUM would hold the application's write lock throughout."""
        if int(await self._one(Q["auto_vacuum"], db=self._state)) == 2:
            return
        db = self.config.database
        path = str(db.state)
        with contextlib.suppress(OSError):
            if not new and os.path.samefile(db.state, db.outbox):
                log.warning("state_vacuum_skipped", file=path,
                            reason="the state database is also the outbox database: pruned "
                                   "pages are reused, not given back to the file system")
                return
        started = time.monotonic()
        await self._state.execute_fetchall(Q["set_incremental_vacuum"])
        await self._state.execute_fetchall(Q["vacuum"])
        if not new:
            log.info("state_vacuumed", file=path, auto_vacuum="incremental",
                     seconds=round(time.monotonic() - started, 3))

    async def check_schema(self) -> None:
        """Refuse a state database whose schema this code does not read (commands other than
        ``init`` and ``run`` never migrate: a newer install must not change a running daemon's)."""
        path = str(self.config.database.state)
        try:
            rows = await self._read.execute_fetchall("PRAGMA user_version")
            tables = await self._read.execute_fetchall(Q["has_meta"])
        except sqlite3.Error as exc:
            raise StoreError(f"database.state: cannot read {path!r}: {exc}") from None
        version = next((int(r[0]) for r in rows), 0)
        if version == 0 and not tables:
            raise StoreError(f"database.state: {path!r} is not initialised; "
                             "run `nevent-dispatch init`")
        if version < SCHEMA_VERSION:
            raise StoreError(f"database.state: {path!r} has schema version {version}, older than "
                             f"this nevent-dispatch's {SCHEMA_VERSION}; run `nevent-dispatch init`")
        if version > SCHEMA_VERSION:
            raise StoreError(f"database.state: schema version {version} is newer than this "
                             f"nevent-dispatch understands ({SCHEMA_VERSION}); upgrade nevent-dispatch")

    async def _transact(self, work: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        """Run ``work`` as one write transaction on the state database, and return its result.

        Serialized with every other write by the lock; reads elsewhere use the other
        connection, so nothing interleaves with it. A write the storage refuses (full disk,
        a lock held too long) raises ``StoreError`` naming the file and the cause — or, for
        the daemon, is retried whole after a pause until it passes.
        """
        tries = 0
        async with self._write_lock:
            self.write_since = time.monotonic()
            try:
                while True:
                    try:
                        result = await self._attempt_transaction(work)
                    except sqlite3.Error as exc:
                        cause = _transient(exc)
                        path = str(self.config.database.state)
                        if cause is None or not self._wait_on_storage:
                            raise StoreError(f"database.state: cannot write {path!r}: {exc}") from None
                        delay = STORAGE_BACKOFF[min(tries, len(STORAGE_BACKOFF) - 1)]
                        tries += 1
                        if self.storage_problem is None or tries in (2, 10) or tries % 60 == 0:
                            log.error("state_write_failed", file=path, cause=cause, tries=tries,
                                      retry_in_s=delay)
                        self.storage_problem = f"{path}: {cause}"
                        await asyncio.sleep(delay)
                        continue
                    if self.storage_problem is not None:
                        log.info("state_write_recovered", file=str(self.config.database.state),
                                 tries=tries + 1)
                        self.storage_problem = None
                    self.last_write_at = time.monotonic()
                    return result
            finally:
                self.write_since = None

    async def _attempt_transaction(self, work: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        db = self._state
        # The connection runs statements in order on its own thread: a statement a
        # cancelled caller no longer waits for still runs, so the ROLLBACK queued
        # behind it always undoes it before the next transaction can begin.
        try:
            await asyncio.shield(db.execute("BEGIN IMMEDIATE"))
            result = await work(db)
            await asyncio.shield(db.commit())
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                await asyncio.shield(db.rollback())
            raise
        return result

    async def _one(self, sql: str, params: Sequence[Any] = (),
                   db: aiosqlite.Connection | None = None) -> Any:
        rows = await (db or self._read).execute_fetchall(sql, params)  # one trip to the thread
        return next((row[0] for row in rows), None)

    async def _run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One statement as its own transaction; returns the rows it changed."""
        async def work(db: aiosqlite.Connection) -> int:
            return (await db.execute(sql, params)).rowcount
        return await self._transact(work)

    async def _run_many(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        if params:
            async def work(db: aiosqlite.Connection) -> None:
                await db.executemany(sql, params)
            await self._transact(work)

    # -- webhooks --------------------------------------------------------------------------

    async def insert_webhook(self, webhook: Webhook) -> None:
        await self._run(Q["insert_webhook"], _webhook_params(webhook))  # type: ignore[arg-type]

    async def update_webhook(self, webhook: Webhook) -> None:
        if await self._run(Q["update_webhook"], _webhook_params(webhook)) == 0:  # type: ignore[arg-type]
            raise NotFound(f"webhook {webhook.id!r} not found")

    async def delete_webhook(self, webhook_id: str, now: float | None = None) -> None:
        """Delete a webhook; its waiting deliveries end as failed, its history stays.

        What a running daemon holds of it (queued, in flight) the daemon fails itself.
        """
        now = time.time() if now is None else now

        async def work(db: aiosqlite.Connection) -> None:
            cur = await db.execute(Q["delete_webhook"], (webhook_id,))
            if cur.rowcount == 0:
                raise NotFound(f"webhook {webhook_id!r} not found")
            await db.execute(Q["fail_orphans"], (now, webhook_id))
            await db.execute(Q["forget_waiting"], (webhook_id,))
        await self._transact(work)

    async def fail_orphans(self, webhook_id: str, now: float) -> int:
        """Fail a deleted webhook's waiting deliveries (those released after the delete);
        how many."""
        return await self._run(Q["fail_orphans"], (now, webhook_id))

    async def get_webhook(self, webhook_id: str) -> Webhook:
        cur = await self._read.execute(Q["get_webhook"], (webhook_id,))
        row = await cur.fetchone()
        if row is None:
            raise NotFound(f"webhook {webhook_id!r} not found")
        return _webhook(row, [c[0] for c in cur.description])

    async def list_webhooks(self, organization_id: str | None = None) -> list[Webhook]:
        if organization_id is None:
            cur = await self._read.execute(Q["list_webhooks"])
        else:
            cur = await self._read.execute(Q["list_webhooks_of_org"], (organization_id,))
        columns = [c[0] for c in cur.description]
        return [_webhook(row, columns) for row in await cur.fetchall()]

    async def webhooks_rev(self) -> int:
        return int(await self._one(Q["get_meta"], ("webhooks_rev",)))

    async def requeue_rev(self) -> int:
        """Bumped by replays made outside the daemon: due work may have appeared."""
        return int(await self._one(Q["get_meta"], ("requeue_rev",)))

    async def webhook_changes_since(self, rev: int) -> WebhookChanges:
        """The webhooks changed after revision ``rev``, and the revision that brings.

        Every revision has its row in ``webhook_changes`` (the triggers write both in the
        change's transaction), so the rows read are complete exactly when there are as many
        as revisions since ``rev``; fewer means some were pruned (``webhook_ids`` None).
        """
        rows = await self._read.execute_fetchall(Q["webhook_changes_since"], (rev,))
        current = next(int(r[1]) for r in rows if r[0] is None)
        ids = [r[0] for r in rows if r[0] is not None]
        if len(ids) != current - rev:
            return WebhookChanges(current, None)
        return WebhookChanges(current, list(dict.fromkeys(ids)))

    async def get_webhooks(self, webhook_ids: Iterable[str]) -> list[Webhook]:
        """The webhooks among ``webhook_ids`` (one missing was deleted), in no given order."""
        ids = list(webhook_ids)
        found: list[Webhook] = []
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            cur = await self._read.execute(
                Q["webhooks_by_id"].format(ids=",".join("?" * len(chunk))), chunk)
            columns = [c[0] for c in cur.description]
            found.extend(_webhook(row, columns) for row in await cur.fetchall())
        return found

    async def prune_webhook_changes(self, up_to_rev: int) -> int:
        """Forget the changes up to ``up_to_rev``; returns how many rows went.

        The daemon is their only reader and calls it (``pipeline/watcher.py`` says how
        much it keeps): a change it has applied is of no further use to it, and a reader
        that finds rows missing falls back to a full reload, so pruning never loses one.
        """
        return await self._run(Q["prune_webhook_changes"], (up_to_rev,))

    # -- outbox ----------------------------------------------------------------------------

    async def outbox_version(self) -> int:
        """PRAGMA data_version of the outbox connection: changes when another connection commits."""
        rows = await self._outbox.execute_fetchall("PRAGMA data_version")
        return next((int(row[0]) for row in rows), 0)

    async def outbox_page(self, after: int, limit: int,
                          max_bytes: int = 8 * 1024 * 1024) -> list[OutboxRow]:
        """The next rows after ``after``: at most ``limit`` rows and, but for a first row
        larger than that, at most ``max_bytes`` bytes of data."""
        sizes = await self._outbox.execute_fetchall(Q["outbox_sizes"], (after, limit))
        if not sizes:
            return []
        last, total = 0, 0
        for outbox_id, size in sizes:
            total += size or 0
            if last and total > max_bytes:
                break
            last = outbox_id
        rows = await self._outbox.execute_fetchall(Q["outbox_page"], (after, last))
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

    async def outbox_event_ids(self, first: int, last: int, limit: int = 1000) -> list[str]:
        """The event ids of outbox rows ``first``..``last`` (at most ``limit``)."""
        rows = await self._outbox.execute_fetchall(Q["outbox_event_ids"], (first, last, limit))
        return [bytes(r[0]).decode() if isinstance(r[0], bytes) else r[0] for r in rows]

    async def cursor(self) -> int:
        return int(await self._one(Q["get_meta"], ("cursor",)))

    async def outbox_needed_from(self) -> int:
        """The lowest outbox id still needed: rows below it may be deleted by the application."""
        return int(await self._one(Q["outbox_needed_from"]) or 1)

    async def publish_outbox_needed_from(self, value: int) -> None:
        """Record the lowest outbox id still needed in the state database's meta table."""
        await self._run(Q["set_meta"], ("outbox_needed_from", value))

    async def published_outbox_needed_from(self) -> int:
        return int(await self._one(Q["get_meta"], ("outbox_needed_from",)) or 0)

    # -- deliveries: the daemon's writes ----------------------------------------------------

    async def record_intake(self, deliveries: Sequence[Row],
                            waiting: Sequence[tuple[str, int, str]], cursor: int) -> int:
        """Insert a page's deliveries and waiting batch events and advance the cursor, atomically.

        Deliveries get consecutive ids after the returned base (assigned inside the
        transaction, so no other writer can interleave). ``waiting`` rows follow
        ``insert_batch_waiting``.
        """
        async def work(db: aiosqlite.Connection) -> int:
            base = 0
            if deliveries:
                base = int(await self._one(Q["max_delivery_id"], db=db))
                await db.executemany(Q["insert_delivery"],
                                     [(base + i, *row) for i, row in enumerate(deliveries, 1)])
            if waiting:
                await db.executemany(Q["insert_batch_waiting"], waiting)
            await db.execute(Q["set_cursor"], (cursor,))
            return base
        return await self._transact(work)

    async def insert_delivery(self, row: Row) -> int:
        """Insert one delivery (a test send) and return its id."""
        async def work(db: aiosqlite.Connection) -> int:
            delivery_id = int(await self._one(Q["max_delivery_id"], db=db)) + 1
            await db.execute(Q["insert_delivery"], (delivery_id, *row))
            return delivery_id
        return await self._transact(work)

    async def create_batches(self, batches: Sequence[tuple[Row, str, Sequence[tuple[int, str, str]]]]
                             ) -> list[int]:
        """Insert batch deliveries with their events and mark those events batched, atomically.

        Each batch is (deliveries row, webhook id, events in outbox order). Every batch
        formed meanwhile by any lane is written in one transaction.
        """
        async def work(db: aiosqlite.Connection) -> list[int]:
            base = int(await self._one(Q["max_delivery_id"], db=db))
            ids = range(base + 1, base + 1 + len(batches))
            await db.executemany(Q["insert_delivery"],
                                 [(i, *row) for i, (row, _, _) in zip(ids, batches, strict=True)])
            await db.executemany(Q["insert_batch_contents"],
                                 [(i, orjson.dumps(events).decode(), events[0][0])
                                  for i, (_, _, events) in zip(ids, batches, strict=True)])
            last: dict[str, int] = {}
            for _, webhook_id, events in batches:
                last[webhook_id] = max(last.get(webhook_id, 0), events[-1][0])
            await db.executemany(Q["set_batch_mark"], list(last.items()))
            await db.executemany(Q["drop_batched_waiting"], list(last.items()))
            return list(ids)
        return await self._transact(work)

    async def record_results(self, started: Sequence[tuple[float, int]],
                             attempts: Sequence[tuple[Any, ...]], finishes: Sequence[Finish],
                             released: Sequence[tuple[float, float, int]] = (),
                             failed: Sequence[tuple[float, int]] = ()) -> None:
        """Write a flush in one transaction: attempts started (queued → in flight), attempt
        rows and delivery states after them, queued deliveries given back (→ pending) or
        failed (their webhook was deleted)."""
        async def work(db: aiosqlite.Connection) -> None:
            if started:
                await db.executemany(Q["start_attempt"], started)
            if attempts:
                await db.executemany(Q["insert_attempt"], attempts)
            if finishes:
                await db.executemany(Q["finish_attempt"], finishes)
            if released:
                await db.executemany(Q["release_queued"], released)
            if failed:
                await db.executemany(Q["fail_queued"], failed)
        await self._transact(work)

    async def recover_claimed(self, now: float) -> int:
        """At start: what a stopped or crashed daemon held is due again."""
        async def work(db: aiosqlite.Connection) -> int:
            count = (await db.execute(Q["recover_claimed"], (now, now))).rowcount
            await db.execute(Q["recover_tests"], (now,))
            return count
        return await self._transact(work)

    async def claim_due(self, claims: Sequence[tuple[str, int]], now: float
                        ) -> dict[str, list[tuple[Delivery, bytes | None]]]:
        """Take due deliveries of several webhooks into the daemon (pending → queued), each up
        to its limit, in one transaction; returns them per webhook with test bodies."""
        async def work(db: aiosqlite.Connection) -> dict[str, list[tuple[Delivery, bytes | None]]]:
            taken: dict[str, list[tuple[Delivery, bytes | None]]] = {}
            ids: list[tuple[float, int]] = []
            for webhook_id, limit in claims:
                rows = await db.execute_fetchall(Q["due_of_webhook"], (webhook_id, now, limit))
                if rows:
                    taken[webhook_id] = [(_delivery(tuple(r)), r[_BODY]) for r in rows]
                    ids.extend((now, r[0]) for r in rows)
            if ids:
                await db.executemany(Q["claim_delivery"], ids)
            return taken
        return await self._transact(work)

    async def next_due(self, webhook_id: str) -> float | None:
        """When the earliest waiting delivery of a webhook is due (None: nothing waits)."""
        return await self._one(Q["next_due_of_webhook"], (webhook_id,))

    async def next_due_active(self) -> dict[str, float]:
        """Per active webhook with waiting deliveries, when the earliest is due."""
        rows = await self._read.execute_fetchall(Q["next_due_active"])
        return {webhook_id: at for webhook_id, at in rows if at is not None}

    async def waiting_webhooks(self) -> list[str]:
        return [r[0] for r in await self._read.execute_fetchall(Q["waiting_webhooks"])]

    async def waiting_events(self, webhook_id: str, after: int,
                             limit: int) -> list[tuple[int, str, str]]:
        """The oldest events of a batch-mode webhook waiting for a batch, after an outbox id.

        (outbox_id, event_id, type) in outbox order; events already in a batch are skipped.
        """
        mark = await self._one(Q["batch_mark"], (webhook_id,))
        after = max(after, mark or 0)
        events: list[tuple[int, str, str]] = []
        for (blob,) in await self._read.execute_fetchall(Q["waiting_rows"],
                                                         (webhook_id, after, limit)):
            events.extend((e[0], e[1], e[2]) for e in orjson.loads(blob) if e[0] > after)
        return events[:limit]

    async def open_count(self) -> int:
        """Active webhooks with deliveries waiting in the database (due now or later)."""
        return int(await self._one(Q["open_count_active"]))

    async def batch_events(self, delivery_id: int) -> list[tuple[int, str, str]]:
        """The events a batch delivery carries: (outbox_id, event_id, type) in order."""
        blob = await self._one(Q["batch_contents_of"], (delivery_id,))
        return [] if blob is None else [(e[0], e[1], e[2]) for e in orjson.loads(blob)]

    # -- history: the CLI's reads and replays ------------------------------------------------

    async def get_delivery(self, ref: str | int) -> Delivery:
        text = str(ref)
        query = Q["get_delivery"] if text.isdigit() else Q["get_delivery_by_uuid"]
        row = await (await self._read.execute(query, (text,))).fetchone()
        if row is None:
            raise NotFound(f"delivery {text!r} not found")
        return _delivery(tuple(row))

    async def delivery_body(self, delivery_id: int) -> bytes | None:
        row = await (await self._read.execute(Q["delivery_body"], (delivery_id,))).fetchone()
        return None if row is None else row[0]

    async def list_deliveries(self, *, organization_id: str | None = None,
                              webhook_id: str | None = None, state: str | None = None,
                              event_type: str | None = None, event_id: str | None = None,
                              since: float | None = None, until: float | None = None,
                              before: int | None = None, limit: int = 50) -> list[Delivery]:
        """Deliveries newest first (ids below ``before``), narrowed by the given filters;
        through the index of the organization or the webhook when one is given."""
        params = {"org": organization_id, "webhook_id": webhook_id, "state": state,
                  "event_type": event_type, "event_id": event_id, "since": since,
                  "until": until, "before": _MAX_ID if before is None else before,
                  "limit": limit}
        if webhook_id is not None:
            query = Q["deliveries_of_webhook"]
        elif organization_id is not None:
            query = Q["deliveries_of_org"]
        else:
            query = Q["deliveries_newest"]
        cur = await self._read.execute(query, params)
        return [_delivery(tuple(row)) for row in await cur.fetchall()]

    async def first_id_since(self, t: float) -> int:
        """The lowest delivery id created at or after ``t`` (ids grow with time), found in
        a few primary-key probes instead of a walk of the history."""
        low = 1
        high = int(await self._one(Q["max_delivery_id"]) or 0) + 1
        while low < high:
            middle = (low + high) // 2
            at = await self._one(Q["created_at_of"], (middle,))
            if at is None or at >= t:
                high = middle
            else:
                low = middle + 1
        return low

    async def webhook_stats(self, webhook_id: str, from_id: int, latency_sample: int
                            ) -> tuple[dict[str, int], dict[str, int], list[float]]:
        """A webhook's deliveries per state and attempts per outcome from ``from_id`` on,
        and the latencies of its most recent answered attempts."""
        states = await self._read.execute_fetchall(Q["webhook_state_counts"],
                                                   (webhook_id, from_id))
        outcomes = await self._read.execute_fetchall(Q["webhook_outcome_counts"],
                                                     (webhook_id, from_id))
        latencies = await self._read.execute_fetchall(Q["webhook_recent_latencies"],
                                                      (webhook_id, from_id, latency_sample))
        return ({k: v for k, v in states}, {k: v for k, v in outcomes},
                [r[0] for r in latencies])

    async def idempotent_response(self, organization_id: str, key: str
                                  ) -> tuple[str, int, bytes, float] | None:
        row = await (await self._read.execute(Q["get_idempotency"],
                                              (organization_id, key))).fetchone()
        return None if row is None else (row[0], row[1], bytes(row[2]), row[3])

    async def remember_response(self, organization_id: str, key: str, request_hash: str,
                                status: int, response: bytes, now: float,
                                forget_before: float) -> None:
        async def work(db: aiosqlite.Connection) -> None:
            await db.execute(Q["prune_idempotency"], (forget_before,))
            await db.execute(Q["put_idempotency"], (organization_id, key, request_hash, status,
                                                    response, now))
        await self._transact(work)

    async def attempts(self, delivery_id: int) -> list[Attempt]:
        cur = await self._read.execute(Q["attempts_of"], (delivery_id,))
        return [_attempt(tuple(row)) for row in await cur.fetchall()]

    async def replay(self, delivery_id: int, now: float) -> bool:
        async def work(db: aiosqlite.Connection) -> bool:
            cur = await db.execute(Q["replay_delivery"], (now, now, delivery_id))
            if cur.rowcount:
                await db.execute(Q["bump_requeue_rev"])
            return cur.rowcount == 1
        return await self._transact(work)

    async def replay_webhook(self, webhook_id: str, state: str, since: float, now: float,
                             until: float = math.inf) -> int:
        if state != State.FAILED:
            raise ValueError(f"only failed deliveries are replayed, not {state!r}")

        async def work(db: aiosqlite.Connection) -> int:
            count = (await db.execute(Q["replay_webhook"],
                                      (now, now, webhook_id, since, until))).rowcount
            if count:
                await db.execute(Q["bump_requeue_rev"])
            return count
        return await self._transact(work)

    async def counts_by_state(self) -> dict[str, int]:
        cur = await self._read.execute(Q["count_by_state"])
        return {state: count for state, count in await cur.fetchall()}

    # -- operations: figures of the metrics, health and status ------------------------------

    async def retries_by_webhook(self, now: float) -> list[tuple[str, int, float]]:
        """(webhook id, deliveries waiting for a later attempt, the earliest due time) of each
        webhook that has some after ``now``."""
        rows = await self._read.execute_fetchall(Q["retries_by_webhook"], (now,))
        return [(r[0], int(r[1]), float(r[2])) for r in rows]

    async def failing_webhooks(self, now: float) -> list[str]:
        """The webhooks with a delivery waiting for a later attempt after ``now``."""
        return [r[0] for r in await self._read.execute_fetchall(Q["failing_webhooks"], (now,))]

    async def oldest_due(self, now: float) -> float | None:
        """When the oldest work still to be done (of active webhooks) fell due, if by ``now``."""
        value = await self._one(Q["oldest_due"], (now,))
        return None if value is None else float(value)

    async def webhook_counts(self) -> dict[str, int]:
        """Webhooks by status: active, inactive (never enabled or changed), disabled."""
        counts = dict.fromkeys(("active", "inactive", "disabled"), 0)
        counts.update({s: int(n) for s, n in await self._read.execute_fetchall(Q["webhook_counts"])})
        return counts

    async def probe_write(self) -> None:
        """An empty write transaction: does the state database take writes? (health checks;
        the daemon's store waits, like any write, until it does)."""
        async def work(db: aiosqlite.Connection) -> None:
            return None
        await self._transact(work)

    # -- retention: finished deliveries and handled outbox rows, in small transactions -------

    async def newest_delivery_id(self) -> int:
        """The highest delivery id (0: none yet). Retention never prunes that delivery, so
        that ids, assigned after the highest one, are never given out twice."""
        return int(await self._one(Q["max_delivery_id"]) or 0)

    async def prunable_deliveries(self, state: State, after: int, below: int, cutoff: float,
                                  limit: int) -> tuple[list[int], int, int]:
        """Among the next ``limit`` deliveries in the finished ``state`` with ids between
        ``after`` and ``below`` (both excluded), those last changed before ``cutoff``: their
        ids, the last id looked at, and how many were looked at (fewer than ``limit``: the
        end of the range)."""
        rows = await self._read.execute_fetchall(Q["prunable_deliveries"], {
            "state": state.value, "after": after, "below": below, "cutoff": cutoff,
            "limit": limit})
        ids, last, looked = next(iter(rows))
        return orjson.loads(ids or "[]"), int(last or after), int(looked)

    async def delivery_rows(self, ids: Sequence[int]) -> tuple[int, int]:
        """How many attempts and batch contents rows these deliveries have (what pruning them
        removes with them)."""
        rows = await self._read.execute_fetchall(Q["delivery_rows_count"],
                                                 {"ids": orjson.dumps(list(ids)).decode()})
        attempts, batches = next(iter(rows))
        return int(attempts), int(batches)

    async def prune_deliveries(self, ids: Sequence[int], cutoff: float
                               ) -> tuple[Pruned, float]:
        """Delete the deliveries among ``ids`` that are finished and were last changed before
        ``cutoff`` — checked again here: one replayed meanwhile stays — with their attempts
        and batch contents, in one transaction. What went, and the seconds the transaction
        held the write lock (from its first statement to its commit, which writes the pages)."""
        params = {"ids": orjson.dumps(list(ids)).decode(), "cutoff": cutoff}
        began: list[float] = []

        async def work(db: aiosqlite.Connection) -> Pruned:
            began[:] = [time.perf_counter()]
            attempts = (await db.execute(Q["prune_attempts"], params)).rowcount
            batches = (await db.execute(Q["prune_batch_contents"], params)).rowcount
            deliveries = (await db.execute(Q["prune_deliveries"], params)).rowcount
            return Pruned(deliveries, attempts, batches)
        pruned = await self._transact(work)
        return pruned, time.perf_counter() - began[0]

    async def prunable_outbox(self, after: int, below: int, cutoff: float,
                              limit: int) -> tuple[int, int, bool]:
        """The outbox rows after ``after`` and below ``below`` created before ``cutoff``, in
        id order up to the first that was not, among the next ``limit``: the last id of them
        (``after`` if none), how many, and whether more may follow."""
        rows = await self._outbox.execute_fetchall(Q["prunable_outbox"], {
            "after": after, "below": below, "cutoff": cutoff, "limit": limit})
        last, count = after, 0
        for outbox_id, old in rows:
            if not old:
                return last, count, False
            last, count = int(outbox_id), count + 1
        return last, count, count == limit

    async def prune_outbox(self, after: int, last: int, below: int, cutoff: float
                           ) -> tuple[int, float]:
        """Delete the outbox rows after ``after`` up to ``last``, below ``below`` and created
        before ``cutoff``: one statement, its own transaction on the application's database
        (the application's writes wait for it at most that long), on a connection of its
        own. How many went, and the seconds it took."""
        if self._outbox_writer is None:
            self._outbox_writer = await _connect(self.config.database.outbox,
                                                 self.config.database.busy_timeout)
        started = time.perf_counter()
        try:
            cur = await self._outbox_writer.execute(Q["prune_outbox"], {
                "after": after, "last": last, "below": below, "cutoff": cutoff})
            count = cur.rowcount
            await cur.close()
        except sqlite3.Error as exc:
            raise StoreError(f"database.outbox: cannot prune "
                             f"{str(self.config.database.outbox)!r}: {exc}") from None
        return count, time.perf_counter() - started

    async def page_counts(self) -> tuple[int, int, int]:
        """The state file's free pages, page size in bytes and pages (free ones included)."""
        rows = await self._read.execute_fetchall(Q["page_counts"])
        free, size, pages = next(iter(rows))
        return int(free), int(size), int(pages)

    async def release_pages(self, pages: int) -> tuple[int, float]:
        """Give up to ``pages`` free pages of the state file back to the file system, in one
        write transaction (a file not in incremental vacuum mode gives none back). The free
        pages left, and the seconds it took.

        The pragma frees one page per step, and the sqlite3 module steps a statement without
        result columns only once: ``executescript`` steps it to the end. It commits the
        (empty) transaction ``_transact`` began first, so the pragma is a transaction of its
        own — still under the write lock, and retried like any write.
        """
        began: list[float] = []

        async def work(db: aiosqlite.Connection) -> int:
            began[:] = [time.perf_counter()]
            await db.executescript(Q["release_pages"].format(pages=int(pages)))
            rows = await db.execute_fetchall(Q["page_counts"])
            return int(next(iter(rows))[0])
        left = await self._transact(work)
        return left, time.perf_counter() - began[0]


class Pruned(NamedTuple):
    """What one prune of deliveries removed (``Store.prune_deliveries``)."""

    deliveries: int
    attempts: int
    batches: int
