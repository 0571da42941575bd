"""Sample ``data`` objects for every catalogued event type.

Used by ``webhooks test`` and ``emit`` to send realistic payloads. The three
examples the customer docs show (purchase.completed, fan.created,
event.published) are reproduced exactly; the others reuse the same fans
(Juan García, María López) and events so a receiver sees a consistent world.

This module owns sample data only: it must not build request bodies
(``envelope.py`` does) nor decide what a webhook receives.
"""

from __future__ import annotations

import copy
import secrets
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from ..catalog import EVENT_TYPES

__all__ = ["SAMPLES", "sample_data", "sample_envelope"]

# Shared pieces, written out again inside the seed examples below so those
# stay a literal copy of the docs.
_JUAN = {
    "id": "fan_xyz789",
    "email": "juan@example.com",
    "first_name": "Juan",
    "last_name": "García",
}
_MARIA = {
    "id": "fan_new123",
    "email": "maria@example.com",
    "first_name": "María",
    "last_name": "López",
}
_SONAR = {"id": "evt_festival2024", "name": "Festival Sónar 2024", "date": "2024-06-15"}
_SUMMER = {"id": "evt_summer2024", "name": "Summer Closing Party", "date": "2024-09-20"}
_CAMPAIGN = {"id": "cmp_summer_presale", "name": "Preventa Summer Closing Party"}
_SMS_CAMPAIGN = {"id": "cmp_sonar_reminder", "name": "Recordatorio Festival Sónar"}
_VENUE_APOLO = {"name": "Sala Apolo", "city": "Barcelona"}
_VENUE_SONAR = {"name": "Fira Montjuïc", "city": "Barcelona"}

_PURCHASE_JUAN = {
    "id": "pur_abc123",
    "fan": _JUAN,
    "event": _SONAR,
    "tickets": [
        {"type": "General Admission", "quantity": 2, "price": 85.0, "currency": "EUR"}
    ],
    "total": 170.0,
    "currency": "EUR",
    "payment_method": "card",
}

_SAMPLES: dict[str, dict[str, Any]] = {
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
    "fan.updated": {
        "fan": {
            **_MARIA,
            "phone": "+34600123456",
            "city": "Madrid",
            "country": "ES",
            "tags": ["techno", "vip", "early-bird"],
            "updated_at": "2024-04-02T09:15:00Z",
        },
        "changes": {
            "city": {"from": "Barcelona", "to": "Madrid"},
            "tags": {"from": ["techno", "vip"], "to": ["techno", "vip", "early-bird"]},
        },
    },
    "fan.deleted": {
        "fan": {"id": "fan_new123", "deleted_at": "2024-05-10T16:45:00Z", "reason": "gdpr_request"}
    },
    "purchase.completed": {
        "purchase": {
            "id": "pur_abc123",
            "fan": {
                "id": "fan_xyz789",
                "email": "juan@example.com",
                "first_name": "Juan",
                "last_name": "García",
            },
            "event": {
                "id": "evt_festival2024",
                "name": "Festival Sónar 2024",
                "date": "2024-06-15",
            },
            "tickets": [
                {
                    "type": "General Admission",
                    "quantity": 2,
                    "price": 85.0,
                    "currency": "EUR",
                }
            ],
            "total": 170.0,
            "currency": "EUR",
            "payment_method": "card",
            "status": "completed",
            "purchased_at": "2024-03-15T10:30:00Z",
        }
    },
    "purchase.refunded": {
        "purchase": {
            **_PURCHASE_JUAN,
            "status": "refunded",
            "purchased_at": "2024-03-15T10:30:00Z",
            "refund": {
                "id": "ref_def456",
                "amount": 170.0,
                "currency": "EUR",
                "reason": "requested_by_customer",
                "refunded_at": "2024-04-01T08:20:00Z",
            },
        }
    },
    "purchase.cancelled": {
        "purchase": {
            **_PURCHASE_JUAN,
            "id": "pur_ghi789",
            "status": "cancelled",
            "created_at": "2024-03-16T18:05:00Z",
            "cancellation": {
                "reason": "payment_failed",
                "cancelled_at": "2024-03-16T18:20:00Z",
            },
        }
    },
    "attendance.checked_in": {
        "attendance": {
            "id": "att_jkl012",
            "fan": _JUAN,
            "event": _SONAR,
            "purchase_id": "pur_abc123",
            "ticket_type": "General Admission",
            "gate": "Puerta A",
            "checked_in_at": "2024-06-15T18:42:00Z",
        }
    },
    "attendance.checked_out": {
        "attendance": {
            "id": "att_jkl012",
            "fan": _JUAN,
            "event": _SONAR,
            "purchase_id": "pur_abc123",
            "ticket_type": "General Admission",
            "gate": "Puerta A",
            "checked_in_at": "2024-06-15T18:42:00Z",
            "checked_out_at": "2024-06-16T02:10:00Z",
        }
    },
    "email.sent": {
        "email": {
            "id": "eml_mno345",
            "campaign": _CAMPAIGN,
            "fan": _MARIA,
            "subject": "Summer Closing Party: preventa exclusiva",
            "sent_at": "2024-03-20T10:00:00Z",
        }
    },
    "email.opened": {
        "email": {
            "id": "eml_mno345",
            "campaign": _CAMPAIGN,
            "fan": _MARIA,
            "subject": "Summer Closing Party: preventa exclusiva",
            "sent_at": "2024-03-20T10:00:00Z",
            "opened_at": "2024-03-20T10:12:34Z",
        }
    },
    "email.clicked": {
        "email": {
            "id": "eml_mno345",
            "campaign": _CAMPAIGN,
            "fan": _MARIA,
            "subject": "Summer Closing Party: preventa exclusiva",
            "sent_at": "2024-03-20T10:00:00Z",
            "link": {
                "url": "https://tickets.nevent.es/e/evt_summer2024",
                "label": "Comprar entradas",
            },
            "clicked_at": "2024-03-20T10:13:05Z",
        }
    },
    "sms.sent": {
        "sms": {
            "id": "sms_pqr678",
            "campaign": _SMS_CAMPAIGN,
            "fan": {**_JUAN, "phone": "+34611987654"},
            "to": "+34611987654",
            "body": "Mañana es el Festival Sónar 2024. Tu entrada: tickets.nevent.es/t/pur_abc123",
            "segments": 1,
            "sent_at": "2024-06-14T17:00:00Z",
        }
    },
    "sms.delivered": {
        "sms": {
            "id": "sms_pqr678",
            "campaign": _SMS_CAMPAIGN,
            "fan": {**_JUAN, "phone": "+34611987654"},
            "to": "+34611987654",
            "segments": 1,
            "sent_at": "2024-06-14T17:00:00Z",
            "delivered_at": "2024-06-14T17:00:04Z",
        }
    },
    "event.created": {
        "event": {
            **_SUMMER,
            "venue": _VENUE_APOLO,
            "status": "draft",
            "capacity": 1600,
            "created_at": "2024-03-10T09:00:00Z",
        }
    },
    "event.updated": {
        "event": {
            **_SUMMER,
            "venue": _VENUE_APOLO,
            "status": "draft",
            "capacity": 1600,
            "updated_at": "2024-03-14T15:30:00Z",
        },
        "changes": {"capacity": {"from": 1200, "to": 1600}},
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
    "event.cancelled": {
        "event": {
            **_SONAR,
            "venue": _VENUE_SONAR,
            "status": "cancelled",
            "reason": "Cancelado por condiciones meteorológicas adversas",
            "refunds": "automatic",
            "cancelled_at": "2024-06-10T08:00:00Z",
        }
    },
}

# A missing or stray entry is a programming error; fail at import, not in `emit`.
if _SAMPLES.keys() != EVENT_TYPES.keys():
    raise RuntimeError("samples.py and catalog.EVENT_TYPES list different event types")

#: Sample ``data`` per event type, in catalogue order. Read-only; the nested
#: objects are shared, so take copies through ``sample_data``.
SAMPLES: Mapping[str, dict[str, Any]] = MappingProxyType(
    {event_type: _SAMPLES[event_type] for event_type in EVENT_TYPES}
)


def sample_data(event_type: str) -> dict[str, Any]:
    """A fresh deep copy of the sample for ``event_type``.

    An uncatalogued type gets a generic ``{"sample": True, "type": ...}`` so
    custom types can still be tested end to end.
    """
    data = SAMPLES.get(event_type)
    if data is None:
        return {"sample": True, "type": event_type}
    return copy.deepcopy(data)


def sample_envelope(
    event_type: str,
    organization_id: str,
    *,
    event_id: str | None = None,
    created: int | None = None,
) -> dict[str, Any]:
    """A complete sample event as the body carries it, in the documented key order."""
    return {
        "id": event_id if event_id is not None else "evt_" + secrets.token_hex(12),
        "type": event_type,
        "created": created if created is not None else int(time.time()),
        "data": sample_data(event_type),
        "organization_id": organization_id,
    }
