"""The webhook watcher: applies changes made outside the daemon (CLI, API) to the pipeline.

Owns the polling of the webhooks revision and of the requeue revision (both
bumped in the same transaction as the change), keeping the matcher current, and
what a change means for the lanes: a webhook disabled, deleted or switched
between batch and single mode retires its lane; a new rate limit replaces the
bucket; a webhook enabled, or deliveries replayed, is handed to the scheduler
with its due work. It must not send or claim anything.

A change costs what it changes: the triggers on ``webhooks`` record each
change's webhook id under its revision (``webhook_changes``), and the watcher
reads back only the webhooks changed since the revision it applied, compiles
only their filters and looks only at their lanes. Every webhook is loaded at
start, and again should changes be missing (pruned before they were read: a
database restored, a reader that fell far behind).

The daemon is the only reader of ``webhook_changes``, so it prunes it: the
changes it applied are of no more use to it, but the newest ``CHANGES_KEPT``
of them stay as a margin (what changed lately, for someone looking), pruned in
steps of ``PRUNE_EVERY`` so that pruning is one small write now and then, not
one per change. While no daemon runs the rows accumulate (a few dozen bytes
per change); the next start prunes them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from ..clock import Clock
from ..logs import get_logger
from ..models import Webhook
from ..store.sqlite import Store
from .host import LaneHost
from .matcher import Matcher, Refused
from .scheduler import Scheduler

log = get_logger("nevent_dispatch")

#: Seconds between checks of the webhooks table for changes made by the CLI.
WEBHOOK_POLL = 0.5
#: Changes the daemon has applied that stay in ``webhook_changes`` behind its revision ...
CHANGES_KEPT = 1_000
#: ... pruned once this many more have been applied.
PRUNE_EVERY = 1_000
#: Webhooks enabled at once beyond which their due work is found in one query over every
#: active webhook instead of one seek each.
SEEKS_AT_MOST = 64


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
        #: Changes up to this revision are pruned (or were never asked about).
        self._pruned_to = 0
        #: Set to look now rather than at the next poll (a change made in this process).
        self._poked = asyncio.Event()
        #: Callers of ``catch_up`` waiting for the next look to end.
        self._looked: list[asyncio.Future[None]] = []

    async def start(self) -> None:
        """Load the webhooks and schedule the work already due in the database (the load
        hands the scheduler the due work of every webhook it finds active)."""
        await self.reload()
        self._requeue_rev = await self._store.requeue_rev()
        await self._prune()

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            waits = {asyncio.ensure_future(stopping.wait()), asyncio.ensure_future(self._poked.wait())}
            try:
                await asyncio.wait(waits, timeout=WEBHOOK_POLL, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiting in waits:
                    waiting.cancel()
            self._poked.clear()
            try:
                await self.poll()
                requeue_rev = await self._store.requeue_rev()
                if requeue_rev != self._requeue_rev:
                    self._requeue_rev = requeue_rev
                    self._scheduler.note_all((await self._store.next_due_active()).items())
            finally:
                looked, self._looked = self._looked, []
                for waiter in looked:
                    if not waiter.done():
                        waiter.set_result(None)

    def poke(self) -> None:
        """Look for changes now (replays, or webhook changes whose effect need not be waited for)."""
        self._poked.set()

    async def catch_up(self, timeout: float = 2.0) -> bool:
        """Return once every webhook change committed before the call is applied to the
        pipeline (False when that took longer than ``timeout``): a webhook enabled through
        the API receives the events committed after the answer."""
        target = await self._store.webhooks_rev()
        deadline = asyncio.get_running_loop().time() + timeout
        while self._webhooks_rev < target:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return False
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._looked.append(waiter)
            self._poked.set()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(waiter), remaining)
        return True

    async def poll(self) -> None:
        """Apply the webhook changes made since the last look (all of them, or a reload)."""
        changes = await self._store.webhook_changes_since(self._webhooks_rev)
        if changes.rev == self._webhooks_rev:
            return
        if changes.webhook_ids is None:
            log.warning("webhook_changes_missing", since_rev=self._webhooks_rev, rev=changes.rev)
            await self.reload()
        else:
            await self.apply(changes.webhook_ids, changes.rev)
        await self._prune()

    async def reload(self) -> None:
        """Load every webhook (at start, and when changes went missing)."""
        rev = await self._store.webhooks_rev()
        webhooks = await self._store.list_webhooks()
        matcher = Matcher((), _compile_filter)
        self._refused(matcher.apply({w.id: w for w in webhooks}))
        before = self._host.webhooks
        self.matcher, self._webhooks_rev = matcher, rev
        self._host.webhooks = matcher.webhooks
        existing = {w.id for w in webhooks}
        lanes = self._host.lanes
        # Lanes first, as they may be retired; then the webhooks that are new to the lanes.
        changed = [*lanes, *(webhook_id for webhook_id, webhook in matcher.webhooks.items()
                             if webhook_id not in lanes and _moved(before.get(webhook_id), webhook))]
        await self._follow(changed, before, existing)
        log.info("webhooks_loaded", active=len(matcher.webhooks), total=len(webhooks), rev=rev)

    async def apply(self, webhook_ids: Sequence[str], rev: int) -> None:
        """Apply the changes of ``webhook_ids`` (read again now), which bring revision ``rev``."""
        found = await self._store.get_webhooks(webhook_ids)
        current: dict[str, Webhook | None] = dict.fromkeys(webhook_ids)
        current.update((w.id, w) for w in found)
        webhooks = self.matcher.webhooks
        before = {webhook_id: webhooks[webhook_id] for webhook_id in webhook_ids
                  if webhook_id in webhooks}
        self._refused(self.matcher.apply(current))
        self._webhooks_rev = rev
        await self._follow(webhook_ids, before, {w.id for w in found})
        log.debug("webhooks_changed", count=len(webhook_ids), rev=rev)

    async def _follow(self, webhook_ids: Sequence[str], before: dict[str, Webhook],
                      existing: set[str]) -> None:
        """What the matcher's new view means for the lanes and the scheduler, for the
        webhooks given (``before``: their previous view; ``existing``: not deleted)."""
        host = self._host
        now = self._clock.time()
        enabled: list[str] = []
        for webhook_id in webhook_ids:
            current = self.matcher.webhooks.get(webhook_id)
            lane = host.lanes.get(webhook_id)
            if lane is not None:
                if current is None or current.batch != lane.webhook.batch:
                    del host.lanes[webhook_id]
                    await host.retire(lane, now, deleted=webhook_id not in existing)
                else:
                    if host.limit(current) != host.limit(lane.webhook):
                        lane.bucket = host.bucket(current)
                    lane.webhook = current
            if current is not None and _moved(before.get(webhook_id), current):
                enabled.append(webhook_id)  # enabled, or a retired lane's work
        if len(enabled) > SEEKS_AT_MOST:
            due = await self._store.next_due_active()
            self._scheduler.note_all((w, due[w]) for w in enabled if w in due)
            return
        for webhook_id in enabled:
            at = await self._store.next_due(webhook_id)
            if at is not None:
                self._scheduler.note(webhook_id, at)

    async def _prune(self) -> None:
        """Forget applied changes but the newest ``CHANGES_KEPT``, every ``PRUNE_EVERY``."""
        up_to = self._webhooks_rev - CHANGES_KEPT
        if up_to - self._pruned_to >= PRUNE_EVERY:
            await self._store.prune_webhook_changes(up_to)
            self._pruned_to = up_to

    @staticmethod
    def _refused(refused: list[Refused]) -> None:
        if refused:
            log.error("webhooks_invalid", count=len(refused), error=str(refused[0].error))
        for webhook, error in refused:
            log.error("webhook_filter_invalid", webhook_id=webhook.id, error=str(error))


def _moved(old: Webhook | None, new: Webhook) -> bool:
    """Whether a webhook's due work must be looked for: it was not in the view, or it
    switched between batch and single mode (its lane was retired)."""
    return old is None or old.batch != new.batch
