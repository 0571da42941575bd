"""The benchmark's events: a realistic sample padded to a chosen wire size.

Owns the ``data`` of every event the benchmark publishes — the documented
``purchase.completed`` sample, a ``seq`` number, the publisher's ``sent_at`` and
padding so that the envelope the daemon sends is about ``body_bytes`` long —
and the equivalent body the bare client posts. Pure: no I/O, no clock.
"""

from __future__ import annotations

from typing import Any

import orjson

from nevent_dispatch.wire.samples import sample_data

EVENT_TYPE = "purchase.completed"


def org_name(index: int) -> str:
    """The organization of the ``index``-th benchmark organization."""
    return f"org_{index:04d}"


class Payloads:
    """Event data of about ``body_bytes`` once wrapped in the envelope."""

    def __init__(self, body_bytes: int) -> None:
        base = sample_data(EVENT_TYPE)
        base.update(seq=0, sent_at=0.0, padding="")
        short = body_bytes - len(self.envelope(base, org_name(0)))
        base["padding"] = "x" * max(0, short)
        self._base = base

    def data(self, seq: int, sent_at: float = 0.0) -> dict[str, Any]:
        # A shallow copy: the nested sample is shared and never mutated.
        data = dict(self._base)
        data["seq"] = seq
        data["sent_at"] = sent_at
        return data

    def text(self, seq: int) -> str:
        """The ``data`` column of one outbox row."""
        return orjson.dumps(self.data(seq)).decode()

    @staticmethod
    def envelope(data: dict[str, Any], organization_id: str) -> bytes:
        """The body the daemon builds for an event with this ``data`` (see ``envelope.py``)."""
        return orjson.dumps({"id": "evt_" + "0" * 24, "type": EVENT_TYPE,
                             "created": 1_700_000_000, "data": data,
                             "organization_id": organization_id})

    def body(self) -> bytes:
        """A body of the same size for the bare client."""
        return self.envelope(self.data(1, 1_700_000_000.123456), org_name(0))
