"""What one attempt means: the delivery's next state, its history rows, its log line.

Owns the consequences of an attempt's ``Result`` — pure functions shared by the
dispatcher and by ``webhooks test`` (``send_test``, one recorded attempt outside
the daemon). It must not schedule, queue or wait.
"""

from __future__ import annotations

import os
from typing import Any

import orjson

from .. import logs
from ..catalog import BATCH_TYPE
from ..clock import SYSTEM, Clock
from ..config import Config
from ..models import TRANSITIONS, Delivery, Kind, Outcome, State, Webhook, check_transition
from ..store.sqlite import Finish, Row, Store
from ..wire.envelope import batch_body
from . import retry
from .lanes import Job
from .sender import Result, Sender, make_session

log = logs.get_logger("nevent_dispatch")


#: Attempts of one delivery that a 429/503 with Retry-After may answer without using up a
#: retry (the webhook is paused instead); later ones count like any failure.
THROTTLE_FREE_ATTEMPTS = 20


def throttled(result: Result) -> bool:
    """The endpoint asked, with Retry-After, to be called later (429 or 503)."""
    return result.retry_after is not None and result.status in (429, 503)


def settle(job: Job, webhook: Webhook, result: Result, config: Config
           ) -> tuple[State, float | None, int]:
    """A delivery's state after an attempt, when to try again, and its new retry base.

    A 429/503 with Retry-After pauses the whole webhook (see the lanes): the delivery
    that got it is due again when the pause ends, and the attempt does not count against
    the retry schedule (``retry_base`` moves with it).
    """
    if result.outcome is Outcome.SUCCESS:
        return State.DELIVERED, None, job.retry_base
    if (throttled(result) and webhook.retries and job.kind is not Kind.TEST
            and job.attempts < THROTTLE_FREE_ATTEMPTS):
        assert result.retry_after is not None
        delay = min(result.retry_after, max(config.delivery.retry_schedule, default=0.0))
        return State.PENDING, result.started_at + delay, job.retry_base + 1
    next_at = retry.next_attempt_at(
        attempts_in_round=job.attempts + 1 - job.retry_base,
        schedule=config.delivery.retry_schedule,
        retries=webhook.retries and job.kind is not Kind.TEST,
        outcome=result.outcome, now=result.started_at, retry_after=result.retry_after)
    if next_at is None:
        return State.FAILED, None, job.retry_base
    return State.PENDING, next_at, job.retry_base


def result_rows(job: Job, result: Result, state: State, next_at: float | None, retry_base: int,
                now: float, error: str | None = None) -> tuple[tuple[Any, ...], Finish]:
    """The attempts row and the deliveries update for one attempt."""
    number = job.attempts + 1
    attempt = (job.delivery_id, number, result.started_at, round(result.latency_ms, 3),
               result.outcome.value, result.status, result.error, result.response)
    finish = tuple.__new__(Finish, (state.value, number, retry_base, next_at, now,
                                    result.status, error or result.error, job.delivery_id))
    return attempt, finish


def log_attempt(job: Job, webhook_id: str, result: Result, state: State,
                next_at: float | None) -> None:
    """The one canonical line per attempt: info when it succeeded, warning when it did not."""
    level = "info" if result.outcome is Outcome.SUCCESS else "warning"
    if not logs.enabled(level):
        return
    getattr(log, level)("attempt", event_id=job.event_id, delivery_id=job.uuid, webhook_id=webhook_id,
             event_type=job.event_type, events=job.event_count, attempt=job.attempts + 1,
             status=result.status, latency_ms=round(result.latency_ms, 1),
             outcome=result.outcome.value, state=state.value, error=result.error,
             next_at=next_at)


def new_delivery_uuid(now: float) -> str:
    """A time-ordered UUID (RFC 9562 version 7) for X-Nevent-Delivery.

    Random like a version 4 to receivers, but consecutive ids sort together, so the
    history's unique index grows at its end instead of at random pages: inserting
    deliveries costs about a third as much on a large history.
    """
    r = _RANDOM.take(10)
    raw = ((int(now * 1000) & 0xFFFF_FFFF_FFFF).to_bytes(6, "big")
           + bytes((0x70 | (r[0] & 0x0F), r[1], 0x80 | (r[2] & 0x3F)))  # version 7, RFC variant
           + r[3:])
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


class _RandomPool:
    """``os.urandom`` read 4 KB at a time: one system call per ~400 delivery ids, not per id."""

    def __init__(self) -> None:
        self._buffer = b""
        self._pos = 0

    def take(self, n: int) -> bytes:
        pos = self._pos
        if pos + n > len(self._buffer):
            self._buffer, pos = os.urandom(4096), 0
        self._pos = pos + n
        return self._buffer[pos:pos + n]

    def forget(self) -> None:
        self._buffer, self._pos = b"", 0


_RANDOM = _RandomPool()
os.register_at_fork(after_in_child=_RANDOM.forget)  # a child must not reuse the parent's bytes


#: The states a delivery may be created in (``TRANSITIONS[None]``).
_CREATED_IN = TRANSITIONS[None]


def new_delivery_row(*, webhook_id: str | None, kind: Kind, event_type: str, event_id: str | None,
                     outbox_id: int | None, event_count: int, state: State, now: float,
                     error: str | None = None, body: bytes | None = None,
                     organization_id: str | None = None) -> Row:
    """A deliveries row (without its id) as ``Store.record_intake`` and friends take it;
    a pending one is due ``now``; without ``organization_id``, its webhook's."""
    if state not in _CREATED_IN:
        check_transition(None, state)  # raises, naming the move
    # tuple.__new__ skips the named tuple's Python-level constructor: one row per delivery.
    return tuple.__new__(Row, (new_delivery_uuid(now), webhook_id, kind.value, event_type,
                               event_id, outbox_id, event_count, state.value,
                               now if state is State.PENDING else None, now, now, error, body,
                               organization_id))


async def send_test(config: Config, store: Store, webhook: Webhook, event_type: str, *,
                    clock: Clock = SYSTEM) -> tuple[Delivery, Result]:
    """Send a sample event to one webhook now (active or not), recorded in its history.

    It goes through the same sender, signing and recording as real events, in the
    body the webhook receives (a batch of one for a batch webhook); it is attempted
    once and never retried.
    """
    from ..wire.samples import sample_envelope

    now = clock.time()
    body = orjson.dumps(sample_envelope(event_type, webhook.organization_id, created=int(now)))
    if len(body) > config.delivery.max_payload_bytes:  # pragma: no cover - samples are small
        raise ValueError("sample event larger than delivery.max_payload_bytes")
    envelope = orjson.loads(body)
    header_type = event_type
    if webhook.batch:  # what the webhook will receive: a batch body, here of one event
        body, header_type = batch_body([body]), BATCH_TYPE
    row = new_delivery_row(webhook_id=webhook.id, kind=Kind.TEST, event_type=event_type,
                           event_id=envelope["id"], outbox_id=None, event_count=1,
                           state=State.QUEUED, now=now, body=body,
                           organization_id=webhook.organization_id)
    delivery_id = await store.insert_delivery(row)
    job = Job(delivery_id, row[0], Kind.TEST, event_type, envelope["id"], body, 1, 0, 0)
    async with make_session(config.delivery) as session:
        result = await Sender(session, config.delivery, clock).send(
            url=webhook.url, secret=webhook.secret, body=body, event_type=header_type,
            delivery_uuid=job.uuid)
    state, next_at, retry_base = settle(job, webhook, result, config)
    attempt, finish = result_rows(job, result, state, next_at, retry_base, clock.time())
    await store.record_results([(now, delivery_id)], [attempt], [finish])
    log_attempt(job, webhook.id, result, state, next_at)
    return await store.get_delivery(delivery_id), result
