"""Prometheus metrics of the daemon: names, help texts and the text exposition of ``GET /metrics``.

Owns what an operator's Prometheus sees, on a registry of the daemon's own (never the
client's global one, so processes and tests share nothing):

- counters read from the pipeline's ``Tally`` (plain integers bumped on the delivery
  path): ``nevent_dispatch_attempts_total{outcome}``, ``…_deliveries_total{state}``
  (delivered, failed, rejected), ``…_rate_limited_total``, ``…_batches_total``, and the
  histograms ``…_attempt_duration_seconds``, ``…_delivery_lag_seconds`` (outbox commit →
  first attempt; of a batch, its oldest event) and ``…_batch_events``;
- gauges computed at scrape time, from memory (``…_in_flight``, ``…_ready``,
  ``…_build_info{version}``) or from one indexed query each (``…_outbox_backlog_events``,
  ``…_oldest_pending_seconds``, ``…_retries_scheduled``, ``…_failing_webhooks``,
  ``…_webhooks{status}``);
- the ``process_*`` metrics of the client's process collector.

Webhook statuses map the model's one ``active`` flag and its times: ``active``; ``inactive``:
not active and unchanged since created (waiting for its first enable); ``disabled``: not
active and changed since (``webhooks disable``, or edited before a first enable). No
label names a webhook, an organization or an event: the series are few and fixed.
It must not count anything itself, nor be imported on the command line's path.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from .. import __version__
from ..models import Outcome
from ..pipeline.progress import Buckets, Tally
from ..store.sqlite import Store
from .health import HealthMonitor

#: The text exposition format every Prometheus server reads.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "nevent_dispatch"


@dataclass(frozen=True, slots=True)
class Figures:
    """What a scrape reads from the databases."""

    backlog: int
    #: Seconds since the oldest work still to be done fell due (0: none is due).
    oldest_pending_s: float
    retries_scheduled: int
    failing_webhooks: int
    webhooks: dict[str, int]


async def read_figures(store: Store, now: float) -> Figures:
    """The gauges that need a query: each an index seek or range per webhook at most."""
    retries = await store.retries_by_webhook(now)
    oldest = await store.oldest_due(now)
    return Figures(
        backlog=max(0, await store.outbox_max_id() - await store.cursor()),
        oldest_pending_s=0.0 if oldest is None else max(0.0, now - oldest),
        retries_scheduled=sum(count for _, count, _ in retries),
        failing_webhooks=len(retries),
        webhooks=await store.webhook_counts())


def _histogram(name: str, help_text: str, buckets: Buckets) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, help_text)
    family.add_metric([], [(_bound(b), float(n)) for b, n in buckets.cumulative()], buckets.sum)
    return family


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(float(value))


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=value)


class DaemonCollector:
    """Yields the daemon's metric families from its tally, its memory and the figures."""

    def __init__(self, tally: Tally, dispatcher: Any, health: HealthMonitor | None) -> None:
        self.tally = tally
        self.dispatcher = dispatcher
        self.health = health
        #: Set before each exposition (``Metrics.render``).
        self.figures: Figures | None = None

    def collect(self) -> Iterator[Metric]:
        p, t = PREFIX, self.tally
        attempts = CounterMetricFamily(f"{p}_attempts", "Attempts made, by outcome.",
                                       labels=["outcome"])
        for outcome in Outcome:
            attempts.add_metric([outcome.value], t.attempts[outcome])
        yield attempts
        deliveries = CounterMetricFamily(
            f"{p}_deliveries", "Deliveries that reached a final state, by state.", labels=["state"])
        for state, count in t.deliveries.items():
            deliveries.add_metric([state.value], count)
        yield deliveries
        yield _histogram(f"{p}_attempt_duration_seconds",
                         "Seconds an attempt took, from connect to the end of its answer.",
                         t.durations)
        yield _histogram(f"{p}_delivery_lag_seconds",
                         "Seconds from the outbox commit to the first attempt (whole-second "
                         "commit times; of a batch, its oldest event).", t.lag)
        yield CounterMetricFamily(f"{p}_rate_limited", "Events held back by their webhook's "
                                  "rate limit (each counted once).", value=t.rate_limited)
        yield CounterMetricFamily(f"{p}_batches", "Batch deliveries formed.", value=t.batches)
        yield _histogram(f"{p}_batch_events", "Events per batch delivery formed.", t.batch_events)
        yield _gauge(f"{p}_in_flight", "Attempts under way.", len(self.dispatcher.host.inflight))
        ready = self.health is not None and self.health.current().ok
        yield _gauge(f"{p}_ready", "1 while /readyz answers ok.", 1.0 if ready else 0.0)
        info = GaugeMetricFamily(f"{p}_build_info", "The running version.", labels=["version"])
        info.add_metric([__version__], 1.0)
        yield info
        f = self.figures
        if f is None:
            return
        yield _gauge(f"{p}_outbox_backlog_events", "Outbox rows not yet taken in.", f.backlog)
        yield _gauge(f"{p}_oldest_pending_seconds", "Age of the oldest delivery due and not "
                     "done (active webhooks), 0 when none is.", f.oldest_pending_s)
        yield _gauge(f"{p}_retries_scheduled", "Deliveries waiting for a later attempt.",
                     f.retries_scheduled)
        yield _gauge(f"{p}_failing_webhooks", "Webhooks with a delivery waiting for a later "
                     "attempt.", f.failing_webhooks)
        webhooks = GaugeMetricFamily(f"{p}_webhooks", "Webhooks by status (active; inactive: "
                                     "never enabled; disabled).", labels=["status"])
        for status, count in f.webhooks.items():
            webhooks.add_metric([status], count)
        yield webhooks


class Metrics:
    """The registry of one daemon and its exposition."""

    content_type = CONTENT_TYPE

    def __init__(self, tally: Tally, dispatcher: Any, health: HealthMonitor | None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = DaemonCollector(tally, dispatcher, health)
        self.registry.register(self.collector)
        ProcessCollector(registry=self.registry)

    async def render(self, store: Store, now: float) -> bytes:
        self.collector.figures = await read_figures(store, now)
        return generate_latest(self.registry)
