"""The catalogue of event types Nevent publishes, as the customer docs list them.

Owns the names and their one-line descriptions. It must not decide what a
webhook receives: subscriptions and their patterns live in ``matcher.py``.
"""

from __future__ import annotations

#: The 17 documented event types, in the order of the customer docs.
EVENT_TYPES: dict[str, str] = {
    "fan.created": "Nuevo fan se registró",
    "fan.updated": "Información de fan actualizada",
    "fan.deleted": "Fan eliminado",
    "purchase.completed": "Compra de entrada completada",
    "purchase.refunded": "Compra reembolsada",
    "purchase.cancelled": "Compra cancelada",
    "attendance.checked_in": "Fan hizo check-in en evento",
    "attendance.checked_out": "Fan hizo check-out",
    "email.sent": "Email enviado",
    "email.opened": "Email abierto",
    "email.clicked": "Link en email clickeado",
    "sms.sent": "SMS enviado",
    "sms.delivered": "SMS entregado",
    "event.created": "Nuevo evento creado",
    "event.updated": "Evento actualizado",
    "event.published": "Evento publicado",
    "event.cancelled": "Evento cancelado",
}

#: The type carried by the X-Nevent-Event header and body of a batch request.
BATCH_TYPE = "batch"
