"""The delivery engine end to end: real TLS receivers, real SQLite, the real dispatcher."""

from __future__ import annotations

import time
import uuid

import orjson
import pytest
from aiohttp import web

from nevent_dispatch.models import Outcome, State
from nevent_dispatch.wire.signing import verify

from ..conftest import drain, emit, insert_raw, seed_verify


async def test_event_arrives_with_every_documented_header(store, make_receiver, make_webhook):
    """A published event reaches its webhook with the seed's headers, body and a valid signature."""
    receiver = await make_receiver()
    webhook, secret = await make_webhook(store, receiver.url)
    emit(store.config, [("purchase.completed", "org_a", {"purchase": {"total": 170.0}})])
    await drain(store.config, store)

    [request] = receiver.requests
    h = request.headers
    assert h["Content-Type"] == "application/json"
    assert h["User-Agent"] == "Nevent-Webhooks/1.0"
    assert h["X-Nevent-Event"] == "purchase.completed"
    uuid.UUID(h["X-Nevent-Delivery"])
    assert seed_verify(request.body, h["X-Nevent-Signature"], secret)
    t = int(h["X-Nevent-Signature"].split(",")[0].removeprefix("t="))
    assert abs(t - time.time()) < 60
    body = request.json()
    assert list(body) == ["id", "type", "created", "data", "organization_id"]
    assert body["type"] == "purchase.completed" and body["organization_id"] == "org_a"
    assert body["data"] == {"purchase": {"total": 170.0}}
    assert body["id"].startswith("evt_")
    assert verify(request.body, h["X-Nevent-Signature"], secret)["id"] == body["id"]


async def test_failed_attempts_are_retried_with_the_same_delivery_id_and_a_fresh_signature(
        store, make_receiver, make_webhook, make_config):
    """A receiver failing twice then answering 200 sees one delivery id, re-signed each time."""
    config = make_config(delivery={"retry_schedule": (1.1, 1.1)})
    receiver = await make_receiver(statuses=[500, 503])
    webhook, secret = await make_webhook(store, receiver.url)
    emit(config, [("fan.created", "org_a", {"fan": {"id": "fan_1"}})])
    await drain(config, store)

    assert len(receiver.requests) == 3
    ids = {r.headers["X-Nevent-Delivery"] for r in receiver.requests}
    assert len(ids) == 1
    stamps = [r.headers["X-Nevent-Signature"].split(",")[0] for r in receiver.requests]
    assert len(set(stamps)) == 3, "each attempt is signed at its own time"
    assert all(seed_verify(r.body, r.headers["X-Nevent-Signature"], secret) for r in receiver.requests)
    [delivery] = await store.list_deliveries(webhook_id=webhook.id)
    assert delivery.state is State.DELIVERED and delivery.attempts == 3
    attempts = await store.attempts(delivery.id)
    assert [a.status for a in attempts] == [500, 503, 200]
    assert [a.outcome for a in attempts] == [Outcome.HTTP_ERROR, Outcome.HTTP_ERROR, Outcome.SUCCESS]
    assert attempts[0].response == "nope"


async def test_delivery_fails_after_the_last_scheduled_retry(store, make_receiver, make_webhook,
                                                             make_config):
    """First attempt plus one retry per schedule step, then the delivery is failed."""
    config = make_config(delivery={"retry_schedule": (0.05, 0.05, 0.05)})
    receiver = await make_receiver(statuses=[500] * 10)
    webhook, _ = await make_webhook(store, receiver.url)
    emit(config, [("fan.created", "org_a", {})])
    await drain(config, store)
    assert len(receiver.requests) == 4
    [delivery] = await store.list_deliveries(webhook_id=webhook.id)
    assert delivery.state is State.FAILED and delivery.last_status == 500


async def test_webhook_without_retries_gets_one_attempt(store, make_receiver, make_webhook):
    """Retries off: one attempt, then failed."""
    receiver = await make_receiver(statuses=[500, 500])
    webhook, _ = await make_webhook(store, receiver.url, retries=False)
    emit(store.config, [("fan.created", "org_a", {})])
    await drain(store.config, store)
    assert len(receiver.requests) == 1
    [delivery] = await store.list_deliveries(webhook_id=webhook.id)
    assert delivery.state is State.FAILED


async def test_slow_receiver_times_out_and_is_retried(store, make_receiver, make_webhook,
                                                      make_config):
    """An answer slower than delivery.timeout is a timeout outcome, and retried."""
    config = make_config(delivery={"timeout": 0.3, "retry_schedule": (0.05,)})
    receiver = await make_receiver(delay=1.0)
    webhook, _ = await make_webhook(store, receiver.url)
    emit(config, [("fan.created", "org_a", {})])
    await drain(config, store)
    [delivery] = await store.list_deliveries(webhook_id=webhook.id)
    attempts = await store.attempts(delivery.id)
    assert [a.outcome for a in attempts] == [Outcome.TIMEOUT, Outcome.TIMEOUT]
    assert all(a.latency_ms < 1000 for a in attempts)
    assert delivery.state is State.FAILED


async def test_redirects_are_not_followed(store, make_receiver, make_webhook):
    """A 302 is a failed attempt; its Location is never requested."""
    target = await make_receiver()
    receiver = await make_receiver(statuses=[302], headers={"Location": target.url})
    webhook, _ = await make_webhook(store, receiver.url, retries=False)
    emit(store.config, [("fan.created", "org_a", {})])
    await drain(store.config, store)
    assert target.requests == []
    [delivery] = await store.list_deliveries(webhook_id=webhook.id)
    [attempt] = await store.attempts(delivery.id)
    assert attempt.status == 302 and attempt.outcome is Outcome.HTTP_ERROR
    assert "redirects are not followed" in (attempt.error or "")


async def test_retry_after_is_honoured_up_to_the_last_step(store, make_receiver, make_webhook,
                                                          make_config):
    """A 429 asking for 1 s waits 1 s even though the schedule says 0.05 s."""
    config = make_config(delivery={"retry_schedule": (0.05, 2.0)})
    receiver = await make_receiver(statuses=[429], headers={"Retry-After": "1"})
    await make_webhook(store, receiver.url)
    emit(config, [("fan.created", "org_a", {})])
    await drain(config, store)
    first, second = receiver.requests
    assert second.received_at - first.received_at >= 0.9


async def test_payload_at_the_limit_is_sent_and_one_byte_more_is_rejected(
        store, make_receiver, make_webhook, make_config):
    """An envelope of exactly max_payload_bytes goes out; one byte more is a rejected record."""
    limit = 4096
    config = make_config(delivery={"max_payload_bytes": limit})
    receiver = await make_receiver()
    webhook, _ = await make_webhook(store, receiver.url)
    probe = {"id": "evt_" + "0" * 24, "type": "fan.created", "created": int(time.time()),
             "data": {"pad": ""}, "organization_id": "org_a"}
    padding = limit - len(orjson.dumps(probe))
    emit(config, [("fan.created", "org_a", {"pad": "x" * padding}),
                  ("fan.created", "org_a", {"pad": "x" * (padding + 1)}),
                  ("fan.created", "org_a", {"after": True})])
    await drain(config, store)
    sizes = sorted(len(r.body) for r in receiver.requests)
    assert limit in sizes and len(receiver.requests) == 2
    rejected = await store.list_deliveries(state="rejected")
    assert len(rejected) == 1 and "over the 4096-byte limit" in (rejected[0].last_error or "")
    assert receiver.events()[-1]["data"] == {"after": True}


async def test_bad_outbox_rows_are_rejected_and_the_rows_after_them_delivered(
        store, make_receiver, make_webhook):
    """Invalid JSON, a JSON array and an empty type are rejected records; nothing stops."""
    receiver = await make_receiver()
    await make_webhook(store, receiver.url)
    insert_raw(store.config, [
        ("fan.created", "org_a", "{not json"),
        ("fan.created", "org_a", "[1, 2]"),
        ("", "org_a", "{}"),
        ("fan.created", "org_a", b"\xff\xfe{}"),
        ("fan.created", "org_a", '{"ok": true}'),
    ])
    await drain(store.config, store)
    assert [e["data"] for e in receiver.events()] == [{"ok": True}]
    reasons = sorted(d.last_error or "" for d in await store.list_deliveries(state="rejected"))
    assert len(reasons) == 4
    assert any("not valid JSON" in r for r in reasons)
    assert any("JSON object, got a JSON array" in r for r in reasons)
    assert any("type is empty" in r for r in reasons)
    assert any("UTF-8" in r or "JSON" in r for r in reasons)


async def test_events_only_reach_webhooks_of_their_own_organization(store, make_receiver,
                                                                   make_webhook):
    """Org B's webhook never sees org A's event, and the other way round."""
    a, b = await make_receiver(), await make_receiver()
    await make_webhook(store, a.url, org="org_a")
    await make_webhook(store, b.url, org="org_b")
    emit(store.config, [("fan.created", "org_a", {"who": "a"}), ("fan.created", "org_b", {"who": "b"})])
    await drain(store.config, store)
    assert [e["organization_id"] for e in a.events()] == ["org_a"]
    assert [e["organization_id"] for e in b.events()] == ["org_b"]


async def test_only_active_webhooks_subscribed_to_the_type_receive_it(store, make_receiver,
                                                                    make_webhook):
    """Inactive webhooks and webhooks of other types receive nothing."""
    r = await make_receiver()
    await make_webhook(store, r.url, active=False, name="inactive")
    await make_webhook(store, r.url, events="fan.*", name="fans only")
    await make_webhook(store, r.url, events="purchase.completed", name="purchases")
    emit(store.config, [("purchase.completed", "org_a", {}), ("fan.updated", "org_a", {}),
                        ("email.sent", "org_a", {})])
    await drain(store.config, store)
    assert sorted(e["type"] for e in r.events()) == ["fan.updated", "purchase.completed"]


async def test_private_destinations_are_refused_at_connect_time(store, make_receiver,
                                                                make_webhook, make_config):
    """With private networks disallowed, a webhook on 127.0.0.1 is refused, not sent."""
    receiver = await make_receiver()
    webhook, _ = await make_webhook(store, receiver.url)
    strict = make_config(delivery={"allow_private_networks": False})
    emit(strict, [("fan.created", "org_a", {})])
    await drain(strict, store)
    assert receiver.requests == []
    [delivery] = await store.list_deliveries(webhook_id=webhook.id)
    [attempt] = await store.attempts(delivery.id)
    assert attempt.outcome is Outcome.REFUSED and delivery.state is State.FAILED


async def test_private_hostnames_are_refused_after_resolution(store, make_receiver, make_webhook,
                                                              make_config):
    """localhost resolves to loopback: refused at connect time though the URL has no IP."""
    receiver = await make_receiver()
    webhook, _ = await make_webhook(store, receiver.url.replace("127.0.0.1", "localhost"))
    strict = make_config(delivery={"allow_private_networks": False})
    emit(strict, [("fan.created", "org_a", {})])
    await drain(strict, store)
    assert receiver.requests == []
    [delivery] = await store.list_deliveries(webhook_id=webhook.id)
    [attempt] = await store.attempts(delivery.id)
    assert attempt.outcome is Outcome.REFUSED
    assert "loopback" in (attempt.error or "")


async def test_untrusted_certificate_is_a_tls_error(store, make_receiver, make_webhook,
                                                    make_config, tmp_path):
    """Without the local CA trusted, the attempt fails as a TLS error."""
    receiver = await make_receiver()
    webhook, _ = await make_webhook(store, receiver.url, retries=False)
    untrusting = make_config(delivery={"ca_file": None})
    emit(untrusting, [("fan.created", "org_a", {})])
    await drain(untrusting, store)
    [delivery] = await store.list_deliveries(webhook_id=webhook.id)
    [attempt] = await store.attempts(delivery.id)
    assert attempt.outcome is Outcome.TLS_ERROR


async def test_webhooks_created_while_running_receive_events(store, make_receiver, make_webhook):
    """A webhook enabled while the dispatcher runs gets the next events without a restart."""
    import asyncio

    from nevent_dispatch.pipeline.dispatcher import Dispatcher

    receiver = await make_receiver()
    dispatcher = Dispatcher(store.config, store)
    task = asyncio.create_task(dispatcher.run())
    try:
        await asyncio.sleep(0.2)
        await make_webhook(store, receiver.url)
        await asyncio.sleep(1.0)
        emit(store.config, [("fan.created", "org_a", {"n": 1})])
        for _ in range(100):
            if receiver.requests:
                break
            await asyncio.sleep(0.05)
        assert len(receiver.requests) == 1
    finally:
        dispatcher.stop()
        await asyncio.wait_for(task, 15)


async def test_receiver_errors_never_stop_the_loop(store, make_receiver, make_webhook):
    """A receiver that resets connections fails its deliveries; others still deliver."""

    async def reset(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.close()
        return web.Response()

    bad = await make_receiver(handler=reset)
    good = await make_receiver()
    await make_webhook(store, bad.url, retries=False, name="bad")
    await make_webhook(store, good.url, name="good")
    emit(store.config, [("fan.created", "org_a", {"n": n}) for n in range(20)])
    await drain(store.config, store)
    assert len(good.events()) == 20
    failed = await store.list_deliveries(state="failed")
    assert len(failed) == 20


@pytest.mark.parametrize("count", [1, 600])
async def test_every_event_is_recorded_once_per_matching_webhook(store, make_receiver,
                                                                 make_webhook, count):
    """The history holds exactly one delivery per (event, webhook), all delivered."""
    r1, r2 = await make_receiver(), await make_receiver()
    await make_webhook(store, r1.url, rate_limit=100_000)
    await make_webhook(store, r2.url, rate_limit=100_000)
    emit(store.config, [("fan.created", "org_a", {"n": n}) for n in range(count)])
    await drain(store.config, store)
    assert sorted(e["data"]["n"] for e in r1.events()) == list(range(count))
    assert sorted(e["data"]["n"] for e in r2.events()) == list(range(count))
    counts = await store.counts_by_state()
    assert counts == {"delivered": 2 * count}


async def test_webhooks_competing_for_the_global_bound_each_get_everything_in_order(
        make_config, make_receiver, make_webhook):
    """Six webhooks, two global slots, one per webhook: finishing attempts hand their slot to
    the lane that waited longest, and every event arrives once, in order, per webhook."""
    from nevent_dispatch.store.sqlite import Store

    config = make_config(delivery={"max_in_flight": 2, "max_in_flight_per_webhook": 1})
    store = await Store.open(config)
    try:
        receivers = []
        for n in range(6):
            receiver = await make_receiver()
            await make_webhook(store, receiver.url, org=f"org_{n}")
            receivers.append(receiver)
        emit(config, [("fan.created", f"org_{i % 6}", {"n": i}) for i in range(180)])
        dispatcher = await drain(config, store)
        for n, receiver in enumerate(receivers):
            assert [e["data"]["n"] for e in receiver.events()] == list(range(n, 180, 6))
        assert dispatcher.stats["attempts"] == dispatcher.stats["delivered"] == 180
        assert dispatcher.host.slots.free == 2 and dispatcher.host.slots.first_waiting() is None
    finally:
        await store.close()
