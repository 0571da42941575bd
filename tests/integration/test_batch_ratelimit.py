"""Batch mode, the per-webhook token bucket and filters, end to end."""

from __future__ import annotations

import asyncio
import time

import orjson
from aiohttp import web

from nevent_dispatch.clock import FastClock
from nevent_dispatch.models import Kind, State
from nevent_dispatch.wire.samples import sample_data

from ..conftest import drain, emit, seed_verify


async def test_a_batch_webhook_gets_250_events_in_three_requests_of_at_most_100(
        store, make_receiver, make_webhook):
    """250 events → 3 batch requests of ≤ 100 that carry each event exactly once."""
    receiver = await make_receiver()
    webhook, secret = await make_webhook(store, receiver.url, batch=True, rate_limit=100_000)
    emit(store.config, [("fan.created", "org_a", {"n": n}) for n in range(250)])
    await drain(store.config, store)

    assert len(receiver.requests) == 3
    for request in receiver.requests:
        assert request.headers["X-Nevent-Event"] == "batch"
        assert seed_verify(request.body, request.headers["X-Nevent-Signature"], secret)
        body = request.json()
        assert body["type"] == "batch" and 1 <= len(body["events"]) <= 100
        assert all(list(e) == ["id", "type", "created", "data", "organization_id"]
                   for e in body["events"])
    numbers = [e["data"]["n"] for e in receiver.events()]
    assert sorted(numbers) == list(range(250))
    assert len({e["id"] for e in receiver.events()}) == 250
    assert len({r.headers["X-Nevent-Delivery"] for r in receiver.requests}) == 3


async def test_the_history_shows_which_events_each_batch_carried(store, make_receiver,
                                                                 make_webhook):
    """Each batch delivery lists its events; together they are the events sent."""
    receiver = await make_receiver()
    webhook, _ = await make_webhook(store, receiver.url, batch=True, rate_limit=100_000)
    emit(store.config, [("fan.created", "org_a", {"n": n}) for n in range(150)])
    await drain(store.config, store)
    batches = await store.list_deliveries(webhook_id=webhook.id)
    assert all(b.kind is Kind.BATCH and b.state is State.DELIVERED for b in batches)
    carried = [item[1] for b in batches for item in await store.batch_events(b.id)]
    assert sorted(carried) == sorted(e["id"] for e in receiver.events())
    assert sum(b.event_count for b in batches) == 150


async def test_a_failed_batch_is_retried_as_the_same_batch(store, make_receiver, make_webhook):
    """Same delivery id, same events, on the retry of a batch."""
    receiver = await make_receiver(statuses=[500])
    await make_webhook(store, receiver.url, batch=True, rate_limit=100_000)
    emit(store.config, [("fan.created", "org_a", {"n": n}) for n in range(40)])
    await drain(store.config, store)
    first, second = receiver.requests
    assert first.headers["X-Nevent-Delivery"] == second.headers["X-Nevent-Delivery"]
    assert first.body == second.body


async def test_an_oversized_batch_is_split_under_the_byte_limit(store, make_receiver,
                                                                make_webhook, make_config):
    """Ten 300 KB events go out in batches that each stay under 1 MB."""
    config = make_config()
    receiver = await make_receiver()
    await make_webhook(store, receiver.url, batch=True, rate_limit=100_000)
    emit(config, [("fan.created", "org_a", {"n": n, "pad": "x" * 300_000}) for n in range(10)])
    await drain(config, store)
    assert all(len(r.body) <= 1_048_576 for r in receiver.requests)
    assert len(receiver.requests) >= 4
    assert sorted(e["data"]["n"] for e in receiver.events()) == list(range(10))


async def test_rate_limited_webhook_gets_everything_in_order_within_the_limit(
        store, make_receiver, make_webhook, make_config):
    """120/min, 300 events: all arrive, in order, no 60 s window over 120 + burst."""
    clock = FastClock(speed=60.0)
    arrivals: list[tuple[float, int]] = []

    async def record(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        arrivals.append((clock.monotonic(), body["data"]["n"]))
        return web.Response(text="ok")

    config = make_config(delivery={"max_in_flight_per_webhook": 1}, rate_limit={"burst": 20})
    limited = await make_receiver(handler=record)
    free = await make_receiver()
    await make_webhook(store, limited.url, rate_limit=120, name="limited")
    await make_webhook(store, free.url, rate_limit=100_000, name="free")
    emit(config, [("fan.created", "org_a", {"n": n}) for n in range(300)])

    from nevent_dispatch.pipeline.dispatcher import Dispatcher

    dispatcher = Dispatcher(config, store, clock=clock)
    task = asyncio.create_task(dispatcher.run(until_idle=True))
    try:
        for _ in range(200):  # the unlimited webhook is not held back by the limited one
            if len(free.requests) == 300:
                break
            await asyncio.sleep(0.05)
        assert len(free.requests) == 300
        assert len(arrivals) < 300, "the limited webhook is still waiting for tokens"
        await asyncio.wait_for(task, 60)
    finally:
        dispatcher.stop()
        await asyncio.gather(task, return_exceptions=True)

    assert [n for _, n in arrivals] == list(range(300))
    times = [t for t, _ in arrivals]
    for i, start in enumerate(times):
        assert sum(1 for t in times[i:] if t < start + 60) <= 120 + 20
    # 300 events at 2/s after a burst of 20 take at least 140 clock seconds.
    assert times[-1] - times[0] >= 139


async def test_purchases_over_100_euros_filter(store, make_receiver, make_webhook):
    """The docs' example 'Solo purchases > 100€' as a filter, end to end."""
    receiver = await make_receiver()
    await make_webhook(store, receiver.url, events="purchase.completed",
                       filter='{"data.purchase.total": {"$gt": 100}}')
    big = sample_data("purchase.completed")
    small = sample_data("purchase.completed")
    small["purchase"]["total"] = 85.0
    emit(store.config, [("purchase.completed", "org_a", big), ("purchase.completed", "org_a", small),
                        ("fan.created", "org_a", big)])
    await drain(store.config, store)
    assert [e["data"]["purchase"]["total"] for e in receiver.events()] == [170.0]


async def test_vip_tickets_filter(store, make_receiver, make_webhook):
    """The docs' Slack example 'ticket_type = VIP': a path through the tickets array."""
    receiver = await make_receiver()
    await make_webhook(store, receiver.url, filter='{"data.purchase.tickets.type": "VIP"}')
    general = sample_data("purchase.completed")
    vip = sample_data("purchase.completed")
    vip["purchase"]["tickets"].append({"type": "VIP", "quantity": 1, "price": 250.0,
                                       "currency": "EUR"})
    vip["purchase"]["id"] = "pur_vip"
    emit(store.config, [("purchase.completed", "org_a", general),
                        ("purchase.completed", "org_a", vip)])
    await drain(store.config, store)
    assert [e["data"]["purchase"]["id"] for e in receiver.events()] == ["pur_vip"]


async def test_disabling_a_webhook_stops_its_queued_events_and_enabling_resumes_them(
        store, make_receiver, make_webhook, make_config):
    """Events queued behind a rate limit wait while the webhook is disabled, then all arrive."""
    from nevent_dispatch import registry
    from nevent_dispatch.pipeline.dispatcher import Dispatcher

    clock = FastClock(speed=20.0)
    config = make_config(rate_limit={"burst": 5})
    receiver = await make_receiver()
    webhook, _ = await make_webhook(store, receiver.url, rate_limit=60)
    emit(config, [("fan.created", "org_a", {"n": n}) for n in range(40)])
    dispatcher = Dispatcher(config, store, clock=clock)
    task = asyncio.create_task(dispatcher.run())
    try:
        for _ in range(100):
            if len(receiver.requests) >= 10:
                break
            await asyncio.sleep(0.05)
        await registry.set_active(store, webhook.id, False, time.time())
        await asyncio.sleep(1.0)  # the daemon notices within half a second
        paused_at = len(receiver.requests)
        await asyncio.sleep(1.0)
        assert len(receiver.requests) == paused_at < 40
        await registry.set_active(store, webhook.id, True, time.time())
        for _ in range(300):
            if len({e["id"] for e in receiver.events()}) == 40:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # let the last results be recorded
    finally:
        dispatcher.stop()
        await asyncio.gather(task, return_exceptions=True)
    numbers = [e["data"]["n"] for e in receiver.events()]
    assert sorted(set(numbers)) == list(range(40))
    counts = await store.counts_by_state()
    assert counts == {"delivered": 40}
