"""Webhook changes made while the daemon runs cost what they change.

The CLI and the API change webhooks from another process; each change is recorded by
revision in ``webhook_changes``, and the running dispatcher reads back only the webhooks
changed, compiles only their filters and touches only their lanes. When changes were
pruned before it read them, it loads everything again.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from nevent_dispatch import registry
from nevent_dispatch.pipeline import watcher as watcher_module
from nevent_dispatch.pipeline.dispatcher import Dispatcher
from nevent_dispatch.pipeline.filters import compile_filter
from nevent_dispatch.store.sqlite import Store

from ..conftest import emit

AMOUNT_OVER_10 = '{"data.amount": {"$gt": 10}}'


async def until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.02)


class Counted:
    """What the running dispatcher read and compiled: filters compiled (by the real
    compiler), whole loads, and webhooks read back by id."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, store: Store) -> None:
        self.compiled: list[Any] = []
        self.loads = 0
        self.read_back: list[list[str]] = []
        list_webhooks, get_webhooks = store.list_webhooks, store.get_webhooks

        def compiling(doc: Any) -> Any:
            self.compiled.append(doc)
            return compile_filter(doc)

        async def listing(*args: Any, **kw: Any) -> Any:
            self.loads += 1
            return await list_webhooks(*args, **kw)

        async def reading(ids: Any) -> Any:
            ids = list(ids)
            self.read_back.append(ids)
            return await get_webhooks(ids)

        monkeypatch.setattr(watcher_module, "_compile_filter", compiling)
        monkeypatch.setattr(store, "list_webhooks", listing)
        monkeypatch.setattr(store, "get_webhooks", reading)

    def reset(self) -> None:
        self.compiled.clear()
        self.loads = 0
        self.read_back.clear()


@pytest.fixture
async def running(store: Store) -> AsyncIterator[Callable[[], Any]]:
    """Start the real dispatcher on ``store`` (after the test's set-up); stopped at the end."""
    started: list[tuple[Dispatcher, asyncio.Task[None]]] = []

    async def start() -> Dispatcher:
        dispatcher = Dispatcher(store.config, store)
        task = asyncio.create_task(dispatcher.run())
        started.append((dispatcher, task))
        # Loaded: the lane host holds the matcher's view of the webhooks.
        await until(lambda: dispatcher.host.webhooks is dispatcher.matcher.webhooks or task.done(),
                    "the dispatcher loaded its webhooks")
        assert not task.done(), task
        return dispatcher

    yield start
    for dispatcher, task in started:
        dispatcher.stop()
        await asyncio.wait_for(task, 15)


def _numbers(receiver: Any) -> list[int]:
    return sorted(e["data"]["n"] for e in receiver.events())


async def test_updates_disables_and_deletes_take_effect_in_the_running_pipeline(
        store, make_receiver, make_webhook, running):
    """A filter set, a webhook disabled and enabled again, a webhook deleted: each change
    made through the registry is applied by the running dispatcher to the next events."""
    r1, r2 = await make_receiver(), await make_receiver()
    w1, _ = await make_webhook(store, r1.url, name="one")
    w2, _ = await make_webhook(store, r2.url, name="two")
    dispatcher = await running()
    config = store.config

    emit(config, [("fan.created", "org_a", {"n": 0, "amount": 5})])
    await until(lambda: len(r1.requests) == 1 and len(r2.requests) == 1, "event 0 received")

    w1 = await registry.update(store, config, w1.id, filter=AMOUNT_OVER_10, now=time.time())
    await until(lambda: dispatcher.matcher.webhooks.get(w1.id) == w1, "the filter applied")
    emit(config, [("fan.created", "org_a", {"n": 1, "amount": 5}),
                  ("fan.created", "org_a", {"n": 2, "amount": 50})])
    await until(lambda: len(r2.requests) == 3, "events 1 and 2 received")

    await registry.set_active(store, w2.id, False, time.time())
    await until(lambda: w2.id not in dispatcher.matcher.webhooks, "the disable applied")
    await until(lambda: w2.id not in dispatcher.lanes, "the disabled webhook's lane retired")
    emit(config, [("fan.created", "org_a", {"n": 3, "amount": 50})])
    await until(lambda: len(r1.requests) == 3, "event 3 received")

    await registry.delete(store, w1.id, time.time())
    await until(lambda: w1.id not in dispatcher.matcher.webhooks, "the delete applied")
    await until(lambda: w1.id not in dispatcher.lanes, "the deleted webhook's lane retired")
    w2 = await registry.set_active(store, w2.id, True, time.time())
    await until(lambda: dispatcher.matcher.webhooks.get(w2.id) == w2, "the enable applied")
    emit(config, [("fan.created", "org_a", {"n": 4, "amount": 50})])
    await until(lambda: len(r2.requests) == 4, "event 4 received")
    await asyncio.sleep(0.3)  # nothing else arrives late

    assert _numbers(r1) == [0, 2, 3]
    assert _numbers(r2) == [0, 1, 2, 4]
    assert set(dispatcher.host.webhooks) == {w2.id}


async def test_one_change_among_many_webhooks_reads_and_compiles_only_that_one(
        store, make_receiver, make_webhook, running, monkeypatch):
    """With 200 filtered webhooks loaded, changing one reads back that one webhook and
    compiles its filter alone; no full load happens."""
    receiver = await make_receiver()
    hooks = []
    for n in range(200):
        webhook, _ = await make_webhook(store, receiver.url, org=f"org_{n % 20}", name=f"h{n}",
                                        filter=AMOUNT_OVER_10)
        hooks.append(webhook)
    counted = Counted(monkeypatch, store)
    dispatcher = await running()
    assert counted.loads == 1 and len(counted.compiled) == 200
    counted.reset()

    target = hooks[7]
    changed = await registry.update(store, store.config, target.id,
                                    filter='{"data.amount": {"$gt": 1000}}', rate_limit=600,
                                    now=time.time())
    await until(lambda: dispatcher.matcher.webhooks.get(target.id) == changed, "change applied")
    assert counted.read_back == [[target.id]]
    assert counted.compiled == [{"data.amount": {"$gt": 1000}}]
    assert counted.loads == 0

    emit(store.config, [("fan.created", target.organization_id, {"n": 1, "amount": 50})])
    # org_7 has 10 webhooks: the changed one's filter now refuses the event.
    await until(lambda: len(receiver.requests) == 9, "event received by the other 9")
    await asyncio.sleep(0.3)
    assert len(receiver.requests) == 9
    assert dispatcher.lanes.get(target.id) is None


async def test_a_change_touches_the_lane_of_its_webhook_only(
        store, make_receiver, make_webhook, running):
    """A new rate limit gives that webhook's lane a new bucket, a switch to batch mode
    retires that lane; the other webhook's lane keeps its bucket and its webhook."""
    r1, r2 = await make_receiver(), await make_receiver()
    w1, _ = await make_webhook(store, r1.url, name="one")
    w2, _ = await make_webhook(store, r2.url, name="two")
    dispatcher = await running()
    emit(store.config, [("fan.created", "org_a", {"n": 0})])
    await until(lambda: len(r1.requests) == 1 and len(r2.requests) == 1, "event 0 received")
    lane1, lane2 = dispatcher.lanes[w1.id], dispatcher.lanes[w2.id]
    bucket1, bucket2, webhook2 = lane1.bucket, lane2.bucket, lane2.webhook

    w1 = await registry.update(store, store.config, w1.id, rate_limit=120, now=time.time())
    await until(lambda: dispatcher.lanes[w1.id].webhook == w1, "the rate limit applied")
    assert dispatcher.lanes[w1.id] is lane1
    assert lane1.bucket is not bucket1 and lane1.bucket.rate == 2.0
    assert lane2.bucket is bucket2 and lane2.webhook is webhook2

    w1 = await registry.update(store, store.config, w1.id, batch=True, now=time.time())
    await until(lambda: w1.id not in dispatcher.lanes, "the batch switch retired the lane")
    assert lane1.retired and not lane2.retired and dispatcher.lanes[w2.id] is lane2
    emit(store.config, [("fan.created", "org_a", {"n": 1})])
    await until(lambda: len(r1.requests) == 2 and len(r2.requests) == 2, "event 1 received")
    assert r1.requests[-1].json()["type"] == "batch" and r2.requests[-1].json()["data"] == {"n": 1}


async def test_changes_pruned_before_they_were_read_fall_back_to_a_full_reload(
        store, make_receiver, make_webhook, running, monkeypatch):
    """A change whose record is gone before the dispatcher read it (rows pruned beyond
    what it saw) is still applied: everything is loaded again."""
    receiver = await make_receiver()
    w1, _ = await make_webhook(store, receiver.url, filter=AMOUNT_OVER_10, name="one")
    w2, _ = await make_webhook(store, receiver.url, name="two")
    counted = Counted(monkeypatch, store)
    dispatcher = await running()
    counted.reset()

    # Another process disables w2 and prunes every change record in one transaction.
    conn = sqlite3.connect(store.config.database.state)
    try:
        with conn:
            conn.execute("UPDATE webhooks SET active = 0 WHERE id = ?", (w2.id,))
            conn.execute("DELETE FROM webhook_changes")
    finally:
        conn.close()
    await until(lambda: w2.id not in dispatcher.matcher.webhooks, "the disable applied")
    assert counted.loads == 1 and counted.read_back == []
    assert counted.compiled == [w1.filter]  # everything compiled again

    emit(store.config, [("fan.created", "org_a", {"n": 1, "amount": 50})])
    await until(lambda: len(receiver.requests) == 1, "event received by w1")
    await asyncio.sleep(0.3)
    assert [r.json()["data"]["n"] for r in receiver.requests] == [1]

    # Changes recorded after the reload are applied one by one again.
    counted.reset()
    w2 = await registry.set_active(store, w2.id, True, time.time())
    await until(lambda: dispatcher.matcher.webhooks.get(w2.id) == w2, "the enable applied")
    assert counted.loads == 0 and counted.read_back == [[w2.id]]


async def test_the_dispatcher_prunes_the_changes_it_applied_keeping_a_margin(
        store, make_receiver, make_webhook, running, monkeypatch):
    """Applied change records are pruned down to the newest CHANGES_KEPT, in steps."""
    monkeypatch.setattr(watcher_module, "CHANGES_KEPT", 3)
    monkeypatch.setattr(watcher_module, "PRUNE_EVERY", 2)
    receiver = await make_receiver()
    webhook, _ = await make_webhook(store, receiver.url)
    dispatcher = await running()
    for n in range(10):
        webhook = await registry.update(store, store.config, webhook.id, name=f"name {n}",
                                        now=time.time())
        await until(lambda w=webhook: dispatcher.matcher.webhooks.get(w.id) == w, "applied")
    rev = await store.webhooks_rev()

    def revs() -> list[int]:
        conn = sqlite3.connect(store.config.database.state)
        try:
            return [r[0] for r in conn.execute("SELECT rev FROM webhook_changes ORDER BY rev")]
        finally:
            conn.close()

    await until(lambda: len(revs()) < 3 + 2, "the applied changes pruned")
    kept = revs()
    assert kept == list(range(rev - len(kept) + 1, rev + 1)) and len(kept) >= 3


async def test_the_store_reads_changes_since_a_revision_and_detects_pruned_ones(
        store, make_receiver, make_webhook):
    """webhook_changes_since gives each changed id once with the revision reached, and None
    for the ids once rows after the revision asked about were pruned."""
    receiver = await make_receiver()
    w1, _ = await make_webhook(store, receiver.url)  # created, then enabled: revisions 1, 2
    w2, _ = await make_webhook(store, receiver.url, active=False)  # revision 3
    assert await store.webhook_changes_since(0) == (3, [w1.id, w2.id])
    assert await store.webhook_changes_since(2) == (3, [w2.id])
    assert await store.webhook_changes_since(3) == (3, [])
    await registry.delete(store, w1.id, time.time())
    assert await store.webhook_changes_since(3) == (4, [w1.id])
    assert {w.id for w in await store.get_webhooks([w1.id, w2.id, "wh_missing"])} == {w2.id}

    assert await store.prune_webhook_changes(2) == 2
    assert await store.webhook_changes_since(0) == (4, None)
    assert await store.webhook_changes_since(2) == (4, [w2.id, w1.id])
    assert await store.webhook_changes_since(9) == (4, None)  # a database restored behind us
