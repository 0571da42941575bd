"""Intake: outbox rows into events with their wire bodies, or reasons to refuse them.

Owns the envelope ``{"id", "type", "created", "data", "organization_id"}``
(built once per event, shared by every webhook that receives it), the batch
body, and every intake refusal. Pure: no I/O, no clock.

The body carries ``data`` exactly as the application wrote it: intake checks
that it is UTF-8, RFC 8259 JSON and an object, then places the text between
the other keys without re-serializing it, so an integer beyond 64 bits, a
number beyond a double (``1e400``), ``1.50``, an escape or a duplicate key
reach the receiver unchanged. The parsed envelope is only for filters, and
reads numbers as orjson does (an integer beyond 64 bits as the nearest float)
except in data orjson refuses, which the stdlib reads: there such an integer
is an exact ``int``, ``1e400`` is ``inf`` and an unpaired surrogate escape is
U+FFFD. Either way the last of duplicate keys wins.

A ``type`` or ``organization_id`` with a character that is not printable (C0,
DEL, C1, U+2028/U+2029, …) is refused here: the type becomes an HTTP header,
both end up in log lines, and a receiver could never be sent such an event.
"""

from __future__ import annotations

import json
import re
import unicodedata
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

#: Containers ``data`` may nest, its own object included; deeper data is refused. No real
#: event comes near it. A batch body nests 3 levels more (batch, events, envelope), which
#: keeps every body within the 1024 levels orjson reads — our own ``verify`` included.
MAX_DATA_DEPTH = 1021
# Every level takes an opening and a closing byte: shorter data cannot be too deep.
_SHALLOW_BYTES = 2 * MAX_DATA_DEPTH + 1

#: JSON's insignificant whitespace (``bytes.strip()`` would also take \v and \f).
_JSON_WS = b" \t\n\r"
# A \u escape of a UTF-16 surrogate: what orjson refuses unpaired and the stdlib accepts.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_TOO_DEEP = f"data is nested too deeply (more than {MAX_DATA_DEPTH} levels)"
# The stdlib reader's reason when it runs out of stack.
_TOO_DEEP_TO_READ = "nested deeper than the parser goes"


@dataclass(frozen=True, slots=True)
class Rejection:
    """An outbox row refused at intake; what could be read of it is kept for the history."""

    outbox_id: int
    event_id: str
    type: str
    organization_id: str
    reason: str


def parse_row(row: Sequence[Any], max_payload_bytes: int) -> Event | Rejection:
    """Turn one outbox row into an Event, or a Rejection saying what is wrong with it."""
    outbox_id, raw_event_id, raw_type, raw_org, raw_data, created = row
    # The common case in one pass; anything unusual takes the checked path below, which
    # says exactly what is wrong (and builds the same Event when nothing is).
    if type(raw_data) is not bytes or len(raw_data) > max_payload_bytes:
        return _parse_checked(row, max_payload_bytes)
    try:
        event_id = raw_event_id.decode()
        type_ = raw_type.decode()
        org = raw_org.decode()
        data = orjson.loads(raw_data)
    except (AttributeError, UnicodeDecodeError, orjson.JSONDecodeError):
        return _parse_checked(row, max_payload_bytes)
    # isprintable() is False for every control or separator character, so one call per
    # field keeps them all off the fast path.
    if (type(data) is not dict or type(created) is not int or not type_
            or not type_.isprintable() or type_.strip() != type_
            or not org.isprintable() or not org.strip()):
        return _parse_checked(row, max_payload_bytes)
    text = raw_data.strip(_JSON_WS)
    if len(text) > _SHALLOW_BYTES and _too_deep(text):
        return _parse_checked(row, max_payload_bytes)
    try:
        body = _wire(event_id, type_, created, text, org)
    except orjson.JSONEncodeError:  # created beyond 64 bits: never from SQLite
        return _parse_checked(row, max_payload_bytes)
    if len(body) > max_payload_bytes:
        return _parse_checked(row, max_payload_bytes)
    envelope = {"id": event_id, "type": type_, "created": created, "data": data,
                "organization_id": org}
    return Event(outbox_id, event_id, type_, org, created, envelope, body)


def _wire(event_id: str, type_: str, created: int, data: bytes, org: str) -> bytes:
    """The envelope's bytes, compact and in the documented key order, ``data`` as written.

    orjson returns an exact-size bytes object: the only copy of the body the lanes hold.
    """
    return orjson.dumps({"id": event_id, "type": type_, "created": created,
                         "data": orjson.Fragment(data), "organization_id": org})


def _parse_checked(row: Sequence[Any], max_payload_bytes: int) -> Event | Rejection:
    """``parse_row`` one check at a time, for the reason of a refusal."""
    outbox_id, raw_event_id, raw_type, raw_org, raw_data, created = row
    event_id, why_id = _text(raw_event_id, "event_id")
    type_, why_type = _text(raw_type, "type")
    org, why_org = _text(raw_org, "organization_id")
    if event_id is None or type_ is None or org is None:
        reason = why_id or why_type or why_org or "the row cannot be read"
    else:
        checked = _checked_event(outbox_id, event_id, type_, org, raw_data, created,
                                 max_payload_bytes)
        if isinstance(checked, Event):
            return checked
        reason = checked
    return Rejection(outbox_id, _printable(event_id, f"outbox#{outbox_id}"), _printable(type_),
                     _printable(org), reason)


def _checked_event(outbox_id: int, event_id: str, type_: str, org: str, raw_data: Any,
                   created: Any, max_payload_bytes: int) -> Event | str:
    """The event of readable text columns, or the first reason to refuse it."""
    reason = _type_problem(type_) or _organization_problem(org)
    if reason is not None:
        return reason
    if not _is_unix_time(created):
        return f"created is not an integer unix time ({created!r})"
    text, reason = _data_text(raw_data)
    if reason is not None:
        return reason
    # Measured around a one-byte stand-in, so an outsized row is never copied.
    size = len(_wire(event_id, type_, created, b"0", org)) - 1 + len(text)
    if size > max_payload_bytes:
        return f"payload is {size} bytes, over the {max_payload_bytes}-byte limit"
    data, reason = _load(text)
    if reason is not None:
        return reason
    envelope = {"id": event_id, "type": type_, "created": created, "data": data,
                "organization_id": org}
    return Event(outbox_id, event_id, type_, org, created, envelope,
                 _wire(event_id, type_, created, text, org))


# --- the columns -------------------------------------------------------------


def _is_unix_time(created: Any) -> bool:
    # The integers orjson writes (SQLite's own range is narrower).
    return type(created) is int and -(2**63) <= created < 2**64


def _text(value: Any, what: str) -> tuple[str | None, str | None]:
    """Decode a TEXT column read as bytes; returns (text, None) or (None, reason)."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8"), None
        except UnicodeDecodeError:
            return None, f"{what} is not valid UTF-8"
    if not isinstance(value, str):
        return None, f"{what} is not text ({type(value).__name__})"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: no UTF-8 (and no JSON string) holds them
        return None, f"{what} is not valid UTF-8"
    return value, None


def _type_problem(type_: str) -> str | None:
    if not type_.strip():
        return "type is empty"
    return _unprintable("type", type_) or (
        "type has leading or trailing spaces" if type_.strip() != type_ else None)


def _organization_problem(org: str) -> str | None:
    if not org.strip():
        return "organization_id is empty"
    return _unprintable("organization_id", org)


def _unprintable(what: str, text: str) -> str | None:
    """Name the first character of ``text`` unfit for a header value or a log line."""
    if text.isprintable():
        return None
    char = next(c for c in text if not c.isprintable())
    if char == "\x00":
        return f"{what} contains a NUL byte"
    kind = "control" if unicodedata.category(char) in ("Cc", "Zl", "Zp") else "non-printable"
    return f"{what} contains a {kind} character ({_escaped(char)})"


def _escaped(char: str) -> str:
    return repr(char)[1:-1]


def _printable(text: str | None, fallback: str = "") -> str:
    """A refused field as the history shows it: one line, every unprintable character escaped."""
    if text is None:
        return fallback
    if not text.isprintable():
        text = "".join(c if c.isprintable() else _escaped(c) for c in text)
    return text[:200]


# --- data --------------------------------------------------------------------


def _data_text(raw: Any) -> tuple[bytes, str | None]:
    """The data column as the bytes the body will carry, JSON whitespace stripped."""
    if isinstance(raw, str):
        try:
            raw = raw.encode("utf-8")
        except UnicodeEncodeError:
            return b"", "data is not valid JSON: str is not valid UTF-8: surrogates not allowed"
    elif isinstance(raw, (bytearray, memoryview)):
        raw = bytes(raw)
    elif not isinstance(raw, bytes):
        return b"", f"data is not valid JSON: the column holds {type(raw).__name__}, not text"
    return raw.strip(_JSON_WS), None


def _load(text: bytes) -> tuple[Any, str | None]:
    """Parse data for filters: (value, None), or (None, why it cannot be sent)."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        # orjson refuses a few valid texts: numbers beyond a double and unpaired surrogate
        # escapes. The stdlib reads those, and refuses everything else orjson refuses.
        data, why = _load_exact(text)
        if why is not None:
            if "depth limit" in str(exc) or why == _TOO_DEEP_TO_READ:
                return None, _TOO_DEEP
            if not _refused_as_valid(exc):
                return None, f"data is not valid JSON: {exc}"  # the first fault in the text
            return None, f"data is not valid JSON: {why}"
        if not isinstance(data, dict):
            return None, f"data must be a JSON object, got a JSON {_json_kind(data)}"
        if _deeper_than(data, MAX_DATA_DEPTH):
            return None, _TOO_DEEP
        if _SURROGATE_ESCAPE.search(text):
            # Filters hand strings to RE2, which only takes Unicode.
            try:
                data = _without_surrogates(data)
            except RecursionError:
                return None, _TOO_DEEP
        return data, None
    if not isinstance(data, dict):
        return None, f"data must be a JSON object, got a JSON {_json_kind(data)}"
    if len(text) > _SHALLOW_BYTES and _too_deep(text):
        return None, _TOO_DEEP
    return data, None


def _refused_as_valid(exc: orjson.JSONDecodeError) -> bool:
    """Whether orjson stopped at valid JSON it cannot read (so its message is beside the point)."""
    message = str(exc)
    return "number is infinity" in message or "surrogate in string" in message


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _int_or_float(digits: str) -> int | float:
    try:
        return int(digits)
    except ValueError:  # more digits than int() converts (4300 by default): beyond any float
        return float(digits)


_STRICT = json.JSONDecoder(parse_int=_int_or_float, parse_constant=_refuse_constant)


def loads(text: bytes) -> Any:
    """Parse a JSON body as the daemon sends it: orjson, or the stdlib for the valid texts
    orjson refuses (numbers beyond a double, unpaired surrogate escapes). Raises
    ``ValueError`` for anything that is not RFC 8259 JSON."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        if not _refused_as_valid(exc):
            raise
        value, why = _load_exact(text)
        if why is not None:
            raise ValueError(why) from None
        return value


def _load_exact(text: bytes) -> tuple[Any, str | None]:
    """The stdlib's reading of RFC 8259 JSON (no NaN or Infinity): (value, None) or (None, why)."""
    try:
        return _STRICT.decode(text.decode("utf-8")), None
    except RecursionError:
        return None, _TOO_DEEP_TO_READ
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError included
        return None, str(exc)


_WRAP_HEAD = b"[" * (1024 - MAX_DATA_DEPTH)
_WRAP_TAIL = b"]" * (1024 - MAX_DATA_DEPTH)


def _too_deep(text: bytes) -> bool:
    """Whether JSON text orjson already parsed nests more than ``MAX_DATA_DEPTH`` containers.

    Counting brackets (at C speed) rules out almost all data: nesting that deep needs that
    many opening brackets. Only then is the text parsed again inside three more levels, so
    that orjson's own 1024-level limit decides.
    """
    if text.count(b"[") + text.count(b"{") <= MAX_DATA_DEPTH:
        return False
    try:
        orjson.loads(_WRAP_HEAD + text + _WRAP_TAIL)
    except orjson.JSONDecodeError:
        return True
    return False


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether parsed JSON nests more than ``limit`` containers (iterative: any depth)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        container, depth = stack.pop()
        if depth > limit:
            return True
        items = container.values() if type(container) is dict else container
        stack.extend((item, depth + 1) for item in items
                     if type(item) is dict or type(item) is list)
    return False


def _without_surrogates(value: Any) -> Any:
    """A copy of parsed JSON with unpaired surrogates replaced by U+FFFD (depth is bounded)."""
    if type(value) is str:
        return _SURROGATE.sub("\ufffd", value)
    if type(value) is list:
        return [_without_surrogates(item) for item in value]
    if type(value) is dict:
        return {_without_surrogates(k): _without_surrogates(v) for k, v in value.items()}
    return value


def _json_kind(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


# --- batches -----------------------------------------------------------------


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
