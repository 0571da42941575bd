"""The webhook watcher: applies changes made outside the daemon (CLI, API) to the pipeline.

Owns the polling of the webhooks revision and of the requeue revision (both
bumped in the same transaction as the change), the rebuilding of the matcher,
and what a change means for the lanes: a webhook disabled, deleted or switched
between batch and single mode retires its lane; a new rate limit replaces the
bucket; a webhook enabled, or deliveries replayed, is handed to the scheduler
with its due work. It must not send or claim anything.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from ..clock import Clock
from ..logs import get_logger
from ..models import Webhook
from ..store.sqlite import Store
from .host import LaneHost
from .matcher import Matcher
from .scheduler import Scheduler

log = get_logger("nevent_dispatch")

#: Seconds between checks of the webhooks table for changes made by the CLI.
WEBHOOK_POLL = 0.5


def _compile_filter(doc: Any) -> Any:
    from .filters import compile_filter
    return compile_filter(doc)


class WebhookWatcher:
    def __init__(self, store: Store, host: LaneHost, scheduler: Scheduler, clock: Clock) -> None:
        self._store = store
        self._host = host
        self._scheduler = scheduler
        self._clock = clock
        self.matcher = Matcher((), _compile_filter)
        self._webhooks_rev = -1
        self._requeue_rev = -1

    async def start(self) -> None:
        """Load the webhooks and schedule the work already due in the database."""
        await self.reload()
        self._requeue_rev = await self._store.requeue_rev()
        self._scheduler.note_all((await self._store.next_due_active()).items())

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stopping.wait(), WEBHOOK_POLL)
            if await self._store.webhooks_rev() != self._webhooks_rev:
                await self.reload()
            requeue_rev = await self._store.requeue_rev()
            if requeue_rev != self._requeue_rev:
                self._requeue_rev = requeue_rev
                self._scheduler.note_all((await self._store.next_due_active()).items())

    async def reload(self) -> None:
        rev = await self._store.webhooks_rev()
        webhooks = await self._store.list_webhooks()
        try:
            matcher = Matcher(webhooks, _compile_filter)
        except Exception as exc:  # noqa: BLE001 - a filter saved by an older version must not stop delivery
            log.error("webhooks_invalid", error=str(exc))
            matcher = Matcher([w for w in webhooks if self._compiles(w)], _compile_filter)
        before = self._host.webhooks
        self.matcher, self._webhooks_rev = matcher, rev
        self._host.webhooks = matcher.webhooks
        existing = {w.id for w in webhooks}
        now = self._clock.time()
        host = self._host
        for webhook_id, lane in list(host.lanes.items()):
            current = matcher.webhooks.get(webhook_id)
            if current is None or current.batch != lane.webhook.batch:
                del host.lanes[webhook_id]
                await host.retire(lane, now, deleted=webhook_id not in existing)
            else:
                if host.limit(current) != host.limit(lane.webhook):
                    lane.bucket = host.bucket(current)
                lane.webhook = current
        for webhook_id, webhook in matcher.webhooks.items():
            old = before.get(webhook_id)
            if old is None or old.batch != webhook.batch:  # enabled, or a retired lane's work
                at = await self._store.next_due(webhook_id)
                if at is not None:
                    self._scheduler.note(webhook_id, at)
        log.info("webhooks_loaded", active=len(matcher.webhooks), total=len(webhooks), rev=rev)

    def _compiles(self, webhook: Webhook) -> bool:
        try:
            Matcher([webhook], _compile_filter)
        except Exception as exc:  # noqa: BLE001
            log.error("webhook_filter_invalid", webhook_id=webhook.id, error=str(exc))
            return False
        return True
