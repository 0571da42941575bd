"""What the pipeline tells the operations side about itself: counters and signs of progress.

Owns ``Tally``, the counters bumped on the delivery path — plain integers and
histogram buckets (an index, an addition: no lock, no label lookup) that the
metrics read at scrape time — and ``Progress``, the moments health judges: started,
draining, the last page taken in, the pipeline's tasks. The pipeline writes them;
``ops/`` reads them. It must not import ``ops/`` or ``api/``, know Prometheus, or do I/O.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

from ..models import Outcome, State

#: Upper bounds (seconds) of the attempt duration buckets: the timeout is 10 s by default.
DURATION_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Upper bounds (seconds) of the commit → first attempt buckets. The outbox's ``created``
#: is whole seconds, so a lag is read up to one second long: no bound below one second.
LAG_BOUNDS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0)
#: Upper bounds of the events-per-batch buckets (batch.max_events is at most 1000).
BATCH_BOUNDS = (1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0)
#: The final states a delivery reaches through the pipeline.
FINAL_STATES = (State.DELIVERED, State.FAILED, State.REJECTED)


class Buckets:
    """A histogram: counts per upper bound (the last one +Inf), their sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it), +Inf last, as Prometheus shows them."""
        out, total = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            out.append((bound, total))
        return out


class Tally:
    """Counters of one daemon's deliveries since it started (``metrics.enabled``)."""

    def __init__(self) -> None:
        self.attempts: dict[Outcome, int] = dict.fromkeys(Outcome, 0)
        self.deliveries: dict[State, int] = dict.fromkeys(FINAL_STATES, 0)
        self.durations = Buckets(DURATION_BOUNDS)
        self.lag = Buckets(LAG_BOUNDS)
        #: Events that had to wait for their webhook's bucket (each counted once).
        self.rate_limited = 0
        self.batches = 0
        self.batch_events = Buckets(BATCH_BOUNDS)

    def attempt(self, outcome: Outcome, latency_ms: float, state: State, lag: float | None) -> None:
        """One attempt ended; ``lag``: seconds from the outbox commit, for a first attempt."""
        self.attempts[outcome] += 1
        self.durations.observe(latency_ms / 1000.0)
        if lag is not None:
            self.lag.observe(max(0.0, lag))
        if state is State.DELIVERED or state is State.FAILED:
            self.deliveries[state] += 1

    def batch(self, events: int) -> None:
        self.batches += 1
        self.batch_events.observe(events)


class Progress:
    """Signs of the pipeline's progress, for health checks (monotonic seconds)."""

    def __init__(self) -> None:
        #: Set once the pipeline has recovered its work and runs its tasks.
        self.running = asyncio.Event()
        #: Set when a drain begins (``Dispatcher.stop``).
        self.draining = asyncio.Event()
        #: The outbox cursor as intake last recorded it, and when.
        self.cursor = 0
        self.intake_at = 0.0
        #: The pipeline's supervised tasks, once running.
        self.tasks: list[asyncio.Task[Any]] = []

    @property
    def started(self) -> bool:
        return self.running.is_set()

    def took_in(self, cursor: int, at: float) -> None:
        self.cursor, self.intake_at = cursor, at

    def dead_tasks(self) -> list[str]:
        """Names of the pipeline's tasks that ended (each ending stops the daemon)."""
        return [t.get_name() for t in self.tasks if t.done()]
