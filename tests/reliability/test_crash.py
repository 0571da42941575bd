"""Crash safety: `kill -9` at random moments loses no event and invents no delivery.

An application thread publishes events with ``publish()`` in its own
transactions on its own connection while a real daemon is killed with SIGKILL
at random moments and restarted at once, again and again. After a last run
to idle, every event has reached every matching webhook at least once, and
every ``X-Nevent-Delivery`` a receiver saw is a delivery the history knows.
Set $RELIABILITY_SEED to replay a run's kill timings and event mix.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import threading
import time
from collections import Counter
from typing import Any

import pytest

from nevent_dispatch.publish import publish

from ..conftest import BATCH_EVENTS_SQL
from .conftest import SEED_ENV

KILLS = 24
EVENTS = 3000
#: Seconds the publisher spreads its events over (about as long as the kills take).
PUBLISH_SPAN = 18.0
TYPES = ("fan.created", "purchase.completed", "email.sent", "attendance.checked_in")


class Publisher(threading.Thread):
    """The application: small transactions of publish() calls on its own sqlite3 connection."""

    def __init__(self, path: Any, total: int, seed: int) -> None:
        super().__init__(name="application", daemon=True)
        self.path, self.total, self.rng = path, total, random.Random(seed)
        self.stopping = threading.Event()
        self.published = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        conn = sqlite3.connect(self.path, timeout=30)
        try:
            pace = PUBLISH_SPAN / self.total
            while self.published < self.total and not self.stopping.is_set():
                size = min(self.rng.randint(1, 20), self.total - self.published)
                if self.rng.random() < 0.05:
                    # An application transaction that rolls back: its event never existed.
                    publish(conn, "fan.deleted", "org_a", {"rolled_back": True})
                    conn.rollback()
                with conn:
                    for n in range(size):
                        org = "org_b" if self.rng.random() < 0.2 else "org_a"
                        publish(conn, self.rng.choice(TYPES), org, {"n": self.published + n})
                self.published += size
                time.sleep(size * pace * self.rng.uniform(0.5, 1.5))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            conn.close()


def matches(webhook: str, org: str, type_: str) -> bool:
    """Which of the test's webhooks an event is for (written independently of the matcher)."""
    if webhook == "all":
        return org == "org_a"
    if webhook == "purchases_and_fans":
        return org == "org_a" and type_.split(".")[0] in ("purchase", "fan")
    if webhook == "batch":
        return org == "org_a"
    return org == "org_b"  # "other_org"


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_kill_9_at_random_moments_loses_no_event(
        store, make_config, make_receiver, make_webhook, daemon, figures):
    """≥ 20 SIGKILLs during a few thousand publishes: each event reaches each matching webhook."""
    seed = int(os.environ.get(SEED_ENV) or random.SystemRandom().randrange(2**32))
    print(f"crash test seed: {seed} (replay with {SEED_ENV}={seed})")
    rng = random.Random(seed)
    figures.set("seed", seed)
    config = make_config(rate_limit={"events_per_minute": 10_000_000, "burst": 1_000_000},
                         batch={"max_wait": 0.05})
    receivers = {name: await make_receiver() for name in
                 ("all", "purchases_and_fans", "batch", "other_org")}
    webhooks = {
        "all": await make_webhook(store, receivers["all"].url, name="all"),
        "purchases_and_fans": await make_webhook(store, receivers["purchases_and_fans"].url,
                                                 events="purchase.*,fan.*", name="some types"),
        "batch": await make_webhook(store, receivers["batch"].url, batch=True, name="batch"),
        "other_org": await make_webhook(store, receivers["other_org"].url, org="org_b",
                                        name="other organization"),
    }
    publisher = Publisher(config.database.outbox, EVENTS, rng.randrange(2**32))
    kills = 0
    started = time.monotonic()
    publisher.start()
    try:
        while kills < KILLS or publisher.is_alive():
            process = daemon(config)
            await asyncio.sleep(rng.uniform(0.05, 1.0))
            await asyncio.to_thread(process.stop)  # SIGKILL, then reap
            kills += 1
            assert time.monotonic() - started < 90, f"kill loop too slow (seed={seed})"
    finally:
        publisher.stopping.set()
        await asyncio.to_thread(publisher.join, 30)
    assert publisher.error is None, f"publisher failed: {publisher.error!r} (seed={seed})"

    final = daemon(config, "", "--until-idle")
    code = await asyncio.to_thread(final.wait, 60)
    assert code == 0, f"final run exited {code} (seed={seed})"
    broken = [line for line in final.log_lines()
              if line.get("event") in ("task_failed", "lane_failed", "webhooks_invalid")
              or "Traceback" in line.get("raw", "") or "internal error" in line.get("raw", "")]
    assert not broken, f"the daemon failed on its own: {broken[:3]} (seed={seed})"

    # -- what the application published ------------------------------------------------------
    conn = sqlite3.connect(config.database.outbox)
    try:
        outbox = conn.execute("SELECT id, event_id, type, organization_id FROM outbox").fetchall()
    finally:
        conn.close()
    assert len(outbox) == publisher.published == EVENTS, f"seed={seed}"
    assert all(t != "fan.deleted" for _, _, t, _ in outbox), "rolled-back events stayed out"

    # -- what the receivers saw ------------------------------------------------------------------
    state = sqlite3.connect(config.database.state)
    try:
        owner = dict(state.execute("SELECT uuid, webhook_id FROM deliveries"))
        per_pair = state.execute(
            "SELECT outbox_id, webhook_id, count(*) FROM deliveries WHERE kind = 'event' "
            "GROUP BY 1, 2 HAVING count(*) != 1").fetchall()
        per_item = state.execute(
            f"SELECT outbox_id, webhook_id, count(*) FROM ({BATCH_EVENTS_SQL}) "
            "GROUP BY 1, 2 HAVING count(*) != 1").fetchall()
        unfinished = state.execute(
            "SELECT state, count(*) FROM deliveries WHERE state != 'delivered' GROUP BY 1"
        ).fetchall()
    finally:
        state.close()

    lost: list[tuple[str, str]] = []
    duplicates = 0
    unknown: set[str] = set()
    for name, receiver in receivers.items():
        seen = Counter(event["id"] for event in receiver.events())
        duplicates += sum(count - 1 for count in seen.values())
        ids = {r.headers["X-Nevent-Delivery"] for r in receiver.requests}
        unknown |= ids - owner.keys()
        assert {owner.get(i) for i in ids} <= {webhooks[name][0].id}, \
            f"{name} received another webhook's delivery (seed={seed})"
        wrong = [e for e in receiver.events() if not matches(name, e["organization_id"], e["type"])]
        assert not wrong, f"{name} received events not meant for it: {wrong[:2]} (seed={seed})"
        for _, event_id, type_, org in outbox:
            if matches(name, org, type_) and event_id not in seen:
                lost.append((name, event_id))

    figures.add("kills_survived", kills)
    figures.add("events_published", len(outbox))
    figures.add("events_lost", len(lost))
    figures.add("duplicates_observed", duplicates)
    figures.set("crash_deliveries", sum(len(r.requests) for r in receivers.values()))
    print(f"kills={kills} events={len(outbox)} lost={len(lost)} duplicates={duplicates}")

    assert kills >= 20
    assert not lost, f"{len(lost)} events lost, e.g. {lost[:3]} (seed={seed})"
    assert not unknown, f"receivers saw delivery ids the history does not know: " \
                        f"{sorted(unknown)[:3]} (seed={seed})"
    assert not per_pair and not per_item, f"not one record per event and webhook (seed={seed})"
    assert not unfinished, f"deliveries left unfinished: {unfinished} (seed={seed})"
