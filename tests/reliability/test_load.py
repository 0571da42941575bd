"""Load: 200 webhooks, healthy, failing and slow, and a few thousand events.

A real daemon delivers to 40 organizations of 5 webhooks each: three healthy
(one of them in batch mode), one answering 500 and one answering after 200 ms.
The healthy webhooks' latency is measured first with events only they
subscribe to (the baseline), then with events every webhook takes; it must
stay in proportion. Afterwards one SQL query checks that the history holds
exactly one delivery (or batch item) per outbox row and matching webhook.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import signal
import sqlite3
import statistics
import time
from typing import Any

import orjson
import pytest
from aiohttp import web

from ..conftest import BATCH_EVENTS_SQL, Receiver

ORGS = 40
BASELINE_EVENTS = 300
LOAD_EVENTS = 2700
RATE = 200  # events published per second
HEALTHY_TYPES = ("email.sent", "sms.delivered")
MIXED_TYPES = ("fan.created", "purchase.completed", "attendance.checked_in", "email.sent",
               "sms.delivered")

#: The checker: pairs (outbox row, active webhook) the subscriptions call for, against the
#: deliveries and batch items recorded; any row of the result is an inconsistency.
CHECKER = f"""
WITH expected AS (
    SELECT o.id AS outbox_id, w.id AS webhook_id
    FROM app.outbox o JOIN webhooks w ON w.organization_id = o.organization_id AND w.active = 1
    WHERE EXISTS (
        SELECT 1 FROM json_each(w.events) p
        WHERE p.value = '*' OR p.value = o.type
           OR (p.value LIKE '%.*' AND substr(o.type, 1, length(p.value) - 1)
                                      = substr(p.value, 1, length(p.value) - 1)))
), recorded AS (
    SELECT outbox_id, webhook_id FROM deliveries WHERE kind = 'event'
    UNION ALL
    SELECT outbox_id, webhook_id FROM ({BATCH_EVENTS_SQL})
), counted AS (
    SELECT outbox_id, webhook_id, count(*) AS n FROM recorded GROUP BY outbox_id, webhook_id
)
SELECT 'missing' AS problem, e.outbox_id, e.webhook_id FROM expected e
    LEFT JOIN counted c USING (outbox_id, webhook_id) WHERE c.n IS NULL
UNION ALL
SELECT 'duplicate', outbox_id, webhook_id FROM counted WHERE n > 1
UNION ALL
SELECT 'unexpected', c.outbox_id, c.webhook_id FROM counted c
    LEFT JOIN expected e USING (outbox_id, webhook_id) WHERE e.outbox_id IS NULL
"""


async def publish_paced(path: Any, count: int, types: tuple[str, ...], rng: random.Random,
                        start: int) -> None:
    """Publish ``count`` events at RATE per second in small committed transactions."""
    conn = sqlite3.connect(path, timeout=30)
    try:
        step = 0.05
        per_step = max(1, round(RATE * step))
        t0 = time.monotonic()
        for n in range(start, start + count, per_step):
            with conn:
                for k in range(n, min(n + per_step, start + count)):
                    conn.execute("INSERT INTO outbox (type, organization_id, data) VALUES (?, ?, ?)",
                                 (rng.choice(types), f"org_{rng.randrange(ORGS)}",
                                  orjson.dumps({"n": k, "t": time.time()}).decode()))
            ahead = t0 + (n - start + per_step) / RATE - time.monotonic()
            await asyncio.sleep(max(ahead, 0))
    finally:
        conn.close()


def latencies(receiver: Receiver, kinds: tuple[str, ...], numbers: range) -> list[float]:
    """End-to-end latency of each event numbered in ``numbers`` at the non-batch healthy hooks."""
    out = []
    for request in receiver.requests:
        if request.path.split("/")[1] not in kinds:
            continue
        data = request.json()["data"]
        if data["n"] in numbers:
            out.append(request.received_at - data["t"])
    return out


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_200_webhooks_under_load_keep_healthy_latency_and_a_consistent_history(
        store, make_config, make_receiver, make_webhook, daemon, figures):
    """Failing and slow webhooks do not slow healthy ones; one record per event and webhook."""
    rng = random.Random(20_240_601)

    async def behave(request: web.Request) -> web.StreamResponse:
        kind = request.path.split("/")[1]
        if kind == "slow":
            await asyncio.sleep(0.2)
        return web.Response(status=500 if kind == "failing" else 200, text=kind)

    healthy, failing, slow = [await make_receiver(handler=behave) for _ in range(3)]
    some = "fan.*,purchase.*,attendance.*"
    plan = [("h1", healthy, "*", False), ("h2", healthy, "fan.*,purchase.*", False),
            ("hb", healthy, "*", True), ("failing", failing, some, False),
            ("slow", slow, some, False)]
    for org, (kind, receiver, events, batch) in itertools.product(range(ORGS), plan):
        base = receiver.url.rsplit("/", 1)[0]
        await make_webhook(store, f"{base}/{kind}/{org}", org=f"org_{org}", events=events,
                           batch=batch, rate_limit=1_000_000, name=f"{kind} {org}")
    config = make_config(delivery={"retry_schedule": (1.0, 2.0), "timeout": 5.0,
                                   "shutdown_grace": 5.0},
                         rate_limit={"events_per_minute": 1_000_000, "burst": 100_000},
                         batch={"max_wait": 0.2})
    figures.set("load_webhooks", ORGS * len(plan))

    process = daemon(config)
    try:
        await asyncio.sleep(1.0)  # the daemon's start, out of the measurement
        await publish_paced(config.database.outbox, BASELINE_EVENTS, HEALTHY_TYPES, rng, 0)
        await asyncio.sleep(1.0)
        await publish_paced(config.database.outbox, LOAD_EVENTS, MIXED_TYPES, rng,
                            BASELINE_EVENTS)
        total = BASELINE_EVENTS + LOAD_EVENTS
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            done = {r.json()["data"]["n"] for r in healthy.requests
                    if r.path.split("/")[1] == "h1"}
            if len(done) == total:
                break
            await asyncio.sleep(0.2)
        process.signal(signal.SIGTERM)
        code = await asyncio.to_thread(process.wait, 30)
    finally:
        process.stop()
    assert code == 0

    base = latencies(healthy, ("h1",), range(BASELINE_EVENTS))
    loaded = latencies(healthy, ("h1", "h2"), range(BASELINE_EVENTS, total))
    assert len(base) == BASELINE_EVENTS
    assert len({r.json()["data"]["n"] for r in healthy.requests if r.path.startswith("/h1/")}) \
        == total, "every event reached its healthy webhook"
    base_median, loaded_median = statistics.median(base), statistics.median(loaded)
    figures.set("load_events", total)
    figures.set("load_requests", sum(len(r.requests) for r in (healthy, failing, slow)))
    figures.set("load_latency_baseline_ms", round(base_median * 1000, 1))
    figures.set("load_latency_loaded_ms", round(loaded_median * 1000, 1))
    print(f"healthy median latency: {base_median * 1000:.1f} ms alone, "
          f"{loaded_median * 1000:.1f} ms under load; requests: healthy {len(healthy.requests)}, "
          f"failing {len(failing.requests)}, slow {len(slow.requests)}")
    assert loaded_median < 5 * base_median + 0.05, (base_median, loaded_median)
    assert len(slow.requests) > 0 and len(failing.requests) > 0

    conn = sqlite3.connect(config.database.state)
    try:
        conn.execute("ATTACH DATABASE ? AS app", (str(config.database.outbox),))
        problems = conn.execute(CHECKER).fetchall()
        cursor = conn.execute("SELECT value FROM meta WHERE key = 'cursor'").fetchone()[0]
        states = dict(conn.execute("SELECT state, count(*) FROM deliveries GROUP BY state"))
    finally:
        conn.close()
    assert cursor == total
    assert problems == [], problems[:5]
    assert "rejected" not in states, states
