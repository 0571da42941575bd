"""The lane host: the lanes, what they hold, and every move of work into and out of them.

Owns the lanes by webhook, the memory budget and the global in-flight slots;
taking a recorded page into the lanes (what fits is queued, the rest waits in
the database as pending); reading a lane's backlog back (pending → queued, or
waiting events); forming and recording batches; the attempt tasks and what
their results mean for the lane (pause on Retry-After or a streak of
timeouts); retiring a lane when its webhook goes away. It must not read the
outbox, poll the webhooks table or decide retry times: the reader, the watcher
and ``attempts.settle`` do.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..clock import Clock
from ..config import Config
from ..errors import NotFound
from ..logs import get_logger
from ..models import Delivery, Kind, Outcome, State, Webhook
from ..store.sqlite import Row, Store
from ..wire.envelope import batch_body
from .attempts import log_attempt, new_delivery_row, result_rows, settle, throttled
from .budget import ITEM_OVERHEAD, Budget
from .intake import Plan
from .jobs import JobBuilder
from .lanes import Item, Job, Lane, Slots
from .progress import Tally
from .ratelimit import TokenBucket
from .recorder import Recorder
from .scheduler import Scheduler
from .sender import Result, Sender

log = get_logger("nevent_dispatch")

#: Outcomes that tie up a connection slot for long: the lane's in-flight limit shrinks.
SLOW_OUTCOMES = frozenset({Outcome.TIMEOUT, Outcome.CONNECTION_ERROR, Outcome.TLS_ERROR})
#: Consecutive slow outcomes after which the webhook rests (nothing of it is sent) ...
STREAK_PAUSE_AFTER = 5
#: ... for this long, doubled at each further streak up to the retry schedule's longest step.
STREAK_PAUSE_S = 5.0
#: Jobs one lane holds in memory at most (at least a page's worth, so one busy webhook does
#: not leave most of every page in the database).
LANE_CAP = 512
#: Deliveries read back from the database per claim of one lane, at most.
CLAIM_CHUNK = 256
#: Seconds before a lane that the memory budget left without room looks again.
BUDGET_RETRY_S = 0.05


@dataclass(slots=True)
class Take:
    """What one page gives one lane: the work it reserved, and what waits in the database."""

    lane: Lane
    taken: list[Job | Item]
    #: ``lane.spills`` when the page was planned.
    spills: int
    #: Some of the page's events wait for a batch in the database (the lane was full).
    spill: bool = False
    #: Some of the page's deliveries were recorded pending (the lane was full).
    backlog: bool = False


class LaneHost:
    def __init__(self, config: Config, store: Store, clock: Clock, recorder: Recorder,
                 scheduler: Scheduler, stats: dict[str, int], tally: Tally | None = None) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.recorder = recorder
        self.scheduler = scheduler
        self.stats = stats
        #: The delivery counters of the metrics (None when they are off).
        self.tally = tally
        self.slots = Slots(config.delivery.max_in_flight)
        self.max_events = config.batch.max_events
        self.max_wait = config.batch.max_wait
        self.speed = clock.speed
        self.max_bytes = config.delivery.max_payload_bytes
        self.per_webhook = config.delivery.max_in_flight_per_webhook
        memory = config.memory
        self.cap = max(LANE_CAP, 2 * self.max_events, config.outbox.page_size)
        self.budget = Budget(memory.budget_bytes, memory.lane_bytes, self.cap)
        self.builder = JobBuilder(store, self.max_bytes)
        self.lanes: dict[str, Lane] = {}
        #: Webhooks whose lanes may hold work: the matcher's view, set by the watcher.
        self.webhooks: dict[str, Webhook] = {}
        self.sender: Sender | None = None
        self.inflight: set[asyncio.Task[None]] = set()
        self.lane_tasks: set[asyncio.Task[None]] = set()
        self.lane_failure: BaseException | None = None
        self._stopping = asyncio.Event()
        self._batches_to_write: list[tuple[Row, str, list[tuple[int, str, str]],
                                           asyncio.Future[int]]] = []
        self.batch_writer: asyncio.Task[None] | None = None
        #: The last bucket of each webhook, so that a lane made again does not start full.
        self._buckets: dict[str, TokenBucket] = {}
        #: Sizes of bodies read back, per lane (an estimate for how many to claim at once).
        self._typical: dict[str, float] = {}

    # -- what the lanes ask -------------------------------------------------------------------

    def monotonic(self) -> float:
        return self.clock.monotonic()

    def stopping(self) -> bool:
        return self._stopping.is_set()

    def held(self) -> bool:
        return self.store.storage_problem is not None

    def stop(self) -> None:
        self._stopping.set()
        for lane in self.lanes.values():
            lane.poke()

    def admit(self, lane: Lane, work: Job | Item) -> bool:
        cost = Budget.cost(len(work.body))
        ok, reclaim = self.budget.admit(lane, cost)
        if not ok:
            return False
        now = self.clock.time()
        for other, nbytes in reclaim:
            assert isinstance(other, Lane)
            self._give_back(other, other.give_back(nbytes), now)
        self.budget.charge(lane, cost)
        return True

    def forget(self, lane: Lane, work: Job | Item) -> None:
        self.budget.release(lane, len(work.body) + ITEM_OVERHEAD)

    def _give_back(self, lane: Lane, works: Iterable[Job | Item], now: float) -> None:
        """Jobs a lane dropped go back to the database (queued → pending), due now."""
        for work in works:
            if isinstance(work, Job):
                if lane.deleted:
                    self.recorder.fail(work.delivery_id, now)
                    if self.tally is not None:
                        self.tally.deliveries[State.FAILED] += 1
                else:
                    self.recorder.release(lane.webhook.id, work.delivery_id, now)
                    lane.more_in_db()

    # -- lanes --------------------------------------------------------------------------------

    def limit(self, webhook: Webhook) -> int:
        return webhook.rate_limit or self.config.rate_limit.events_per_minute

    def bucket(self, webhook: Webhook) -> TokenBucket:
        """The webhook's bucket; a new one (a lane made again, a new limit) carries on from
        the last one's tokens, so no re-creation lets a burst through."""
        now = self.clock.monotonic()
        bucket = TokenBucket(self.limit(webhook), self.config.rate_limit.burst, now)
        previous = self._buckets.get(webhook.id)
        if previous is not None:
            bucket.following(previous, now)
        if len(self._buckets) > 100_000:  # deleted webhooks' buckets must not pile up
            self._buckets = {k: v for k, v in self._buckets.items() if k in self.webhooks}
        self._buckets[webhook.id] = bucket
        return bucket

    def lane(self, webhook: Webhook) -> Lane:
        lane = self.lanes.get(webhook.id)
        if lane is None:
            lane = self.lanes[webhook.id] = Lane(webhook, self.bucket(webhook), self, cap=self.cap)
        return lane

    def run_lane(self, lane: Lane) -> None:
        if (lane.task is None or lane.task.done()) and not self.stopping() and not lane.retired:
            lane.task = asyncio.create_task(lane.run(), name=f"lane-{lane.webhook.id}")
            self.lane_tasks.add(lane.task)
            lane.task.add_done_callback(self._lane_done)

    def _lane_done(self, task: asyncio.Task[None]) -> None:
        self.lane_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("lane_failed", task=task.get_name(), error=repr(task.exception()))
            self.lane_failure = self.lane_failure or task.exception()
            self.stop()

    def wake(self, webhook_ids: Sequence[str]) -> None:
        """The scheduler says: these webhooks have work due in the database."""
        for webhook_id in webhook_ids:
            webhook = self.webhooks.get(webhook_id)
            if webhook is None:
                continue  # disabled or deleted: enabling it notes its work again
            lane = self.lane(webhook)
            lane.more_in_db()
            self.run_lane(lane)

    async def retire(self, lane: Lane, now: float, *, deleted: bool) -> None:
        """A webhook went away, was disabled or changed mode: what its lane holds goes back
        (or fails, when deleted). Attempts in flight finish and are recorded as usual."""
        lane.retired = True
        lane.deleted = deleted
        lane.poke()
        if lane.task is not None and not lane.task.done():
            await asyncio.gather(lane.task, return_exceptions=True)  # returns at its next look
        self.scheduler.forget(lane.webhook.id)
        self._give_back(lane, lane.clear(), now)
        await self.recorder.flush()
        if lane.webhook.batch:
            await self.batch_leftovers([lane.webhook.id], now)
        if deleted:
            failed = await self.store.fail_orphans(lane.webhook.id, now)
            if self.tally is not None:
                self.tally.deliveries[State.FAILED] += failed

    async def batch_leftovers(self, webhook_ids: Iterable[str], now: float) -> int:
        """Group events left waiting for a batch into pending batch deliveries, due now."""
        count = 0
        for webhook_id in webhook_ids:
            # Never more than the webhook's bucket holds, as for batches formed in a lane:
            # a batch must always be payable at once.
            size = min(self.max_events, self.config.rate_limit.burst)
            webhook = self.webhooks.get(webhook_id)
            if webhook is None:
                with contextlib.suppress(NotFound):
                    webhook = await self.store.get_webhook(webhook_id)
            if webhook is not None:
                size = min(size, self.limit(webhook))
            while events := await self.store.waiting_events(webhook_id, 0, max(1, size)):
                row = new_delivery_row(webhook_id=webhook_id, kind=Kind.BATCH,
                                       event_type="batch", event_id=None, outbox_id=None,
                                       event_count=len(events), state=State.PENDING, now=now)
                await self.store.create_batches([(row, webhook_id, events)])
                self.scheduler.note(webhook_id, now)
                count += 1
                if self.tally is not None:
                    self.tally.batch(len(events))
        return count

    # -- intake -------------------------------------------------------------------------------

    def plan_rows(self, plan: Plan) -> tuple[list[Row], list[Take]]:
        """Decide, before the page is recorded, which of its work the lanes take now: those
        rows are recorded queued, the rest pending (due now, read back in order).

        Nothing is signalled to a lane before the page is committed: a lane told "more
        waits in the database" would look before the rows are there and conclude there is
        nothing (its reads do not see an open transaction).
        """
        now = self.clock.time()
        mono = self.clock.monotonic()
        rows = plan.deliveries
        takes: list[Take] = []
        for webhook, work in plan.pushes.values():
            lane = self.lane(webhook)
            take = Take(lane, [], lane.spills)
            taken = take.taken
            # What fits without reclaiming room is charged at once; the rest goes one by one.
            free_bytes, free_items = self.budget.free_for(lane)
            free_items = min(free_items, lane.cap - len(lane.queue))
            pending_bytes = pending_items = 0
            open_ = not lane.full and not lane.retired
            for (outbox_id, event_id, type_, body, created), n in work:
                piece: Job | Item
                if n == 0:
                    if take.spill:
                        continue
                    piece = Item(outbox_id, event_id, type_, body, mono, created)
                elif take.backlog:
                    rows[n - 1] = rows[n - 1]._replace(state=State.PENDING.value, next_at=now)
                    continue
                else:
                    piece = Job(n, rows[n - 1].uuid, Kind.EVENT, type_, event_id, body, 1, 0, 0,
                                created)
                cost = Budget.cost(len(body))
                if open_ and cost <= free_bytes and len(taken) < free_items:
                    free_bytes -= cost
                    pending_bytes += cost
                    pending_items += 1
                    taken.append(piece)
                    continue
                if pending_items:  # charged before the budget is asked one piece at a time
                    self.budget.charge(lane, pending_bytes, pending_items)
                    pending_bytes = pending_items = 0
                if open_ and lane.reserve(piece, taken):
                    continue
                if n:
                    rows[n - 1] = rows[n - 1]._replace(state=State.PENDING.value, next_at=now)
                    take.backlog = True
                else:
                    take.spill = True
            if pending_items:
                self.budget.charge(lane, pending_bytes, pending_items)
            takes.append(take)
        return rows, takes

    def queue_page(self, base: int, takes: list[Take]) -> None:
        """After the page is recorded: the taken work into the lanes, ids made final, and
        the lanes told what waits in the database."""
        now = self.clock.time()
        for take in takes:
            lane, taken = take.lane, take.taken
            if lane.spills != take.spills and any(isinstance(p, Item) for p in taken):
                # The lane spilled meanwhile: it reads its events back from the database, in
                # order, these included; queuing them too would batch them twice.
                for piece in taken:
                    if isinstance(piece, Item):
                        self.forget(lane, piece)
                taken = [p for p in taken if isinstance(p, Job)]
            if taken:
                for piece in taken:
                    if isinstance(piece, Job):
                        piece.delivery_id += base
                    else:
                        lane.mark = piece.outbox_id
                lane.extend(taken)
            if take.spill:
                lane.spill()
            if take.backlog:
                lane.more_in_db()
            if lane.backlog:
                self.scheduler.note(lane.webhook.id, now)
            self.run_lane(lane)

    # -- reading a lane's backlog back ----------------------------------------------------------

    async def refill(self, lane: Lane) -> int:
        """Read a lane's waiting work back from the database, in order, as far as it has room."""
        if lane.spilled:
            return await self._refill_events(lane)
        backlogs = lane.backlogs
        room = self._claim_room(lane)
        now = self.clock.time()
        if room == 0:
            # The memory budget is taken by lanes at their share: claiming now would only
            # give the rows back. Look again shortly (work of others drains meanwhile).
            self.scheduler.note(lane.webhook.id, now + BUDGET_RETRY_S)
            return 0
        claimed = (await self.store.claim_due([(lane.webhook.id, room)], now)).get(lane.webhook.id, [])
        if len(claimed) < room and lane.backlogs == backlogs:
            lane.backlog = False
            next_at = await self.store.next_due(lane.webhook.id)
            if next_at is not None:
                self.scheduler.note(lane.webhook.id, next_at)
        await self.take_claimed(lane, claimed, now)
        return len(claimed)

    def _claim_room(self, lane: Lane) -> int:
        """How many deliveries the lane may read back now: its free slots, and what the memory
        budget grants without taking it back from others (or, for a starving lane, its due)."""
        room = min(lane.cap - len(lane.queue), CLAIM_CHUNK)
        typical = self._typical.get(lane.webhook.id, 1024.0) + ITEM_OVERHEAD
        free_bytes, _ = self.budget.free_for(lane)
        holding = max(1, self.budget.lanes_holding())
        starving = self.budget.total_bytes / (2 * holding) - self.budget.of(lane)[0]
        grant = max(free_bytes, starving)
        if not lane.queue:
            grant = max(grant, typical)  # an empty lane may always take one
        return max(0, min(room, int(grant // typical)))

    async def take_claimed(self, lane: Lane, claimed: list[tuple[Delivery, bytes | None]],
                           now: float) -> None:
        if not claimed:
            return
        jobs = await self.builder.jobs(claimed)
        sizes = [len(job.body) for _, job in jobs if job is not None]
        if sizes:
            self._typical[lane.webhook.id] = sum(sizes) / len(sizes)
        for delivery, job in jobs:
            if job is None:
                self.gone(delivery, lane)
            elif lane.retired or not lane.offer(job):
                self._give_back(lane, (job,), now)

    async def _refill_events(self, lane: Lane) -> int:
        spills = lane.spills
        room = lane.cap - len(lane.queue)
        waiting = await self.store.waiting_events(lane.webhook.id, lane.mark, room)
        created: dict[int, int] = {}
        bodies = await self.builder.bodies((e[0] for e in waiting), created)
        mono = self.clock.monotonic()
        taken = 0
        for outbox_id, event_id, event_type in waiting:
            body = bodies.get(outbox_id)
            if body is not None and not lane.offer(Item(outbox_id, event_id, event_type, body,
                                                        mono, created[outbox_id])):
                return taken  # no room after all: the rest stays spilled
            lane.mark = outbox_id
            taken += 1
        if len(waiting) < room and lane.spills == spills:
            lane.spilled = False
        return taken

    # -- batches --------------------------------------------------------------------------------

    async def make_batch(self, lane: Lane, items: list[Item]) -> Job:
        """Record a batch of waiting events as one delivery before it is sent.

        Batches formed by all lanes in the same moment share one transaction.
        """
        now = self.clock.time()
        row = new_delivery_row(webhook_id=lane.webhook.id, kind=Kind.BATCH, event_type="batch",
                               event_id=None, outbox_id=None, event_count=len(items),
                               state=State.QUEUED, now=now,
                               organization_id=lane.webhook.organization_id)
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        events = [(i.outbox_id, i.event_id, i.event_type) for i in items]
        self._batches_to_write.append((row, lane.webhook.id, events, done))
        if self.batch_writer is None or self.batch_writer.done():
            self.batch_writer = asyncio.create_task(self._write_batches(), name="batch-writer")
        delivery_id = await asyncio.shield(done)
        if self.tally is not None:
            self.tally.batch(len(items))
        return Job(delivery_id, row.uuid, Kind.BATCH, "batch", None,
                   batch_body([i.body for i in items]), len(items), 0, 0, items[0].created)

    async def _write_batches(self) -> None:
        while self._batches_to_write:
            pending, self._batches_to_write = self._batches_to_write, []
            try:
                ids = await self.store.create_batches([(row, w, ev) for row, w, ev, _ in pending])
            except BaseException as exc:
                for *_, done in pending:
                    if not done.done():
                        done.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for (*_, done), delivery_id in zip(pending, ids, strict=True):
                if not done.done():
                    done.set_result(delivery_id)

    # -- attempts ---------------------------------------------------------------------------------

    def start_attempt(self, lane: Lane, job: Job) -> None:
        task = asyncio.create_task(self._attempt(lane, job))
        self.inflight.add(task)
        task.add_done_callback(self.inflight.discard)

    async def _attempt(self, lane: Lane, job: Job) -> None:
        """Send the job, then further ready jobs while this task holds the global slot.

        The slot goes first to the lane that waited longest for one, else stays with this
        lane: serving them here spares a task and a wake-up of a lane per delivery.
        """
        try:
            while True:
                webhook = lane.webhook
                try:
                    assert self.sender is not None
                    self.recorder.started(job.delivery_id, self.clock.time())
                    result = await self.sender.send(url=webhook.url, secret=webhook.secret,
                                                    body=job.body, event_type=job.event_type,
                                                    delivery_uuid=job.uuid)
                    self._answered(lane, result)
                    self.settle(job, lane, result)
                finally:
                    lane.in_flight -= 1
                waiting = self.slots.first_waiting()
                following = waiting if waiting is not None else lane
                ready = following.take_ready()
                if ready is None:
                    break
                if following is not lane:
                    self._lane_freed(lane)
                lane, job = following, ready
        finally:
            self.slots.release()
        self._lane_freed(lane)

    def _answered(self, lane: Lane, result: Result) -> None:
        """Backpressure: what the endpoint's answer means for the whole webhook."""
        slow = result.outcome in SLOW_OUTCOMES
        lane.settled(not slow)
        if throttled(result):
            assert result.retry_after is not None
            cap = max(self.config.delivery.retry_schedule, default=60.0)
            lane.pause(self.clock.monotonic() + min(result.retry_after, cap))
        if slow:
            lane.failing_streak += 1
            if lane.failing_streak % STREAK_PAUSE_AFTER == 0:
                streaks = lane.failing_streak // STREAK_PAUSE_AFTER
                cap = max(self.config.delivery.retry_schedule, default=STREAK_PAUSE_S)
                lane.pause(self.clock.monotonic()
                           + min(STREAK_PAUSE_S * 2 ** (streaks - 1), max(cap, STREAK_PAUSE_S)))
        else:
            lane.failing_streak = 0

    def _lane_freed(self, lane: Lane) -> None:
        """An attempt of the lane ended: its loop may send more."""
        lane.poke()
        if lane.queue or lane.backlog or lane.spilled:
            self.run_lane(lane)

    def settle(self, job: Job, lane: Lane, result: Result) -> None:
        webhook = lane.webhook
        state, next_at, retry_base = settle(job, webhook, result, self.config)
        error = None
        if lane.deleted and state is State.PENDING:
            state, next_at, error = State.FAILED, None, "webhook deleted"
        attempt, finish = result_rows(job, result, state, next_at, retry_base, self.clock.time(),
                                      error)
        self.recorder.add(attempt, finish, None if next_at is None else (webhook.id, next_at))
        if self.tally is not None:
            self.tally.attempt(result.outcome, result.latency_ms, state,
                               result.started_at - job.created
                               if job.attempts == 0 and job.created else None)
        self.stats["attempts"] += 1
        if state is State.DELIVERED:
            self.stats["delivered"] += 1
        elif state is State.FAILED:
            self.stats["failed"] += 1
        log_attempt(job, webhook.id, result, state, next_at)

    def gone(self, delivery: Delivery, lane: Lane) -> None:
        """The events of a due delivery are no longer in the outbox: it fails, with the reason."""
        job = Job(delivery.id, delivery.uuid, delivery.kind, delivery.event_type,
                  delivery.event_id, b"", delivery.event_count, delivery.attempts,
                  delivery.retry_base)
        result = Result(Outcome.GONE, None, 0.0, "event no longer in the outbox", None, None,
                        self.clock.time())
        self.recorder.started(job.delivery_id, result.started_at)
        self.settle(job, lane, result)
