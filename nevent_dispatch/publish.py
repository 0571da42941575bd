"""The application-side insert into the outbox.

Owns ``publish()``: the one statement the application runs, on its own stdlib
``sqlite3`` connection, inside its own transaction. It must not commit, open
connections or know anything about webhooks.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any

import orjson

from .errors import ValidationError

#: The statement, read on the first call: importing it brings the store's package (and
#: aiosqlite) in, which neither ``from nevent_dispatch import verify`` nor the command
#: line's --help needs.
_statement: list[str] = []


def publish(conn: sqlite3.Connection, type: str, organization_id: str,
            data: Mapping[str, Any]) -> int:
    """Insert one event into the outbox on ``conn`` without committing; return its outbox id.

    The outbox id is the row's ``id`` (an int, growing with every event); the
    ``evt_…`` id receivers see is the row's ``event_id``, made by the table's default.
    The event becomes visible to the daemon when the caller's transaction commits,
    and disappears with it on rollback. Bad arguments raise ``ValidationError``.
    """
    if not isinstance(type, str) or not type.strip() or type != type.strip():
        raise ValidationError(
            f"publish: type must be a non-empty name without surrounding spaces, got {type!r}")
    if not isinstance(organization_id, str) or not organization_id.strip():
        raise ValidationError(f"publish: organization_id must be a non-empty string, got {organization_id!r}")
    if not isinstance(data, Mapping):
        raise ValidationError(
            f"publish: data must be a JSON object (a mapping), got {data.__class__.__name__}")
    try:
        text = orjson.dumps(data).decode()
    except TypeError as exc:
        raise ValidationError(f"publish: data is not JSON-serializable: {exc}") from None
    if not _statement:
        from .store.sqlite.sql import PUBLISH
        _statement.append(PUBLISH)
    cur = conn.execute(_statement[0], (type, organization_id, text))
    return int(cur.lastrowid or 0)
