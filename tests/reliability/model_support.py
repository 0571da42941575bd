"""Support of the model-based test (``test_model.py``): receivers, the record of a run, the checks.

Owns what the state machine leans on:

- ``ReceiverHost``: real HTTPS receivers on 127.0.0.1, served by one event loop
  in a background thread, each switchable between ``ok`` (200), ``fail`` (500),
  ``throttle`` (429 + ``Retry-After: 1``) and ``hang`` (answers 200 after
  ``HANG_S``, longer than ``delivery.timeout``), each recording every request.
- ``Record``: what the test did and when — events committed, webhook activity,
  batch mode and rate limits over time, daemon processes and restarts, the
  steps taken.
- ``Application``: the application's side, a thread committing events with
  ``publish()`` on its own connection (and ``commit`` for the test's bursts).
- ``check``: the core's invariants as pure functions of a ``Record``; each
  broken one is a ``Violation`` that names the invariant and the offending
  example, with times in seconds from the start of the example.

It knows the daemon only from the outside: requests on the wire, times, and
what the test itself did. It must not read the daemon's state database nor
import the pipeline.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import random
import socket
import sqlite3
import ssl
import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from nevent_dispatch.publish import publish

# -- the daemon's settings the checks depend on ------------------------------------------------

#: delivery.retry_schedule of the daemon under test: a delivery has 1 + 3 attempts.
RETRY_SCHEDULE = (0.3, 0.6, 1.2)
#: delivery.timeout: an attempt longer than this is a timeout, retried.
TIMEOUT_S = 1.0
#: rate_limit.burst: the most events a quiet rate-limited webhook may get at once.
BURST = 5
#: batch.max_events and batch.max_wait.
BATCH_MAX_EVENTS = 10
BATCH_MAX_WAIT_S = 0.2

# -- margins and bounds -----------------------------------------------------------------------

#: Seconds either side of a webhook change or a daemon restart within which the daemon may
#: still act on the old state: it rereads the webhooks every 0.5 s, and a restarted daemon
#: takes about a second to read its backlog. Events this close to a change may or may not
#: be delivered; they are never allowed to be delivered twice under two ids.
MARGIN_S = 1.5
#: Seconds within which every probe event must reach the probe webhook (healthy, active,
#: default rate limit), whatever the other organizations' webhooks are doing — hanging,
#: answering 429, rate limited with a backlog. A healthy daemon delivers one in a few
#: milliseconds; 2 s is far above that and far below a backlog's drain time, so a breach
#: means another organization's work stood in front of the probe's.
PROBE_BOUND_S = 2.0
#: Seconds a ``hang`` receiver waits before answering (the daemon gave up long before).
HANG_S = 3.0
#: A 2xx answered later than this after the request arrived may have reached the daemon
#: after its timeout: for the resend rule it counts as a timeout.
SLOW_ANSWER_S = 0.5
#: Slack of the bucket bound, in events: arrival times are measured at the receiver, not
#: when the daemon took the tokens.
BUCKET_SLACK = 1
#: Examples shown per broken invariant in a failure message.
SHOWN = 5

#: Status recorded for a request answered only after the daemon's timeout.
HUNG = "hung"
MODES = ("ok", "fail", "throttle", "hang")
_STATUS = {"ok": 200, "fail": 500, "throttle": 429}

DELIVERY_HEADER = "X-Nevent-Delivery"
EVENT_HEADER = "X-Nevent-Event"


# -- receivers ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Carried:
    """One event inside a request's body."""

    n: int | None  # the test's marker in ``data``
    event_id: str
    org: str
    type: str


@dataclass
class Hit:
    """One request a receiver got, and how it answered."""

    arrived: float
    mode: str
    delivery: str
    event_header: str
    body: bytes
    #: 200, 500, 429, or ``HUNG``.
    status: int | str = 0
    answered: float | None = None
    _events: list[Carried] | None = None

    @property
    def ok(self) -> bool:
        return isinstance(self.status, int) and 200 <= self.status < 300

    @property
    def failed(self) -> bool:
        """The daemon saw a failure: non-2xx, or no answer within its timeout."""
        return not self.ok or self.slow

    @property
    def slow(self) -> bool:
        return self.ok and self.answered is not None and self.answered - self.arrived > SLOW_ANSWER_S

    def events(self) -> list[Carried]:
        """The events the body carries (a batch counts each); raises ValueError if it is garbage."""
        if self._events is None:
            doc = orjson.loads(self.body)
            items = doc["events"] if isinstance(doc, dict) and doc.get("type") == "batch" else [doc]
            out = []
            for item in items:
                if not isinstance(item, dict) or not isinstance(item.get("data"), dict):
                    raise ValueError(f"not an event envelope: {item!r:.200}")
                n = item["data"].get("n")
                out.append(Carried(n if isinstance(n, int) else None, str(item.get("id")),
                                   str(item.get("organization_id")), str(item.get("type"))))
            self._events = out
        return self._events


class Receiver:
    """A webhook endpoint of the test: its URL, its current mode, every request it got."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.url = ""
        self.mode = "ok"
        self.modes: list[tuple[float, str]] = [(time.time(), "ok")]
        #: Appended by the receivers' thread; read by the test through ``snapshot``.
        self.hits: list[Hit] = []
        self.runner: web.AppRunner | None = None

    def set_mode(self, mode: str) -> None:
        assert mode in MODES, mode
        self.mode = mode
        self.modes.append((time.time(), mode))

    def mode_at(self, t: float) -> str:
        i = bisect.bisect_right([m[0] for m in self.modes], t) - 1
        return self.modes[max(i, 0)][1]

    def snapshot(self) -> list[Hit]:
        return list(self.hits)


class ReceiverHost:
    """Receivers served by one event loop in a background thread; ``close()`` stops them all."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
        self._loop = asyncio.new_event_loop()
        self._receivers: list[Receiver] = []
        self._thread = threading.Thread(target=self._serve, name="model-receivers", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _call(self, coro: Any, timeout: float = 15.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self, name: str) -> Receiver:
        receiver = Receiver(name)
        self._call(self._start(receiver))
        self._receivers.append(receiver)
        return receiver

    async def _start(self, receiver: Receiver) -> None:
        async def handle(request: web.Request) -> web.StreamResponse:
            arrived = time.time()
            mode = receiver.mode
            body = await request.read()
            hit = Hit(arrived, mode, request.headers.get(DELIVERY_HEADER, ""),
                      request.headers.get(EVENT_HEADER, ""), body)
            if mode == "hang":
                hit.status = HUNG
                receiver.hits.append(hit)
                await asyncio.sleep(HANG_S)
                return web.Response(text="late")
            hit.status = _STATUS[mode]
            hit.answered = time.time()
            receiver.hits.append(hit)
            return web.Response(status=hit.status, text=mode,
                                headers={"Retry-After": "1"} if mode == "throttle" else None)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        site = web.SockSite(runner, sock, ssl_context=self._context)
        await site.start()
        receiver.runner = runner
        receiver.url = f"https://127.0.0.1:{sock.getsockname()[1]}/hook"

    def stop(self, receivers: Iterable[Receiver]) -> None:
        """Stop these receivers (their hung handlers are cancelled)."""
        for receiver in list(receivers):
            if receiver.runner is not None:
                runner, receiver.runner = receiver.runner, None
                with contextlib.suppress(Exception):
                    self._call(runner.cleanup())
            if receiver in self._receivers:
                self._receivers.remove(receiver)

    def close(self) -> None:
        try:
            self.stop(self._receivers)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(15)
            if not self._thread.is_alive():
                self._loop.close()


# -- the record of one example -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    """Something the test changed: it took effect at some moment in [start, end]."""

    start: float
    end: float
    value: Any


@dataclass
class Event:
    n: int
    org: str
    type: str
    #: Wall time just after the commit (recorded before it, then corrected: a receiver
    #: may see the event before the committing thread runs again).
    committed: float


@dataclass
class Webhook:
    """The test's view of one webhook: what it was told, and when."""

    key: str  # w1, w2, … (probe for the probe)
    id: str
    org: str
    receiver: Receiver
    batch: bool
    #: Activity over time: values "inactive", "active", "deleted"; absent before the first.
    activity: list[Change] = field(default_factory=list)
    #: Explicit rate limit over time (events per minute, None = the default).
    limits: list[Change] = field(default_factory=list)
    #: Batch mode over time (switches after creation).
    modes: list[Change] = field(default_factory=list)

    def state(self) -> str:
        return self.activity[-1].value if self.activity else "absent"

    def active_over(self, lo: float, hi: float) -> bool | None:
        """True/False if the webhook was active/inactive from ``lo`` to ``hi``; None if it changed.

        A change is a flip of activity whose interval meets [lo, hi]; "inactive",
        "deleted" and "not yet created" are all inactive.
        """
        active = False
        for change in self.activity:
            flips = (change.value == "active") != active
            if change.end < lo:
                active = change.value == "active"
            elif change.start > hi:
                break
            elif flips:
                return None
        return active

    def describe(self) -> str:
        """Key, id, organization, batch mode and limit, with their changes (a→b)."""
        first = (not self.modes[0].value) if self.modes else self.batch
        kinds = ["batch" if first else "single", *("batch" if c.value else "single" for c in self.modes)]
        limits = "→".join(f"{c.value}/min" if c.value else "default" for c in self.limits)
        return f"{self.key} ({self.id}, {self.org}, {'→'.join(kinds)}, limit {limits or 'default'})"

    def changes_between(self, record: Record, lo: float, hi: float) -> str:
        """The test's changes to this webhook that took effect between ``lo`` and ``hi``."""
        found = [(c.end, f"{c.value}") for c in self.activity if lo <= c.end <= hi]
        found += [(c.end, "batch on" if c.value else "batch off") for c in self.modes
                  if lo <= c.end <= hi]
        found += [(c.end, f"limit {c.value or 'default'}") for c in self.limits if lo <= c.end <= hi]
        return ", ".join(f"{text} at {record.t(t)}" for t, text in sorted(found)) or "none"


@dataclass
class Epoch:
    """One daemon process: from its start to its end (None while it runs)."""

    started: float
    stopped: float | None = None


@dataclass
class Record:
    """Everything the checks need about one example."""

    t0: float
    events: list[Event] = field(default_factory=list)
    webhooks: list[Webhook] = field(default_factory=list)
    epochs: list[Epoch] = field(default_factory=list)
    #: Daemon starts and restarts: (began, ready again, how).
    restarts: list[tuple[float, float, str]] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)
    #: Activity of each webhook when the steps ended (before the final drain).
    final: dict[str, str] = field(default_factory=dict)
    probe_org: str = ""

    def t(self, when: float | None) -> str:
        return "never" if when is None else f"+{when - self.t0:.2f}s"

    def log(self, text: str) -> None:
        self.steps.append(f"{self.t(time.time()):>9} {text}")

    def hits(self, webhook: Webhook) -> list[Hit]:
        return sorted(webhook.receiver.snapshot(), key=lambda h: h.arrived)

    def intake_deadline(self, committed: float) -> float:
        """The latest moment the daemon may take in an event committed then."""
        deadline = committed + MARGIN_S
        for began, ready, _how in sorted(self.restarts):
            if began <= deadline and ready >= committed:
                deadline = max(deadline, ready + MARGIN_S)
        return deadline

    def epoch_of(self, t: float) -> int:
        return bisect.bisect_right([e.started for e in self.epochs], t) - 1


@dataclass(frozen=True, slots=True)
class Violation:
    invariant: int
    text: str


INVARIANTS = {
    0: "daemon and CLI health: no crash of its own, no refusal of a valid command",
    1: "delivery: an event taken in while its webhook was active reaches it "
       "(unless the delivery failed for good)",
    2: "not delivered when inactive, nor across organizations",
    3: "a delivery is sent again only after a failure, a timeout or a daemon restart",
    4: "one event reaches one webhook under one delivery id",
    5: f"rate limit: no window of T s carries more than capacity + rate × T (+{BUCKET_SLACK}) "
       f"events",
    6: f"fairness: every probe event arrives within {PROBE_BOUND_S} s",
}


# -- the application ------------------------------------------------------------------------------


class Application(threading.Thread):
    """The application beside the daemon: small transactions of events on its own connection.

    Every ``pace`` s on average, 1-10 events of one of ``orgs``; every ``probe_every`` s,
    one event of ``probe_org``. Each event's ``data`` is ``{"n": marker}``, markers drawn
    from ``markers`` (shared with the test's own emits).
    """

    def __init__(self, path: Path, record: Record, markers: itertools.count[int], *,
                 orgs: tuple[str, ...], types: tuple[str, ...], probe_org: str, pace: float,
                 probe_every: float, seed: int) -> None:
        super().__init__(name="model-application", daemon=True)
        self.path, self.record, self.markers = path, record, markers
        self.orgs, self.types, self.probe_org = orgs, types, probe_org
        self.pace, self.probe_every = pace, probe_every
        self.rng = random.Random(seed)
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        self.published = 0

    def run(self) -> None:
        try:
            conn = sqlite3.connect(self.path, timeout=30)
            try:
                next_probe = time.monotonic()
                next_batch = time.monotonic()
                while not self.stopping.is_set():
                    now = time.monotonic()
                    if now >= next_probe:
                        self.published += commit(conn, self.record, self.markers,
                                                 [(self.probe_org, "fan.created")])
                        next_probe = now + self.probe_every
                    if now >= next_batch:
                        org, type_ = self.rng.choice(self.orgs), self.rng.choice(self.types)
                        self.published += commit(conn, self.record, self.markers,
                                                 [(org, type_)] * self.rng.randint(1, 10))
                        next_batch = now + self.rng.expovariate(1 / self.pace)
                    self.stopping.wait(max(0.0, min(next_probe, next_batch) - time.monotonic()))
            finally:
                conn.close()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def stop(self) -> None:
        self.stopping.set()
        self.join(30)


def commit(conn: sqlite3.Connection, record: Record, markers: itertools.count[int],
           events: list[tuple[str, str]]) -> int:
    """Publish ``(org, type)`` events in one transaction, recorded with their commit time."""
    began = time.time()
    made = [Event(next(markers), org, type_, began) for org, type_ in events]
    record.events.extend(made)  # before the commit: the daemon may deliver them at once
    with conn:
        for event in made:
            publish(conn, event.type, event.org, {"n": event.n})
    committed = time.time()
    for event in made:
        event.committed = committed
    return len(made)


# -- the checks ----------------------------------------------------------------------------------


def _delivered(record: Record, webhook: Webhook) -> tuple[set[int], set[int]]:
    """(events answered 2xx at the webhook, events whose delivery failed for good there)."""
    reached: set[int] = set()
    by_delivery: dict[str, list[Hit]] = defaultdict(list)
    for hit in webhook.receiver.snapshot():
        try:
            carried = hit.events()
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
            continue
        by_delivery[hit.delivery].append(hit)
        if hit.ok:
            reached.update(c.n for c in carried if c.n is not None)
    given_up: set[int] = set()
    for hits in by_delivery.values():
        if sum(h.failed for h in hits) >= 1 + len(RETRY_SCHEDULE) and not any(h.ok for h in hits):
            given_up.update(c.n for h in hits for c in h.events() if c.n is not None)
    return reached, given_up - reached


def owed(record: Record) -> list[tuple[Event, Webhook]]:
    """(event, webhook) pairs the daemon must still deliver (invariant 1), right now."""
    out = []
    for webhook in record.webhooks:
        if record.final.get(webhook.key, webhook.state()) != "active":
            continue
        reached, given_up = _delivered(record, webhook)
        for event in record.events:
            if event.org != webhook.org or event.n in reached or event.n in given_up:
                continue
            lo, hi = event.committed - MARGIN_S, record.intake_deadline(event.committed)
            if webhook.active_over(lo, hi) is True:
                out.append((event, webhook))
    return out


def _hits_text(record: Record, hits: list[Hit], limit: int = 6) -> str:
    parts = [f"{record.t(h.arrived)} {h.status} d={h.delivery[:13]}…" for h in hits[:limit]]
    return ", ".join(parts) + (f", … ({len(hits)} in all)" if len(hits) > limit else "") or "none"


def check_wire(record: Record) -> list[Violation]:
    """Bodies parse, every carried event is one the test emitted, of the webhook's organization."""
    out = []
    by_n = {e.n: e for e in record.events}
    for webhook in record.webhooks:
        for hit in record.hits(webhook):
            try:
                carried = hit.events()
            except (ValueError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
                out.append(Violation(2, f"{webhook.key} got a body that is not an event or a batch "
                                        f"at {record.t(hit.arrived)}: {exc}"))
                continue
            if not hit.delivery:
                out.append(Violation(4, f"{webhook.key} got a request without {DELIVERY_HEADER} "
                                        f"at {record.t(hit.arrived)}"))
            for c in carried:
                event = by_n.get(c.n) if c.n is not None else None
                if event is None:
                    out.append(Violation(2, f"{webhook.describe()} got an event the test never "
                                            f"emitted: {c} at {record.t(hit.arrived)}"))
                elif c.org != webhook.org or event.org != webhook.org:
                    out.append(Violation(2, f"event n={c.n} of {event.org} (envelope says {c.org}) "
                                            f"reached {webhook.describe()} of another organization "
                                            f"at {record.t(hit.arrived)}, d={hit.delivery}"))
    return out


def check_delivery(record: Record) -> list[Violation]:
    """Invariants 1 (must arrive) and 2 (must not arrive while inactive)."""
    out = [Violation(1, f"event n={event.n} ({event.org}, {event.type}) committed at "
                        f"{record.t(event.committed)} never reached {webhook.describe()}, active "
                        f"from {MARGIN_S} s before it to the end; its requests there: "
                        f"{_hits_text(record, _carrying(record, webhook, event.n))}")
           for event, webhook in owed(record)]
    for webhook in record.webhooks:
        seen: dict[int, list[Hit]] = defaultdict(list)
        for hit in record.hits(webhook):
            with contextlib.suppress(ValueError, KeyError, TypeError, orjson.JSONDecodeError):
                for c in hit.events():
                    if c.n is not None:
                        seen[c.n].append(hit)
        for event in record.events:
            if event.org != webhook.org or event.n not in seen:
                continue
            lo, hi = event.committed - MARGIN_S, record.intake_deadline(event.committed)
            if webhook.active_over(lo, hi) is False:
                out.append(Violation(2, f"event n={event.n} ({event.org}) committed at "
                                        f"{record.t(event.committed)}, while {webhook.describe()} "
                                        f"was {_activity_at(webhook, event.committed)} (from "
                                        f"{MARGIN_S} s before to {record.t(hi)}), reached it: "
                                        f"{_hits_text(record, seen[event.n])}"))
    return out


def _activity_at(webhook: Webhook, t: float) -> str:
    state = "not yet created"
    for change in webhook.activity:
        if change.end <= t:
            state = change.value
    return state


def _carrying(record: Record, webhook: Webhook, n: int) -> list[Hit]:
    out = []
    for hit in record.hits(webhook):
        with contextlib.suppress(ValueError, KeyError, TypeError, orjson.JSONDecodeError):
            if any(c.n == n for c in hit.events()):
                out.append(hit)
    return out


def check_resends(record: Record) -> list[Violation]:
    """Invariant 3: a delivery id is seen again only after a failed answer or a restart."""
    out = []
    for webhook in record.webhooks:
        by_delivery: dict[str, list[Hit]] = defaultdict(list)
        for hit in record.hits(webhook):
            if hit.delivery:
                by_delivery[hit.delivery].append(hit)
        for delivery, hits in by_delivery.items():
            for before, after in zip(hits, hits[1:], strict=False):
                if before.failed or record.epoch_of(before.arrived) != record.epoch_of(after.arrived):
                    continue
                ns = sorted(c.n for c in _safe_events(after) if c.n is not None)
                out.append(Violation(3, f"{webhook.describe()}: delivery {delivery} was answered "
                                        f"{before.status} at {record.t(before.arrived)} and sent "
                                        f"again at {record.t(after.arrived)} by the same daemon "
                                        f"process (events n={_ns(ns)}); all its requests: "
                                        f"{_hits_text(record, hits)}"))
                break
    return out


def _safe_events(hit: Hit) -> list[Carried]:
    try:
        return hit.events()
    except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        return []


def _ns(ns: list[int]) -> str:
    return ",".join(map(str, ns[:12])) + ("…" if len(ns) > 12 else "")


def check_delivery_ids(record: Record) -> list[Violation]:
    """Invariant 4: all the requests carrying one event to one webhook share a delivery id."""
    out = []
    for webhook in record.webhooks:
        ids: dict[int, dict[str, list[Hit]]] = defaultdict(lambda: defaultdict(list))
        event_ids: dict[int, set[str]] = defaultdict(set)
        for hit in record.hits(webhook):
            for c in _safe_events(hit):
                if c.n is not None:
                    ids[c.n][hit.delivery].append(hit)
                    event_ids[c.n].add(c.event_id)
        for n, per_id in sorted(ids.items()):
            if len(per_id) > 1:
                parts = "; ".join(f"d={d} at {_hits_text(record, hs, 3)}" for d, hs in per_id.items())
                out.append(Violation(4, f"event n={n} reached {webhook.describe()} under "
                                        f"{len(per_id)} delivery ids: {parts}"))
            if len(event_ids[n]) > 1:
                out.append(Violation(4, f"event n={n} reached {webhook.key} under several event "
                                        f"ids: {sorted(event_ids[n])}"))
    return out


def capacity(limit: int) -> int:
    """The bucket's capacity for a limit of ``limit`` events per minute."""
    return max(1, min(BURST, limit))


def check_buckets(record: Record) -> list[Violation]:
    """Invariant 5, for webhooks with an explicit limit, per daemon process and constant limit."""
    out = []
    for webhook in record.webhooks:
        hits = record.hits(webhook)
        for k, change in enumerate(webhook.limits):
            if change.value is None:
                continue
            lo = change.end + (MARGIN_S if k else 0.0)
            hi = webhook.limits[k + 1].start if k + 1 < len(webhook.limits) else float("inf")
            for epoch in record.epochs:
                a = max(lo, epoch.started)
                b = min(hi, epoch.stopped if epoch.stopped is not None else float("inf"))
                stretch = [h for h in hits if a <= h.arrived <= b]
                worst = _worst_window(stretch, change.value)
                if worst is not None:
                    count, bound, first, last = worst
                    window = [h for h in stretch if first <= h.arrived <= last]
                    sizes = _arrivals(record, window)
                    biggest = max(len(_safe_events(h)) for h in window)
                    why = (f"; one batch of {biggest} events exceeds the capacity "
                           f"{capacity(change.value)}" if biggest > capacity(change.value) else "")
                    out.append(Violation(5, f"{webhook.describe()}: {count} events arrived in "
                                            f"{last - first:.2f} s from {record.t(first)} at "
                                            f"{change.value}/min (bound {capacity(change.value)} "
                                            f"+ {change.value}/60 × {last - first:.2f} + "
                                            f"{BUCKET_SLACK} = {bound:.1f}){why}; arrivals "
                                            f"(×events): {sizes}; changes to it from "
                                            f"{MARGIN_S} s before: "
                                            f"{webhook.changes_between(record, first - MARGIN_S, last)}"))
    return out


def _arrivals(record: Record, hits: list[Hit], limit: int = 30) -> str:
    """Arrivals grouped by 10 ms: ``+5.39s×5, +5.88s×1, …`` (events, batches counted)."""
    groups: list[list[float]] = []
    for hit in hits:
        size = len(_safe_events(hit))
        if groups and hit.arrived - groups[-1][0] < 0.01:
            groups[-1][1] += size
        else:
            groups.append([hit.arrived, size])
    text = ", ".join(f"{record.t(t)}×{n:.0f}" for t, n in groups[:limit])
    return text + (f", … ({len(groups)} arrivals)" if len(groups) > limit else "")


def _worst_window(hits: list[Hit], limit: int) -> tuple[int, float, float, float] | None:
    rate, cap = limit / 60.0, capacity(limit)
    sized = [(h.arrived, len(_safe_events(h))) for h in hits]
    worst: tuple[int, float, float, float] | None = None
    excess = 0.0
    for i, (first, _) in enumerate(sized):
        count = 0
        for last, size in sized[i:]:
            count += size
            bound = cap + rate * (last - first) + BUCKET_SLACK
            if count - bound > excess:
                excess, worst = count - bound, (count, bound, first, last)
    return worst


def probe_latencies(record: Record) -> list[tuple[Event, float | None]]:
    """(probe event, seconds to its first arrival or None) for the probe events the bound covers."""
    probe = next((w for w in record.webhooks if w.org == record.probe_org), None)
    if probe is None:
        return []
    first: dict[int, float] = {}
    for hit in record.hits(probe):
        for c in _safe_events(hit):
            if c.n is not None:
                first.setdefault(c.n, hit.arrived)
    out: list[tuple[Event, float | None]] = []
    for event in record.events:
        if event.org != record.probe_org:
            continue
        lo, hi = event.committed - MARGIN_S, event.committed + PROBE_BOUND_S
        if any(began <= hi and ready >= lo for began, ready, _ in record.restarts):
            continue
        arrived = first.get(event.n)
        out.append((event, None if arrived is None else arrived - event.committed))
    return out


def check_fairness(record: Record) -> list[Violation]:
    """Invariant 6: each covered probe event arrives within ``PROBE_BOUND_S``."""
    out = []
    latencies = probe_latencies(record)
    for event, latency in latencies:
        if latency is not None and latency <= PROBE_BOUND_S:
            continue
        others = "; ".join(_doing(record, w, event.committed) for w in record.webhooks
                           if w.org != record.probe_org) or "none"
        took = "never arrived" if latency is None else f"arrived after {latency:.2f} s"
        out.append(Violation(6, f"probe event n={event.n} committed at {record.t(event.committed)} "
                                f"{took} (bound {PROBE_BOUND_S} s); the other webhooks then: {others}"))
    if out:
        known = sorted(x for _, x in latencies if x is not None)
        if known:
            out.append(Violation(6, f"probe latencies: {len(latencies)} events covered, median "
                                    f"{statistics.median(known):.3f} s, max {known[-1]:.2f} s"))
    return out


def _doing(record: Record, webhook: Webhook, t: float) -> str:
    limit = None
    for change in webhook.limits:
        if change.start <= t:
            limit = change.value
    backlog = sum(1 for e in record.events if e.org == webhook.org and t - 10 <= e.committed <= t)
    return (f"{webhook.key} {webhook.org} {_activity_at(webhook, t)} {webhook.receiver.mode_at(t)} "
            f"{f'{limit}/min' if limit else 'default limit'}, {backlog} events of its org in the "
            f"10 s before")


def check(record: Record) -> list[Violation]:
    """Every invariant but 0 (the harness records those as they happen)."""
    return [*check_wire(record), *check_delivery(record), *check_resends(record),
            *check_delivery_ids(record), *check_buckets(record), *check_fairness(record)]


def report(violations: list[Violation], record: Record, title: str) -> str:
    """A failure message: each broken invariant with its first examples, then the steps."""
    by_invariant: dict[int, list[Violation]] = defaultdict(list)
    for violation in violations:
        by_invariant[violation.invariant].append(violation)
    lines = [title, ""]
    for number in sorted(by_invariant):
        found = by_invariant[number]
        lines.append(f"[{number}] {INVARIANTS[number]} — {len(found)} violation(s):")
        lines.extend(f"    - {v.text}" for v in found[:SHOWN])
        if len(found) > SHOWN:
            lines.append(f"    … and {len(found) - SHOWN} more")
        lines.append("")
    lines.append("webhooks: " + "; ".join(w.describe() + f" {w.receiver.url}" for w in record.webhooks))
    lines.append("steps (seconds from the start of the example):")
    lines.extend(f"  {step}" for step in record.steps)
    return "\n".join(lines)
