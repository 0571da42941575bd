"""The data that flows through the pipeline, as frozen dataclasses and enums.

Owns the shapes: ``Event`` (an outbox row, parsed), ``Webhook`` (a
subscription), ``Delivery`` (one request's worth of work: an event or a batch
for one webhook, identified on the wire by its uuid) and ``Attempt`` (one try
at it). It must not do I/O or read the clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple


class State(StrEnum):
    """Where a delivery stands."""

    #: Waiting: for its first attempt, or for its retry time (next_at).
    PENDING = "pending"
    #: Claimed by the running daemon: queued in a lane or an attempt in flight.
    DELIVERING = "delivering"
    #: A 2xx answer was received.
    DELIVERED = "delivered"
    #: Every allowed attempt failed; an operator may replay it.
    FAILED = "failed"
    #: Refused at intake (bad JSON, too large, …); never sent.
    REJECTED = "rejected"


class Outcome(StrEnum):
    """How one attempt ended; retry decisions read this, never exceptions."""

    #: The receiver answered 2xx.
    SUCCESS = "success"
    #: The receiver answered with another status (3xx redirects included: they are not followed).
    HTTP_ERROR = "http_error"
    #: No complete answer within delivery.timeout.
    TIMEOUT = "timeout"
    #: The connection could not be made or broke before the status line (refused, reset, DNS).
    CONNECTION_ERROR = "connection_error"
    #: The TLS handshake failed (untrusted, expired or wrong-host certificate).
    TLS_ERROR = "tls_error"
    #: The destination is not allowed (private address, scheme): not sent, not retried.
    REFUSED = "refused"
    #: The event is no longer in the outbox, so there is nothing to send: not retried.
    GONE = "gone"


#: Outcomes after which another attempt may succeed.
RETRYABLE = frozenset({Outcome.HTTP_ERROR, Outcome.TIMEOUT, Outcome.CONNECTION_ERROR, Outcome.TLS_ERROR})


class Kind(StrEnum):
    """What a delivery carries."""

    #: One outbox event.
    EVENT = "event"
    #: Up to batch.max_events outbox events in one request.
    BATCH = "batch"
    #: A sample event sent by ``webhooks test``; not from the outbox.
    TEST = "test"


class Event(NamedTuple):
    """An outbox row that passed intake: its envelope is serialized once into ``body``.

    A named tuple: one is made per event read, and it is the cheapest immutable record.
    """

    outbox_id: int
    id: str
    type: str
    organization_id: str
    created: int
    #: The parsed envelope, for filters.
    envelope: dict[str, Any]
    #: The envelope as sent on the wire.
    body: bytes


@dataclass(frozen=True, slots=True)
class Webhook:
    id: str
    organization_id: str
    name: str
    url: str
    secret: str
    #: Subscribed types: exact names, prefix patterns ("purchase.*") or "*".
    events: tuple[str, ...]
    #: The filter document as saved (None = every event of the subscribed types).
    filter: Any
    batch: bool
    retries: bool
    #: Events per minute; None means the configured default.
    rate_limit: int | None
    active: bool
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class Delivery:
    """A unit of sending: one request body for one webhook, retried as the same uuid."""

    id: int
    uuid: str
    webhook_id: str | None
    kind: Kind
    #: The X-Nevent-Event header value: the event's type, or "batch".
    event_type: str
    #: For an event delivery, its event; for a batch, None (see batch items).
    event_id: str | None
    outbox_id: int | None
    event_count: int
    state: State
    #: Attempts made so far.
    attempts: int
    #: Attempts made before the last replay; the retry schedule restarts from there.
    retry_base: int
    next_at: float | None
    created_at: float
    updated_at: float
    last_status: int | None
    last_error: str | None


@dataclass(frozen=True, slots=True)
class Attempt:
    delivery_id: int
    number: int
    started_at: float
    latency_ms: float
    outcome: Outcome
    status: int | None
    error: str | None
    response: str | None
