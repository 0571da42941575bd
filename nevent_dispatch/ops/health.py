"""Readiness: whether the daemon is doing its work, judged from what the pipeline shows.

Owns the verdict behind ``GET /readyz`` and the systemd watchdog: ``ok`` while the
databases answer and the pipeline progresses; ``starting`` until the pipeline runs;
``stopping`` once it drains; ``stalled`` with the reasons otherwise — a state write
waiting longer than ``health.stall_after`` (the database locked by another process, a
full disk), intake not advancing while the outbox holds a backlog, retries fallen due
that the scheduler has not acted upon, a pipeline task or lane that died. ``Judge`` is
the pure part (observations and a time in, a verdict out); ``HealthMonitor`` gathers the
observations every second, whether or not the API is served. It must not change
anything in the pipeline: a stalled daemon is for systemd and the operator to handle.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from ..clock import SYSTEM, Clock
from ..logs import get_logger

log = get_logger("nevent_dispatch")

#: Seconds between two checks (at most: half of health.stall_after when shorter).
CHECK_EVERY_S = 1.0
#: A state database that took no write for this long is probed with an empty transaction:
#: an idle daemon must notice a lock too.
PROBE_AFTER_S = 1.0
#: Longest sleep of the retry scheduler (``scheduler.MAX_SLEEP``): due work it has not
#: acted upon is overdue only beyond this plus health.stall_after.
SCHEDULER_SLACK_S = 5.0


async def wait_any(events: list[asyncio.Event], timeout: float | None) -> None:
    """Wait until one of ``events`` is set, or ``timeout`` seconds."""
    if any(e.is_set() for e in events):
        return
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


@dataclass(frozen=True, slots=True)
class Observation:
    """What one check saw (monotonic seconds, but ``overdue_s``)."""

    started: bool
    draining: bool
    #: The outbox cursor in memory and the outbox's newest id (None: the read failed).
    cursor: int
    newest: int | None
    #: Seconds the state write under way has been trying (0: none is).
    write_waited_s: float = 0.0
    #: Why the storage refuses writes, when it does.
    storage_problem: str | None = None
    #: Seconds since the earliest work the scheduler holds fell due (0: none is due).
    overdue_s: float = 0.0
    dead_tasks: tuple[str, ...] = ()
    lane_failure: str | None = None
    #: Databases that did not answer a read, with the reason.
    unreadable: tuple[str, ...] = ()
    in_flight: int = 0


@dataclass(frozen=True, slots=True)
class Verdict:
    status: str
    reasons: tuple[str, ...]
    #: When it was made (monotonic) and the wall time of that moment.
    at: float
    checked_at: float
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class Judge:
    """Turns observations into verdicts; remembers since when the cursor has stood still."""

    def __init__(self, stall_after: float) -> None:
        self.stall_after = stall_after
        self._cursor = -1
        self._still_since = 0.0

    def judge(self, seen: Observation, now: float, wall: float) -> Verdict:
        stall = self.stall_after
        reasons: list[str] = list(seen.unreadable)
        for name in seen.dead_tasks:
            reasons.append(f"pipeline task {name} has stopped")
        if seen.lane_failure:
            reasons.append(f"a lane failed: {seen.lane_failure}")
        if seen.write_waited_s > stall:
            reasons.append(
                f"state database: a write has waited {seen.write_waited_s:.0f} s "
                f"(health.stall_after = {stall:g}): {seen.storage_problem or 'locked by another connection'}")
        backlog = 0 if seen.newest is None else max(0, seen.newest - seen.cursor)
        if seen.cursor != self._cursor or backlog == 0:
            self._cursor, self._still_since = seen.cursor, now
        elif seen.started and now - self._still_since > stall:
            reasons.append(f"intake: the cursor has stood at {seen.cursor} for "
                           f"{now - self._still_since:.0f} s with {backlog} outbox rows to take in")
        if seen.started and seen.overdue_s > stall + SCHEDULER_SLACK_S:
            reasons.append(f"retry scheduler: work due {seen.overdue_s:.0f} s ago was not acted upon")
        if seen.draining:
            status = "stopping"
        elif not seen.started:
            status = "starting"
        else:
            status = "stalled" if reasons else "ok"
        figures = {"outbox_cursor": seen.cursor, "outbox_backlog": backlog,
                   "in_flight": seen.in_flight}
        return Verdict(status, tuple(reasons), now, wall, figures)


class HealthMonitor:
    """Checks the running pipeline every second; ``current()`` is the latest verdict."""

    def __init__(self, stall_after: float, dispatcher: Any, clock: Clock = SYSTEM) -> None:
        self.dispatcher = dispatcher
        self.store = dispatcher.store
        self.clock = clock
        self.judge = Judge(stall_after)
        self.interval = min(CHECK_EVERY_S, stall_after / 2)
        self._probe: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self.verdict = Verdict("starting", (), clock.monotonic(), clock.time())

    def current(self) -> Verdict:
        """The latest verdict; stalled if the checks themselves stopped running."""
        verdict = self.verdict
        late = self.clock.monotonic() - verdict.at
        if late > max(3 * self.interval, self.judge.stall_after) and verdict.status != "stopping":
            return Verdict("stalled", (*verdict.reasons, f"health checks have not run for {late:.0f} s"),
                           verdict.at, verdict.checked_at, verdict.figures)
        return verdict

    async def changed(self) -> None:
        """Wait for the next verdict."""
        self._changed.clear()
        await self._changed.wait()

    async def check(self) -> Verdict:
        seen = await self.observe()
        verdict = self.judge.judge(seen, self.clock.monotonic(), self.clock.time())
        if verdict.status != self.verdict.status or verdict.reasons[:1] != self.verdict.reasons[:1]:
            if verdict.status == "stalled":
                log.warning("health_stalled", reasons=list(verdict.reasons))
            elif self.verdict.status == "stalled":
                log.info("health_recovered", status=verdict.status)
        self.verdict = verdict
        self._changed.set()
        return verdict

    async def observe(self) -> Observation:
        d, store, mono = self.dispatcher, self.store, self.clock.monotonic()
        progress = d.progress
        unreadable: list[str] = []
        newest: int | None = None
        try:
            newest = await asyncio.wait_for(store.outbox_max_id(), self.judge.stall_after)
            await asyncio.wait_for(store.cursor(), self.judge.stall_after)
        except Exception as exc:  # noqa: BLE001 - what went wrong is the verdict
            reason = "no answer" if isinstance(exc, asyncio.TimeoutError) else f"{type(exc).__name__}: {exc}"
            unreadable.append(f"{'outbox' if newest is None else 'state'} database: cannot read: {reason}")
        self._maybe_probe(mono)
        since = store.write_since
        earliest = d.scheduler.earliest()
        failure = d.host.lane_failure
        return Observation(
            started=progress.started, draining=progress.draining.is_set(), cursor=progress.cursor,
            newest=newest, write_waited_s=0.0 if since is None else mono - since,
            storage_problem=store.storage_problem,
            overdue_s=0.0 if earliest is None else max(0.0, self.clock.time() - earliest),
            dead_tasks=tuple(progress.dead_tasks()) if progress.started else (),
            lane_failure=None if failure is None else repr(failure),
            unreadable=tuple(unreadable), in_flight=len(d.host.inflight))

    def _maybe_probe(self, mono: float) -> None:
        """Start an empty write when the state database took none for a while (and none is
        trying): a lock taken by another process shows as a write that waits."""
        store = self.store
        if (store.write_since is None and mono - store.last_write_at > PROBE_AFTER_S
                and (self._probe is None or self._probe.done())):
            self._probe = asyncio.create_task(store.probe_write(), name="health-write-probe")

    async def run(self, stopping: asyncio.Event) -> None:
        """Check every ``interval``, and at once when the pipeline starts or drains, until
        ``stopping`` is set; then once more."""
        progress = self.dispatcher.progress
        try:
            while not stopping.is_set():
                await self.check()
                turns = [progress.draining] if progress.started else [progress.running]
                await wait_any([stopping, *turns], self.interval)
            await self.check()
        finally:
            if self._probe is not None and not self._probe.done():
                self._probe.cancel()
                await asyncio.gather(self._probe, return_exceptions=True)
