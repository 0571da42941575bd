"""Crash safety: `kill -9` at random moments loses no event and invents no delivery.

An application thread publishes events with ``publish()`` in its own
transactions on its own connection while a real daemon is killed with SIGKILL
at random moments and restarted at once, again and again: a quarter of the
kills while it starts up, the others while it delivers. After a last run
to idle, every event has reached every matching webhook at least once, and
every ``X-Nevent-Delivery`` a receiver saw is a delivery the history knows.
Set $RELIABILITY_SEED to replay a run's kill timings and event mix.

The duplicates are split for the report (``split_duplicates``): requests a
later daemon sent again under the same delivery id, per kill and per webhook
kind (single or batch), and the repeated event ids they carried. At least
once allows a resend only of an attempt whose result the killed daemon had not
committed; a request sent twice by one daemon, an event under a second
delivery id, or a resend of a success the state database holds fails the test.
A separate process (``commit_watch``) notes when each attempt's commit becomes
visible, which measures the window between a receiver's 200 and the state
commit that records it: what a kill inside that window costs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from nevent_dispatch.publish import publish

from ..conftest import BATCH_EVENTS_SQL
from . import commit_watch
from .conftest import SEED_ENV

ROOT = Path(__file__).resolve().parents[2]

KILLS = 24
#: Share of the kills that come while a daemon starts up (anywhere in its first second); the
#: others come while it delivers, up to DELIVERING_S after it is ready to send. Starting
#: takes most of a second here, so kills at random from the spawn would mostly miss delivery.
START_UP_KILLS = 0.25
DELIVERING_S = 0.6
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


@dataclass(frozen=True, slots=True)
class Receipt:
    """One request a receiver saw: whose, its delivery id, when, what it carried."""

    webhook: str
    kind: str  # "batch" or "single"
    delivery: str
    at: float
    event_ids: tuple[str, ...]


@dataclass
class Split:
    """Where the receivers' duplicates came from (see ``split_duplicates``)."""

    #: Requests sent again under the same delivery id by a later daemon, by kind.
    resent: Counter[str] = field(default_factory=Counter)
    #: Event ids repeated by those resends, by kind.
    resent_events: Counter[str] = field(default_factory=Counter)
    #: Requests sent twice by one daemon (must be none).
    same_run: list[str] = field(default_factory=list)
    #: Event ids one webhook received under more than one delivery id (must be none).
    other_id: list[str] = field(default_factory=list)
    #: Seconds from each resent request's last answer to the kill that lost it.
    ages: list[float] = field(default_factory=list)
    #: Per kill: [seconds it could send, requests received, resent single, resent batch,
    #: event ids resent, oldest resent answer before the kill in ms (None: none resent)].
    per_kill: list[list[Any]] = field(default_factory=list)


async def until_ready(log_path: Path, offset: int, timeout: float) -> bool:
    """Wait until the daemon writing ``log_path`` past ``offset`` is ready to send (or
    ``timeout`` s have passed): the one daemon alive appends its lines after the last one's."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with log_path.open("rb") as log:
            log.seek(offset)
            if b'"event":"dispatcher_started"' in log.read():
                return True
        await asyncio.sleep(0.02)
    return False


def ready_times(log_lines: Sequence[dict[str, Any]]) -> dict[int, float]:
    """When each daemon of a shared log could first send (its ``dispatcher_started``), by pid;
    a daemon killed before that has none."""
    ready: dict[int, float] = {}
    pid = None
    for line in log_lines:
        if line.get("event") == "daemon_started":
            pid = line.get("pid")
        elif line.get("event") == "dispatcher_started" and pid is not None:
            ready[pid] = dt.datetime.fromisoformat(line["timestamp"]).timestamp()
    return ready


def daemon_at(runs: Sequence[tuple[float, float]]) -> Callable[[float], int]:
    """Which daemon a moment belongs to: the last one started before it (its index in
    ``runs``: each daemon's (ready to send, kill) wall times in order, the last kill ``inf``;
    one killed before it was ready has the kill time for both)."""
    starts = [start for start, _ in runs]
    return lambda at: max(0, bisect_right(starts, at) - 1)


def split_duplicates(receipts: Sequence[Receipt], runs: Sequence[tuple[float, float]]) -> Split:
    """Split duplicates by cause: a later daemon's resend (per kill, per kind) or a defect."""
    run_of = daemon_at(runs)
    split = Split()
    by_delivery: dict[str, list[Receipt]] = defaultdict(list)
    ids_of_event: dict[tuple[str, str], set[str]] = defaultdict(set)
    for receipt in sorted(receipts, key=lambda r: r.at):
        by_delivery[receipt.delivery].append(receipt)
        for event_id in receipt.event_ids:
            ids_of_event[receipt.webhook, event_id].add(receipt.delivery)
    split.other_id = sorted(f"{w}:{e}" for (w, e), ids in ids_of_event.items() if len(ids) > 1)
    kill_rows = [[round(kill - start, 3), 0, 0, 0, 0, None] for start, kill in runs[:-1]]
    for receipt in receipts:
        if run_of(receipt.at) < len(kill_rows):
            kill_rows[run_of(receipt.at)][1] += 1
    for delivery, copies in by_delivery.items():
        for before, after in zip(copies, copies[1:], strict=False):
            lost_in = run_of(before.at)
            if run_of(after.at) == lost_in:
                split.same_run.append(delivery)
                continue
            split.resent[before.kind] += 1
            split.resent_events[before.kind] += len(before.event_ids)
            age = runs[lost_in][1] - before.at
            split.ages.append(age)
            row = kill_rows[lost_in]
            row[2 if before.kind == "single" else 3] += 1
            row[4] += len(before.event_ids)
            row[5] = max(row[5] or 0.0, round(age * 1000, 1))
    split.per_kill = kill_rows
    return split


def resent_after_commit(state: sqlite3.Connection, runs: Sequence[tuple[float, float]],
                        receipts: Sequence[Receipt]) -> list[str]:
    """Delivery ids a later daemon sent again although an earlier one had committed their
    success: a resend that at least once does not excuse."""
    run_of = daemon_at(runs)
    seen_by: dict[str, set[int]] = defaultdict(set)
    for receipt in receipts:
        seen_by[receipt.delivery].add(run_of(receipt.at))
    wrong = set()
    for uuid, started_at in state.execute(
            "SELECT d.uuid, a.started_at FROM attempts a JOIN deliveries d ON d.id = a.delivery_id "
            "WHERE a.outcome = 'success'"):
        if len(seen_by.get(uuid, ())) > 1 and max(seen_by[uuid]) > run_of(started_at):
            wrong.add(uuid)  # committed by one daemon, received again from a later one
    return sorted(wrong)


def commit_lags(receipts: Sequence[Receipt], committed: dict[str, float]) -> dict[str, list[float]]:
    """Seconds from a receiver's answer to the commit that recorded it, by webhook kind.

    The answer recorded is a delivery's last receipt before its success was committed.
    """
    answered: dict[str, Receipt] = {}
    for receipt in sorted(receipts, key=lambda r: r.at):
        at = committed.get(receipt.delivery)
        if at is not None and receipt.at <= at:
            answered[receipt.delivery] = receipt
    lags: dict[str, list[float]] = defaultdict(list)
    for delivery, receipt in answered.items():
        lags[receipt.kind].append(committed[delivery] - receipt.at)
    return lags


def spread_ms(values: Sequence[float]) -> dict[str, float]:
    """Median, 90th and 99th percentile and maximum of seconds, in milliseconds."""
    return {"median": round(statistics.median(values) * 1000, 1),
            "p90": round(percentile(values, 0.9) * 1000, 1),
            "p99": round(percentile(values, 0.99) * 1000, 1),
            "max": round(max(values) * 1000, 1)}


def percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_kill_9_at_random_moments_loses_no_event(
        store, make_config, make_receiver, make_webhook, daemon, figures, tmp_path):
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
    killed: list[tuple[int, float, float]] = []  # each daemon's pid, start and kill (wall times)
    started = time.monotonic()
    commits = tmp_path / "commits.txt"
    log_path = tmp_path / "daemon.log"  # the daemon fixture's, shared by every daemon
    watcher = subprocess.Popen([sys.executable, "-m", "tests.reliability.commit_watch",
                                str(config.database.state), str(commits)], cwd=ROOT)
    try:
        publisher.start()
        while kills < KILLS or publisher.is_alive():
            born = time.time()
            offset = log_path.stat().st_size if log_path.exists() else 0
            process = daemon(config)
            if rng.random() < START_UP_KILLS:
                await asyncio.sleep(rng.uniform(0.05, 1.0))
            else:
                await until_ready(log_path, offset, timeout=15)
                await asyncio.sleep(rng.uniform(0.0, DELIVERING_S))
            assert process.proc is not None
            killed.append((process.proc.pid, born, time.time()))
            await asyncio.to_thread(process.stop)  # SIGKILL, then reap
            kills += 1
            assert time.monotonic() - started < 90, f"kill loop too slow (seed={seed})"
        born = time.time()
        final = daemon(config, "", "--until-idle")
        code = await asyncio.to_thread(final.wait, 60)
    finally:
        publisher.stopping.set()
        if publisher.ident is not None:
            await asyncio.to_thread(publisher.join, 30)
        watcher.terminate()
        await asyncio.to_thread(watcher.wait, 10)
    assert publisher.error is None, f"publisher failed: {publisher.error!r} (seed={seed})"
    assert code == 0, f"final run exited {code} (seed={seed})"
    broken = [line for line in final.log_lines()
              if line.get("event") in ("task_failed", "lane_failed", "webhooks_invalid")
              or "Traceback" in line.get("raw", "") or "internal error" in line.get("raw", "")]
    assert not broken, f"the daemon failed on its own: {broken[:3]} (seed={seed})"
    # Each daemon's life, for the split, from when it could first send: a request of a
    # killed daemon that the receiver read after the next one was spawned is still its own.
    ready = ready_times(final.log_lines())
    assert final.proc is not None
    runs = [(ready.get(pid, kill), kill) for pid, _, kill in killed]
    runs.append((ready.get(final.proc.pid, born), float("inf")))
    delivering = sum(1 for start, kill in runs[:-1] if start < kill)

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
        receipts = [Receipt(name, "batch" if name == "batch" else "single",
                            r.headers["X-Nevent-Delivery"], r.received_at,
                            tuple(e["id"] for e in (r.json()["events"] if name == "batch"
                                                    else [r.json()])))
                    for name, receiver in receivers.items() for r in receiver.requests]
        committed_then_resent = resent_after_commit(state, runs, receipts)
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
    figures.set("crash_kills_delivering", delivering)
    figures.add("events_published", len(outbox))
    figures.add("events_lost", len(lost))
    figures.add("duplicates_observed", duplicates)
    figures.set("crash_deliveries", sum(len(r.requests) for r in receivers.values()))
    split = split_duplicates(receipts, runs)
    for kind in ("single", "batch"):
        figures.set(f"crash_requests.{kind}", sum(r.kind == kind for r in receipts))
        figures.set(f"crash_resent_requests.{kind}", split.resent[kind])
        figures.set(f"crash_resent_events.{kind}", split.resent_events[kind])
    figures.set("crash_same_run_resends", len(split.same_run))
    figures.set("crash_events_under_two_ids", len(split.other_id))
    figures.set("crash_committed_then_resent", len(committed_then_resent))
    figures.set("crash_per_kill", split.per_kill)
    if split.ages:
        figures.set("crash_resent_age_ms", spread_ms(split.ages))
    committed = commit_watch.read(commits)
    assert committed, f"the commit watcher saw no commit in {commits}"
    for kind, lags in commit_lags(receipts, committed).items():
        figures.set(f"crash_commit_lag_ms.{kind}", spread_ms(lags))
    print(f"kills={kills} events={len(outbox)} lost={len(lost)} duplicates={duplicates} "
          f"resent={dict(split.resent)} resent_events={dict(split.resent_events)} "
          f"same_run={len(split.same_run)} other_id={len(split.other_id)} "
          f"committed_then_resent={len(committed_then_resent)}")

    assert kills >= 20
    assert delivering >= KILLS // 2, f"only {delivering} kills came while a daemon could send"
    assert not lost, f"{len(lost)} events lost, e.g. {lost[:3]} (seed={seed})"
    assert not unknown, f"receivers saw delivery ids the history does not know: " \
                        f"{sorted(unknown)[:3]} (seed={seed})"
    assert not per_pair and not per_item, f"not one record per event and webhook (seed={seed})"
    assert not split.same_run, f"one daemon sent a delivery twice: {split.same_run[:3]} " \
                               f"(seed={seed})"
    assert not split.other_id, f"events received under two delivery ids: {split.other_id[:3]} " \
                               f"(seed={seed})"
    assert not committed_then_resent, f"resent after its success was committed: " \
                                      f"{committed_then_resent[:3]} (seed={seed})"
    assert duplicates == sum(split.resent_events.values()), \
        f"duplicates not all explained by resends (seed={seed})"
    assert not unfinished, f"deliveries left unfinished: {unfinished} (seed={seed})"


def test_the_split_tells_a_resend_after_a_kill_from_a_defect():
    """A repeat across a kill is a resend; within one daemon, or under a new id, a defect."""
    runs = [(0.0, 10.0), (11.0, 20.0), (21.0, float("inf"))]
    receipts = [
        Receipt("all", "single", "d1", 9.5, ("e1",)),      # lost in kill 1, sent again
        Receipt("all", "single", "d1", 12.0, ("e1",)),
        Receipt("batch", "batch", "b1", 19.0, ("e2", "e3")),  # lost in kill 2, sent again
        Receipt("batch", "batch", "b1", 22.0, ("e2", "e3")),
        Receipt("all", "single", "d2", 13.0, ("e4",)),     # twice by the same daemon
        Receipt("all", "single", "d2", 14.0, ("e4",)),
        Receipt("all", "single", "d3", 15.0, ("e5",)),     # one event, two delivery ids
        Receipt("all", "single", "d4", 16.0, ("e5",)),
        Receipt("other_org", "single", "d5", 16.0, ("e1",)),  # another webhook: no repeat
    ]
    split = split_duplicates(receipts, runs)
    assert split.resent == {"single": 1, "batch": 1}
    assert split.resent_events == {"single": 1, "batch": 2}
    assert split.same_run == ["d2"]
    assert split.other_id == ["all:e5"]
    assert [round(a, 3) for a in split.ages] == [0.5, 1.0]
    assert split.per_kill == [[10.0, 1, 1, 0, 1, 500.0], [9.0, 7, 0, 1, 2, 1000.0]]
    committed = {"d1": 12.5, "b1": 22.1, "d2": 13.5}
    assert {k: [round(x, 3) for x in v] for k, v in commit_lags(receipts, committed).items()} \
        == {"single": [0.5, 0.5], "batch": [0.1]}
