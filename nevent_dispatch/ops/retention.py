"""Retention: the state database stops growing, and the outbox too when asked.

Owns what is pruned and how. Finished deliveries (delivered, failed, rejected) last
changed before ``retention.deliveries`` go with their attempts and batch contents; a
delivery still pending, queued, in flight or waiting for a retry stays however old, and
so does the newest delivery (ids are assigned after the highest one and must never be
given out twice). With ``retention.outbox``, outbox rows below the lowest id still needed
(``Store.outbox_needed_from``) and created before that bound go too, in id order up to
the first younger one. Then free pages of the state file are given back to the file
system (incremental vacuum).

How: in small transactions — a batch of ids along an index, sized so that each holds the
write lock a few milliseconds (``rows_pacer``; less on the application's database,
``outbox_pacer``) — with a pause after each, so that the pipeline's writes and the
application's commits get the lock in between. The daemon runs
``Retention`` as one of its tasks, every few minutes; ``nevent-dispatch prune`` calls
``prune`` by hand. It must not decide anything about delivery, and reads the time only
from the clock it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

from ..clock import SYSTEM, Clock
from ..config import Config, parse_duration
from ..errors import DispatchError
from ..logs import get_logger
from ..models import State
from ..store.sqlite import Store

log = get_logger("nevent_dispatch")

#: The finished states, the only ones ever pruned.
FINISHED = (State.DELIVERED, State.FAILED, State.REJECTED)
#: Longest and shortest seconds between two runs of the daemon's task (a tenth of the
#: shortest retention in between: a "2s" retention is applied within a second or so).
EVERY_MAX_S = 300.0
EVERY_MIN_S = 1.0


def deliveries_keep_s(config: Config) -> float | None:
    """Seconds finished deliveries are kept (``retention.deliveries``); None: kept forever."""
    keep = parse_duration("retention.deliveries", config.retention.deliveries)
    return keep or None


def outbox_keep_s(config: Config) -> float | None:
    """Seconds handled outbox rows are kept (``retention.outbox``); None: never pruned."""
    return parse_duration("retention.outbox", config.retention.outbox, off="off")


def run_every_s(*keeps: float | None) -> float | None:
    """Seconds between two runs of the daemon's task for these retentions (None: no run)."""
    kept = [k for k in keeps if k is not None]
    if not kept:
        return None
    return min(EVERY_MAX_S, max(EVERY_MIN_S, min(kept) / 10))


class Pacer:
    """Batch sizes that keep each transaction near ``target_s``, and the pause after each.

    A batch that took longer than ``most_s`` halves the next; otherwise the next is scaled
    towards the target (by at most half again), within ``[low, high]``. The pause is
    ``pause_factor`` times what the batch took, at least ``min_pause_s``: by default
    retention holds the write lock at most half of the time, a few milliseconds at once.
    """

    def __init__(self, size: int, *, low: int, high: int, target_s: float = 0.006,
                 most_s: float = 0.010, pause_factor: float = 1.0,
                 min_pause_s: float = 0.005) -> None:
        self.size = size
        self.low, self.high = low, high
        self.target_s, self.most_s = target_s, most_s
        self.pause_factor, self.min_pause_s = pause_factor, min_pause_s

    def after(self, took_s: float) -> float:
        """Note that a batch of ``size`` took ``took_s``; the seconds to pause before the next."""
        if took_s > self.most_s:
            size = self.size // 2
        else:
            size = round(self.size * min(1.5, self.target_s / max(took_s, 1e-6)))
        self.size = min(self.high, max(self.low, size))
        return max(self.min_pause_s, took_s * self.pause_factor)


def rows_pacer() -> Pacer:
    """Deliveries per transaction: from 1,000, within 100..2,000, about 6 ms each."""
    return Pacer(1000, low=100, high=2000)


def outbox_pacer() -> Pacer:
    """Outbox rows per transaction: the application's own commits wait behind each, so
    about 3 ms (at most 5) at a time, and twice as long left to the application."""
    return Pacer(500, low=50, high=2000, target_s=0.003, most_s=0.005, pause_factor=2.0)


def pages_pacer() -> Pacer:
    """Free pages given back per transaction: from 256, within 32..4,096."""
    return Pacer(256, low=32, high=4096)


def pages_to_release(free: int, keep_free: int) -> int:
    """Free pages to give back when ``keep_free`` of them are to stay for new rows."""
    return max(0, free - max(0, keep_free))


@dataclass(slots=True)
class Report:
    """What one run of retention removed (or, in a dry run, would remove)."""

    dry_run: bool = False
    #: The bounds applied: finished deliveries last changed before ``deliveries_before``
    #: (None: none pruned), outbox rows below id ``outbox_below`` created before
    #: ``outbox_before`` (None: the outbox is not pruned).
    deliveries_before: float | None = None
    outbox_before: float | None = None
    outbox_below: int | None = None
    deliveries: int = 0
    attempts: int = 0
    batches: int = 0
    outbox: int = 0
    #: Bytes of the state file given back to the file system.
    released_bytes: int = 0
    seconds: float = 0.0
    #: Why the outbox was not pruned, when it was to be and could not.
    outbox_error: str | None = None
    #: Whether batches were paused between (see ``prune``).
    paced: bool = True

    @property
    def removed(self) -> bool:
        return bool(self.deliveries or self.attempts or self.batches or self.outbox)


class _Stopped(Exception):
    """Stop was asked between two batches."""


async def _pause(seconds: float, stopping: asyncio.Event | None, paced: bool) -> None:
    if not paced:
        seconds = 0.0
    if stopping is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stopping.wait(), seconds)
    if stopping.is_set():
        raise _Stopped


async def prune(store: Store, now: float, *, keep_deliveries_s: float | None,
                keep_outbox_s: float | None, dry_run: bool = False,
                keep_free_pages: int | None = 0, paced: bool = True,
                stopping: asyncio.Event | None = None) -> Report:
    """Prune what is finished and older than the bounds, as of ``now``; what went.

    ``keep_free_pages``: free pages of the state file left for new rows (0: give back
    every one; None: as many as this run freed — the daemon's choice, since the next
    minutes of new rows reuse them instead of growing the file again). A dry run counts
    the same selection and changes nothing. ``stopping`` ends a run between two batches;
    ``paced=False`` leaves out the pauses between them (for a database nothing else
    writes to).
    """
    started = time.monotonic()
    report = Report(dry_run=dry_run, paced=paced)
    free_before = (await store.page_counts())[0]
    try:
        if keep_deliveries_s is not None:
            report.deliveries_before = now - keep_deliveries_s
            await _prune_deliveries(store, report, report.deliveries_before, stopping)
        if keep_outbox_s is not None:
            report.outbox_before = now - keep_outbox_s
            report.outbox_below = await store.outbox_needed_from()
            try:
                await _prune_outbox(store, report, report.outbox_before, report.outbox_below,
                                    stopping)
            except DispatchError as exc:  # the application held its lock for too long
                report.outbox_error = str(exc)
        if not dry_run:
            free, page_size, _ = await store.page_counts()
            keep = max(0, free - free_before) if keep_free_pages is None else keep_free_pages
            released = await _release(store, free, keep, stopping, paced)
            report.released_bytes = page_size * released
    except _Stopped:
        pass
    report.seconds = round(time.monotonic() - started, 3)
    return report


async def _prune_deliveries(store: Store, report: Report, cutoff: float,
                            stopping: asyncio.Event | None) -> None:
    # Ids grow with creation time and a delivery changes only after it is created, so
    # none created after the cutoff qualifies: the walk ends there (or at the newest).
    below = min(await store.first_id_since(cutoff), await store.newest_delivery_id())
    pacer = rows_pacer()
    for state in FINISHED:
        after = 0
        while True:
            size = pacer.size
            ids, after, looked = await store.prunable_deliveries(state, after, below, cutoff,
                                                                 size)
            if ids and report.dry_run:
                attempts, batches = await store.delivery_rows(ids)
                report.deliveries += len(ids)
                report.attempts += attempts
                report.batches += batches
            elif ids:
                pruned, took = await store.prune_deliveries(ids, cutoff)
                report.deliveries += pruned.deliveries
                report.attempts += pruned.attempts
                report.batches += pruned.batches
                await _pause(pacer.after(took), stopping, report.paced)
            if looked < size:
                break


async def _prune_outbox(store: Store, report: Report, cutoff: float, below: int,
                        stopping: asyncio.Event | None) -> None:
    pacer = outbox_pacer()
    after = 0
    more = True
    while more:
        last, count, more = await store.prunable_outbox(after, below, cutoff, pacer.size)
        if count and report.dry_run:
            report.outbox += count
        elif count:
            deleted, took = await store.prune_outbox(after, last, below, cutoff)
            report.outbox += deleted
            await _pause(pacer.after(took), stopping, report.paced)
        after = last


async def _release(store: Store, free: int, keep_free: int, stopping: asyncio.Event | None,
                   paced: bool) -> int:
    """Give back free pages beyond ``keep_free`` in paced steps; how many were."""
    pacer = pages_pacer()
    released = 0
    while (wanted := pages_to_release(free, keep_free)) > 0:
        left, took = await store.release_pages(min(pacer.size, wanted))
        if left >= free:  # a file without incremental vacuum gives nothing back
            break
        released, free = released + free - left, left
        await _pause(pacer.after(took), stopping, paced)
    return released


class Retention:
    """The daemon's retention task: ``await run(stopping)`` until stop is asked."""

    def __init__(self, config: Config, store: Store, clock: Clock = SYSTEM) -> None:
        self.store = store
        self.clock = clock
        self.keep_deliveries_s = deliveries_keep_s(config)
        self.keep_outbox_s = outbox_keep_s(config)
        self.every_s = run_every_s(self.keep_deliveries_s, self.keep_outbox_s)
        #: The last run's report (for tests and status).
        self.last: Report | None = None

    async def run(self, stopping: asyncio.Event) -> None:
        """Every ``every_s``: one paced run, one log line when it removed anything."""
        while not stopping.is_set():
            if self.every_s is None:  # retention off: nothing to do but wait for the stop
                await stopping.wait()
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.every_s)
            if stopping.is_set():
                return
            self.last = report = await prune(
                self.store, self.clock.time(), keep_deliveries_s=self.keep_deliveries_s,
                keep_outbox_s=self.keep_outbox_s, keep_free_pages=None, stopping=stopping)
            if report.outbox_error is not None:
                log.warning("retention_outbox_failed", error=report.outbox_error)
            if report.removed:
                log.info("retention_pruned", deliveries=report.deliveries,
                         attempts=report.attempts, batches=report.batches, outbox=report.outbox,
                         released_bytes=report.released_bytes, seconds=report.seconds)
            elif report.released_bytes:
                log.debug("retention_released", released_bytes=report.released_bytes,
                          seconds=report.seconds)
