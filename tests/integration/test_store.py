"""The store on real SQLite files: migrations, pragmas, permissions, the public API."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
from pathlib import Path

import orjson
import pytest

import nevent_dispatch
from nevent_dispatch.config import Config, load
from nevent_dispatch.store.sqlite import SCHEMA_VERSION, Store, StoreError


def _config(tmp_path: Path, same_file: bool = False) -> Config:
    state = tmp_path / ("app.db" if same_file else "state.db")
    return Config().replace(database={"outbox": tmp_path / "app.db", "state": state})


async def test_init_creates_every_table_from_empty_files_and_is_idempotent(tmp_path):
    """Opening twice migrates once; the outbox table is exactly the contract's."""
    config = _config(tmp_path)
    for _ in range(2):
        store = await Store.open(config)
        await store.migrate()
        await store.close()
    state = sqlite3.connect(config.database.state)
    tables = {r[0] for r in state.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"webhooks", "deliveries", "attempts", "batch_contents", "batch_waiting",
            "batch_marks", "meta"} <= tables
    assert state.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert state.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    app = sqlite3.connect(config.database.outbox)
    columns = [r[1] for r in app.execute("PRAGMA table_info(outbox)")]
    assert columns == ["id", "event_id", "type", "organization_id", "data", "created"]
    assert app.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_outbox_and_state_may_share_one_file(tmp_path):
    """database.state may be the application's own file."""
    config = _config(tmp_path, same_file=True)
    store = await Store.open(config)
    try:
        assert await store.cursor() == 0
        assert await store.outbox_page(0, 10) == []
    finally:
        await store.close()


async def test_a_newer_schema_is_refused_with_a_clear_error(tmp_path):
    """A state database from a newer nevent-dispatch is not touched."""
    config = _config(tmp_path)
    conn = sqlite3.connect(config.database.state)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer than this nevent-dispatch understands"):
        await Store.open(config)


async def test_databases_created_by_the_daemon_are_private(tmp_path):
    """Files the daemon creates are readable by their owner only."""
    config = _config(tmp_path)
    store = await Store.open(config)
    await store.close()
    for path in tmp_path.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path


def test_example_config_loads_to_exactly_the_defaults():
    """config.example.toml documents every key with its default value (its relative paths
    taken, like every path written in a config file, relative to the file's folder)."""
    example = Path(__file__).parents[2] / "config.example.toml"
    defaults = Config()
    root = example.parent
    assert load(example) == defaults.replace(database={
        "outbox": root / defaults.database.outbox, "state": root / defaults.database.state})


def test_example_config_mentions_every_key():
    """No key is missing from config.example.toml."""
    import dataclasses

    text = (Path(__file__).parents[2] / "config.example.toml").read_text()
    for table in dataclasses.fields(Config):
        assert f"[{table.name}]" in text
        for key in dataclasses.fields(getattr(Config(), table.name)):
            assert f"\n{key.name} = " in text, f"{table.name}.{key.name}"


def test_public_api_is_pinned():
    """The package exports publish, verify, sign and the signature errors, nothing else."""
    assert sorted(nevent_dispatch.__all__) == sorted([
        "BadSignature", "DispatchError", "MalformedHeader", "SignatureError", "StaleTimestamp",
        "ValidationError", "__version__", "publish", "sign", "verify"])
    for name in nevent_dispatch.__all__:
        assert hasattr(nevent_dispatch, name)


async def test_a_write_cancelled_at_any_point_leaves_no_transaction_open(tmp_path):
    """Cancelling writers mid-flight never leaves BEGIN behind: the next write still works."""
    import asyncio

    store = await Store.open(_config(tmp_path))
    try:
        for delay in [0, 0, 0.0001, 0.0005, 0.001, 0.002]:
            for _ in range(5):
                task = asyncio.create_task(store.record_results([], [], []))
                await asyncio.sleep(delay)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await store.record_results([], [], [])
        assert await store.recover_claimed(0.0) == 0
    finally:
        await store.close()


async def test_batch_events_are_stored_per_page_and_leave_waiting_once_batched(tmp_path):
    """A page's waiting events are one row; a batch takes some, the rest still wait, in order."""
    from nevent_dispatch.models import Kind, State
    from nevent_dispatch.pipeline.attempts import new_delivery_row

    store = await Store.open(_config(tmp_path))
    try:
        page = [(n, f"evt_{n}", "fan.created") for n in (3, 5, 8, 9, 12)]
        await store.record_intake([], [("wh_a", 12, orjson.dumps(page).decode()),
                                       ("wh_b", 4, orjson.dumps([(4, "evt_4", "x")]).decode())],
                                  cursor=12)
        assert await store.cursor() == 12
        assert await store.waiting_events("wh_a", 0, 100) == page
        assert await store.waiting_events("wh_a", 5, 2) == page[2:4]  # after a lane's mark

        def batch_row(count: int) -> tuple:
            return new_delivery_row(webhook_id="wh_a", kind=Kind.BATCH, event_type="batch",
                                    event_id=None, outbox_id=None, event_count=count,
                                    state=State.QUEUED, now=1.0)

        [first] = await store.create_batches([(batch_row(3), "wh_a", page[:3])])
        assert await store.batch_events(first) == page[:3]
        assert await store.waiting_events("wh_a", 0, 100) == page[3:]
        assert sorted(await store.waiting_webhooks()) == ["wh_a", "wh_b"]

        [second] = await store.create_batches([(batch_row(2), "wh_a", page[3:])])
        assert await store.batch_events(second) == page[3:]
        assert await store.waiting_events("wh_a", 0, 100) == []
        assert await store.waiting_webhooks() == ["wh_b"]  # wh_a's fully batched row is gone
    finally:
        await store.close()


async def test_reads_never_see_a_write_transaction_before_it_commits(store):
    """A read made while another coroutine's write transaction is open sees only committed
    rows (reads go through their own connection): a refill cannot queue a page twice."""
    from nevent_dispatch.models import Kind, State
    from nevent_dispatch.pipeline.attempts import new_delivery_row

    inside = asyncio.Event()
    go_on = asyncio.Event()
    row = new_delivery_row(webhook_id="wh_x", kind=Kind.EVENT, event_type="fan.created",
                           event_id="evt_1", outbox_id=1, event_count=1, state=State.PENDING,
                           now=1000.0)

    async def work(db):
        await db.execute(store_queries()["insert_delivery"], (1, *row))
        inside.set()
        await go_on.wait()

    writer = asyncio.create_task(store._transact(work))
    await inside.wait()
    assert await store.next_due("wh_x") is None  # uncommitted: invisible
    assert await store.list_deliveries(webhook_id="wh_x") == []
    go_on.set()
    await writer
    assert await store.next_due("wh_x") == 1000.0


def store_queries():
    from nevent_dispatch.store.sqlite.sql import QUERIES
    return QUERIES
