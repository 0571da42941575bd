"""The JSON shapes of webhooks, deliveries and attempts: one serializer for every face.

Owns how the domain objects look to scripts and programs: the CLI's ``--json`` output
and the management API's bodies are built here and nowhere else, so the two can never
drift apart. Times are unix seconds (floats). It must not do I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .models import Attempt, Delivery, Webhook
from .registry import mask_secret

__all__ = ["attempt_json", "delivery_detail_json", "delivery_json", "webhook_json"]


def webhook_json(webhook: Webhook, *, secret: str | None = None) -> dict[str, Any]:
    """A webhook with every field; the secret masked unless ``secret`` is given (only the
    response that created it, or set a new one, carries it in full)."""
    return {
        "id": webhook.id,
        "organization_id": webhook.organization_id,
        "name": webhook.name,
        "url": webhook.url,
        "secret": secret if secret is not None else mask_secret(webhook.secret),
        "events": list(webhook.events),
        "filter": webhook.filter,
        "batch": webhook.batch,
        "retries": webhook.retries,
        "rate_limit": webhook.rate_limit,
        "active": webhook.active,
        "created_at": webhook.created_at,
        "updated_at": webhook.updated_at,
    }


def delivery_json(d: Delivery) -> dict[str, Any]:
    """A delivery as lists show it; ``attempts`` is the number made so far."""
    return {
        "id": d.id, "delivery_id": d.uuid, "organization_id": d.organization_id,
        "webhook_id": d.webhook_id, "kind": d.kind.value, "event_type": d.event_type,
        "event_id": d.event_id, "event_count": d.event_count, "state": d.state.value,
        "attempts": d.attempts, "next_at": d.next_at, "created_at": d.created_at,
        "updated_at": d.updated_at, "last_status": d.last_status, "last_error": d.last_error,
    }


def attempt_json(a: Attempt) -> dict[str, Any]:
    return {"number": a.number, "started_at": a.started_at, "latency_ms": a.latency_ms,
            "outcome": a.outcome.value, "status": a.status, "error": a.error,
            "response": a.response}


def delivery_detail_json(d: Delivery, attempts: Sequence[Attempt],
                         events: Sequence[tuple[Any, ...]]) -> dict[str, Any]:
    """One delivery with its attempts (``attempt_log``) and, for a batch, its events."""
    return {**delivery_json(d), "attempt_log": [attempt_json(a) for a in attempts],
            "events": [{"id": e[1], "type": e[2]} for e in events]}
