"""The delivery pipeline's supervisor: wires the stages and owns their tasks.

outbox (pages) ─▶ intake (parse, match, record) ─▶ lanes (budget, bucket, slots, batches)
─▶ attempts (sender) ─▶ recorder (batched state writes) ─▶ scheduler (due work ─▶ lanes)
watcher (webhook changes, replays ─▶ lanes, scheduler)

Owns the lifecycle: named, supervised tasks; ``stop()`` as an event; the drain
order (stop claiming → wait in-flight attempts up to the grace → cancel the
rest → flush state); the reader's loop from outbox pages into the lane host;
publishing the lowest outbox id still needed; the retention task
(``ops/retention.py``). It must not install signal
handlers or close what it did not open: ``daemon.py`` owns the process.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import aiohttp

from ..clock import SYSTEM, Clock
from ..config import Config
from ..logs import get_logger
from ..models import State
from ..ops.retention import Retention
from ..store.sqlite import Store
from .host import LaneHost
from .intake import plan_page
from .outbox import OutboxReader
from .progress import Progress, Tally
from .recorder import Recorder
from .scheduler import Scheduler
from .sender import Sender, make_session
from .watcher import WebhookWatcher

log = get_logger("nevent_dispatch")

#: Seconds between two updates of the lowest outbox id still needed (``meta``): the query
#: walks the unfinished deliveries, so not too often; rows are pruned on a scale of hours.
NEEDED_EVERY_S = 30.0
#: Seconds between two reports of what an until-idle run still waits for.
WAITING_EVERY_S = 5.0


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
        #: Counters for the final log line and tests.
        self.stats = {"events": 0, "rejected": 0, "attempts": 0, "delivered": 0, "failed": 0}
        #: The metrics' counters (``metrics.enabled``), and the signs of progress health reads.
        self.tally = Tally() if config.metrics.enabled else None
        self.progress = Progress()
        self.scheduler = Scheduler(clock, self._wake_lanes)
        self.recorder = Recorder(store, on_flushed=self.scheduler.note_all)
        self.host = LaneHost(config, store, clock, self.recorder, self.scheduler, self.stats,
                             self.tally)
        self.watcher = WebhookWatcher(store, self.host, self.scheduler, clock)
        self._reader: OutboxReader | None = None
        self.retention = Retention(config, store, clock)
        #: Until-idle runs: the longest wait (seconds), who hears what is still awaited, and
        #: what was left when the wait ran out.
        self.max_wait: float | None = None
        self.on_waiting: Callable[[dict[str, Any]], None] | None = None
        self.timed_out: dict[str, Any] | None = None

    @property
    def lanes(self) -> dict[str, Any]:
        return self.host.lanes

    @property
    def matcher(self) -> Any:
        return self.watcher.matcher

    def _wake_lanes(self, webhook_ids: list[str]) -> None:
        self.host.wake(webhook_ids)

    def stop(self) -> None:
        """Ask the pipeline to drain and return; safe to call more than once."""
        self._stopping.set()
        self.progress.draining.set()
        self.host.stop()

    # -- run --------------------------------------------------------------------------------

    async def run(self, *, until_idle: bool = False) -> None:
        """Deliver until ``stop()`` (or, with ``until_idle``, until nothing is left to do)."""
        if self._session is None:
            self._session = make_session(self.config.delivery)
        self.host.sender = Sender(self._session, self.config.delivery, self.clock)
        try:
            await self._start()
            tasks = {
                asyncio.create_task(self._read(), name="outbox-reader"),
                asyncio.create_task(self.scheduler.run(self._stopping), name="retry-scheduler"),
                asyncio.create_task(self.recorder.run(self._stopping), name="recorder"),
                asyncio.create_task(self.watcher.run(self._stopping), name="webhook-watcher"),
                asyncio.create_task(self._publish_needed(), name="outbox-needed"),
                asyncio.create_task(self.retention.run(self._stopping), name="retention"),
                asyncio.create_task(self._stopping.wait(), name="stop-signal"),
            }
            if until_idle:
                tasks.add(asyncio.create_task(self._stop_when_idle(), name="idle-watch"))
            self.progress.tasks = list(tasks)
            self.progress.running.set()
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
            if self.host.lane_failure is not None:  # a dead lane stops the daemon loudly
                raise self.host.lane_failure
        finally:
            if self._own_session and self._session is not None:
                await self._session.close()
                self._session = None

    async def _start(self) -> None:
        now = self.clock.time()
        recovered = await self.store.recover_claimed(now)
        batched = await self.host.batch_leftovers(await self.store.waiting_webhooks(), now)
        cursor = await self.store.cursor()
        await self.watcher.start()
        backlog = await self.store.outbox_max_id() - cursor
        log.info("dispatcher_started", cursor=cursor, backlog=backlog, recovered=recovered,
                 recovered_batches=batched, webhooks=len(self.matcher.webhooks))

    async def _drain(self, tasks: Iterable[asyncio.Task[Any]]) -> None:
        """Stop claiming, let attempts finish up to the grace, cancel the rest, flush state."""
        host = self.host
        self.recorder.wake()
        for task in [*tasks, *host.lane_tasks]:
            if task.get_name() != "recorder":
                task.cancel()
        await asyncio.gather(*tasks, *host.lane_tasks, return_exceptions=True)
        if host.inflight:
            log.info("draining", in_flight=len(host.inflight))
            _, pending = await asyncio.wait(host.inflight, timeout=self.config.delivery.shutdown_grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if host.batch_writer is not None:  # batches being recorded: let the write finish
            await asyncio.gather(asyncio.shield(host.batch_writer), return_exceptions=True)
        await self.recorder.close()
        log.info("dispatcher_stopped", **self.stats)

    def _busy(self) -> bool:
        host = self.host
        return bool(not self._reader or not self._reader.caught_up or host.inflight
                    or len(self.recorder) or self.scheduler.earliest() is not None
                    or any(ln.queue or ln.backlog or ln.spilled for ln in host.lanes.values()))

    async def waiting(self) -> dict[str, Any]:
        """What an until-idle run still waits for (``run --until-idle`` prints it)."""
        host = self.host
        retries = await self.store.retries_by_webhook(self.clock.time())
        return {
            "outbox_backlog": 0 if self._reader is None or self._reader.caught_up else
            max(0, await self.store.outbox_max_id() - self._reader.cursor),
            "in_flight": len(host.inflight),
            "in_memory": sum(len(ln.queue) for ln in host.lanes.values()),
            "waiting_webhooks": await self.store.open_count(),
            "retries": sum(n for _, n, _ in retries),
            "next_retry_at": min((at for _, _, at in retries), default=None),
        }

    async def _stop_when_idle(self) -> None:
        """Return once nothing is left to do, or when ``max_wait`` has passed (then
        ``timed_out`` says what was left); every ``WAITING_EVERY_S`` ``on_waiting`` hears
        what the run still waits for."""
        quiet = 0
        started = last_report = self.clock.monotonic()
        while not self._stopping.is_set():
            await asyncio.sleep(0.05)
            if self._busy() or await self.store.open_count():
                quiet = 0
                now = self.clock.monotonic()
                if self.max_wait is not None and now - started >= self.max_wait:
                    self.timed_out = await self.waiting()
                    log.info("idle_wait_ended", max_wait=self.max_wait, **self.timed_out)
                    return
                if self.on_waiting is not None and now - last_report >= WAITING_EVERY_S:
                    last_report = now
                    self.on_waiting(await self.waiting())
                continue
            quiet += 1
            if quiet >= 3:
                log.info("idle")
                return

    async def _publish_needed(self) -> None:
        """Keep ``outbox_needed_from`` in the state database up to date for the application."""
        last = await self.store.published_outbox_needed_from()
        while not self._stopping.is_set():
            needed = await self.store.outbox_needed_from()
            if needed != last:
                await self.store.publish_outbox_needed_from(needed)
                last = needed
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), NEEDED_EVERY_S)

    # -- intake -------------------------------------------------------------------------------

    async def _read(self) -> None:
        cursor = await self.store.cursor()
        outbox = self.config.outbox
        self._reader = reader = OutboxReader(
            self.store, cursor=cursor, page_size=outbox.page_size,
            poll_interval=outbox.poll_interval, idle_poll_interval=outbox.idle_poll_interval,
            max_page_bytes=outbox.max_page_bytes, stopping=self._stopping)
        self.progress.took_in(cursor, self.clock.monotonic())
        async for rows in reader.pages():
            await self._intake(rows)
            reader.cursor = rows[-1][0]
            self.progress.took_in(reader.cursor, self.clock.monotonic())

    async def _intake(self, rows: list[Any]) -> None:
        """Record a page (deliveries, waiting items, cursor) in one transaction, then queue it.

        Intake never waits for the lanes: what they have no room for is recorded as
        pending and read back by each lane in order when it has room.
        """
        plan = plan_page(rows, self.matcher, self.host.max_bytes, self.clock.time())
        self.stats["events"] += plan.events
        self.stats["rejected"] += plan.rejected
        if self.tally is not None:
            self.tally.deliveries[State.REJECTED] += plan.rejected_deliveries
        deliveries, takes = self.host.plan_rows(plan)
        base = await self.store.record_intake(deliveries, plan.waiting_rows(), rows[-1][0])
        self.host.queue_page(base, takes)
