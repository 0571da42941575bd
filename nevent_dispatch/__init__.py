"""nevent-dispatch: the webhook delivery daemon of Nevent.

The public Python API is small: the application publishes events into its
outbox with ``publish()``, and receivers verify what they get with
``verify()``. Everything else is the daemon and its command line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    BadSignature,
    DispatchError,
    MalformedHeader,
    SignatureError,
    StaleTimestamp,
    ValidationError,
)

if TYPE_CHECKING:
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


#: Loaded on first use: ``publish`` brings the SQL statements (and their package) in, which
#: a command line that only prints its help, or a receiver that only verifies, does not need.
_LAZY = {"publish": ".publish", "sign": ".wire.signing", "verify": ".wire.signing"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
