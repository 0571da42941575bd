"""The daemon's operations side: health checks and systemd notifications, beside the pipeline.

Owns the tasks that watch the running pipeline from outside it — the health monitor
(``health.py``) and, under systemd, the notifier (``notify.py``: ``READY=1`` once the
pipeline runs, ``STATUS=`` every few seconds, ``WATCHDOG=1`` only while the verdict is
ok, ``STOPPING=1`` when the drain begins). ``daemon.py`` starts them before the pipeline
and stops them after it, whether or not the API is served. Prometheus metrics
(``metrics.py``) are imported only by the API that serves them. It must not change the
pipeline's work: it reads the dispatcher's ``progress``, ``tally`` and store.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
from collections.abc import Mapping
from typing import Any

from ..clock import SYSTEM, Clock
from ..config import Config
from ..logs import get_logger
from .health import HealthMonitor, wait_any
from .notify import Notifier, watchdog_interval

log = get_logger("nevent_dispatch")

#: Seconds between two ``STATUS=`` lines.
STATUS_EVERY_S = 5.0


class Operations:
    """Health and notifications of one daemon: ``start()``, then ``await stop()``."""

    def __init__(self, config: Config, dispatcher: Any, *,
                 environ: Mapping[str, str] = os.environ, clock: Clock = SYSTEM) -> None:
        self.config = config
        self.dispatcher = dispatcher
        self.clock = clock
        self.health = HealthMonitor(config.health.stall_after, dispatcher, clock)
        self.notifier = Notifier.from_environ(environ)
        self.watchdog_s = None if self.notifier is None else watchdog_interval(environ, os.getpid())
        self.started_at = clock.time()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping_sent = False
        self._delivered = (clock.monotonic(), 0)

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self.health.run(self._stop), name="health-monitor"))
        if self.notifier is not None:
            self._tasks.append(asyncio.create_task(self._notify(), name="systemd-notify"))
        for task in self._tasks:
            task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        """A task of ours that dies stops the daemon loudly, like a pipeline task."""
        if not task.cancelled() and task.exception() is not None:
            log.error("task_failed", task=task.get_name(), error=repr(task.exception()))
            self.dispatcher.stop()

    async def stop(self) -> None:
        self._stop.set()
        if self._tasks:
            self._send_stopping()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.notifier is not None:
            self.notifier.close()

    # -- systemd ------------------------------------------------------------------------------

    def _send_stopping(self) -> None:
        if self.notifier is not None and not self._stopping_sent:
            self._stopping_sent = True
            self.notifier.send(STOPPING=1, STATUS="draining")

    async def _notify(self) -> None:
        assert self.notifier is not None
        progress = self.dispatcher.progress
        ending = [progress.draining, self._stop]
        await wait_any([progress.running, *ending], None)
        if not any(e.is_set() for e in ending):
            await self.health.check()  # the verdict of a running pipeline, not a starting one
            self.notifier.send(READY=1, STATUS=await self.status_line())
        mono = self.clock.monotonic
        next_status = mono() + STATUS_EVERY_S
        next_watchdog = mono()
        while not any(e.is_set() for e in ending):
            if self.watchdog_s is not None and mono() >= next_watchdog:
                if self.health.current().ok:
                    self.notifier.send(WATCHDOG=1)
                    next_watchdog = mono() + self.watchdog_s
                else:  # fed again as soon as a check says ok
                    next_watchdog = mono() + self.health.interval
            if mono() >= next_status:
                self.notifier.send(STATUS=await self.status_line())
                next_status = mono() + STATUS_EVERY_S
            wake = min(next_status, next_watchdog if self.watchdog_s is not None else math.inf)
            await wait_any(ending, max(0.0, wake - mono()))
        self._send_stopping()

    async def status_line(self) -> str:
        """What ``systemctl status`` shows: backlog, deliveries per second, failing webhooks."""
        verdict = self.health.current()
        now, delivered = self.clock.monotonic(), self.dispatcher.stats["delivered"]
        then, before = self._delivered
        self._delivered = (now, delivered)
        rate = (delivered - before) / (now - then) if now > then else 0.0
        failing: Any = "?"
        with contextlib.suppress(Exception):
            failing = len(await asyncio.wait_for(
                self.dispatcher.store.failing_webhooks(self.clock.time()), STATUS_EVERY_S))
        text = (f"backlog {verdict.figures.get('outbox_backlog', 0)} events, {rate:.1f} "
                f"deliveries/s, {failing} failing webhook{'' if failing == 1 else 's'}")
        if not verdict.ok:
            why = f": {verdict.reasons[0]}" if verdict.reasons else ""
            text = f"{verdict.status}{why}; {text}"
        return text
