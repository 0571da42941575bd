"""nevent-dispatch: the webhook delivery daemon of Nevent.

The public Python API is small: the application publishes events into its
outbox with ``publish()``, and receivers verify what they get with
``verify()``. Everything else is the daemon and its command line.
"""

from __future__ import annotations

from .errors import (
    BadSignature,
    DispatchError,
    MalformedHeader,
    SignatureError,
    StaleTimestamp,
    ValidationError,
)
from .publish import publish
from .wire.signing import sign, verify

__version__ = "0.1.0"

__all__ = [
    "BadSignature",
    "DispatchError",
    "MalformedHeader",
    "SignatureError",
    "StaleTimestamp",
    "ValidationError",
    "__version__",
    "publish",
    "sign",
    "verify",
]

