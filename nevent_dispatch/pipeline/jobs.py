"""Rebuilding work from the database: wire bodies for deliveries read back from it.

Owns the way back from a recorded delivery to the bytes that go on the wire:
an event delivery's body is rebuilt from its outbox row exactly as at intake,
a batch's from its events in order, a test's from the body stored with it. A
delivery whose events have left the outbox gets no job (the caller fails it as
``gone``). It must not change states or queue anything.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..models import Delivery, Kind
from ..store.sqlite import Store
from ..wire.envelope import Rejection, batch_body, parse_row
from .lanes import Job


class JobBuilder:
    def __init__(self, store: Store, max_payload_bytes: int) -> None:
        self._store = store
        self._max_bytes = max_payload_bytes

    async def bodies(self, outbox_ids: Iterable[int], created: dict[int, int] | None = None
                     ) -> dict[int, bytes]:
        """Wire bodies of outbox events by id (rebuilt exactly as at intake); their commit
        times into ``created`` when given."""
        rows = await self._store.outbox_rows(outbox_ids)
        found = {}
        for outbox_id, row in rows.items():
            event = parse_row(row, self._max_bytes)
            if not isinstance(event, Rejection):
                found[outbox_id] = event.body
                if created is not None:
                    created[outbox_id] = event.created
        return found

    async def jobs(self, deliveries: Sequence[tuple[Delivery, bytes | None]]
                   ) -> list[tuple[Delivery, Job | None]]:
        """Jobs for claimed deliveries (with their stored test bodies); None where the events
        are gone from the outbox."""
        created: dict[int, int] = {}
        event_bodies = await self.bodies((d.outbox_id for d, _ in deliveries
                                          if d.kind is Kind.EVENT and d.outbox_id is not None),
                                         created)
        out: list[tuple[Delivery, Job | None]] = []
        for d, stored in deliveries:
            body: bytes | None
            first = 0
            if d.kind is Kind.EVENT:
                body = event_bodies.get(d.outbox_id)  # type: ignore[arg-type]
                first = created.get(d.outbox_id, 0)  # type: ignore[arg-type]
            elif d.kind is Kind.BATCH:
                items = await self._store.batch_events(d.id)
                found = await self.bodies((i[0] for i in items), created)
                body = batch_body([found[i[0]] for i in items]) if len(found) == len(items) else None
                first = created.get(items[0][0], 0) if items else 0
            else:
                body = stored
            job = None if body is None else Job(d.id, d.uuid, d.kind, d.event_type, d.event_id,
                                                body, d.event_count, d.attempts, d.retry_base,
                                                first)
            out.append((d, job))
        return out
