"""Intake: outbox rows into events with their wire bodies, or reasons to refuse them.

Owns the envelope ``{"id", "type", "created", "data", "organization_id"}``
(serialized once per event, shared by every webhook that receives it), the
batch body, and every intake refusal. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from ..catalog import BATCH_TYPE
from ..models import Event

_BATCH_HEAD = b'{"type":"' + BATCH_TYPE.encode() + b'","events":['
_BATCH_TAIL = b"]}"
#: Bytes a batch body adds around its events (and one comma between two events).
BATCH_OVERHEAD = len(_BATCH_HEAD) + len(_BATCH_TAIL)


@dataclass(frozen=True, slots=True)
class Rejection:
    """An outbox row refused at intake; what could be read of it is kept for the history."""

    outbox_id: int
    event_id: str
    type: str
    organization_id: str
    reason: str


def _text(value: Any, what: str) -> tuple[str | None, str | None]:
    """Decode a TEXT column read as bytes; returns (text, None) or (None, reason)."""
    if isinstance(value, str):
        return value, None
    if not isinstance(value, bytes):
        return None, f"{what} is not text ({type(value).__name__})"
    try:
        return value.decode("utf-8"), None
    except UnicodeDecodeError:
        return None, f"{what} is not valid UTF-8"


def _printable(text: str | None, fallback: str = "") -> str:
    return fallback if text is None else text.replace("\x00", "\\0")[:200]


def parse_row(row: Sequence[Any], max_payload_bytes: int) -> Event | Rejection:
    """Turn one outbox row into an Event, or a Rejection saying what is wrong with it."""
    outbox_id, raw_event_id, raw_type, raw_org, raw_data, created = row
    # The common case in one pass; anything unusual takes the checked path below, which
    # says exactly what is wrong (and builds the same Event when nothing is).
    try:
        event_id = raw_event_id.decode()
        type_ = raw_type.decode()
        org = raw_org.decode()
        data = orjson.loads(raw_data)
    except (AttributeError, UnicodeDecodeError, orjson.JSONDecodeError):
        return _parse_checked(row, max_payload_bytes)
    if (type(data) is not dict or type(created) is not int or not type_.strip()
            or not org.strip() or "\x00" in type_ or "\x00" in org):
        return _parse_checked(row, max_payload_bytes)
    envelope = {"id": event_id, "type": type_, "created": created, "data": data,
                "organization_id": org}
    try:
        # An exact-size copy: orjson's own buffer is several times the body, and up to
        # tens of thousands of bodies wait in the lanes at once.
        body = memoryview(orjson.dumps(envelope)).tobytes()
    except orjson.JSONEncodeError:
        return _parse_checked(row, max_payload_bytes)
    if len(body) > max_payload_bytes:
        return _parse_checked(row, max_payload_bytes)
    return Event(outbox_id, event_id, type_, org, created, envelope, body)


def _parse_checked(row: Sequence[Any], max_payload_bytes: int) -> Event | Rejection:
    """``parse_row`` one check at a time, for the reason of a refusal."""
    outbox_id, raw_event_id, raw_type, raw_org, raw_data, created = row
    event_id, why = _text(raw_event_id, "event_id")
    type_, why_type = _text(raw_type, "type")
    org, why_org = _text(raw_org, "organization_id")
    reason = why or why_type or why_org
    if reason is None:
        if not type_ or not type_.strip() or "\x00" in type_:
            reason = "type is empty" if not (type_ or "").strip() else "type contains a NUL byte"
        elif not org or not org.strip():
            reason = "organization_id is empty"
        elif "\x00" in org:
            reason = "organization_id contains a NUL byte"
        elif not isinstance(created, int) or isinstance(created, bool):
            reason = f"created is not an integer unix time ({created!r})"
    data: Any = None
    if reason is None:
        try:
            data = orjson.loads(raw_data)
        except orjson.JSONDecodeError as exc:
            reason = f"data is not valid JSON: {exc}"
        else:
            if not isinstance(data, dict):
                reason = f"data must be a JSON object, got a JSON {_json_kind(data)}"
    if reason is not None:
        return Rejection(outbox_id, _printable(event_id, f"outbox#{outbox_id}"), _printable(type_),
                         _printable(org), reason)
    envelope = {"id": event_id, "type": type_, "created": created, "data": data,
                "organization_id": org}
    try:
        body = memoryview(orjson.dumps(envelope)).tobytes()
    except orjson.JSONEncodeError as exc:  # parsed JSON deeper than orjson serializes
        return Rejection(outbox_id, event_id, type_, org,  # type: ignore[arg-type]
                         f"data is nested too deeply to be sent ({exc})")
    if len(body) > max_payload_bytes:
        return Rejection(outbox_id, event_id, type_, org,  # type: ignore[arg-type]
                         f"payload is {len(body)} bytes, over the {max_payload_bytes}-byte limit")
    return Event(outbox_id, event_id, type_, org, created, envelope, body)  # type: ignore[arg-type]


def _json_kind(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


def batch_body(bodies: Sequence[bytes]) -> bytes:
    """The body of a batch request: ``{"type": "batch", "events": [<envelope>, …]}``."""
    return _BATCH_HEAD + b",".join(bodies) + _BATCH_TAIL


def take_batch(sizes: Sequence[int], max_events: int, max_bytes: int) -> int:
    """How many of the leading events (by body size) fit one batch; at least one."""
    total = BATCH_OVERHEAD
    count = 0
    for size in sizes[:max_events]:
        total += size + (1 if count else 0)
        if total > max_bytes and count:
            break
        count += 1
    return count
