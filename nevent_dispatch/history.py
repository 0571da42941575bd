"""The delivery history as every face reads and requeues it: lists, one delivery, retry,
replay, per-webhook figures, and the parsing of times.

Owns the rules the CLI and the management API share: which filters exist and how they
are validated, the cursor of a list (opaque to clients, stable under new deliveries:
ids only grow), that an organization sees only its own webhooks and deliveries (another
organization's id is "not found"), and which deliveries may be sent again. It must not
print, speak HTTP or run SQL (``store/`` does).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .errors import Conflict, NotFound, ValidationError
from .models import Attempt, Delivery, Outcome, State, Webhook
from .store.sqlite import Store

#: Most items one list returns.
MAX_LIMIT = 1000
#: Answered attempts the latency figures of ``stats`` are taken from (the most recent).
LATENCY_SAMPLE = 10_000
#: Deliveries a replay may requeue: only failed ones (delivered ones were received).
REPLAYABLE = (State.FAILED.value,)

_DURATION = re.compile(r"^-?(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(value: Any, current: float, field: str = "since") -> float:
    """A moment: unix seconds, ISO 8601 (``2026-03-15T10:30:00Z``; no zone = local), or a
    duration ago (``30m``, ``2h``, ``7d``, also written ``-2h``)."""
    if isinstance(value, bool) or value is None:
        raise ValidationError(f"{field}: expected a unix time or an ISO 8601 date, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = str(value).strip()
        match = _DURATION.match(text)
        if match:
            return current - float(match[1]) * _UNITS[match[2]]
        try:
            seconds = float(text)
        except ValueError:
            try:
                moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                raise ValidationError(
                    f"{field}: expected a unix time, an ISO 8601 date such as "
                    f"2026-03-15T10:30:00Z, or a duration like 30m, 2h or 7d, got {text!r}"
                ) from None
            if moment.tzinfo is None:
                moment = moment.astimezone()
            return moment.timestamp()
    if not math.isfinite(seconds) or not 0 <= seconds < 1e11:
        raise ValidationError(f"{field}: not a usable unix time, got {value!r}")
    return seconds


def parse_limit(value: Any, default: int = 50) -> int:
    if value is None:
        return default
    try:
        limit = int(str(value))
    except ValueError:
        raise ValidationError(f"limit: must be a whole number, got {value!r}") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise ValidationError(f"limit: must be 1..{MAX_LIMIT}, got {limit}")
    return limit


def parse_state(value: Any) -> str | None:
    if value is None:
        return None
    names = [s.value for s in State]
    if value not in names:
        raise ValidationError(f"status: must be one of {', '.join(names)}, got {value!r}")
    return str(value)


def encode_cursor(delivery_id: int) -> str:
    return base64.urlsafe_b64encode(f"d{delivery_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int | None:
    if cursor is None or cursor == "":
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    if not (text.startswith("d") and text[1:].isdigit() and len(text) < 21):
        raise ValidationError(f"cursor: not a cursor this API returned, got {cursor!r}")
    return int(text[1:])


@dataclass(frozen=True, slots=True)
class Page:
    deliveries: list[Delivery]
    #: Pass back as ``cursor`` for the next (older) page; None when this is the last.
    next_cursor: str | None


async def get_webhook(store: Store, webhook_id: str, organization_id: str | None) -> Webhook:
    """A webhook; one of another organization is "not found", exactly like a missing one."""
    webhook = await store.get_webhook(webhook_id)
    if organization_id is not None and webhook.organization_id != organization_id:
        raise NotFound(f"webhook {webhook_id!r} not found")
    return webhook


async def list_deliveries(store: Store, *, organization_id: str | None = None,
                          webhook_id: str | None = None, status: Any = None,
                          event_type: str | None = None, event_id: str | None = None,
                          since: float | None = None, until: float | None = None,
                          limit: int = 50, cursor: str | None = None) -> Page:
    """One page of deliveries, newest first."""
    state = parse_state(status)
    before = decode_cursor(cursor)
    if webhook_id is not None:
        await get_webhook_or_history(store, webhook_id, organization_id)
    rows = await store.list_deliveries(
        organization_id=organization_id, webhook_id=webhook_id, state=state,
        event_type=event_type, event_id=event_id, since=since, until=until, before=before,
        limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, encode_cursor(rows[-1].id) if more and rows else None)


async def get_webhook_or_history(store: Store, webhook_id: str,
                                 organization_id: str | None) -> None:
    """A webhook id that names a webhook of the organization (or, once deleted, any of its
    history); otherwise "not found"."""
    try:
        await get_webhook(store, webhook_id, organization_id)
        return
    except NotFound:
        left = await store.list_deliveries(organization_id=organization_id,
                                           webhook_id=webhook_id, limit=1)
        if not left:
            raise NotFound(f"webhook {webhook_id!r} not found") from None


async def get_delivery(store: Store, ref: str | int, organization_id: str | None) -> Delivery:
    """A delivery by number or X-Nevent-Delivery uuid, within the organization."""
    text = str(ref).strip()
    if not text or len(text) > 64:
        raise NotFound(f"delivery {text!r} not found")
    delivery = await store.get_delivery(text)
    if organization_id is not None and delivery.organization_id != organization_id:
        raise NotFound(f"delivery {text!r} not found")
    return delivery


async def delivery_detail(store: Store, ref: str | int, organization_id: str | None
                          ) -> tuple[Delivery, list[Attempt], list[tuple[int, str, str]]]:
    delivery = await get_delivery(store, ref, organization_id)
    return delivery, await store.attempts(delivery.id), await store.batch_events(delivery.id)


async def webhook_active(store: Store, webhook_id: str | None) -> bool:
    try:
        return (await store.get_webhook(webhook_id or "")).active
    except NotFound:  # deleted since: a requeued delivery waits with nobody to send it to
        return False


async def retry_delivery(store: Store, ref: str | int, organization_id: str | None,
                         now: float) -> tuple[Delivery, bool]:
    """Requeue one failed delivery (same uuid); returns it and whether its webhook is active."""
    delivery = await get_delivery(store, ref, organization_id)
    if delivery.kind.value == "test":
        raise Conflict(f"delivery {delivery.id} is a test send: tests are not sent again "
                       "(send a new one)")
    if not await store.replay(delivery.id, now):
        raise Conflict(f"delivery {delivery.id} is {delivery.state.value}: only failed "
                       "deliveries can be retried")
    return await store.get_delivery(delivery.id), await webhook_active(store, delivery.webhook_id)


async def replay_webhook(store: Store, webhook: Webhook, *, status: Any = "failed",
                         since: float | None = None, until: float | None = None,
                         now: float) -> int:
    """Requeue a webhook's failed deliveries created in [since, until); how many."""
    if status not in REPLAYABLE:
        raise ValidationError(f"status: only failed deliveries are replayed, got {status!r}")
    if since is not None and until is not None and until <= since:
        raise ValidationError("until: must be later than since")
    return await store.replay_webhook(webhook.id, str(status), since or 0.0, now,
                                      math.inf if until is None else until)


def _quantile(sorted_values: Sequence[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def webhook_stats(store: Store, webhook: Webhook, since: float) -> dict[str, Any]:
    """Counts per state and outcome of the deliveries created since ``since``, and the
    latency of the most recent answered attempts."""
    from_id = await store.first_id_since(since)
    states, outcomes, latencies = await store.webhook_stats(webhook.id, from_id, LATENCY_SAMPLE)
    ordered = sorted(latencies)
    p50, p95 = _quantile(ordered, 0.50), _quantile(ordered, 0.95)
    return {
        "webhook_id": webhook.id,
        "since": since,
        "deliveries": {s.value: states.get(s.value, 0) for s in State},
        "attempts": {o.value: outcomes.get(o.value, 0) for o in Outcome},
        "latency_ms": {"p50": p50, "p95": p95, "sample": len(ordered)},
    }
