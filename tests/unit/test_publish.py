"""publish(): the application's insert into the outbox, inside the application's transaction."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from nevent_dispatch.config import Config
from nevent_dispatch.errors import ValidationError
from nevent_dispatch.publish import publish
from nevent_dispatch.store.sqlite import Store


@pytest.fixture
def outbox_path(tmp_path: Path) -> Path:
    """An outbox database created by the daemon, as `nevent-dispatch init` leaves it."""
    config = Config().replace(database={"outbox": tmp_path / "app.db",
                                        "state": tmp_path / "state.db"})

    async def init() -> None:
        store = await Store.open(config)
        await store.close()

    asyncio.run(init())
    return config.database.outbox


@pytest.fixture
def conn(outbox_path: Path) -> Iterator[sqlite3.Connection]:
    """The application's own stdlib connection to the outbox database."""
    connection = sqlite3.connect(outbox_path)
    yield connection
    connection.close()


def _rows(path: Path) -> list[tuple[Any, ...]]:
    """What another connection (the daemon's) sees."""
    other = sqlite3.connect(path)
    try:
        return other.execute(
            "SELECT id, event_id, type, organization_id, data, created FROM outbox").fetchall()
    finally:
        other.close()


def test_rolled_back_transaction_leaves_no_event(conn: sqlite3.Connection,
                                                 outbox_path: Path) -> None:
    """An event published in a transaction that rolls back never existed."""
    publish(conn, "purchase.completed", "org_1", {"purchase": {"id": "pur_1"}})
    assert conn.in_transaction
    conn.rollback()
    assert _rows(outbox_path) == []


def test_publish_does_not_commit(conn: sqlite3.Connection, outbox_path: Path) -> None:
    """Until the caller commits, other connections do not see the event."""
    publish(conn, "fan.created", "org_1", {"fan": {"id": "fan_1"}})
    assert _rows(outbox_path) == []
    conn.commit()
    assert len(_rows(outbox_path)) == 1


def test_committed_event_has_the_contract_defaults(conn: sqlite3.Connection,
                                                   outbox_path: Path) -> None:
    """A committed row gets evt_ + 24 hex digits, the current unix time and the JSON data."""
    data = {"fan": {"id": "fan_new123", "first_name": "María"}, "total": 125.5}
    before = int(time.time())
    outbox_id = publish(conn, "fan.created", "org_abcdefghijk", data)
    conn.commit()
    after = int(time.time())
    [(row_id, event_id, type_, org, text, created)] = _rows(outbox_path)
    assert row_id == outbox_id
    assert re.fullmatch(r"evt_[0-9a-f]{24}", event_id)
    assert (type_, org) == ("fan.created", "org_abcdefghijk")
    assert orjson.loads(text) == data
    assert isinstance(created, int)
    assert before - 1 <= created <= after + 1


def test_each_event_gets_its_own_id(conn: sqlite3.Connection, outbox_path: Path) -> None:
    """Outbox ids increase and event ids are unique."""
    ids = [publish(conn, "email.sent", "org_1", {"n": n}) for n in range(3)]
    conn.commit()
    rows = _rows(outbox_path)
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert len({row[1] for row in rows}) == 3


@pytest.mark.parametrize("type_", ["", "   ", " fan.created", None])
def test_empty_or_padded_type_is_refused(conn: sqlite3.Connection, outbox_path: Path,
                                         type_: Any) -> None:
    """The type must be a non-empty name; nothing is inserted when it is not."""
    with pytest.raises(ValidationError, match="^publish: type must be a non-empty name"):
        publish(conn, type_, "org_1", {})
    conn.commit()
    assert _rows(outbox_path) == []


@pytest.mark.parametrize("org", ["", "  ", None])
def test_empty_organization_is_refused(conn: sqlite3.Connection, org: Any) -> None:
    """Every event belongs to an organization."""
    with pytest.raises(ValidationError, match="^publish: organization_id must be a non-empty"):
        publish(conn, "fan.created", org, {})


@pytest.mark.parametrize(("data", "kind"), [([1, 2], "list"), ("{}", "str"), (None, "NoneType"),
                                            (b"{}", "bytes")])
def test_data_that_is_not_a_mapping_is_refused(conn: sqlite3.Connection, data: Any,
                                               kind: str) -> None:
    """data must be a JSON object; the message names what was given instead."""
    with pytest.raises(ValidationError) as info:
        publish(conn, "fan.created", "org_1", data)
    assert str(info.value) == f"publish: data must be a JSON object (a mapping), got {kind}"


@pytest.mark.parametrize("data", [{"when": object()}, {"tags": {"vip"}}, {1: "non-string key"}])
def test_data_that_cannot_be_serialized_is_refused(conn: sqlite3.Connection, outbox_path: Path,
                                                   data: dict[Any, Any]) -> None:
    """Values JSON cannot carry are refused before anything is inserted."""
    with pytest.raises(ValidationError, match="^publish: data is not JSON-serializable"):
        publish(conn, "fan.created", "org_1", data)
    conn.commit()
    assert _rows(outbox_path) == []
