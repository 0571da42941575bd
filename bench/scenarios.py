"""The figures: one function per figure, each run of the daemon beside its limit.

Owns what each figure means — which webhooks, which outbox, which receiver,
what is timed, which target is shown — on top of ``harness.Bench``. ``run.py``
calls ``limits`` and then each selected figure once per round, so every figure
alternates with the bare client.
"""

from __future__ import annotations

import math
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from . import fixtures, ops_figures, retention_figures
from .daemon import Daemon
from .fixtures import one_org, one_per_org
from .harness import MAX_IN_FLIGHT, Bench, describe, ms
from .payload import Payloads, org_name
from .procs import wait_for
from .stats import percentile

#: Webhooks of the drain figures: one per organization, events spread round-robin.
WEBHOOKS = 100
#: Every FAILING_EVERY-th webhook of the failure figure answers 500 (20 %).
FAILING_EVERY = 5
#: The slow receiver's answer delay (``bench/sink.py --delay``).
SLOW_DELAY_S = 0.05
#: Requests of the one-at-a-time latency floor.
FLOOR_REQUESTS = 200
#: Targets shown beside the figures (never enforced).
BATCH_TARGET = 100_000
#: The daemon's default ``batch.max_events``.
BATCH_MAX_EVENTS = 100
#: Wire size of the events of the large-event memory figure: just under the 1 MB limit.
LARGE_BODY_BYTES = 1_000_000
#: Webhooks sharing the large-event backlog (each holds a few bodies in memory).
LARGE_WEBHOOKS = 10
#: The fairness figure: one webhook's due retries, its rate limit (events/min), and the
#: probes sent one at a time to another organization's webhook.
FAIR_BACKLOG = 100_000
FAIR_RATE_PER_MINUTE = 12
FAIR_PROBES = 50
#: Probes before the measured ones, and the pause after them (the daemon settles).
FAIR_WARMUP = 5
FAIR_SETTLE_S = 2.0


# -- limits -----------------------------------------------------------------------------------


def limits(b: Bench) -> None:
    """This round's bare client on the fast receiver, and one request at a time on the sink."""
    s = b.sizes
    result = b.bare(b.fast.url("/ok/"), paths=WEBHOOKS, requests=s.bare_requests,
                    concurrency=MAX_IN_FLIGHT)
    b.fast_limit = float(result.get("rate") or math.nan)
    fig = b.figure("bare", f"Bare client: {s.bare_requests:,} POSTs, {MAX_IN_FLIGHT} in flight "
                   f"({b.fast.label})", "req/s")
    fig.samples.append(b.fast_limit)
    if result:
        fig.details.append(f"{result['ok']:,} in {result['elapsed_s']:.2f} s; latency p50 "
                           f"{result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms")
    floor = b.bare(b.sink.url("/ok/"), paths=1, requests=FLOOR_REQUESTS, concurrency=1)
    b.floor_ms = {q: float(floor.get(f"{q}_ms") or math.nan) for q in ("p50", "p95", "p99")}
    fig = b.figure("floor", f"Bare client: one POST at a time, p50 ({b.sink.label})", "ms")
    fig.samples.append(b.floor_ms["p50"])


# -- figures ----------------------------------------------------------------------------------


def drain(b: Bench, *, batch: bool = False) -> None:
    """N preloaded events, 100 organizations × 1 webhook, from spawn to the last 2xx."""
    n = b.sizes.events
    layout = one_per_org("drain-batch" if batch else "drain", WEBHOOKS,
                         lambda i: b.fast.url(f"/ok/{i}"), batch=batch)
    outbox = b.outbox("drain", n, WEBHOOKS)
    result = b.drain("batch" if batch else "drain", layout, outbox, n, receiver=b.fast,
                     batch=batch)
    if batch:
        fig = b.figure("batch", f"Drain, batch mode: {n:,} events → {WEBHOOKS} webhooks",
                       "events/s", limit_label="bare client", limit_unit="req/s",
                       target=f"≥ {BATCH_TARGET:,} events/s",
                       check=lambda value, _ratio: value >= BATCH_TARGET)
    else:
        fig = b.figure("drain", f"Drain, non-batch: {n:,} events → {WEBHOOKS} webhooks",
                       "deliveries/s", limit_label="bare client", limit_unit="req/s",
                       target="≥ 0.7× bare client", check=lambda _value, ratio: ratio >= 0.7)
    fig.samples.append(result.rate(events=batch))
    fig.limits.append(b.fast_limit)
    steady = b.figure(f"{'batch' if batch else 'drain'}-steady",
                      f"{fig.label}, after start-up (first attempt → last 2xx)", fig.unit,
                      limit_label="bare client", limit_unit="req/s")
    steady.samples.append(result.steady_rate(events=batch))
    steady.limits.append(b.fast_limit)
    detail = describe(result, "events" if batch else "deliveries")
    if batch and n // WEBHOOKS < BATCH_MAX_EVENTS:
        detail += (f"; only {n // WEBHOOKS} events per webhook, fewer than a full batch: "
                   "every batch waited batch.max_wait")
    fig.details.append(detail)


def failure(b: Bench) -> None:
    """The non-batch drain with every 5th webhook answering 500 (their retries come later)."""
    n = b.sizes.events
    layout = one_per_org("failure", WEBHOOKS, lambda i: b.fast.url(
        f"/fail/{i}" if i % FAILING_EVERY == 0 else f"/ok/{i}"))
    outbox = b.outbox("drain", n, WEBHOOKS)
    result = b.drain("failure", layout, outbox, n, receiver=b.fast)
    healthy = b.figure("failure", "Failure load, 20 % of webhooks answer 500: healthy deliveries/s",
                       "deliveries/s", limit_label="bare client", limit_unit="req/s")
    healthy.samples.append(result.rate())
    healthy.limits.append(b.fast_limit)
    span = result.last_attempt_end - result.spawned_at
    attempts = b.figure("failure-attempts", "Failure load: all attempts/s (2xx and 500)",
                        "attempts/s", limit_label="bare client", limit_unit="req/s")
    attempts.samples.append(result.attempts / span if span > 0 else math.nan)
    attempts.limits.append(b.fast_limit)
    healthy.details.append(describe(result) + f"; {result.attempts - result.successes:,} "
                           "answered 500 and wait for their retry")


def memory(b: Bench) -> None:
    """Peak and sampled RSS of the daemon draining a large backlog."""
    n = b.sizes.memory_events
    layout = one_per_org("drain", WEBHOOKS, lambda i: b.fast.url(f"/ok/{i}"))
    outbox = b.outbox("memory", n, WEBHOOKS)
    result = b.drain("memory", layout, outbox, n, receiver=b.fast)
    fig = b.figure("memory", f"Peak RSS (VmHWM) draining {n:,} events", "MB",
                   target="< 150 MB", check=lambda value, _ratio: value < 150)
    fig.samples.append(result.peak_rss_kb / 1024)
    sampled = max((sample.rss_kb for sample in result.samples), default=0)
    fig.details.append(describe(result) + f"; {len(result.samples)} RSS samples, the highest "
                       f"{sampled / 1024:.0f} MB")
    for pct in (10, 50, 90):
        rss = result.rss_at(pct / 100)
        b.figure(f"memory-{pct}", f"RSS at {pct} % of that drain", "MB").samples.append(
            math.nan if rss is None else rss / 1024)
    rate = b.figure("memory-rate", f"Drain of that backlog: {n:,} events → {WEBHOOKS} webhooks",
                    "deliveries/s", limit_label="bare client", limit_unit="req/s")
    rate.samples.append(result.rate())
    rate.limits.append(b.fast_limit)


def fanout(b: Bench) -> None:
    """One event to 1,000 webhooks of one organization: commit to the last receipt."""
    count = b.sizes.fanout_webhooks
    layout = one_org("fanout", count, lambda i: b.fast.url(f"/ok/{i}"))
    folder = b.workdir / "runs" / f"fanout-outbox-{b.next_seq()}"
    folder.mkdir(parents=True)
    outbox = folder / "outbox.db"
    fixtures.make_outbox(outbox, 0, 1, b.payloads)
    daemon, run_folder = b.start_daemon("fanout", layout, outbox, 2 * count)
    value = math.nan
    try:
        # The first event warms the daemon up (connections, lanes); the second is measured.
        warm = b.fast.counts().ok + count
        b.publish_now(outbox, [org_name(0)])
        if not wait_for(lambda: b.fast.counts().ok >= warm or not daemon.alive(), 60, 0.01):
            b.note("fan-out: the warm-up event did not reach every webhook in 60 s")
        else:
            done = b.fast.counts().ok + count
            committed = b.publish_now(outbox, [org_name(0)])
            if wait_for(lambda: b.fast.counts().ok >= done or not daemon.alive(), 60, 0.01):
                value = ms(b.fast.counts().last_at - committed)
            else:
                b.note("fan-out: the measured event did not reach every webhook in 60 s")
    finally:
        result = b.finish("fanout", daemon, run_folder)
        fixtures.remove_database(outbox)
    fig = b.figure("fanout", f"Fan-out: 1 event → {count:,} webhooks, commit to last receipt",
                   "ms", limit_label=f"bare client, {count:,} requests")
    fig.samples.append(value)
    fig.limits.append(ms(count / b.fast_limit))
    fig.details.append(f"{value:,.0f} ms; the daemon recorded {result.successes:,} successes for "
                       f"{2 * count:,} deliveries (warm-up included)")


def latency(b: Bench) -> None:
    """Steady publish() rates; commit to receipt at the aiohttp receiver, per event."""
    s = b.sizes
    layout = one_per_org("latency", WEBHOOKS, lambda i: b.sink.url(f"/lat/{i}"))
    folder = b.workdir / "runs" / f"latency-outbox-{b.next_seq()}"
    folder.mkdir(parents=True)
    outbox = folder / "outbox.db"
    fixtures.make_outbox(outbox, 0, 1, b.payloads)
    total = WEBHOOKS + sum(int(rate * s.latency_s) for rate in s.latency_rates)
    daemon, run_folder = b.start_daemon("latency", layout, outbox, total)
    try:
        warm = b.sink.counts().ok + WEBHOOKS
        b.publish_now(outbox, [org_name(i) for i in range(WEBHOOKS)])
        if not wait_for(lambda: b.sink.counts().ok >= warm or not daemon.alive(), 30, 0.02):
            b.note("latency: the warm-up events were not all received in 30 s")
        b.sink.records()
        for rate in s.latency_rates:
            _latency_at(b, outbox, rate, folder, daemon)
    finally:
        b.finish("latency", daemon, run_folder)
        fixtures.remove_database(outbox)


def _publish_steady(b: Bench, outbox: Path, rate: int, folder: Path, daemon: Daemon,
                    what: str) -> tuple[dict[str, Any], dict[int, float], list[Any]] | None:
    """Publish at ``rate`` for the latency duration from another process, wait until the
    sink received them all (or 30 s): (the publisher's report, commit time by seq, the
    sink's records), or None when the publisher failed."""
    s = b.sizes
    first = b.next_seq(int(rate * s.latency_s))
    before = b.sink.counts().ok
    out = folder / f"commits-{what.replace(' ', '-').replace('/', '')}.json"
    argv = [sys.executable, "-m", "bench.publisher", "--outbox", str(outbox), "--rate", str(rate),
            "--duration", str(s.latency_s), "--orgs", str(WEBHOOKS), "--first-seq", str(first),
            "--body-bytes", str(s.body_bytes), "--out", str(out)]
    code = b.procs.run(argv, log=folder / "publisher.log", timeout_s=s.latency_s * 3 + 30)
    if code != 0 or not out.exists():
        b.note(f"{what}: the publisher failed (exit {code})")
        return None
    published = orjson.loads(out.read_bytes())
    commits = {int(seq): float(at) for seq, at in published["commits"]}
    if not wait_for(lambda: b.sink.counts().ok >= before + len(commits) or not daemon.alive(),
                    30, 0.05):
        b.note(f"{what}: not every event was received within 30 s")
    return published, commits, b.sink.records()


def _latency_at(b: Bench, outbox: Path, rate: int, folder: Path, daemon: Daemon) -> None:
    steady = _publish_steady(b, outbox, rate, folder, daemon, f"latency at {rate}/s")
    if steady is None:
        return
    published, commits, records = steady
    if published["achieved_rate"] < 0.95 * rate:
        b.note(f"latency at {rate}/s: the publisher only reached {published['achieved_rate']:,.0f}"
               f" commits/s (its own commits, or CPU shared with the daemon and the receiver)")
    latencies = [ms(received - commits[seq]) for seq, received, _ in records if seq in commits]
    for q, target in (("p50", "< 10 ms"), ("p95", ""), ("p99", "< 50 ms")):
        bound = float(target.split()[1]) if target and rate == 200 else None
        fig = b.figure(f"latency-{rate}-{q}", f"Latency at {rate:,} events/s, {q} "
                       "(commit → receipt)", "ms", limit_label="one POST at a time",
                       target=target if bound else "",
                       check=(lambda value, _r, bound=bound: value < bound) if bound else None)
        fig.samples.append(percentile(latencies, int(q[1:]) / 100))
        fig.limits.append(b.floor_ms[q])
    b.figures[f"latency-{rate}-p50"].details.append(
        f"published {len(commits):,} at {published['achieved_rate']:,.0f}/s "
        f"(asked {rate:,}/s) over {published['elapsed_s']:.1f} s; received {len(latencies):,}; "
        f"max {max(latencies, default=math.nan):.1f} ms")


def slow(b: Bench) -> None:
    """Receivers answering after 50 ms: throughput is bounded by in-flight ÷ latency."""
    s = b.sizes
    for variant in s.slow_variants:
        layout = one_per_org(f"slow-{variant.webhooks}", variant.webhooks,
                             lambda i: b.sink.url(f"/slow/{i}"))
        outbox = b.outbox(f"slow-{variant.webhooks}", s.slow_events, variant.webhooks)
        bare = b.bare(b.sink.url("/slow/"), paths=variant.webhooks, requests=s.slow_events,
                      concurrency=variant.in_flight)
        result = b.drain(f"slow-{variant.webhooks}-{variant.max_in_flight}-{variant.per_webhook}",
                         layout, outbox, s.slow_events, receiver=b.sink,
                         max_in_flight=variant.max_in_flight, per_webhook=variant.per_webhook)
        ceiling = variant.in_flight / SLOW_DELAY_S
        fig = b.figure(f"slow-{variant.label}", f"Slow receivers (50 ms), {variant.label}",
                       "deliveries/s", limit_label=f"bare client, {variant.in_flight} in flight",
                       limit_unit="req/s")
        fig.samples.append(result.rate())
        fig.limits.append(float(bare.get("rate") or math.nan))
        fig.details.append(describe(result) + f"; in-flight ÷ latency = {variant.in_flight} ÷ "
                           f"{SLOW_DELAY_S:g} s = {ceiling:,.0f}/s")


def memory_large(b: Bench) -> None:
    """Peak RSS draining a backlog of events just under the 1 MB payload limit."""
    n = b.sizes.large_events
    layout = one_per_org("drain-large", LARGE_WEBHOOKS, lambda i: b.fast.url(f"/ok/{i}"))
    name = "memory-large"
    if name not in b._outboxes:
        path = b.workdir / "outboxes" / f"{name}.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        fixtures.make_outbox(path, n, LARGE_WEBHOOKS, Payloads(LARGE_BODY_BYTES))
        b._outboxes[name] = path
    result = b.drain(name, layout, b._outboxes[name], n, receiver=b.fast)
    fig = b.figure("memory-large", f"Peak RSS (VmHWM) draining {n:,} events of "
                   f"{LARGE_BODY_BYTES / 1e6:.1f} MB", "MB",
                   target="< 1024 MB (the unit's MemoryMax)", check=lambda value, _r: value < 1024)
    fig.samples.append(result.peak_rss_kb / 1024)
    fig.details.append(describe(result))


def fairness(b: Bench) -> None:
    """Another organization's latency while one webhook holds 100,000 due retries at 12/min,
    beside the same latency with no backlog at all."""
    idle = _probe_latency(b, backlog=0)
    loaded = _probe_latency(b, backlog=b.sizes.fair_backlog)
    fig = b.figure("fairness", f"Latency of another organization while one webhook drains "
                   f"{b.sizes.fair_backlog:,} retries at {FAIR_RATE_PER_MINUTE}/min, p50",
                   "ms", limit_label="the same with no backlog", target="≤ 2× no backlog",
                   check=lambda _value, ratio: ratio <= 2.0)
    fig.samples.append(loaded[0])
    fig.limits.append(idle[0])
    fig.details.append(f"p50 {loaded[0]:.1f} ms, p99 {loaded[1]:.1f} ms with the backlog; "
                       f"p50 {idle[0]:.1f} ms, p99 {idle[1]:.1f} ms without; "
                       f"{FAIR_PROBES} probes one at a time")


def _probe_latency(b: Bench, *, backlog: int) -> tuple[float, float]:
    """(p50, p99) ms of FAIR_PROBES events to organization 1, one at a time, while
    organization 0's webhook (limited to FAIR_RATE_PER_MINUTE) has ``backlog`` due retries."""
    layout = fixtures.Layout("fairness", ((org_name(0), b.fast.url("/ok/0"), False),
                                          (org_name(1), b.sink.url("/lat/1"), False)))
    folder = b.workdir / "runs" / f"fairness-outbox-{b.next_seq()}"
    folder.mkdir(parents=True)
    outbox = folder / "outbox.db"
    fixtures.make_outbox(outbox, backlog, 1, b.payloads)
    daemon, run_folder = b.start_daemon(
        "fairness", layout, outbox, FAIR_PROBES,
        prepare=lambda state: fixtures.add_backlog(state, org_name(0), backlog,
                                                   FAIR_RATE_PER_MINUTE))
    latencies: list[float] = []
    try:
        # Measured once the daemon has settled (started, its lanes filled from the backlog):
        # the figure is the steady price of the backlog, not of the start-up.
        for _ in range(FAIR_WARMUP):
            before = b.sink.counts().ok
            b.publish_now(outbox, [org_name(1)])
            wait_for(lambda before=before: b.sink.counts().ok > before  # type: ignore[misc]
                     or not daemon.alive(), 10, 0.001)
        time.sleep(FAIR_SETTLE_S)
        b.sink.records()
        for _ in range(FAIR_PROBES):
            before = b.sink.counts().ok
            b.publish_now(outbox, [org_name(1)])
            if not wait_for(lambda before=before: b.sink.counts().ok > before  # type: ignore[misc]
                            or not daemon.alive(), 10, 0.001):
                b.note(f"fairness: a probe was not received within 10 s (backlog {backlog:,})")
                break
        records = b.sink.records()
        latencies = [ms(received - sent) for _, received, sent in records]
    finally:
        b.finish("fairness", daemon, run_folder)
        fixtures.remove_database(outbox)
    return (percentile(latencies, 0.5), percentile(latencies, 0.99))


# -- management API ---------------------------------------------------------------------------

#: Requests per second of the API client during the loaded drain.
API_RATE = 50
#: History of the list-latency figure, and the requests it times.
API_HISTORY = 1_000_000
API_HISTORY_REQUESTS = 400
#: The API of these runs listens on a Unix socket in the run's folder (no port to pick).
API_SOCKET = {"api.listen": '"unix:{dir}/api.sock"'}


def _api_client(b: Bench, daemon: Daemon, folder: Path, orgs: list[str], **options: int
                ) -> object:
    argv = [*b.cores.for_receiver(), sys.executable, "-m", "bench.apiclient", "--socket",
            str(folder / "api.sock"), "--token-file", str(folder / "token"), "--org",
            ",".join(orgs)]
    for key, value in options.items():
        argv += [f"--{key}", str(value)]
    return b.procs.start(argv, log=folder / "apiclient.log")


def _api_result(b: Bench, folder: Path) -> dict[str, object]:
    lines = [line for line in (folder / "apiclient.log").read_bytes().splitlines()
             if line.startswith(b"{")]
    if not lines:
        b.note(f"the API client printed no result; see {folder / 'apiclient.log'}")
        return {}
    result: dict[str, object] = orjson.loads(lines[-1])
    if result.get("errors"):
        b.note(f"the API client had {result['errors']} errors of {result['requests']} requests")
    return result


def api_load(b: Bench) -> None:
    """The non-batch drain while a client lists deliveries at 50 requests/s, beside the same
    drain without it, in the same round (the order alternates between rounds)."""
    n = b.sizes.events
    layout = one_per_org("drain", WEBHOOKS, lambda i: b.fast.url(f"/ok/{i}"))
    outbox = b.outbox("drain", n, WEBHOOKS)
    rates: dict[bool, float] = {}
    seen: dict[str, object] = {}
    for loaded in b.alternating():
        daemon, folder = b.start_daemon("api-load" if loaded else "api-quiet", layout, outbox,
                                        n, settings=API_SOCKET)
        client = _api_client(b, daemon, folder, [org_name(i) for i in range(WEBHOOKS)],
                             rate=API_RATE, limit=100) if loaded else None
        daemon.watch(batch=False, timeout_s=b.timeout(n))
        if client is not None:
            b.procs.stop(client)  # type: ignore[arg-type]
            seen = _api_result(b, folder)
        rates[loaded] = b.finish("api-load", daemon, folder).rate()
    fig = b.figure("api-load", f"Drain, non-batch: {n:,} events, while a client lists "
                   f"deliveries at {API_RATE} req/s", "deliveries/s",
                   limit_label="the same drain without it", target="≥ 0.95× without",
                   check=lambda _value, ratio: ratio >= 0.95)
    fig.samples.append(rates[True])
    fig.limits.append(rates[False])
    if seen:
        fig.details.append(f"{seen['requests']:,} list requests during the drain, p50 "
                           f"{seen['p50_ms']:.1f} ms, p99 {seen['p99_ms']:.1f} ms")


def _add_history(state: Path, count: int, orgs: int) -> None:
    """``count`` finished deliveries (each with one attempt) spread over the organizations."""
    from nevent_dispatch.pipeline.attempts import new_delivery_uuid

    conn = sqlite3.connect(state)
    try:
        webhooks = dict(conn.execute("SELECT organization_id, id FROM webhooks"))
        ids = [(org_name(i), webhooks[org_name(i)]) for i in range(orgs)]
        now = time.time() - count / 1000
        with conn:
            conn.executemany(
                "INSERT INTO deliveries (id, uuid, webhook_id, kind, event_type, event_id, "
                "outbox_id, event_count, state, attempts, retry_base, next_at, created_at, "
                "updated_at, last_status, organization_id) VALUES "
                "(?, ?, ?, 'event', 'purchase.completed', ?, ?, 1, 'delivered', 1, 0, NULL, ?, "
                "?, 200, ?)",
                ((i, new_delivery_uuid(now + i / 1000), ids[i % orgs][1], f"evt_h{i}", i,
                  now + i / 1000, now + i / 1000, ids[i % orgs][0])
                 for i in range(1, count + 1)))
            conn.executemany(
                "INSERT INTO attempts (delivery_id, number, started_at, latency_ms, outcome, "
                "status) VALUES (?, 1, ?, 3.0, 'success', 200)",
                ((i, now + i / 1000) for i in range(1, count + 1)))
            conn.execute("UPDATE meta SET value = ? WHERE key = 'cursor'", (count,))
    finally:
        conn.close()
    fixtures.checkpoint(state)


def api_history(b: Bench) -> None:
    """``GET …/deliveries?limit=100`` one at a time over a history of 1,000,000 deliveries:
    first pages and pages further back (following next_cursor), across 100 organizations."""
    count = b.sizes.api_history
    layout = one_per_org("drain", WEBHOOKS, lambda i: b.fast.url(f"/ok/{i}"))
    outbox = b.outbox("api-history", 0, WEBHOOKS)

    started = time.monotonic()
    daemon, folder = b.start_daemon("api-history", layout, outbox, 0,
                                    prepare=lambda state: _add_history(state, count, WEBHOOKS),
                                    settings=API_SOCKET)
    built = time.monotonic() - started
    client = _api_client(b, daemon, folder, [org_name(i) for i in range(WEBHOOKS)],
                         requests=API_HISTORY_REQUESTS, limit=100, pages=5)
    try:
        client.wait(120)  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - a stuck client must not stop the benchmark
        b.procs.stop(client)  # type: ignore[arg-type]
    seen = _api_result(b, folder)
    b.finish("api-history", daemon, folder)
    for key, q in (("api-p50", "p50"), ("api-p99", "p99")):
        fig = b.figure(key, f"API: GET …/deliveries?limit=100 over {count:,} deliveries, {q}",
                       "ms", target="p99 < 50 ms" if q == "p99" else "",
                       check=(lambda value, _ratio: value < 50) if q == "p99" else None)
        fig.samples.append(float(seen.get(f"{q}_ms") or math.nan))  # type: ignore[arg-type]
    b.figures["api-p50"].details.append(
        f"{seen.get('requests', 0):,} requests one at a time, pages 1–5 of 100 organizations "
        f"(history built in {built:.0f} s)")


# -- webhook changes --------------------------------------------------------------------------

#: The changes figure: webhooks in all (the drain's 100 among them), the others per
#: organization (organizations of their own: the drain's events never match them), the
#: filter of every other one, and the rate at which another process changes one of them.
CHANGES_WEBHOOKS = 50_000
CHANGES_PER_ORG = 10
CHANGES_FILTER = {"data.amount": {"$gt": 10}}
CHANGES_PER_S = 1.0
#: The publish rate of its latency part, events/s.
CHANGES_LATENCY_RATE = 200


def _changes_template(b: Bench, layout: fixtures.Layout) -> Path:
    """Make ``layout``'s template with the other webhooks added, once; the file of their ids."""
    ids_file = b.workdir / "templates" / f"{layout.name}.ids.json"
    if layout.name not in b._templates:
        state = fixtures.state_template(b.workdir / "templates", layout, b.tls.ca_file)
        if not ids_file.exists():  # a template kept in --workdir has them already
            started = time.monotonic()
            ids = fixtures.add_webhooks(state, CHANGES_WEBHOOKS - len(layout.webhooks),
                                        first_org=len(layout.webhooks), per_org=CHANGES_PER_ORG,
                                        url=b.fast.url("/ok/other"), filter_doc=CHANGES_FILTER)
            ids_file.write_bytes(orjson.dumps(ids))
            print(f"  state {layout.name}: {len(ids):,} more webhooks in "
                  f"{time.monotonic() - started:.1f} s", flush=True)
        b._templates[layout.name] = state
    return ids_file


def _start_changer(b: Bench, folder: Path, ids_file: Path) -> object:
    """``bench.changer`` on the run's config: one change of a non-drain webhook a second,
    on the receivers' CPUs (the figure is what changes cost the daemon, not a CPU shared
    with the process making them)."""
    argv = [*b.cores.for_receiver(), sys.executable, "-m", "bench.changer",
            "--config", str(folder / "config.toml"), "--ids", str(ids_file),
            "--rate", str(CHANGES_PER_S), "--seed", str(b.next_seq()),
            "--out", str(folder / "changes.json")]
    return b.procs.start(argv, log=folder / "changer.log")


def _stop_changer(b: Bench, changer: object, folder: Path) -> list[float]:
    """Stop the changer (SIGTERM); the commit times of its changes."""
    b.procs.stop(changer)  # type: ignore[arg-type]
    out = folder / "changes.json"
    if not out.exists():
        b.note(f"changes: the changer wrote no result; see {folder / 'changer.log'}")
        return []
    return [float(at) for at in orjson.loads(out.read_bytes())["commits"]]


def _published_latencies(b: Bench, outbox: Path, folder: Path, daemon: Daemon,
                         tag: str) -> list[float]:
    """Commit → receipt ms of events published steadily at CHANGES_LATENCY_RATE."""
    steady = _publish_steady(b, outbox, CHANGES_LATENCY_RATE, folder, daemon, f"changes ({tag})")
    if steady is None:
        return []
    _, commits, records = steady
    if b.keep:  # for a look at when the slow ones were committed
        (folder / f"receipts-{tag}.json").write_bytes(orjson.dumps(records))
    return [ms(received - commits[seq]) for seq, received, _ in records if seq in commits]


def changes(b: Bench) -> None:
    """The non-batch drain, and commit → receipt latency, with 50,000 webhooks loaded (half
    of them filtered), while another process changes one webhook a second, each beside the
    same without changes (the order alternates between rounds)."""
    n = b.sizes.events
    layout = one_per_org("changes-drain", WEBHOOKS, lambda i: b.fast.url(f"/ok/{i}"))
    ids_file = _changes_template(b, layout)
    outbox = b.outbox("drain", n, WEBHOOKS)
    fig = b.figure("changes-drain", f"Drain, non-batch, {CHANGES_WEBHOOKS:,} webhooks loaded: "
                   f"{n:,} events → {WEBHOOKS} of them while one webhook changes every second, "
                   "after start-up", "deliveries/s", limit_label="the same with no changes",
                   target="≥ 0.95× no changes", check=lambda _value, ratio: ratio >= 0.95)
    for changing in b.alternating():
        before = b.fast.counts()
        name = "changes-drain" if changing else "changes-quiet"
        daemon, folder = b.start_daemon(name, layout, outbox, n)
        changer = _start_changer(b, folder, ids_file) if changing else None
        try:
            daemon.watch(batch=False, timeout_s=b.timeout(n))
        finally:
            commits = _stop_changer(b, changer, folder) if changer is not None else []
        result = b.finish(name, daemon, folder)
        if b.fast.counts().ok - before.ok != result.successes:
            b.note(f"{name}: the receiver and the daemon disagree on the 2xx count")
        (fig.samples if changing else fig.limits).append(result.steady_rate())
        during = sum(result.first_attempt_at <= at <= result.last_success_at for at in commits)
        fig.details.append(f"{'with' if changing else 'without'} changes: {describe(result)}"
                           + (f"; {during} changes committed meanwhile" if changing else ""))

    layout = one_per_org("changes-latency", WEBHOOKS, lambda i: b.sink.url(f"/lat/{i}"))
    ids_file = _changes_template(b, layout)
    folder = b.workdir / "runs" / f"changes-outbox-{b.next_seq()}"
    folder.mkdir(parents=True)
    outbox = folder / "outbox.db"
    fixtures.make_outbox(outbox, 0, 1, b.payloads)
    daemon, run_folder = b.start_daemon(
        "changes-latency", layout, outbox,
        WEBHOOKS + 2 * int(CHANGES_LATENCY_RATE * b.sizes.latency_s))
    quiet: list[float] = []
    loaded: list[float] = []
    commits: list[float] = []
    try:
        warm = b.sink.counts().ok + WEBHOOKS
        b.publish_now(outbox, [org_name(i) for i in range(WEBHOOKS)])
        if not wait_for(lambda: b.sink.counts().ok >= warm or not daemon.alive(), 60, 0.02):
            b.note("changes: the warm-up events were not all received in 60 s")
        b.sink.records()
        quiet = _published_latencies(b, outbox, folder, daemon, "quiet")
        changer = _start_changer(b, run_folder, ids_file)
        try:
            loaded = _published_latencies(b, outbox, folder, daemon, "changing")
        finally:
            commits = _stop_changer(b, changer, run_folder)
    finally:
        b.finish("changes-latency", daemon, run_folder)
        fixtures.remove_database(outbox)
    for q, target in (("p50", ""), ("p99", "< 20 ms")):
        fig = b.figure(f"changes-latency-{q}", f"Latency at {CHANGES_LATENCY_RATE} events/s, "
                       f"{CHANGES_WEBHOOKS:,} webhooks loaded, one changing every second, {q} "
                       "(commit → receipt)", "ms", limit_label="the same with no changes",
                       target=target,
                       check=(lambda value, _ratio: value < 20) if target else None)
        fig.samples.append(percentile(loaded, int(q[1:]) / 100))
        fig.limits.append(percentile(quiet, int(q[1:]) / 100))
    b.figures["changes-latency-p50"].details.append(
        f"{len(loaded):,} events received while {len(commits)} changes were committed "
        f"(max {max(loaded, default=math.nan):.1f} ms); {len(quiet):,} before, without changes "
        f"(max {max(quiet, default=math.nan):.1f} ms)")


#: Figures left out of ``--smoke`` unless ``--only`` names them (minutes at any size).
NOT_IN_SMOKE = frozenset({"changes"})

#: The figures in the order a round runs them (the longest last).
FIGURES = {
    "drain": drain,
    "batch": lambda b: drain(b, batch=True),
    "failure": failure,
    "fanout": fanout,
    "latency": latency,
    "slow": slow,
    "fairness": fairness,
    "changes": changes,
    "api-load": api_load,
    "api-history": api_history,
    "metrics": ops_figures.metrics_cost,
    "retention": retention_figures.retention_cost,
    "memory": memory,
    "memory-large": memory_large,
}
