"""Intake, the pure part: a page of outbox rows into the rows to record and the work to queue.

Owns the decision, per row, of what the history must hold — one delivery per
(event, webhook) for normal webhooks, the page's waiting events per batch
webhook, one rejected record per refused event and webhook — before
anything is sent. No I/O and no clock: the dispatcher records the plan in one
transaction with the cursor, then queues the work.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..logs import get_logger
from ..models import Kind, State, Webhook
from ..store.sqlite import Row
from ..wire.envelope import BATCH_OVERHEAD, Rejection, parse_row
from .attempts import new_delivery_row
from .matcher import Matcher

log = get_logger("nevent_dispatch")


#: An event as the lanes take it: (outbox_id, event_id, type, body, created).
Queued = tuple[int, str, str, bytes, int]


@dataclass(slots=True)
class Plan:
    #: ``deliveries`` rows (without ids) in the order they get ids; queued until the lane
    #: host decides that a lane has no room for one (then pending).
    deliveries: list[Row] = field(default_factory=list)
    #: Events waiting for a batch, by batch webhook: [outbox_id, event_id, type] in order.
    waiting: dict[str, list[tuple[int, str, str]]] = field(default_factory=dict)
    #: By webhook id, the webhook and its work in order: (event, n) for the n-th delivery
    #: row (n > 0), or an event waiting for a batch (n = 0).
    pushes: dict[str, tuple[Webhook, list[tuple[Queued, int]]]] = field(default_factory=dict)

    def _push(self, webhook: Webhook, event: Queued, n: int) -> None:
        found = self.pushes.get(webhook.id)
        if found is None:
            found = self.pushes[webhook.id] = (webhook, [])
        found[1].append((event, n))

    def waiting_rows(self) -> list[tuple[str, int, str]]:
        """``batch_waiting`` rows: one per batch webhook of the page."""
        return [(webhook_id, events[-1][0], orjson.dumps(events).decode())
                for webhook_id, events in self.waiting.items()]
    events: int = 0
    rejected: int = 0
    #: Rejected records written (one per webhook a refused event was meant for).
    rejected_deliveries: int = 0


def plan_page(rows: Sequence[Any], matcher: Matcher, max_bytes: int, now: float) -> Plan:
    """What a page of outbox rows means for the history and the lanes."""
    plan = Plan()
    for row in rows:
        event = parse_row(row, max_bytes)
        if isinstance(event, Rejection):
            _reject(plan, event, matcher, now)
            continue
        plan.events += 1
        # Only what the lanes need is kept: the parsed envelope is freed with the event,
        # now, instead of living (and being walked by the collector) until the page is queued.
        queued = (event.outbox_id, event.id, event.type, event.body, event.created)
        for webhook in matcher.match(event.organization_id, event.type, event.envelope):
            if not webhook.batch:
                plan.deliveries.append(new_delivery_row(
                    webhook_id=webhook.id, kind=Kind.EVENT, event_type=event.type,
                    event_id=event.id, outbox_id=event.outbox_id, event_count=1,
                    state=State.QUEUED, now=now, organization_id=event.organization_id))
                plan._push(webhook, queued, len(plan.deliveries))
            elif len(event.body) + BATCH_OVERHEAD > max_bytes:
                _reject(plan, Rejection(event.outbox_id, event.id, event.type,
                                        event.organization_id,
                                        "payload too large to be wrapped in a batch"),
                        matcher, now, webhook.id)
            else:
                waiting = plan.waiting.get(webhook.id)
                if waiting is None:
                    waiting = plan.waiting[webhook.id] = []
                waiting.append((event.outbox_id, event.id, event.type))
                plan._push(webhook, queued, 0)
    return plan


def _reject(plan: Plan, rejection: Rejection, matcher: Matcher, now: float,
            webhook_id: str | None = None) -> None:
    """Record a refused event once per webhook it was meant for (or once, for nobody)."""
    plan.rejected += 1
    if webhook_id is not None:
        targets: list[str | None] = [webhook_id]
    else:
        routes = matcher.routes(rejection.organization_id, rejection.type)
        targets = [r.webhook.id for r in routes] or [None]
    plan.rejected_deliveries += len(targets)
    for target in targets:
        plan.deliveries.append(new_delivery_row(
            webhook_id=target, kind=Kind.EVENT, event_type=rejection.type or "?",
            event_id=rejection.event_id, outbox_id=rejection.outbox_id, event_count=1,
            state=State.REJECTED, now=now, error=rejection.reason,
            organization_id=rejection.organization_id or None))
    log.warning("event_rejected", outbox_id=rejection.outbox_id, event_id=rejection.event_id,
                event_type=rejection.type, organization_id=rejection.organization_id,
                webhooks=[t for t in targets if t], reason=rejection.reason)
