"""Regression tests of the delivery core, through the real daemon and real HTTPS receivers.

Each test states one behaviour the core must keep: a webhook toggled during a
backlog sends each delivery once; one customer's backlog, rate limit or
disabled history never delays another's events; the token bucket's bound
holds over every window, batches included (those made at start-up from
events a killed daemon left waiting too); a 429 or 503 with Retry-After
pauses the whole webhook; hostile outbox rows are refused, exact payloads are
sent as written; memory stays bounded in bytes; an idle daemon is idle; a
full disk under the state database is waited out. They run the daemon as a
subprocess (``nevent-dispatch run``) on a config written for the test, make
webhooks with the CLI and insert events as the application does.
"""

from __future__ import annotations

import collections
import email.utils
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .core_support import (
    Bench,
    Hit,
    RssSampler,
    ThreadedReceiver,
    cpu_seconds,
    median,
    receipt_latencies,
    settle,
    wait_for,
)


@pytest.fixture
def make_bench(tmp_path: Path, tls: dict[str, Any]) -> Iterator[Callable[..., Bench]]:
    """Benches on this test's folder; their daemons and receivers are stopped at the end."""
    benches: list[Bench] = []

    def factory(**tables: Any) -> Bench:
        folder = tmp_path / f"bench{len(benches)}"
        folder.mkdir()
        bench = Bench(folder, tls, **tables)
        benches.append(bench)
        return bench

    yield factory
    for bench in benches:
        bench.close()


def drained(bench: Bench, *webhook_ids: str) -> bool:
    """Every outbox row is taken in and every delivery of the webhooks is finished."""
    return bench.cursor() >= bench.outbox_max_id() and not any(
        bench.unfinished(w) for w in webhook_ids)


def alive(daemon: Any) -> None:
    assert daemon.proc.poll() is None, f"the daemon exited with {daemon.proc.returncode}"


# -- 1. disable and re-enable during a backlog ---------------------------------------------------

#: Events waiting when the daemon starts (the webhook takes 1,000 a second), and events the
#: application writes once delivery has resumed after the toggle.
TOGGLE_BACKLOG = 6000
TOGGLE_LATER = 200


@pytest.mark.slow
def test_disabling_and_re_enabling_a_webhook_during_a_backlog_sends_every_delivery_once(make_bench):
    """A webhook disabled for 1 s and enabled again mid-drain receives each event taken in once."""
    bench = make_bench(rate_limit={"events_per_minute": 10_000_000, "burst": 100})
    receiver = bench.receiver()
    hook = bench.webhook(receiver.url, rate_limit=60_000)
    bench.emit(("fan.created", "org_a", {"n": n}) for n in range(TOGGLE_BACKLOG))
    daemon = bench.start_daemon()
    wait_for(lambda: receiver.count() >= 500, 60, "the drain to start")
    bench.cli("webhooks", "disable", hook)
    at_disable = receiver.count()
    time.sleep(1.0)
    bench.cli("webhooks", "enable", hook)
    at_enable = receiver.count()
    wait_for(lambda: receiver.count() > at_enable + 100 and not bench.query(
        "SELECT 1 FROM deliveries WHERE webhook_id = ? AND state = 'pending' LIMIT 1", (hook,)),
        30, "delivery to resume with the whole backlog taken up again")
    # The application writes again while the backlog drains.
    bench.emit(("fan.created", "org_a", {"n": n})
               for n in range(TOGGLE_BACKLOG, TOGGLE_BACKLOG + TOGGLE_LATER))
    wait_for(lambda: alive(daemon) or drained(bench, hook), 90, "the drain to finish")
    time.sleep(0.5)  # attempts settling after their state was written
    hits = receiver.hits
    uuids = collections.Counter(h.headers["X-Nevent-Delivery"] for h in hits)
    resent = {u: n for u, n in uuids.items() if n > 1}
    first_twice = bench.query("SELECT delivery_id, count(*) FROM attempts WHERE number = 1 "
                              "GROUP BY delivery_id HAVING count(*) > 1")
    taken = {row[0] for row in bench.query(
        "SELECT event_id FROM deliveries WHERE webhook_id = ? AND kind = 'event' "
        "AND state != 'rejected'", (hook,))}
    received = collections.Counter(h.json()["id"] for h in hits)
    print(f"received at disable {at_disable}, at enable {at_enable}, total {len(hits)}; "
          f"delivery ids received more than once: {len(resent)}; deliveries with two first "
          f"attempts: {len(first_twice)}; events taken in: {len(taken)}")
    assert at_enable < len(taken), "the toggle must happen during the backlog"
    assert len(resent) == 0, "delivery ids received more than once"
    assert len(first_twice) == 0, "deliveries with two attempts numbered 1"
    not_once = sum(1 for e in taken if received[e] != 1)
    assert not_once == 0, "events taken in but not received exactly once"


# -- 2. one customer's backlog does not delay another ----------------------------------------------

#: Due retries of org_a's rate-limited webhook (12 a minute: it has days of work); more than
#: the daemon holds in memory at once, so that where the rest waits matters.
SLOW_BACKLOG = 25_000
#: Events for org_b's healthy webhook, written at 5 a second while that backlog stands.
HEALTHY_EVENTS = 20
#: Longest commit→receipt an org_b event may take (about 20 ms when the daemon is idle).
NEIGHBOUR_BOUND_S = 1.0


def neighbour_latencies(receiver: ThreadedReceiver, committed: dict[int, float],
                        grace: float) -> list[float]:
    """Commit→receipt of each event in ``committed``; inf for those not received ``grace`` s
    after the last commit."""
    deadline = max(committed.values()) + grace
    while time.time() < deadline and len(receipt_latencies(receiver, committed)) < len(committed):
        time.sleep(0.05)
    got = receipt_latencies(receiver, committed)
    return sorted(got.get(n, float("inf")) for n in committed)


@pytest.mark.slow
def test_a_rate_limited_backlog_of_one_customer_does_not_delay_another_customers_events(
        make_bench, figures):
    """While org_a's webhook has 25,000 due retries at 12/min, each org_b event arrives within 1 s."""
    bench = make_bench(delivery={"retry_schedule": [0.5]})
    slow_receiver, healthy_receiver = bench.receiver(), bench.receiver()
    slow = bench.webhook(slow_receiver.url, org="org_a", rate_limit=12, name="rate-limited")
    bench.webhook(healthy_receiver.url, org="org_b", name="healthy")
    # Its endpoint answered 500 for a while and has recovered: every retry is due now.
    bench.insert_pending(slow, "org_a", SLOW_BACKLOG, attempts=1, next_at=time.time())
    daemon = bench.start_daemon()
    wait_for(lambda: slow_receiver.count() >= 12, 30, "org_a's first burst")
    committed = bench.emit_paced(HEALTHY_EVENTS, 5, org="org_b")
    latencies = neighbour_latencies(healthy_receiver, committed, grace=10)
    alive(daemon)
    print(f"org_b commit->receipt: median {median(latencies) * 1000:.0f} ms, "
          f"max {latencies[-1] * 1000:.0f} ms; org_a received {slow_receiver.count()}")
    figures.set("core_fairness", {"backlog": SLOW_BACKLOG, "events": len(latencies),
                                  "median_ms": round(median(latencies) * 1000, 1),
                                  "max_ms": round(latencies[-1] * 1000, 1),
                                  "bound_ms": NEIGHBOUR_BOUND_S * 1000})
    assert slow_receiver.count() < 40, "org_a's backlog stood throughout"
    assert max(latencies) < NEIGHBOUR_BOUND_S, [round(x, 3) for x in latencies]


# -- 3. a disabled webhook's backlog costs nothing ---------------------------------------------------

#: Pending deliveries of a disabled webhook (a customer who switched it off during an outage).
DISABLED_BACKLOG = 300_000
#: Median commit→receipt the healthy webhook must keep (about 5-20 ms with no such backlog).
DISABLED_P50_BOUND_S = 0.100
#: CPU seconds the daemon may spend over the 5 s it delivers 25 events to the healthy webhook.
#: That work and the idle loop cost about 0.25 s (a 5 ms outbox poll included); a daemon
#: that walks the disabled webhook's rows on every scheduler tick spends about 1.5 s.
DISABLED_CPU_BOUND_S = 0.6


@pytest.mark.slow
def test_a_disabled_webhooks_pending_backlog_does_not_slow_the_other_webhooks(make_bench, figures):
    """With 300,000 pending deliveries of a disabled webhook, another's events arrive in < 100 ms (p50)."""
    bench = make_bench()
    healthy_receiver = bench.receiver()
    off = bench.webhook("https://127.0.0.1:9/off", org="org_a", name="switched off", active=False)
    bench.insert_pending(off, "org_a", DISABLED_BACKLOG, attempts=0, next_at=time.time(),
                         outbox=False)
    bench.webhook(healthy_receiver.url, org="org_b", name="healthy")
    daemon = bench.start_daemon()
    bench.emit([("fan.created", "org_b", {"n": -1})])  # the first delivery opens the connection
    wait_for(lambda: healthy_receiver.count(), 30, "the first event")
    time.sleep(1.0)  # start-up settles
    cpu0 = cpu_seconds(daemon.proc.pid)
    committed = bench.emit_paced(25, 5, org="org_b")
    cpu = cpu_seconds(daemon.proc.pid) - cpu0
    latencies = neighbour_latencies(healthy_receiver, committed, grace=10)
    alive(daemon)
    print(f"org_b commit->receipt: median {median(latencies) * 1000:.0f} ms, "
          f"max {latencies[-1] * 1000:.0f} ms; daemon CPU over 5 s: {cpu:.2f} s")
    figures.set("core_disabled_backlog", {
        "backlog": DISABLED_BACKLOG, "median_ms": round(median(latencies) * 1000, 1),
        "bound_ms": DISABLED_P50_BOUND_S * 1000, "cpu_s": round(cpu, 2),
        "cpu_bound_s": DISABLED_CPU_BOUND_S})
    assert median(latencies) < DISABLED_P50_BOUND_S, [round(x, 3) for x in latencies]
    assert cpu < DISABLED_CPU_BOUND_S, f"the daemon spent {cpu:.2f} s of CPU delivering 25 events"


# -- 4. the token bucket's bound holds over every window --------------------------------------------

#: Seconds a receipt may lag its send (scheduling, TLS, a busy machine): every window is
#: widened by this much before the bound is applied.
RECEIPT_JITTER_S = 0.25


def worst_window(arrivals: list[tuple[float, int]], capacity: float,
                 per_second: float) -> tuple[int, float, float]:
    """The window of receipts that most exceeds ``capacity + rate × T``.

    ``arrivals`` holds (receipt time, events carried); returns (events in the window, its
    length T, the bound for it), the window with the largest excess over its bound.
    """
    arrivals = sorted(arrivals)
    worst = (0, 0.0, capacity)
    worst_excess = float("-inf")
    for i, (start, _) in enumerate(arrivals):
        total = 0
        for end, count in arrivals[i:]:
            total += count
            span = end - start
            bound = capacity + per_second * (span + RECEIPT_JITTER_S)
            if total - bound > worst_excess:
                worst_excess, worst = total - bound, (total, span, bound)
    return worst


def arrivals_of(receiver: ThreadedReceiver) -> list[tuple[float, int]]:
    return [(hit.received_at, len(hit.events())) for hit in receiver.hits]


def test_a_quiet_batch_webhook_receives_at_most_its_bucket_capacity_at_once(make_bench, figures):
    """Batch mode, 10 events/min, burst 100: in any window of T s at most 10 + T/6 events arrive."""
    bench = make_bench(batch={"max_events": 100, "max_wait": 0.2},
                       rate_limit={"events_per_minute": 1000, "burst": 100})
    receiver = bench.receiver()
    bench.webhook(receiver.url, rate_limit=10, batch=True)
    bench.emit(("fan.created", "org_a", {"n": n}) for n in range(30))
    daemon = bench.start_daemon()
    wait_for(lambda: receiver.count(), 30, "the first batch")
    time.sleep(3.0)
    alive(daemon)
    capacity = min(100, 10)  # min(burst, rate per minute)
    total, span, bound = worst_window(arrivals_of(receiver), capacity, 10 / 60)
    print(f"requests {receiver.count()}, events {len(receiver.events())}; worst window: "
          f"{total} events in {span:.2f} s, bound {bound:.1f}")
    figures.set("core_bucket.batch", [total, round(span, 2), round(bound, 1)])
    assert total <= bound, f"{total} events in {span:.2f} s, over capacity + rate x T = {bound:.1f}"


@pytest.mark.slow
def test_a_webhooks_bucket_bound_holds_over_every_window_across_a_disable_and_enable(
        make_bench, figures):
    """600 events/min, burst 100, disabled for 1 s mid-backlog: any T s window holds <= 100 + 10 T."""
    bench = make_bench(rate_limit={"events_per_minute": 1000, "burst": 100})
    receiver = bench.receiver()
    hook = bench.webhook(receiver.url, rate_limit=600)
    bench.emit(("fan.created", "org_a", {"n": n}) for n in range(400))
    daemon = bench.start_daemon()
    wait_for(lambda: receiver.count() >= 105, 30, "the burst and a few more")
    # Switched off and on again: a second of refill is 10 tokens, not a fresh bucket.
    bench.cli("webhooks", "disable", hook)
    time.sleep(1.0)
    bench.cli("webhooks", "enable", hook)
    time.sleep(2.5)
    alive(daemon)
    total, span, bound = worst_window(arrivals_of(receiver), 100, 10)
    print(f"events {receiver.count()}; worst window: {total} events in {span:.2f} s, "
          f"bound {bound:.1f}")
    figures.set("core_bucket.toggled", [total, round(span, 2), round(bound, 1)])
    assert receiver.count() < 400, "the backlog stood throughout"
    assert total <= bound, f"{total} events in {span:.2f} s, over capacity + rate x T = {bound:.1f}"


#: A webhook's bucket (events/min, so also its capacity), and the events a killed daemon
#: left waiting for a batch once the bucket was empty.
LEFTOVER_LIMIT = 5
LEFTOVER_EVENTS = 7


def test_batches_made_at_start_up_from_leftover_events_are_no_larger_than_the_bucket(make_bench):
    """7 events a killed daemon left waiting for a batch, bucket of 5: batches of at most 5."""
    bench = make_bench(batch={"max_events": 100, "max_wait": 0.2})
    receiver = bench.receiver()
    bench.webhook(receiver.url, rate_limit=LEFTOVER_LIMIT, batch=True)
    first = bench.start_daemon()
    bench.emit(("fan.created", "org_a", {"n": n}) for n in range(LEFTOVER_LIMIT))
    wait_for(lambda: receiver.count(), 30, "the batch that empties the bucket")
    # The next events wait for tokens (a minute for 5) in the lane, then the daemon dies.
    bench.emit(("fan.created", "org_a", {"n": n}) for n in range(100, 100 + LEFTOVER_EVENTS))
    wait_for(lambda: bench.cursor() >= bench.outbox_max_id(), 30, "the events taken in")
    time.sleep(0.5)
    first.stop()
    assert receiver.count() == 1, "a batch went out with the bucket empty"
    daemon = bench.start_daemon()  # a new process: its bucket starts full
    wait_for(lambda: receiver.count() >= 2, 30, "the first batch after the restart")
    time.sleep(1.0)  # a batch of the rest, if one were sent at once
    alive(daemon)
    sizes = [len(hit.events()) for hit in receiver.hits[1:]]
    print(f"batches after the restart: {sizes}")
    assert max(sizes) <= LEFTOVER_LIMIT, f"a batch of {max(sizes)} events, bucket of {LEFTOVER_LIMIT}"
    assert sum(sizes) == LEFTOVER_LIMIT, "the bucket's worth goes at once, the rest waits for tokens"


# -- 5. 429 and 503 with Retry-After pause the whole webhook -------------------------------------------

#: Seconds after its first request during which the receiver refuses everything.
REFUSING_S = 0.5
#: Seconds of pause the receiver asks for.
PAUSE_S = 3.0
#: Events for the paused webhook; it takes 100 a second (after a burst of 100).
PAUSED_EVENTS = 300


def retry_after_seconds(hit: Hit, receiver: ThreadedReceiver) -> tuple[int, dict[str, str]]:
    assert receiver.first_at is not None
    if hit.received_at - receiver.first_at < REFUSING_S:
        return 429, {"Retry-After": str(int(PAUSE_S))}
    return 200, {}


def retry_after_date(hit: Hit, receiver: ThreadedReceiver) -> tuple[int, dict[str, str]]:
    assert receiver.first_at is not None
    if hit.received_at - receiver.first_at < REFUSING_S:
        # An HTTP date has whole seconds: this one falls 2.5 to 3.5 s after the first request.
        return 503, {"Retry-After": email.utils.formatdate(receiver.first_at + PAUSE_S + 0.5,
                                                           usegmt=True)}
    return 200, {}


@pytest.mark.slow
@pytest.mark.parametrize(("decide", "quiet_until"), [(retry_after_seconds, PAUSE_S - 0.2),
                                                     (retry_after_date, PAUSE_S - 0.6)],
                         ids=["429-seconds", "503-http-date"])
def test_a_retry_after_answer_pauses_the_whole_webhook_and_its_deliveries_resume_after_it(
        make_bench, decide, quiet_until):
    """A 429/503 with Retry-After: 3 pauses that webhook ~3 s, then all is delivered; others flow."""
    bench = make_bench(delivery={"retry_schedule": [60], "max_in_flight_per_webhook": 16})
    paused_receiver, other_receiver = bench.receiver(decide), bench.receiver()
    bench.webhook(paused_receiver.url, org="org_a", rate_limit=6000, name="asks for a pause")
    bench.webhook(other_receiver.url, org="org_b", name="healthy")
    bench.emit(("fan.created", "org_a", {"n": n}) for n in range(PAUSED_EVENTS))
    daemon = bench.start_daemon()
    first = wait_for(lambda: paused_receiver.first_at, 30, "the first request")
    time.sleep(max(0.0, first + 1.0 - time.time()))
    committed = bench.emit_paced(8, 5, org="org_b", start=1000)  # during the pause
    others = neighbour_latencies(other_receiver, committed, grace=5)

    def delivered() -> set[str]:
        return {event["id"] for hit in paused_receiver.hits
                if hit.received_at - first >= REFUSING_S for event in hit.events()}

    deadline = first + 12.0
    while len(delivered()) < PAUSED_EVENTS and time.time() < deadline:
        time.sleep(0.1)
    alive(daemon)
    hits = paused_receiver.hits
    during_pause = sum(1 for h in hits if REFUSING_S + 0.1 <= h.received_at - first < quiet_until)
    refused = sum(1 for h in hits if h.received_at - first < REFUSING_S)
    done = delivered()
    print(f"refused {refused}; requests during the pause {during_pause}; delivered "
          f"{len(done)}/{PAUSED_EVENTS} within 12 s; other webhook max latency "
          f"{others[-1] * 1000:.0f} ms")
    assert during_pause <= 16, "requests sent while the webhook asked for a pause"
    missing = PAUSED_EVENTS - len(done)
    assert missing == 0, "events not delivered within 12 s of the first request"
    assert max(others) < 1.0, [round(x, 3) for x in others]


# -- 6. control characters in an event type --------------------------------------------------------

EVIL_TYPE = "purchase.completed\r\nX-Evil: 1"


def outbox_event_ids(bench: Bench, after: int) -> list[tuple[int, str]]:
    conn = bench.connect_outbox()
    try:
        return [(int(i), str(e)) for i, e in conn.execute(
            "SELECT id, event_id FROM outbox WHERE id > ? ORDER BY id", (after,))]
    finally:
        conn.close()


def test_an_event_type_with_control_characters_is_rejected_at_intake_and_never_sent(make_bench):
    """An outbox type holding CR LF becomes a rejected record naming it; the events after it flow."""
    bench = make_bench(delivery={"retry_schedule": [0.05, 0.05]})
    receiver = bench.receiver()
    hook = bench.webhook(receiver.url)
    bench.insert_raw([(EVIL_TYPE, "org_a", '{"n": 0}')]
                     + [("purchase.completed", "org_a", f'{{"n": {n}}}') for n in range(1, 4)])
    (evil_id, evil_event), *after = outbox_event_ids(bench, 0)
    daemon = bench.start_daemon()
    wait_for(lambda: alive(daemon) or {e["id"] for e in receiver.events()} >= {e for _, e in after},
             20, "the events after the bad one")
    time.sleep(0.5)  # anything still to be tried for the bad one
    records = bench.query("SELECT webhook_id, state, last_error FROM deliveries WHERE outbox_id = ?",
                          (evil_id,))
    tried = bench.query("SELECT count(*) FROM attempts a JOIN deliveries d ON d.id = a.delivery_id "
                        "WHERE d.outbox_id = ?", (evil_id,))[0][0]
    sent = [h for h in receiver.hits if evil_event.encode() in h.body or "X-Evil" in h.headers]
    print(f"records {records}; attempts {tried}; requests {len(sent)}")
    assert records, "no history record of the refused event"
    assert {state for _, state, _ in records} == {"rejected"}
    assert {w for w, _, _ in records} <= {hook, None}
    reason = records[0][2] or ""
    assert re.search(r"control|\\r|\\x0d|\\u000d|U\+000D|carriage", reason, re.IGNORECASE), reason
    assert tried == 0
    assert len(sent) == 0


# -- 7. payloads are sent exactly as written ---------------------------------------------------------

EXACT_DATA = '{"n": 18446744073709551616, "x": 1e400, "y": 1.50}'


def test_an_events_data_reaches_the_receiver_byte_for_byte_as_written(make_bench):
    """Data with a 65-bit integer, 1e400 and 1.50 arrives as exactly those bytes."""
    bench = make_bench(delivery={"retry_schedule": [0.05, 0.05]})
    receiver = bench.receiver()
    bench.webhook(receiver.url)
    bench.insert_raw([("fan.created", "org_a", EXACT_DATA), ("fan.created", "org_a", '{"n": 1}')])
    (exact_id, exact_event), (_, later_event) = outbox_event_ids(bench, 0)
    daemon = bench.start_daemon()
    wait_for(lambda: alive(daemon) or any(later_event.encode() in h.body for h in receiver.hits),
             20, "the event after it")
    wait_for(lambda: alive(daemon) or any(exact_event.encode() in h.body for h in receiver.hits)
             or bench.query("SELECT 1 FROM deliveries WHERE outbox_id = ? AND state IN "
                            "('rejected', 'failed')", (exact_id,)), 20, "the exact event")
    bodies = [h.body for h in receiver.hits if exact_event.encode() in h.body]
    states = bench.query("SELECT state, last_error FROM deliveries WHERE outbox_id = ?", (exact_id,))
    print(f"history {states}; bodies {bodies[:1]}")
    assert len(bodies) == 1, f"not received: {states}"
    match = re.search(rb'"data":\s*', bodies[0])
    assert match is not None, bodies[0]
    assert bodies[0][match.end():match.end() + len(EXACT_DATA)] == EXACT_DATA.encode(), bodies[0]


# -- 8. memory is bounded in bytes ------------------------------------------------------------------

LARGE_EVENTS = 600
#: Characters of each event's data string: ~900 KB, under the 1 MB payload limit.
LARGE_EVENT_CHARS = 900_000
#: Peak resident memory allowed to the daemon draining them: the documented in-memory
#: budget for event bodies (256 MB by default at most), the interpreter and its libraries
#: (60-80 MB resident at start) and slack for the bodies in flight, TLS buffers and
#: allocator fragmentation. A daemon that holds a page of rows and their bodies at once
#: peaks above 1 GB here.
MEMORY_BUDGET = 256 * 1024 * 1024
INTERPRETER_BASELINE = 80 * 1024 * 1024
MEMORY_SLACK = 64 * 1024 * 1024
PEAK_RSS_BOUND = MEMORY_BUDGET + INTERPRETER_BASELINE + MEMORY_SLACK  # 400 MB

EVENT_ID_RE = re.compile(rb'"id":"([^"]+)"')


@pytest.mark.slow
def test_draining_a_backlog_of_large_events_keeps_the_daemons_memory_bounded_in_bytes(
        make_bench, figures):
    """600 events of ~900 KB (540 MB) drain with the daemon's resident memory under 400 MB."""
    bench = make_bench(rate_limit={"events_per_minute": 10_000_000, "burst": 100_000},
                       delivery={"timeout": 30.0})
    receiver = bench.receiver(keep_bytes=256)
    bench.webhook(receiver.url, rate_limit=10_000_000)
    conn = bench.connect_outbox()
    try:
        for first in range(0, LARGE_EVENTS, 50):
            with conn:
                for n in range(first, min(first + 50, LARGE_EVENTS)):
                    blob = os.urandom(LARGE_EVENT_CHARS // 2).hex()
                    conn.execute("INSERT INTO outbox (type, organization_id, data) VALUES (?, ?, ?)",
                                 ("fan.created", "org_a", f'{{"n": {n}, "blob": "{blob}"}}'))
    finally:
        conn.close()
    daemon = bench.start_daemon()

    def received() -> int:
        return len({m.group(1) for h in receiver.hits if (m := EVENT_ID_RE.search(h.body))})

    with RssSampler(daemon.proc.pid, interval=0.05) as sampler:
        wait_for(lambda: alive(daemon) or received() >= LARGE_EVENTS, 100, "the drain", interval=0.2)
    print(f"peak RSS {sampler.peak / 2**20:.0f} MB over {sampler.samples} samples; "
          f"received {received()} events")
    figures.set("core_memory", {"events": LARGE_EVENTS, "event_kb": LARGE_EVENT_CHARS // 1000,
                                "received": received(), "peak_mb": round(sampler.peak / 2**20),
                                "bound_mb": PEAK_RSS_BOUND // 2**20})
    assert sampler.samples >= 10
    assert sampler.peak < PEAK_RSS_BOUND, f"peak RSS {sampler.peak / 2**20:.0f} MB"


# -- 9. an idle daemon is idle; light load is still fast --------------------------------------------

#: CPU seconds an idle daemon may use over IDLE_WINDOW_S. The target is under 0.15 s; the
#: bound is set lower so that it separates clearly: polling the outbox every 5 ms costs
#: 0.19-0.22 s here (and could pass 0.15 s on a faster machine), while a daemon that only
#: wakes for the outbox, a due retry or a timer every half second uses about 0.01 s.
IDLE_CPU_BOUND_S = 0.075
IDLE_WINDOW_S = 5.0
#: Median commit→receipt at 5 events a second (the target is under 10 ms; this only
#: guards against a back-off so lazy that light traffic waits for it).
LIGHT_LOAD_MEDIAN_BOUND_S = 0.050


@pytest.mark.slow
def test_an_idle_daemon_uses_almost_no_cpu_and_still_delivers_light_traffic_at_once(
        make_bench, figures):
    """Idle for 5 s the daemon uses < 0.075 s of CPU; then 1 event per 200 ms arrives in < 50 ms (median)."""
    bench = make_bench()
    daemon = bench.start_daemon()
    settle(daemon.proc.pid)
    cpu0 = cpu_seconds(daemon.proc.pid)
    time.sleep(IDLE_WINDOW_S)
    idle_cpu = cpu_seconds(daemon.proc.pid) - cpu0
    alive(daemon)

    receiver = bench.receiver()
    bench.webhook(receiver.url)
    # The daemon picks the new webhook up by itself; the first event tells when it has.
    deadline = time.monotonic() + 30
    while not receiver.count():
        assert time.monotonic() < deadline, "the new webhook received nothing within 30 s"
        bench.emit([("fan.created", "org_a", {"n": -1})])
        time.sleep(0.5)
    time.sleep(1.0)  # idle again before the light traffic
    committed = bench.emit_paced(15, 5)
    latencies = neighbour_latencies(receiver, committed, grace=5)
    alive(daemon)
    print(f"idle CPU over {IDLE_WINDOW_S:.0f} s: {idle_cpu:.3f} s; light-load commit->receipt "
          f"median {median(latencies) * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms")
    figures.set("core_idle", {"cpu_s": round(idle_cpu, 3), "cpu_bound_s": IDLE_CPU_BOUND_S,
                              "window_s": IDLE_WINDOW_S,
                              "light_median_ms": round(median(latencies) * 1000, 1),
                              "light_bound_ms": LIGHT_LOAD_MEDIAN_BOUND_S * 1000})
    assert idle_cpu < IDLE_CPU_BOUND_S, f"{idle_cpu:.3f} s of CPU in {IDLE_WINDOW_S:.0f} s idle"
    assert median(latencies) < LIGHT_LOAD_MEDIAN_BOUND_S, [round(x, 4) for x in latencies]


# -- 10. a full disk under the state database -------------------------------------------------------

#: Size of the file system holding the state database.
SMALL_DISK = "4m"
#: Events written at 100 a second over the whole test (before, during and after the full disk).
DISK_EVENTS = 600


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs mounted on a folder of this test (root only); unmounted at the end."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    folder = tmp_path / "small-disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SMALL_DISK}", "tmpfs",
                              str(folder)], capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.fail(f"mount -t tmpfs failed as root: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        # Daemons holding files on it are stopped by make_bench's teardown, which runs first
        # (it was requested after this fixture); a lazy unmount covers anything left.
        if subprocess.run(["umount", str(folder)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)


def fill(folder: Path) -> Path:
    """Write a file in ``folder`` until its file system is full; returns the file."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        for size in (65536, 4096, 1):  # then the last few bytes
            try:
                while os.write(fd, b"\0" * size):
                    pass
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


@pytest.mark.slow
def test_a_full_disk_under_the_state_database_is_waited_out_and_every_event_delivered_once(
        small_disk, make_bench):
    """State database on a full disk: the daemon logs the cause, keeps going, then delivers all once."""
    state = small_disk / "state.db"
    bench = make_bench(state_path=state)
    receiver = bench.receiver()
    hook = bench.webhook(receiver.url, rate_limit=1_000_000)
    daemon = bench.start_daemon()
    producer = threading.Thread(target=bench.emit_paced, name="application",
                                args=(DISK_EVENTS, 100))
    producer.start()
    try:
        wait_for(lambda: receiver.count() >= 100, 30, "delivery to start")
        filler = fill(small_disk)
        time.sleep(2.0)  # events keep coming while nothing can be recorded
        alive(daemon)
        filler.unlink()
    finally:
        producer.join(30)
    wait_for(lambda: alive(daemon) or drained(bench, hook), 60, "the drain after space came back")
    time.sleep(0.5)
    alive(daemon)
    errors = [line for line in bench.log_text().splitlines()
              if '"level":"error"' in line and str(state) in line
              and re.search(r"full|space", line, re.IGNORECASE)]
    received = collections.Counter(event["data"]["n"] for event in receiver.events())
    uuids = collections.Counter(h.headers["X-Nevent-Delivery"] for h in receiver.hits)
    print(f"error lines naming the state file: {len(errors)}; received {len(received)} of "
          f"{DISK_EVENTS} events, {sum(received.values())} times")
    assert errors, "no error line names the state database and the full disk"
    assert sorted(received) == list(range(DISK_EVENTS))
    assert sum(1 for n in uuids.values() if n > 1) == 0, "delivery ids received twice"
    assert sum(1 for n in received.values() if n > 1) == 0, "events received twice"
