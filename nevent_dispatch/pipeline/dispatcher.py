"""The delivery pipeline: wires the stages and owns their tasks.

outbox (pages) ─▶ intake (parse, match, record) ─▶ lanes (bucket, slots, batches)
─▶ attempts (sender) ─▶ recorder (batched state writes) ◀─ scheduler (due retries ─▶ lanes)

Owns the lifecycle: named, supervised tasks; ``stop()`` as an event; the drain
order (stop claiming → wait in-flight attempts up to the grace → cancel the
rest → flush state). It must not install signal handlers or close what it did
not open: ``daemon.py`` owns the process.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any

import aiohttp

from ..clock import SYSTEM, Clock
from ..config import Config
from ..logs import get_logger
from ..models import Delivery, Kind, Outcome, State, Webhook
from ..store.sqlite import Store
from ..wire.envelope import Rejection, batch_body, parse_row
from .attempts import log_attempt, new_delivery_row, result_rows, settle
from .intake import plan_page
from .lanes import Item, Job, Lane, Slots
from .matcher import Matcher
from .outbox import OutboxReader
from .ratelimit import TokenBucket
from .recorder import Recorder
from .sender import Result, Sender, make_session

log = get_logger("nevent_dispatch")

#: Jobs held in memory by all lanes together before new work stays in the database.
GLOBAL_QUEUE_CAP = 20_000
#: Jobs one lane holds in memory before its new work stays in the database (at least a
#: page's worth, so one busy webhook does not spill most of every page).
LANE_CAP = 512
#: Outcomes that tie up a connection slot for long: the lane's in-flight limit shrinks.
SLOW_OUTCOMES = frozenset({Outcome.TIMEOUT, Outcome.CONNECTION_ERROR, Outcome.TLS_ERROR})
#: Seconds between checks of the webhooks table for changes made by the CLI.
WEBHOOK_POLL = 0.5
#: Longest sleep of the scheduler, so replays from the CLI are seen within it.
SCHEDULER_MAX_SLEEP = 0.5


def _compile_filter(doc: Any) -> Any:
    from .filters import compile_filter
    return compile_filter(doc)


class Dispatcher:
    """One daemon's worth of delivery: ``await run()``, and ``stop()`` from anywhere."""

    def __init__(self, config: Config, store: Store, *, clock: Clock = SYSTEM,
                 session: aiohttp.ClientSession | None = None) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self._own_session = session is None
        self._session = session
        self._stopping = asyncio.Event()
        self._scheduler_wake = asyncio.Event()
        self.slots = Slots(config.delivery.max_in_flight)
        self.max_events = config.batch.max_events
        self.max_wait = config.batch.max_wait
        self.speed = clock.speed
        self.max_bytes = config.delivery.max_payload_bytes
        self.per_webhook = config.delivery.max_in_flight_per_webhook
        self.matcher = Matcher((), _compile_filter)
        self.lanes: dict[str, Lane] = {}
        #: Lanes created later start at these marks: (delivery id, outbox id of batch events).
        self._marks = (0, 0)
        self._inflight: set[asyncio.Task[None]] = set()
        self._lane_tasks: set[asyncio.Task[None]] = set()
        self._recorder = Recorder(store, on_flushed=self._retry_scheduled)
        self._webhooks_rev = -1
        self._batches_to_write: list[tuple[tuple[Any, ...], str, list[tuple[int, str, str]],
                                           asyncio.Future[int]]] = []
        self._batch_writer: asyncio.Task[None] | None = None
        self._lane_failure: BaseException | None = None
        self._reader: OutboxReader | None = None
        self.sender: Sender | None = None
        #: Counters for the final log line and tests.
        self.stats = {"events": 0, "rejected": 0, "attempts": 0, "delivered": 0, "failed": 0}

    # -- lane host --------------------------------------------------------------------------

    def monotonic(self) -> float:
        return self.clock.monotonic()

    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self) -> None:
        """Ask the pipeline to drain and return; safe to call more than once."""
        self._stopping.set()
        for lane in self.lanes.values():
            lane.poke()

    # -- run --------------------------------------------------------------------------------

    async def run(self, *, until_idle: bool = False) -> None:
        """Deliver until ``stop()`` (or, with ``until_idle``, until nothing is left to do)."""
        if self._session is None:
            self._session = make_session(self.config.delivery)
        self.sender = Sender(self._session, self.config.delivery, self.clock)
        try:
            await self._start()
            tasks = {
                asyncio.create_task(self._read(), name="outbox-reader"),
                asyncio.create_task(self._schedule(), name="retry-scheduler"),
                asyncio.create_task(self._recorder.run(self._stopping), name="recorder"),
                asyncio.create_task(self._watch_webhooks(), name="webhook-watcher"),
                asyncio.create_task(self._stopping.wait(), name="stop-signal"),
            }
            if until_idle:
                tasks.add(asyncio.create_task(self._stop_when_idle(), name="idle-watch"))
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                failed = [t for t in done if not t.cancelled() and t.exception() is not None]
                for task in failed:
                    log.error("task_failed", task=task.get_name(), error=repr(task.exception()))
            finally:
                self.stop()
                await self._drain(tasks)
            if failed:
                raise failed[0].exception()  # type: ignore[misc]
            if self._lane_failure is not None:  # a dead lane stops the daemon loudly
                raise self._lane_failure
        finally:
            if self._own_session and self._session is not None:
                await self._session.close()
                self._session = None

    async def _start(self) -> None:
        now = self.clock.time()
        recovered = await self.store.recover_claimed(now)
        batched = await self._batch_leftovers(await self.store.waiting_webhooks(), now)
        cursor = await self.store.cursor()
        self._marks = (await self.store.delivery_mark(), cursor)
        await self._reload_webhooks()
        backlog = await self.store.outbox_max_id() - cursor
        log.info("dispatcher_started", cursor=cursor, backlog=backlog, recovered=recovered,
                 recovered_batches=batched, webhooks=len(self.matcher.webhooks))

    async def _drain(self, tasks: Iterable[asyncio.Task[Any]]) -> None:
        """Stop claiming, let attempts finish up to the grace, cancel the rest, flush state."""
        self._recorder.wake()
        for task in [*tasks, *self._lane_tasks]:
            if task.get_name() != "recorder":
                task.cancel()
        await asyncio.gather(*tasks, *self._lane_tasks, return_exceptions=True)
        if self._inflight:
            log.info("draining", in_flight=len(self._inflight))
            _, pending = await asyncio.wait(self._inflight, timeout=self.config.delivery.shutdown_grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._batch_writer is not None:  # batches being recorded: let the write finish
            await asyncio.gather(asyncio.shield(self._batch_writer), return_exceptions=True)
        await self._recorder.close()
        log.info("dispatcher_stopped", **self.stats)

    async def _stop_when_idle(self) -> None:
        quiet = 0
        while not self._stopping.is_set():
            await asyncio.sleep(0.05)
            busy = (not self._reader or not self._reader.caught_up or self._inflight
                    or len(self._recorder) or any(ln.queue or ln.spilled for ln in self.lanes.values()))
            if busy or await self.store.pending_count():
                quiet = 0
                continue
            quiet += 1
            if quiet >= 3:
                log.info("idle")
                return

    # -- webhooks -----------------------------------------------------------------------------

    async def _watch_webhooks(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), WEBHOOK_POLL)
            if await self.store.webhooks_rev() != self._webhooks_rev:
                await self._reload_webhooks()

    async def _reload_webhooks(self) -> None:
        rev = await self.store.webhooks_rev()
        webhooks = await self.store.list_webhooks()
        try:
            matcher = Matcher(webhooks, _compile_filter)
        except Exception as exc:  # noqa: BLE001 - a filter saved by an older version must not stop delivery
            log.error("webhooks_invalid", error=str(exc))
            matcher = Matcher([w for w in webhooks if self._compiles(w)], _compile_filter)
        self.matcher, self._webhooks_rev = matcher, rev
        now = self.clock.time()
        for webhook_id, lane in list(self.lanes.items()):
            current = matcher.webhooks.get(webhook_id)
            if current is None or current.batch != lane.webhook.batch:
                del self.lanes[webhook_id]
                await self._retire(lane, now)
            else:
                if self._limit(current) != self._limit(lane.webhook):
                    lane.bucket = self._bucket(current)
                lane.webhook = current
        log.info("webhooks_loaded", active=len(matcher.webhooks), total=len(webhooks), rev=rev)

    def _compiles(self, webhook: Webhook) -> bool:
        try:
            Matcher([webhook], _compile_filter)
        except Exception as exc:  # noqa: BLE001
            log.error("webhook_filter_invalid", webhook_id=webhook.id, error=str(exc))
            return False
        return True

    def _limit(self, webhook: Webhook) -> int:
        return webhook.rate_limit or self.config.rate_limit.events_per_minute

    def _bucket(self, webhook: Webhook) -> TokenBucket:
        return TokenBucket(self._limit(webhook), self.config.rate_limit.burst, self.clock.monotonic())

    def _lane(self, webhook: Webhook) -> Lane:
        lane = self.lanes.get(webhook.id)
        if lane is None:
            mark = self._marks[1] if webhook.batch else self._marks[0]
            lane = self.lanes[webhook.id] = Lane(
                webhook, self._bucket(webhook), self,
                cap=max(LANE_CAP, 2 * self.max_events, self.config.outbox.page_size),
                mark=mark)
        return lane

    def _run_lane(self, lane: Lane) -> None:
        if (lane.task is None or lane.task.done()) and not self._stopping.is_set() \
                and not lane.retired:
            lane.task = asyncio.create_task(lane.run(), name=f"lane-{lane.webhook.id}")
            self._lane_tasks.add(lane.task)
            lane.task.add_done_callback(self._lane_done)

    def _lane_done(self, task: asyncio.Task[None]) -> None:
        self._lane_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("lane_failed", task=task.get_name(), error=repr(task.exception()))
            self._lane_failure = self._lane_failure or task.exception()
            self.stop()

    async def _retire(self, lane: Lane, now: float) -> None:
        """A webhook went away, was disabled or changed mode: its claimed work goes back."""
        lane.retired = True
        if lane.task is not None:
            lane.task.cancel()
            await asyncio.gather(lane.task, return_exceptions=True)
        jobs = [w.delivery_id for w in lane.clear() if isinstance(w, Job)]
        await self.store.release_claimed(jobs, now)
        if lane.webhook.batch:
            await self._batch_leftovers([lane.webhook.id], now)
        elif lane.spilled:
            await self.store.release_spilled(lane.webhook.id, lane.mark, now)

    async def _batch_leftovers(self, webhook_ids: Iterable[str], now: float) -> int:
        """Group events left waiting for a batch into pending batch deliveries."""
        count = 0
        for webhook_id in webhook_ids:
            while events := await self.store.waiting_events(webhook_id, 0, self.max_events):
                row = new_delivery_row(webhook_id=webhook_id, kind=Kind.BATCH,
                                       event_type="batch", event_id=None, outbox_id=None,
                                       event_count=len(events), state=State.PENDING, now=now)
                row = (*row[:8], now, *row[9:])  # due now
                await self.store.create_batches([(row, webhook_id, events)])
                count += 1
        return count

    # -- intake -------------------------------------------------------------------------------

    async def _read(self) -> None:
        cursor = await self.store.cursor()
        self._reader = reader = OutboxReader(
            self.store, cursor=cursor, page_size=self.config.outbox.page_size,
            poll_interval=self.config.outbox.poll_interval, stopping=self._stopping)
        async for rows in reader.pages():
            await self._intake(rows)
            reader.cursor = rows[-1][0]
            while self._queued() >= GLOBAL_QUEUE_CAP and not self._stopping.is_set():
                await asyncio.sleep(0.01)

    def _queued(self) -> int:
        return sum(len(lane.queue) for lane in self.lanes.values())

    async def _intake(self, rows: list[Any]) -> None:
        """Record a page (deliveries, waiting items, cursor) in one transaction, then queue it."""
        plan = plan_page(rows, self.matcher, self.max_bytes, self.clock.time())
        self.stats["events"] += plan.events
        self.stats["rejected"] += plan.rejected
        base = await self.store.record_intake(plan.deliveries, plan.waiting_rows(), rows[-1][0])
        mono = self.clock.monotonic()
        global_full = self._queued() >= GLOBAL_QUEUE_CAP
        rows = plan.deliveries
        for webhook, work in plan.pushes.values():
            lane = self._lane(webhook)
            room = 0 if global_full or lane.full else lane.cap - len(lane.queue)
            taken = work[:room] if room < len(work) else work
            if taken and webhook.batch:
                lane.mark = taken[-1][0][0]
                lane.extend([Item(outbox_id, event_id, type_, body, mono)
                             for (outbox_id, event_id, type_, body), _ in taken])
            elif taken:
                lane.mark = base + taken[-1][1]
                lane.extend([Job(base + n, rows[n - 1][0], Kind.EVENT, type_, event_id, body,
                                 1, 0, 0) for (_, event_id, type_, body), n in taken])
            if len(taken) < len(work):
                lane.spill()  # recorded: the lane refills from the database in order
            self._run_lane(lane)

    # -- lanes' database work -------------------------------------------------------------------

    async def refill(self, lane: Lane) -> int:
        """Load a spilled lane's oldest waiting work from the database, in order."""
        spills = lane.spills
        room = lane.cap - len(lane.queue)
        webhook_id = lane.webhook.id
        count: int
        if lane.webhook.batch:
            waiting = await self.store.waiting_events(webhook_id, lane.mark, room)
            count = len(waiting)
            bodies = await self._events(e[0] for e in waiting)
            mono = self.clock.monotonic()
            for outbox_id, event_id, event_type in waiting:
                lane.mark = outbox_id
                body = bodies.get(outbox_id)
                if body is not None:
                    lane.push(Item(outbox_id, event_id, event_type, body, mono))
        else:
            deliveries = await self.store.spilled_deliveries(webhook_id, lane.mark, room)
            count = len(deliveries)
            for delivery, job in await self._jobs(deliveries):
                lane.mark = delivery.id
                if job is None:
                    self._gone(delivery, lane.webhook)
                else:
                    lane.push(job)
        if count < room and lane.spills == spills:
            lane.spilled = False
        return count

    async def make_batch(self, lane: Lane, items: list[Item]) -> Job:
        """Record a batch of waiting events as one delivery before it is sent.

        Batches formed by all lanes in the same moment share one transaction.
        """
        now = self.clock.time()
        row = new_delivery_row(webhook_id=lane.webhook.id, kind=Kind.BATCH, event_type="batch",
                               event_id=None, outbox_id=None, event_count=len(items),
                               state=State.DELIVERING, now=now)
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        events = [(i.outbox_id, i.event_id, i.event_type) for i in items]
        self._batches_to_write.append((row, lane.webhook.id, events, done))
        if self._batch_writer is None or self._batch_writer.done():
            self._batch_writer = asyncio.create_task(self._write_batches(), name="batch-writer")
        delivery_id = await done
        return Job(delivery_id, row[0], Kind.BATCH, "batch", None,
                   batch_body([i.body for i in items]), len(items), 0, 0)

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

    async def _events(self, outbox_ids: Iterable[int]) -> dict[int, bytes]:
        """Wire bodies of outbox events by id (rebuilt exactly as at intake)."""
        rows = await self.store.outbox_rows(outbox_ids)
        bodies = {}
        for outbox_id, row in rows.items():
            event = parse_row(row, self.max_bytes)
            if not isinstance(event, Rejection):
                bodies[outbox_id] = event.body
        return bodies

    async def _jobs(self, deliveries: list[Delivery],
                    test_bodies: dict[int, bytes | None] | None = None
                    ) -> list[tuple[Delivery, Job | None]]:
        """Jobs for claimed deliveries; None where the events are gone from the outbox."""
        event_bodies = await self._events(d.outbox_id for d in deliveries
                                          if d.kind is Kind.EVENT and d.outbox_id is not None)
        out: list[tuple[Delivery, Job | None]] = []
        for d in deliveries:
            body: bytes | None
            if d.kind is Kind.EVENT:
                body = event_bodies.get(d.outbox_id)  # type: ignore[arg-type]
            elif d.kind is Kind.BATCH:
                items = await self.store.batch_events(d.id)
                found = await self._events(i[0] for i in items)
                body = batch_body([found[i[0]] for i in items]) if len(found) == len(items) else None
            else:
                body = (test_bodies or {}).get(d.id)
            job = None if body is None else Job(d.id, d.uuid, d.kind, d.event_type, d.event_id,
                                                body, d.event_count, d.attempts, d.retry_base)
            out.append((d, job))
        return out

    # -- attempts -------------------------------------------------------------------------------

    def start_attempt(self, lane: Lane, job: Job) -> None:
        task = asyncio.create_task(self._attempt(lane, job))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

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
                    result = await self.sender.send(url=webhook.url, secret=webhook.secret,
                                                    body=job.body, event_type=job.event_type,
                                                    delivery_uuid=job.uuid)
                    lane.settled(result.outcome not in SLOW_OUTCOMES)
                    self._settle(job, webhook, result)
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

    def _lane_freed(self, lane: Lane) -> None:
        """An attempt of the lane ended: its loop may send more."""
        lane.poke()
        if lane.queue or lane.spilled:
            self._run_lane(lane)

    def _settle(self, job: Job, webhook: Webhook, result: Result) -> None:
        state, next_at = settle(job, webhook, result, self.config)
        attempt, finish = result_rows(job, result, state, next_at, self.clock.time())
        self._recorder.add(attempt, finish, next_at)
        self.stats["attempts"] += 1
        if state is State.DELIVERED:
            self.stats["delivered"] += 1
        elif state is State.FAILED:
            self.stats["failed"] += 1
        log_attempt(job, webhook.id, result, state, next_at)

    # -- retries --------------------------------------------------------------------------------

    def _retry_scheduled(self, next_at: float | None) -> None:
        if next_at is not None:
            self._scheduler_wake.set()

    async def _schedule(self) -> None:
        """Hand due deliveries (retries, replays, recovered work) to their lanes."""
        batch = 500
        while not self._stopping.is_set():
            self._scheduler_wake.clear()
            now = self.clock.time()
            room = GLOBAL_QUEUE_CAP - self._queued()
            claimed: list[tuple[Delivery, bytes | None]] = []
            if room > 0:
                claimed = await self.store.claim_due(now, min(room, batch))
                if claimed:
                    await self._enqueue(claimed, now)
                    if len(claimed) == batch:
                        continue
            next_at = await self.store.next_due_at()
            delay = SCHEDULER_MAX_SLEEP if next_at is None else next_at - self.clock.time()
            delay = min(max(delay, 0.01), SCHEDULER_MAX_SLEEP)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._scheduler_wake.wait(), delay)

    async def _enqueue(self, claimed: list[tuple[Delivery, bytes | None]], now: float) -> None:
        deliveries = [d for d, _ in claimed]
        jobs = await self._jobs(deliveries, {d.id: body for d, body in claimed})
        release: list[int] = []
        for delivery, job in jobs:
            webhook = self.matcher.webhooks.get(delivery.webhook_id or "")
            if webhook is None:  # disabled or deleted since it was claimed
                release.append(delivery.id)
            elif job is None:
                self._gone(delivery, webhook)
            else:
                # A formed batch stays a batch (same uuid, same events) even if the mode changed.
                lane = self._lane(webhook)
                lane.push(job)
                self._run_lane(lane)
        if release:
            await self.store.release_claimed(release, now)

    def _gone(self, delivery: Delivery, webhook: Webhook) -> None:
        """The events of a due delivery are no longer in the outbox: it fails, with the reason."""
        job = Job(delivery.id, delivery.uuid, delivery.kind, delivery.event_type,
                  delivery.event_id, b"", delivery.event_count, delivery.attempts,
                  delivery.retry_base)
        result = Result(Outcome.GONE, None, 0.0, "event no longer in the outbox", None, None,
                        self.clock.time())
        self._settle(job, webhook, result)

