"""Restart and upgrade: a version-1 state database opens with nothing lost and its work finished.

``tests/fixtures/state_v1.db`` and ``outbox_v1.db`` (built by
``tests/fixtures/make_state_v1.py``) hold a daemon's databases stopped in the
middle of its work. A copy is opened with ``Store.open`` (which migrates) and
must keep every webhook, delivery, attempt and batch; the dispatcher then
sends exactly the pending work, with the delivery ids the history already gave
it. A database from a newer version is refused in one line.
"""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from nevent_dispatch import registry
from nevent_dispatch.models import State
from nevent_dispatch.store.sqlite import SCHEMA_VERSION, Store

from ..conftest import drain, emit, seed_verify
from .conftest import one_line_error, run_cli, toml_config, wait_until

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _load_generator() -> Any:
    spec = importlib.util.spec_from_file_location("make_state_v1", FIXTURES / "make_state_v1.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


v1 = _load_generator()


@pytest.fixture
def v1_config(tmp_path: Path, make_config: Any) -> Any:
    """A config on copies of the version-1 fixture databases."""
    state, outbox = tmp_path / "state.db", tmp_path / "app.db"
    shutil.copyfile(FIXTURES / "state_v1.db", state)
    shutil.copyfile(FIXTURES / "outbox_v1.db", outbox)
    return make_config(database={"state": state, "outbox": outbox})


def test_the_fixture_is_what_its_generator_builds(tmp_path):
    """The committed databases match make_state_v1.py (rebuild them if this fails)."""
    v1.build(tmp_path / "state.db", tmp_path / "app.db")

    def dump(path: Path) -> list[str]:
        conn = sqlite3.connect(path)
        try:
            return list(conn.iterdump())
        finally:
            conn.close()

    assert dump(tmp_path / "state.db") == dump(FIXTURES / "state_v1.db")
    assert dump(tmp_path / "app.db") == dump(FIXTURES / "outbox_v1.db")


async def test_a_version_1_state_database_opens_with_nothing_lost(v1_config):
    """Webhooks (secrets, filters, modes), deliveries, attempts, batches and cursor all survive."""
    store = await Store.open(v1_config)
    try:
        assert await store.list_webhooks() == v1.WEBHOOKS
        assert await store.cursor() == 8
        found = {}
        for delivery in await store.list_deliveries(limit=100):
            found[delivery.uuid] = (delivery.webhook_id, delivery.kind.value, delivery.outbox_id,
                                    delivery.state.value, delivery.attempts)
        assert found == v1.EXPECTED
        failed = await store.get_delivery(v1.delivery_uuid(2))
        attempts = await store.attempts(failed.id)
        assert [a.status for a in attempts] == [500] * 6 and attempts[0].response == "boom"
        batch = await store.get_delivery(v1.delivery_uuid(9))
        assert [i[1] for i in await store.batch_events(batch.id)] == [
            "evt_000000000000000000000002", "evt_000000000000000000000003"]
        test = await store.get_delivery(v1.delivery_uuid(10))
        assert b"evt_test0000000000000000001" in (await store.delivery_body(test.id) or b"")
    finally:
        await store.close()
    conn = sqlite3.connect(v1_config.database.state)
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        conn.close()


async def test_the_pending_work_of_a_version_1_database_is_delivered_with_its_ids(
        v1_config, make_receiver):
    """Pending, claimed and unbatched work is sent once, under the ids the history holds."""
    store = await Store.open(v1_config)
    try:
        receivers = {}
        for webhook in v1.WEBHOOKS:
            receivers[webhook.id] = receiver = await make_receiver()
            await registry.update(store, v1_config, webhook.id, url=receiver.url, now=time.time())
        dispatcher = await drain(v1_config, store)

        a1, a2, a3, b1 = (receivers[w.id] for w in v1.WEBHOOKS)
        by_id = {w.id: w for w in v1.WEBHOOKS}
        for webhook_id, receiver in receivers.items():
            for request in receiver.requests:
                assert seed_verify(request.body, request.headers["X-Nevent-Signature"],
                                   by_id[webhook_id].secret)
        assert sorted((r.headers["X-Nevent-Delivery"], r.json()["id"]) for r in a1.requests) == [
            (v1.delivery_uuid(3), "evt_000000000000000000000003"),
            (v1.delivery_uuid(4), "evt_000000000000000000000004"),
            (v1.delivery_uuid(5), "evt_000000000000000000000005"),
        ]
        assert [e["id"] for e in a2.events()] == ["evt_000000000000000000000007"]
        assert a2.requests[0].headers["X-Nevent-Event"] == "batch"
        assert a3.requests == []
        assert [(r.headers["X-Nevent-Delivery"], r.json()["data"]) for r in b1.requests] == [
            (v1.delivery_uuid(6), {"fan": {"id": "fan_9", "tags": ["vip"]}})]
        assert dispatcher.stats["attempts"] == 5

        states = {d.uuid: d.state for d in await store.list_deliveries(limit=100)}
        assert states[v1.delivery_uuid(2)] is State.FAILED
        assert states[v1.delivery_uuid(8)] is State.REJECTED
        assert sum(s is State.DELIVERED for s in states.values()) == len(states) - 2
    finally:
        await store.close()


async def test_a_version_1_database_keeps_working_for_new_events(v1_config, make_receiver):
    """After the upgrade, new outbox rows are read after the old cursor and delivered."""
    store = await Store.open(v1_config)
    try:
        receiver = await make_receiver()
        for webhook in v1.WEBHOOKS:
            await registry.update(store, v1_config, webhook.id, url=receiver.url, now=time.time())
        emit(v1_config, [("fan.created", "org_b", {"fan": {"tags": ["vip"]}, "new": True})])
        await drain(v1_config, store)
        assert any(e["data"].get("new") for e in receiver.events())
        assert await store.cursor() == 9
    finally:
        await store.close()


@pytest.mark.parametrize("command", [("init",), ("run", "--until-idle"),
                                     ("deliveries", "list")])
def test_a_state_database_newer_than_supported_is_refused_in_one_line(command, v1_config,
                                                                      tmp_path):
    """user_version above the code's: one line naming the versions, exit 1, file untouched."""
    conn = sqlite3.connect(v1_config.database.state)
    with conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    before = list(conn.iterdump())
    conn.close()
    path = toml_config(tmp_path / "newer.toml", v1_config)
    line = one_line_error(run_cli(*command, config_path=path, cwd=tmp_path), 1, 2)
    assert f"schema version {SCHEMA_VERSION + 1} is newer" in line, line
    assert "upgrade nevent-dispatch" in line
    conn = sqlite3.connect(v1_config.database.state)
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION + 1,)
        assert list(conn.iterdump()) == before
    finally:
        conn.close()


@pytest.mark.slow
async def test_a_restarted_daemon_retries_with_the_same_delivery_id(
        store, make_config, make_receiver, make_webhook, daemon):
    """Stopped between a failed attempt and its retry, the next daemon retries the same delivery."""
    config = make_config(delivery={"retry_schedule": (1.5,)})
    receiver = await make_receiver(statuses=[500])
    await make_webhook(store, receiver.url)
    first = daemon(config)
    emit(config, [("fan.created", "org_a", {"n": 1})])
    await wait_until(lambda: len(receiver.requests) == 1, 15, what="the first attempt")
    await asyncio.sleep(0.2)  # let the result be recorded
    first.signal(signal.SIGTERM)
    assert await asyncio.to_thread(first.wait, 15) == 0
    assert len(receiver.requests) == 1

    second = daemon(config, "", "--until-idle")
    assert await asyncio.to_thread(second.wait, 30) == 0
    assert [r.headers["X-Nevent-Delivery"] for r in receiver.requests] == [
        receiver.requests[0].headers["X-Nevent-Delivery"]] * 2
    [delivery] = await store.list_deliveries()
    assert delivery.state is State.DELIVERED and delivery.attempts == 2
