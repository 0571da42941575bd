"""Retention on real SQLite files: what is pruned, what never is, a flat state file, the
daemon's own task, ``nevent-dispatch prune``, and the migration to incremental vacuum.

The state databases are filled through the store's own writes, the daemon's path
(``record_intake`` → ``claim_due`` → ``record_results``), with times in the past, so that
pruning can be asked for "as of now" without waiting days.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from nevent_dispatch import registry
from nevent_dispatch.config import Config
from nevent_dispatch.models import Kind, State
from nevent_dispatch.ops.retention import prune
from nevent_dispatch.pipeline.attempts import new_delivery_row
from nevent_dispatch.store.sqlite import Finish, Store
from nevent_dispatch.store.sqlite.sql import QUERIES, STATE_MIGRATIONS

from ..conftest import emit, one_line_error, usage_error, write_config
from .api_support import ApiDaemon, client, run_cli, wait_until

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
WEBHOOK = "wh_0000000000000001"
ORG = "org_a"
#: A time long past: what the fills are dated (seconds).
T0 = 1_700_000_000.0
DAY = 86400.0


async def fill(store: Store, count: int, *, at: float, first_outbox: int,
               end: State = State.DELIVERED, webhook_id: str = WEBHOOK, page: int = 2000
               ) -> list[int]:
    """``count`` event deliveries taken in as intake does when their lane has room
    (queued), attempted once and left in ``end`` at time ``at`` (a pending ``end`` waits
    for a retry a day later); their ids."""
    ids: list[int] = []
    ok = end is State.DELIVERED
    for start in range(0, count, page):
        n = min(page, count - start)
        rows = [new_delivery_row(webhook_id=webhook_id, kind=Kind.EVENT, event_type="fan.created",
                                 event_id=f"evt_{first_outbox + start + i:024x}",
                                 outbox_id=first_outbox + start + i, event_count=1,
                                 state=State.QUEUED, now=at, organization_id=ORG)
                for i in range(n)]
        base = await store.record_intake(rows, [], first_outbox + start + n - 1)
        page_ids = list(range(base + 1, base + n + 1))
        attempts = [(i, 1, at, 12.5, "success" if ok else "http_error", 200 if ok else 500,
                     None if ok else "HTTP 500", "ok" if ok else "no") for i in page_ids]
        finishes = [Finish(end.value, 1, 0, at + DAY if end is State.PENDING else None, at,
                           200 if ok else 500, None if ok else "HTTP 500", i) for i in page_ids]
        await store.record_results([], attempts, finishes)
        ids += page_ids
    return ids


def read(path: Path, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path, timeout=30)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def count(path: Path, table: str) -> int:
    return int(read(path, f"SELECT count(*) FROM {table}")[0][0])


def file_bytes(path: Path) -> int:
    """The state file's size once its WAL is folded in (what stays on disk)."""
    read(path, "PRAGMA wal_checkpoint(TRUNCATE)")
    return path.stat().st_size


def keep_all(**kw: Any) -> dict[str, Any]:
    return {"keep_deliveries_s": None, "keep_outbox_s": None, **kw}


# -- what is pruned and what never is -------------------------------------------------------------


async def test_unfinished_deliveries_are_never_pruned_however_old(store):
    """Pending, retrying, queued and in-flight deliveries stay; finished ones go with their
    attempts; the newest delivery stays so that its id is never given out again."""
    delivered = await fill(store, 30, at=T0, first_outbox=1)
    failed = await fill(store, 5, at=T0, first_outbox=31, end=State.FAILED)
    retrying = await fill(store, 4, at=T0, first_outbox=36, end=State.PENDING)
    other = "wh_0000000000000002"  # its own webhook: the fills below claim only theirs
    rows = [new_delivery_row(webhook_id=other, kind=Kind.EVENT, event_type="fan.created",
                             event_id=f"evt_late{i}", outbox_id=40 + i, event_count=1,
                             state=State.PENDING, now=T0, organization_id=ORG) for i in range(6)]
    base = await store.record_intake(rows, [], 45)
    claimed = (await store.claim_due([(other, 4)], T0))[other]
    queued = [d.id for d, _ in claimed[:2]]
    in_flight = [d.id for d, _ in claimed[2:]]
    await store.record_results([(T0, i) for i in in_flight], [], [])
    pending = [base + 5, base + 6]
    last_finished = await fill(store, 1, at=T0, first_outbox=46)
    assert await store.newest_delivery_id() == last_finished[0]

    report = await prune(store, T0 + 100 * DAY, keep_deliveries_s=DAY, keep_outbox_s=None)

    left = {d.id: d.state for d in await store.list_deliveries(limit=1000)}
    assert report.deliveries == len(delivered) + len(failed)
    assert report.attempts == len(delivered) + len(failed) and report.batches == 0
    assert set(left) == {*retrying, *queued, *in_flight, *pending, *last_finished}
    assert {left[i] for i in queued} == {State.QUEUED}
    assert {left[i] for i in in_flight} == {State.IN_FLIGHT}
    for delivery_id in delivered + failed:
        assert await store.attempts(delivery_id) == []
    for delivery_id in retrying:
        assert len(await store.attempts(delivery_id)) == 1
    # A new delivery's id follows the highest ever given, pruned or not.
    later = await fill(store, 1, at=T0 + 100 * DAY, first_outbox=47,
                       webhook_id="wh_0000000000000003")
    assert later[0] > last_finished[0]


async def test_finished_deliveries_younger_than_the_bound_stay(store):
    """Only what finished before now − retention goes: by the time it was last changed."""
    old = await fill(store, 10, at=T0, first_outbox=1)
    recent = await fill(store, 10, at=T0 + 10 * DAY, first_outbox=11)
    await fill(store, 1, at=T0 + 10 * DAY, first_outbox=21, end=State.PENDING)
    report = await prune(store, T0 + 12 * DAY, keep_deliveries_s=5 * DAY, keep_outbox_s=None)
    assert report.deliveries == 10
    left = {d.id for d in await store.list_deliveries(limit=100)}
    assert not left & set(old) and set(recent) <= left


async def test_a_delivery_replayed_after_it_was_chosen_is_not_pruned(store):
    """The delete checks again that each chosen delivery is finished and old: a failed
    delivery replayed in between stays, with its attempts."""
    failed = await fill(store, 3, at=T0, first_outbox=1, end=State.FAILED)
    await fill(store, 1, at=T0, first_outbox=4, end=State.PENDING)
    ids, _, looked = await store.prunable_deliveries(State.FAILED, 0, 10**9, T0 + 1, 100)
    assert ids == failed and looked == 3
    assert await store.replay(failed[1], T0 + 2)
    pruned, _ = await store.prune_deliveries(ids, T0 + 1)
    assert (pruned.deliveries, pruned.attempts) == (2, 2)
    replayed = await store.get_delivery(failed[1])
    assert replayed.state is State.PENDING and len(await store.attempts(replayed.id)) == 1


async def test_a_batch_goes_with_its_delivery_and_stays_while_it_is_unfinished(store):
    """A finished batch delivery takes its batch contents along; an unfinished one keeps its
    contents, and events still waiting for a batch stay."""
    await store.record_intake([], [(WEBHOOK, 10, orjson.dumps([[9, "evt_9", "fan.created"],
                                                              [10, "evt_10", "fan.created"]]).decode())],
                              10)
    batches = []
    for first in (1, 4, 7):
        row = new_delivery_row(webhook_id=WEBHOOK, kind=Kind.BATCH, event_type="batch",
                               event_id=None, outbox_id=None, event_count=3,
                               state=State.PENDING, now=T0, organization_id=ORG)
        events = [(n, f"evt_{n}", "fan.created") for n in range(first, first + 3)]
        batches += await store.create_batches([(row, WEBHOOK, events)])
    claimed = (await store.claim_due([(WEBHOOK, 2)], T0))[WEBHOOK]
    assert [d.id for d, _ in claimed] == batches[:2]
    await store.record_results(
        [], [(batches[0], 1, T0, 3.0, "success", 200, None, "ok")],
        [Finish("delivered", 1, 0, None, T0, 200, None, batches[0]),
         Finish("pending", 1, 0, T0 + DAY, T0, 500, "HTTP 500", batches[1])])
    assert await store.outbox_needed_from() == 4

    report = await prune(store, T0 + 100 * DAY, keep_deliveries_s=DAY, keep_outbox_s=None)
    assert (report.deliveries, report.batches, report.attempts) == (1, 1, 1)
    assert await store.batch_events(batches[0]) == []
    assert [e[0] for e in await store.batch_events(batches[1])] == [4, 5, 6]
    assert [e[0] for e in await store.batch_events(batches[2])] == [7, 8, 9]
    assert [e[0] for e in await store.waiting_events(WEBHOOK, 0, 10)] == [10]
    assert await store.outbox_needed_from() == 4


async def test_retention_zero_keeps_everything(store):
    """With both bounds off nothing is read or deleted."""
    await fill(store, 10, at=T0, first_outbox=1)
    report = await prune(store, T0 + 100 * DAY, **keep_all())
    assert not report.removed and len(await store.list_deliveries(limit=100)) == 10


async def test_pruning_reads_only_indexes_of_what_it_deletes(store):
    """Each statement seeks an index or the primary key; none walks a table."""
    conn = sqlite3.connect(store.config.database.state)
    try:
        for name, params in (
                ("prunable_deliveries", {"state": "delivered", "after": 0, "below": 9,
                                         "cutoff": 1.0, "limit": 10}),
                ("prune_attempts", {"ids": "[1,2]", "cutoff": 1.0}),
                ("prune_batch_contents", {"ids": "[1,2]", "cutoff": 1.0}),
                ("prune_deliveries", {"ids": "[1,2]", "cutoff": 1.0}),
                ("delivery_rows_count", {"ids": "[1,2]"})):
            plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + QUERIES[name], params)]
            assert not any(step.startswith(("SCAN deliveries", "SCAN attempts", "SCAN d ",
                                            "SCAN batch_contents")) for step in plan), (name, plan)
            assert "SEARCH d USING INDEX deliveries_state (state=?)" not in plan, (name, plan)
    finally:
        conn.close()
    app = sqlite3.connect(store.config.database.outbox)
    try:
        for name in ("prunable_outbox", "prune_outbox"):
            plan = [row[3] for row in app.execute(
                "EXPLAIN QUERY PLAN " + QUERIES[name],
                {"after": 0, "last": 5, "below": 9, "cutoff": 1.0, "limit": 10})]
            assert plan == ["SEARCH outbox USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)"], plan
    finally:
        app.close()


# -- the outbox ------------------------------------------------------------------------------------


def publish_rows(config: Config, n: int) -> None:
    emit(config, [("fan.created", ORG, {"n": i}) for i in range(n)])


async def test_outbox_rows_go_only_below_the_lowest_id_needed_and_when_old(store):
    """Handled rows older than the bound go; the row of an unfinished delivery and every row
    after it stay, and so do handled rows younger than the bound."""
    config = store.config
    publish_rows(config, 30)
    now = time.time()
    await fill(store, 10, at=now, first_outbox=1)
    await fill(store, 1, at=now, first_outbox=11, end=State.PENDING)
    await fill(store, 19, at=now, first_outbox=12)
    assert await store.outbox_needed_from() == 11

    young = await prune(store, now + 60, keep_deliveries_s=None, keep_outbox_s=3 * DAY)
    assert young.outbox == 0 and count(config.database.outbox, "outbox") == 30

    report = await prune(store, now + 4 * DAY, keep_deliveries_s=None, keep_outbox_s=3 * DAY)
    assert (report.outbox, report.outbox_below) == (10, 11)
    ids = [r[0] for r in read(config.database.outbox, "SELECT id FROM outbox ORDER BY id")]
    assert ids == list(range(11, 31))
    # The cursor is unharmed: a new event gets a new id, after every one ever given.
    publish_rows(config, 1)
    assert read(config.database.outbox, "SELECT max(id) FROM outbox")[0][0] == 31
    assert [r[0] for r in await store.outbox_page(30, 10)] == [31]


async def test_outbox_pruning_stops_at_the_first_younger_row(store):
    """Rows are taken in id order up to the first one created after the bound."""
    config = store.config
    publish_rows(config, 5)
    now = time.time()
    await fill(store, 5, at=now, first_outbox=1)
    report = await prune(store, now + 4 * DAY, keep_deliveries_s=None, keep_outbox_s=3 * DAY)
    assert report.outbox == 5
    publish_rows(config, 3)
    await fill(store, 3, at=now, first_outbox=6)
    report = await prune(store, now + 4 * DAY, keep_deliveries_s=None,
                         keep_outbox_s=3 * DAY)
    assert report.outbox == 3 and count(config.database.outbox, "outbox") == 0


# -- a flat file -------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_the_state_file_stays_flat_across_fill_and_prune_cycles(store):
    """200,000 deliveries taken in, attempted and pruned, three times: the file grows no
    further than the first fill made it, and pruning gives the space back."""
    path = store.config.database.state
    n = 200_000
    peaks, troughs = [], []
    for cycle in range(3):
        at = T0 + cycle * 10 * DAY
        await fill(store, n, at=at, first_outbox=1 + cycle * n)
        peaks.append(file_bytes(path))
        # Unpaced (nothing else writes here): the pauses are the daemon's, not the file's.
        report = await prune(store, at + 2 * DAY, keep_deliveries_s=DAY, keep_outbox_s=None,
                             paced=False)
        # The newest delivery stays, until a newer one exists.
        assert report.deliveries == report.attempts == (n - 1 if cycle == 0 else n)
        assert report.released_bytes > 0
        troughs.append(file_bytes(path))
        assert (await store.page_counts())[0] == 0
    assert max(peaks) <= peaks[0] * 1.10, peaks
    assert max(troughs) <= peaks[0] * 0.10, (troughs, peaks)


async def test_the_daemon_keeps_free_pages_it_will_reuse(store):
    """Left to keep what a run freed, pruning gives back only the free pages beyond that."""
    path = store.config.database.state
    await fill(store, 20_000, at=T0, first_outbox=1)
    free_before, page_size, _ = await store.page_counts()
    report = await prune(store, T0 + 2 * DAY, keep_deliveries_s=DAY, keep_outbox_s=None,
                         keep_free_pages=None)
    free, _, _ = await store.page_counts()
    # Only the pages free before the run go back (none or a few, from the fill's updates).
    assert report.deliveries == 19_999 and free > 100
    assert report.released_bytes == free_before * page_size
    # The next run frees nothing new: every free page is given back.
    again = await prune(store, T0 + 2 * DAY, keep_deliveries_s=DAY, keep_outbox_s=None,
                        keep_free_pages=None)
    assert again.deliveries == 0 and again.released_bytes > 0
    assert (await store.page_counts())[0] == 0
    assert file_bytes(path) < 200_000


# -- the migration to version 5 --------------------------------------------------------------------


async def test_an_existing_state_database_takes_incremental_vacuum_once(tmp_path, make_config):
    """A version-1 file (auto_vacuum none) is rewritten once into incremental mode, its rows
    intact; a second open does not rewrite it again."""
    state, outbox = tmp_path / "state.db", tmp_path / "app.db"
    shutil.copyfile(FIXTURES / "state_v1.db", state)
    shutil.copyfile(FIXTURES / "outbox_v1.db", outbox)
    assert read(state, "PRAGMA auto_vacuum") == [(0,)]
    config = make_config(database={"state": state, "outbox": outbox})
    before = read(state, "SELECT uuid FROM deliveries ORDER BY id")
    for _ in range(2):
        store = await Store.open(config)
        await store.close()
    assert read(state, "PRAGMA auto_vacuum") == [(2,)]
    assert read(state, "PRAGMA integrity_check") == [("ok",)]
    assert read(state, "SELECT uuid FROM deliveries ORDER BY id") == before


async def test_a_state_database_shared_with_the_outbox_is_not_rewritten(tmp_path, make_config):
    """A version-4 file that is also the application's database is migrated without the
    VACUUM (it would hold the application's write lock): pruning then reuses free pages."""
    shared = tmp_path / "app.db"
    conn = sqlite3.connect(shared, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    for n, script in enumerate(STATE_MIGRATIONS[:4], 1):
        conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {n};\nCOMMIT;")
    conn.close()
    config = make_config(database={"state": shared, "outbox": shared})
    store = await Store.open(config)
    try:
        assert read(shared, "PRAGMA user_version") == [(5,)]
        assert read(shared, "PRAGMA auto_vacuum") == [(0,)]
        publish_rows(config, 50)
        now = time.time()
        await fill(store, 50, at=now - 10 * DAY, first_outbox=1)
        report = await prune(store, now + 4 * DAY, keep_deliveries_s=DAY,
                             keep_outbox_s=3 * DAY)
        assert (report.deliveries, report.outbox, report.released_bytes) == (49, 50, 0)
    finally:
        await store.close()


def test_a_new_state_database_starts_in_incremental_vacuum_mode(tmp_path):
    """`init` makes a state file in incremental mode from its first page, even one shared
    with the outbox."""
    for name, same in (("apart", False), ("shared", True)):
        folder = tmp_path / name
        folder.mkdir()
        config = Config().replace(database={"outbox": folder / "app.db",
                                            "state": folder / ("app.db" if same else "state.db")})
        path = write_config(folder / "c.toml", config)
        result = run_cli(path, "init", cwd=folder)
        assert result.returncode == 0, result.stderr
        assert read(config.database.state, "PRAGMA auto_vacuum") == [(2,)]


# -- nevent-dispatch prune ---------------------------------------------------------------------------


async def test_prune_dry_run_changes_nothing_and_counts_what_prune_removes(store, tmp_path):
    """--dry-run reports exactly the counts the real run then removes, and changes nothing."""
    config = store.config
    publish_rows(config, 40)
    await fill(store, 30, at=T0, first_outbox=1)
    await fill(store, 5, at=T0, first_outbox=31, end=State.FAILED)
    await fill(store, 5, at=T0, first_outbox=36, end=State.PENDING)
    path = write_config(tmp_path / "prune.toml", config,
                        '\n[retention]\ndeliveries = "30d"\noutbox = "3d"\n')

    def dump() -> list[list[tuple[Any, ...]]]:
        return [read(config.database.state, "SELECT * FROM deliveries ORDER BY id"),
                read(config.database.state, "SELECT * FROM attempts ORDER BY id"),
                read(config.database.outbox, "SELECT id FROM outbox ORDER BY id")]

    before = dump()
    dry = await asyncio.to_thread(run_cli, path, "prune", "--older-than", "7d", "--dry-run",
                                  "--json", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    would = orjson.loads(dry.stdout)
    assert dump() == before
    assert would["dry_run"] is True
    # Outbox rows are created now (by publish): none is three days old yet.
    assert (would["deliveries"], would["attempts"], would["outbox"]) == (35, 35, 0)

    real = await asyncio.to_thread(run_cli, path, "prune", "--older-than", "7d", "--json",
                                   cwd=tmp_path)
    assert real.returncode == 0, real.stderr
    did = orjson.loads(real.stdout)
    assert {k: did[k] for k in ("deliveries", "attempts", "batches", "outbox")} == \
        {k: would[k] for k in ("deliveries", "attempts", "batches", "outbox")}
    assert did["dry_run"] is False and did["outbox_below_id"] == 36
    assert count(config.database.state, "deliveries") == 5

    text = await asyncio.to_thread(run_cli, path, "prune", "--dry-run", cwd=tmp_path)
    lines = text.stdout.splitlines()
    assert text.returncode == 0 and len(lines) == 2, text
    assert lines[0].startswith("would prune 0 deliveries (0 attempts, 0 batches) finished before")
    assert lines[1].startswith("would prune 0 outbox rows (below id 36, created before")


async def test_the_same_counts_come_from_a_dry_run_in_process(store):
    """The dry run walks the same selection as the real one (outbox included)."""
    config = store.config
    publish_rows(config, 25)
    now = time.time()
    await fill(store, 20, at=now - 40 * DAY, first_outbox=1)
    await fill(store, 5, at=now - 40 * DAY, first_outbox=21, end=State.PENDING)
    bounds = {"keep_deliveries_s": 30 * DAY, "keep_outbox_s": None}
    dry = await prune(store, now, dry_run=True, **bounds)
    outbox_dry = await prune(store, now + 4 * DAY, dry_run=True, keep_deliveries_s=None,
                             keep_outbox_s=3 * DAY)
    real = await prune(store, now, **bounds)
    outbox_real = await prune(store, now + 4 * DAY, keep_deliveries_s=None, keep_outbox_s=3 * DAY)
    assert (dry.deliveries, dry.attempts) == (real.deliveries, real.attempts) == (20, 20)
    assert outbox_dry.outbox == outbox_real.outbox == 20
    assert dry.released_bytes == 0


def test_prune_refuses_a_state_database_that_needs_init(tmp_path, make_config):
    """No databases yet: one line saying to run init, exit 1; a bad duration: exit 2."""
    config = make_config()
    path = write_config(tmp_path / "c.toml", config)
    line = one_line_error(run_cli(path, "prune", cwd=tmp_path), 1)
    assert "run `" in line and "init`" in line
    assert not config.database.state.exists()
    for bad in ("3x", "0", "0s", "-1d", "7 d"):
        why = usage_error(run_cli(path, "prune", f"--older-than={bad}", cwd=tmp_path))
        assert why.startswith("argument --older-than: expected a duration above 0"), why


def test_prune_refuses_an_old_schema(tmp_path, make_config):
    """A version-4 state database is refused until `init` migrates it; nothing changes."""
    config = make_config()
    conn = sqlite3.connect(config.database.state, isolation_level=None)
    for n, script in enumerate(STATE_MIGRATIONS[:4], 1):
        conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {n};\nCOMMIT;")
    conn.close()
    sqlite3.connect(config.database.outbox).close()
    path = write_config(tmp_path / "c.toml", config)
    line = one_line_error(run_cli(path, "prune", cwd=tmp_path), 1)
    assert "schema version 4, older than" in line, line
    assert read(config.database.state, "PRAGMA user_version") == [(4,)]


# -- the daemon's task ----------------------------------------------------------------------------


async def test_the_daemon_prunes_finished_deliveries_and_the_history_still_answers(
        tmp_path, make_config, make_receiver):
    """A daemon with a 2-second retention removes delivered events, logging what it removed,
    keeps a delivery waiting for its retry however old, and its API lists what is left."""
    receiver = await make_receiver()
    failing = await make_receiver(statuses=[500] * 100)
    config = make_config(delivery={"retry_schedule": (3600.0,)})
    daemon = ApiDaemon(tmp_path, config, extra='\n[retention]\ndeliveries = "2s"\n')
    daemon.init()
    store = await Store.open(config, migrate=False)
    try:
        for org, url in (("org_a", receiver.url), ("org_b", failing.url)):
            webhook, _ = await registry.create(store, config, organization_id=org, url=url,
                                               name=org, now=time.time())
            await registry.set_active(store, webhook.id, True, time.time())
    finally:
        await store.close()
    daemon.start()
    try:
        await daemon.listening()
        # One page: the waiting delivery is the newest, so every delivered one may go.
        emit(config, [*(("fan.created", "org_a", {"n": i}) for i in range(20)),
                      ("fan.created", "org_b", {"n": 20})])
        await wait_until(lambda: len(receiver.requests) == 20 and failing.requests, 30,
                         "20 deliveries and the failing attempt")

        def pruned() -> list[dict[str, Any]]:
            return [ln for ln in daemon.lines() if ln.get("event") == "retention_pruned"]
        await wait_until(lambda: sum(ln["deliveries"] for ln in pruned()) == 20, 30,
                         "retention_pruned lines adding up to 20 deliveries")
        for line in pruned():
            assert line["level"] == "info" and line["deliveries"] > 0, line
            assert line["attempts"] == line["deliveries"] and line["outbox"] == 0, line
            assert isinstance(line["seconds"], float), line
        async with client(daemon) as api:
            a = await api.get("/v1/organizations/org_a/deliveries")
            b = await api.get("/v1/organizations/org_b/deliveries")
        assert a.status == 200 and b.status == 200, (a.raw, b.raw)
        assert a.body["data"] == []
        [waiting] = b.body["data"]
        assert waiting["state"] == "pending" and waiting["attempts"] == 1
        # Runs that remove nothing say nothing (the task runs every second here).
        lines = len(pruned())
        await asyncio.sleep(2.5)
        assert len(pruned()) == lines
        assert count(config.database.state, "deliveries") == 1
        assert daemon.stop() == 0
    finally:
        daemon.kill()
