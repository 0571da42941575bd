"""Per-webhook lanes: order, rate limit, in-flight bound and batching.

Owns a webhook's queue of work in memory and the loop that decides when the
head of it may go: when the webhook is not paused (Retry-After, a streak of
timeouts), the bucket has the tokens, a per-webhook slot and a global slot are
free (taken before the work), and — in batch mode — when a batch is full or has
waited ``batch.max_wait``. A batch never carries more events than the bucket
holds, so no window exceeds the bucket's bound. A lane holds what the memory
budget grants it: beyond that, work waits in the database (``backlog``:
pending deliveries; ``spilled``: events waiting for a batch) and the lane
reads it back in order when it has room. It must not send or write anything
itself: its host does.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ..models import Kind, Webhook
from ..wire.envelope import BATCH_OVERHEAD, take_batch
from .budget import Budget
from .progress import Tally
from .ratelimit import TokenBucket


@dataclass(slots=True)
class Job:
    """A delivery ready to be attempted: its body is final."""

    delivery_id: int
    uuid: str
    kind: Kind
    event_type: str
    event_id: str | None
    body: bytes
    event_count: int
    attempts: int
    retry_base: int
    #: When its (oldest) event was committed to the outbox (unix seconds; 0: unknown), for
    #: the commit → first attempt lag.
    created: float = 0.0


@dataclass(slots=True)
class Item:
    """An event waiting to be grouped into a batch."""

    outbox_id: int
    event_id: str
    event_type: str
    body: bytes
    queued_at: float
    #: When the event was committed to the outbox (unix seconds; 0: unknown).
    created: float = 0.0


class Slots:
    """The global in-flight bound: a FIFO semaphore whose release is O(1).

    ``asyncio.Semaphore`` (3.11) walks its waiters on every release; with a hundred
    lanes waiting for the global bound that walk was several microseconds per
    delivery. Here a release hands the slot straight to the oldest live waiter, and
    ``first_waiting`` names that waiter's lane, so a finishing attempt can serve the
    lane's next job itself (see ``Lane.take_ready``).
    """

    def __init__(self, count: int) -> None:
        self.free = count
        self._waiters: deque[tuple[asyncio.Future[None], Lane]] = deque()

    def locked(self) -> bool:
        """True when an acquire would wait (no free slot, or others are queued first)."""
        return self.free <= 0 or bool(self._waiters)

    def take(self) -> bool:
        """Take a slot if one is free and nobody waits; never waits."""
        if self.locked():
            return False
        self.free -= 1
        return True

    async def acquire(self, lane: Lane) -> None:
        """Wait for a slot for ``lane`` (first come, first served)."""
        if self.take():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (waiter, lane)
        self._waiters.append(entry)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed over just as the waiter was cancelled: pass it on
            else:
                self._waiters.remove(entry)
            raise

    def first_waiting(self) -> Lane | None:
        """The lane of the oldest live waiter, if any."""
        while self._waiters:
            waiter, lane = self._waiters[0]
            if not waiter.done():
                return lane
            self._waiters.popleft()
        return None

    def release(self) -> None:
        while self._waiters:
            waiter, _ = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot goes to the waiter: ``free`` unchanged
                return
        self.free += 1


class Host(Protocol):
    """What a lane needs from the lane host."""

    max_events: int
    max_wait: float
    #: Clock seconds per real second (1 in production).
    speed: float
    max_bytes: int
    per_webhook: int
    slots: Slots
    #: The delivery counters (None: ``metrics.enabled`` is off).
    tally: Tally | None

    def monotonic(self) -> float: ...
    def stopping(self) -> bool: ...
    def held(self) -> bool: ...
    def admit(self, lane: Lane, work: Job | Item) -> bool: ...
    def forget(self, lane: Lane, work: Job | Item) -> None: ...
    async def refill(self, lane: Lane) -> int: ...
    async def make_batch(self, lane: Lane, items: list[Item]) -> Job: ...
    def start_attempt(self, lane: Lane, job: Job) -> None: ...


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Lane:
    def __init__(self, webhook: Webhook, bucket: TokenBucket, host: Host, *, cap: int,
                 mark: int = 0) -> None:
        self.webhook = webhook
        self.bucket = bucket
        self.host = host
        self.cap = cap
        self.queue: deque[Job | Item] = deque()
        self.in_flight = 0
        #: Attempts this lane may have in flight: halved when its endpoint times out or
        #: breaks, grown back by one per success, never above the per-webhook bound. A
        #: hanging endpoint thus holds one or two of the global slots, not its full share.
        self.limit = host.per_webhook
        #: Pending deliveries of this webhook may be due in the database: the lane reads
        #: them (pending → queued) when it has room. Set through ``more_in_db``.
        self.backlog = False
        #: Counts ``more_in_db``, so a refill racing with intake does not clear ``backlog``
        #: after new work was recorded behind its read.
        self.backlogs = 0
        #: Events waiting for a batch were left in the database (after ``mark``).
        self.spilled = False
        #: Counts spills, so a refill racing with intake does not clear ``spilled`` too early.
        self.spills = 0
        #: Batch mode: the highest outbox id this lane has taken; refills read above it.
        self.mark = mark
        #: Bytes of the event bodies, and count of the jobs, in the queue (batch planning).
        self.item_bytes = 0
        self.jobs = 0
        #: Monotonic time until which the endpoint asked not to be called (Retry-After), or
        #: was given a rest after a streak of timeouts: nothing of this lane is sent before.
        self.paused_until = 0.0
        #: Consecutive attempts that timed out or could not connect.
        self.failing_streak = 0
        #: Set when the webhook went away or changed mode: the lane takes no more work.
        self.retired = False
        #: Set with ``retired`` when the webhook was deleted: what it holds ends as failed.
        self.deleted = False
        #: Set by ``poke``: something changed since the loop last looked.
        self._poked = False
        self._waiter: asyncio.Future[None] | None = None
        #: The loop sleeps until its batch is full (or old enough): pushes of events that
        #: still leave room do not wake it.
        self._filling = False
        #: The head last counted as held back by the bucket (each is counted once): its
        #: delivery id, or minus its outbox id for an event waiting for a batch.
        self._limited = 0
        self.task: asyncio.Task[None] | None = None

    @property
    def full(self) -> bool:
        """Work for this lane must wait in the database (to keep it in order)."""
        return self.spilled or self.backlog or len(self.queue) >= self.cap

    def offer(self, work: Job | Item) -> bool:
        """Queue ``work`` if the lane has room and the memory budget grants it; else False."""
        if self.retired or len(self.queue) >= self.cap or not self.host.admit(self, work):
            return False
        self.extend((work,))
        return True

    def reserve(self, work: Job | Item, taken: list[Job | Item]) -> bool:
        """Admit work to be queued once it is recorded (``extend`` then): as ``offer``, with
        ``taken`` holding what was reserved before it."""
        if (self.retired or len(self.queue) + len(taken) >= self.cap
                or not self.host.admit(self, work)):
            return False
        taken.append(work)
        return True

    def extend(self, works: Sequence[Job | Item]) -> None:
        """Queue work already admitted (all jobs or all events) in order; wake the loop if it
        has use for it."""
        self.queue.extend(works)
        if isinstance(works[0], Item):
            self.item_bytes += sum([len(w.body) for w in works])
        else:
            self.jobs += len(works)
        if self._filling and not self.jobs and self._room():
            return
        self.poke()

    def _room(self) -> bool:
        """True while the queued events fit one batch with room for more."""
        host = self.host
        return len(self.queue) < self.batch_limit() and (
            BATCH_OVERHEAD + self.item_bytes + len(self.queue) <= host.max_bytes)

    def _unqueued(self, work: Job | Item) -> Job | Item:
        if isinstance(work, Item):
            self.item_bytes -= len(work.body)
        else:
            self.jobs -= 1
        self.host.forget(self, work)
        return work

    def _pop(self) -> Job | Item:
        return self._unqueued(self.queue.popleft())

    def clear(self) -> list[Job | Item]:
        """Empty the queue; returns what it held."""
        return [self._pop() for _ in range(len(self.queue))]

    def give_back(self, nbytes: int) -> list[Job | Item]:
        """Drop the newest work worth at least ``nbytes`` from memory (the budget reclaims it
        for another lane); returns it. The host gives jobs back to the database; dropped
        events are read again from their waiting rows."""
        dropped: list[Job | Item] = []
        while self.queue and nbytes > 0:
            work = self._unqueued(self.queue.pop())
            nbytes -= Budget.cost(len(work.body))
            dropped.append(work)
        if any(isinstance(w, Item) for w in dropped):
            kept = [w.outbox_id for w in self.queue if isinstance(w, Item)]
            self.mark = kept[-1] if kept else min(w.outbox_id for w in dropped if isinstance(w, Item)) - 1
            self.spill()
        return dropped

    def batch_limit(self) -> int:
        """Most events one batch may carry: the configured size, and never more than the
        bucket holds, so a batch can always be paid for at once."""
        return max(1, min(self.host.max_events, int(self.bucket.capacity)))

    def pause(self, until: float) -> None:
        """Send nothing before ``until`` (monotonic); a later pause extends it."""
        self.paused_until = max(self.paused_until, until)
        self.poke()

    def more_in_db(self) -> None:
        """Work of this lane waits (or may wait) in the database as pending."""
        self.backlog = True
        self.backlogs += 1
        self.poke()

    def spill(self) -> None:
        self.spilled = True
        self.spills += 1
        self.poke()

    def poke(self) -> None:
        self._poked = True
        if self._waiter is not None:
            _wake(self._waiter)

    def settled(self, healthy: bool) -> None:
        """Adapt the in-flight limit to how the endpoint answered (additive up, halving down)."""
        if healthy:
            self.limit = min(self.host.per_webhook, self.limit + 1)
        else:
            self.limit = max(1, self.limit // 2)

    async def _sleep(self, timeout: float | None, *, filling: bool = False) -> None:
        """Wait ``timeout`` clock seconds, or until poked (a bare future and timer: lanes
        sleep and wake once per page in batch mode, where ``wait_for`` costs a task)."""
        if self._poked:
            return
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        self._filling = filling
        timer = None if timeout is None else loop.call_later(
            timeout / self.host.speed, _wake, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            self._filling = False
            if timer is not None:
                timer.cancel()

    def take_ready(self) -> Job | None:
        """The head job, if it may go at once, for a caller that holds a global slot.

        Taken with its lane slot and tokens; None when it must wait. Batches (planned by
        ``run``) and a spilled lane running low (``run`` refills it) are left to the loop.
        """
        host = self.host
        if (not self.queue or self.retired or host.stopping() or host.held()
                or self.in_flight >= self.limit
                or ((self.spilled or self.backlog) and len(self.queue) < self.cap // 2)):
            return None
        head = self.queue[0]
        if not isinstance(head, Job):
            return None
        now = host.monotonic()
        if now < self.paused_until:
            return None
        if self.bucket.wait(head.event_count, now) > 0:
            return None
        self.in_flight += 1
        self._pop()
        self.bucket.take(head.event_count, now)
        return head

    def _plan_batch(self, now: float) -> tuple[int, float]:
        """(events to send, 0) or (0, seconds to wait for a fuller batch)."""
        host = self.host
        head = self.queue[0]
        assert isinstance(head, Item)
        waited = now - head.queued_at
        may_wait = waited < host.max_wait and not self.spilled and not host.stopping()
        if may_wait and not self.jobs and self._room():
            return 0, host.max_wait - waited  # every queued event fits and more may come
        limit = self.batch_limit()
        items: list[int] = []
        for work in self.queue:
            if not isinstance(work, Item) or len(items) == limit:
                break
            items.append(len(work.body))
        count = take_batch(items, limit, host.max_bytes)
        complete = count < len(items) or count == limit or (
            count < len(self.queue))  # a job behind the items, or the bytes limit, closes the batch
        if complete or not may_wait:
            return count, 0.0
        return 0, host.max_wait - waited

    async def run(self) -> None:
        """Send the queue's head whenever it may go; return when the lane has nothing to do."""
        host = self.host
        while not host.stopping() and not self.retired:
            self._poked = False
            if host.held():  # the state database refuses writes: send nothing unrecorded
                await self._sleep(0.5)
                continue
            if (self.backlog or self.spilled) and len(self.queue) < self.cap // 2:
                await host.refill(self)
            if not self.queue:
                return
            now = host.monotonic()
            if now < self.paused_until:
                await self._sleep(self.paused_until - now)
                continue
            head = self.queue[0]
            if isinstance(head, Item):
                count, wait = self._plan_batch(now)
                if wait > 0:
                    await self._sleep(wait, filling=True)
                    continue
            else:
                count = head.event_count
            wait = self.bucket.wait(count, now)
            if wait > 0:
                key = head.delivery_id if isinstance(head, Job) else -head.outbox_id
                if host.tally is not None and self._limited != key:
                    self._limited = key
                    host.tally.rate_limited += count
                await self._sleep(wait)
                continue
            if self.in_flight >= self.limit:
                await self._sleep(None)
                continue
            await host.slots.acquire(self)
            if (not self.queue or self.queue[0] is not head or self.in_flight >= self.limit
                    or self.retired or host.monotonic() < self.paused_until
                    or self.bucket.wait(count, host.monotonic()) > 0):
                host.slots.release()  # attempts served this lane meanwhile: plan again
                continue
            self.in_flight += 1
            try:
                if isinstance(head, Item):
                    items = [self._pop() for _ in range(count)]
                    job = await host.make_batch(self, items)  # type: ignore[arg-type]
                else:
                    job = self._pop()  # type: ignore[assignment]
                self.bucket.take(count, host.monotonic())
            except BaseException:
                self.in_flight -= 1
                host.slots.release()
                raise
            host.start_attempt(self, job)
