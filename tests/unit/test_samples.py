"""Sample payloads: one per catalogued type, the docs' three reproduced exactly."""

from __future__ import annotations

import re

import orjson
import pytest

from nevent_dispatch.catalog import EVENT_TYPES
from nevent_dispatch.wire.samples import SAMPLES, sample_data, sample_envelope

# The `data` objects of the three examples in the customer docs, copied from there.
DOCS_DATA = {
    "purchase.completed": {
        "purchase": {
            "id": "pur_abc123",
            "fan": {
                "id": "fan_xyz789",
                "email": "juan@example.com",
                "first_name": "Juan",
                "last_name": "García",
            },
            "event": {"id": "evt_festival2024", "name": "Festival Sónar 2024", "date": "2024-06-15"},
            "tickets": [
                {"type": "General Admission", "quantity": 2, "price": 85.00, "currency": "EUR"}
            ],
            "total": 170.00,
            "currency": "EUR",
            "payment_method": "card",
            "status": "completed",
            "purchased_at": "2024-03-15T10:30:00Z",
        }
    },
    "fan.created": {
        "fan": {
            "id": "fan_new123",
            "email": "maria@example.com",
            "first_name": "María",
            "last_name": "López",
            "phone": "+34600123456",
            "city": "Barcelona",
            "country": "ES",
            "tags": ["techno", "vip"],
            "created_at": "2024-03-15T11:00:00Z",
            "source": "Event Registration",
        }
    },
    "event.published": {
        "event": {
            "id": "evt_summer2024",
            "name": "Summer Closing Party",
            "date": "2024-09-20",
            "venue": {"name": "Sala Apolo", "city": "Barcelona"},
            "lineup": [
                {"name": "DJ Koze", "spotify_id": "xyz"},
                {"name": "Peggy Gou", "spotify_id": "abc"},
            ],
            "published_at": "2024-03-15T12:00:00Z",
        }
    },
}


def test_every_catalogue_type_has_a_sample_in_catalogue_order() -> None:
    """SAMPLES covers the 17 types, nothing more, in the docs' order."""
    assert list(SAMPLES) == list(EVENT_TYPES)
    assert len(SAMPLES) == 17


@pytest.mark.parametrize("event_type", sorted(DOCS_DATA))
def test_docs_examples_are_reproduced_exactly(event_type: str) -> None:
    """The docs' examples match in keys, values, types and order (byte-identical JSON)."""
    assert sample_data(event_type) == DOCS_DATA[event_type]
    assert orjson.dumps(sample_data(event_type)) == orjson.dumps(DOCS_DATA[event_type])


def test_prices_are_floats_like_the_docs() -> None:
    """85.00 in the docs is a JSON number with a fraction, not an int."""
    purchase = sample_data("purchase.completed")["purchase"]
    assert isinstance(purchase["tickets"][0]["price"], float)
    assert isinstance(purchase["total"], float)


@pytest.mark.parametrize("event_type", list(EVENT_TYPES))
def test_every_sample_is_small_json_object(event_type: str) -> None:
    """Each sample serializes with orjson to an object under 4 KB."""
    data = sample_data(event_type)
    assert isinstance(data, dict) and data
    assert len(orjson.dumps(data)) < 4096


@pytest.mark.parametrize("event_type", list(EVENT_TYPES))
def test_samples_keep_to_the_same_fans_and_events(event_type: str) -> None:
    """Fan and event ids come from the docs' examples so a receiver sees one consistent world."""
    text = orjson.dumps(sample_data(event_type)).decode()
    fan_ids = set(re.findall(r'"(fan_[a-z0-9]+)"', text))
    event_ids = set(re.findall(r'"(evt_[a-z0-9]+)"', text))
    assert fan_ids <= {"fan_xyz789", "fan_new123"}
    assert event_ids <= {"evt_festival2024", "evt_summer2024"}


def test_sample_data_is_a_copy() -> None:
    """Mutating a returned sample does not change the next one."""
    data = sample_data("purchase.completed")
    data["purchase"]["tickets"][0]["price"] = 0.0
    assert sample_data("purchase.completed")["purchase"]["tickets"][0]["price"] == 85.0


def test_samples_mapping_is_read_only() -> None:
    """SAMPLES cannot be reassigned into."""
    with pytest.raises(TypeError):
        SAMPLES["fan.created"] = {}  # type: ignore[index]


def test_unknown_type_gets_a_generic_sample() -> None:
    """A type outside the catalogue still gets an object to send."""
    assert sample_data("custom.thing") == {"sample": True, "type": "custom.thing"}


def test_sample_envelope_shape_and_order() -> None:
    """The envelope has the documented keys in order, a fresh evt_ id and an int time."""
    envelope = sample_envelope("fan.created", "org_abcdefghijk")
    assert list(envelope) == ["id", "type", "created", "data", "organization_id"]
    assert re.fullmatch(r"evt_[0-9a-f]{24}", envelope["id"])
    assert isinstance(envelope["created"], int)
    assert envelope["type"] == "fan.created"
    assert envelope["data"] == DOCS_DATA["fan.created"]
    assert envelope["organization_id"] == "org_abcdefghijk"
    assert sample_envelope("fan.created", "org_x")["id"] != envelope["id"]


def test_sample_envelope_takes_id_and_time() -> None:
    """Given an id and a time, the envelope is fully deterministic (the docs' example)."""
    envelope = sample_envelope(
        "event.published", "org_abcdefghijk", event_id="evt_01234567892", created=1640995202
    )
    assert envelope == {
        "id": "evt_01234567892",
        "type": "event.published",
        "created": 1640995202,
        "data": DOCS_DATA["event.published"],
        "organization_id": "org_abcdefghijk",
    }
