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
    """Where a delivery stands. The legal moves between states are ``TRANSITIONS``."""

    #: Waiting in the database: for its first attempt or its retry time (``next_at``).
    PENDING = "pending"
    #: Taken by the running daemon into a lane's memory; not yet being sent.
    QUEUED = "queued"
    #: An attempt is being made (recorded with the next state write after it starts, when
    #: the attempt has not ended by then).
    IN_FLIGHT = "in_flight"
    #: A 2xx answer was received.
    DELIVERED = "delivered"
    #: Every allowed attempt failed, or its webhook was deleted; an operator may replay it.
    FAILED = "failed"
    #: Refused at intake (bad JSON, too large, …); never sent.
    REJECTED = "rejected"


#: Every legal move of a delivery, and the only place they are written down. ``None`` is
#: creation. The store's state-changing statements are guarded by these sets
#: (``sources``), so a statement can never move a delivery along an edge not listed here:
#: above all, nothing re-reads a queued or in-flight delivery as if it were waiting.
TRANSITIONS: dict[State | None, frozenset[State]] = {
    # Intake: queued when its lane has room, pending when the lane is full; or refused.
    None: frozenset({State.PENDING, State.QUEUED, State.REJECTED}),
    # Claimed by a lane; or its webhook was deleted.
    State.PENDING: frozenset({State.QUEUED, State.FAILED}),
    # Attempt started; released back (lane retired, memory reclaimed, stop, crash); or its
    # event vanished from the outbox / its webhook was deleted. An attempt that begins and
    # ends between two state writes is recorded as one move to its end (delivered too).
    State.QUEUED: frozenset({State.IN_FLIGHT, State.PENDING, State.FAILED, State.DELIVERED}),
    # The attempt's outcome (pending = a retry is due later); a crash releases it too.
    State.IN_FLIGHT: frozenset({State.DELIVERED, State.PENDING, State.FAILED}),
    # An operator's replay.
    State.FAILED: frozenset({State.PENDING}),
    State.DELIVERED: frozenset(),
    State.REJECTED: frozenset(),
}

#: States in which a delivery still has to be sent.
OPEN_STATES = frozenset({State.PENDING, State.QUEUED, State.IN_FLIGHT})


def sources(target: State) -> tuple[State, ...]:
    """The states from which a delivery may move to ``target``, in a stable order."""
    return tuple(sorted((s for s, to in TRANSITIONS.items() if s is not None and target in to),
                        key=list(State).index))


def check_transition(old: State | None, new: State) -> None:
    """Raise ``ValueError`` for a move the state machine does not allow (a bug)."""
    if new not in TRANSITIONS[old]:
        raise ValueError(f"illegal delivery transition {old} -> {new}")


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
    #: Attempts that do not count against the retry schedule: those made before the last
    #: replay, and those answered 429/503 with Retry-After (the webhook was paused).
    retry_base: int
    next_at: float | None
    created_at: float
    updated_at: float
    last_status: int | None
    last_error: str | None
    #: The organization of the event (None only for history older than schema version 4
    #: whose webhook was deleted before it).
    organization_id: str | None = None


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
