"""Sign outgoing webhook bodies and verify received ones.

Wire format, as the customer docs describe it::

    X-Nevent-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>

The HMAC key is the webhook secret's UTF-8 bytes and the message is
``b"<t>." + raw_body``. A header may carry several ``v1`` entries (one per
secret while a secret is being rotated); unknown schemes are ignored so new
ones can be added without breaking receivers.

This module owns the arithmetic only: it never reads configuration, never
logs, and never puts a secret in an exception message or a repr. ``verify``
is the receiver-side API customers import as ``nevent_dispatch.verify``.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

from ..errors import BadSignature, MalformedHeader, SignatureError, StaleTimestamp
from . import envelope

__all__ = [
    "DELIVERY_HEADER",
    "EVENT_HEADER",
    "SIGNATURE_HEADER",
    "USER_AGENT",
    "DEFAULT_TOLERANCE_S",
    "Signer",
    "parse_header",
    "sign",
    "signature",
    "verify",
    "verify_signature",
]

SIGNATURE_HEADER = "X-Nevent-Signature"
EVENT_HEADER = "X-Nevent-Event"
DELIVERY_HEADER = "X-Nevent-Delivery"
USER_AGENT = "Nevent-Webhooks/1.0"

#: How far (seconds) a received ``t`` may be from the receiver's clock, either way.
DEFAULT_TOLERANCE_S = 300

_SCHEME = "v1"
_MALFORMED = "malformed signature header"


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """Return the hex HMAC-SHA256 of ``b"<timestamp>." + body`` keyed by ``secret``.

    ``timestamp`` must be an int: ``:d`` refuses a float, which would
    otherwise produce a ``t`` no receiver can parse.
    """
    return hmac.new(
        secret.encode(), f"{timestamp:d}.".encode() + body, hashlib.sha256
    ).hexdigest()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """Return the full ``X-Nevent-Signature`` value ``t=<timestamp>,v1=<hex>``."""
    return f"t={timestamp:d},v1={signature(secret, timestamp, body)}"


class Signer:
    """Signs bodies with one secret whose key bytes are encoded once.

    Use one per webhook on the delivery path; the repr never shows the secret.
    """

    __slots__ = ("_keyed",)

    def __init__(self, secret: str) -> None:
        if not secret:
            raise ValueError("Signer: secret must not be empty")
        # The key schedule is done once; each signature starts from a copy of it.
        self._keyed = hmac.new(secret.encode(), digestmod=hashlib.sha256)

    def signature(self, timestamp: int, body: bytes) -> str:
        """The hex digest for ``body`` sent at ``timestamp``."""
        mac = self._keyed.copy()
        mac.update(b"%d." % timestamp)
        mac.update(body)
        return mac.hexdigest()

    def sign(self, timestamp: int, body: bytes) -> str:
        """The full header value ``t=<timestamp>,v1=<hex>``."""
        return f"t={timestamp:d},v1={self.signature(timestamp, body)}"

    def __repr__(self) -> str:
        return "Signer(secret=<hidden>)"


def _body_bytes(body: str) -> bytes:
    """A received body given as text, back to bytes; surrogates from a lenient decode included."""
    try:
        return body.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise BadSignature("invalid signature: body is not valid text") from None


def parse_header(header: str | None) -> tuple[int, list[str]]:
    """Split a signature header into its timestamp and its ``v1`` signatures.

    Items are comma-separated ``key=value`` pairs in any order, with
    whitespace tolerated around them. Exactly one integer ``t`` and at least
    one non-empty ``v1`` are required; other keys are ignored. Raises
    ``MalformedHeader`` naming what is wrong (never echoing the header, which
    a caller may log).
    """
    if header is None:
        raise MalformedHeader(f"{_MALFORMED}: missing {SIGNATURE_HEADER}")
    if not header.strip():
        raise MalformedHeader(f"{_MALFORMED}: empty")
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        item = item.strip()
        if not item:
            # Tolerates a trailing or doubled comma.
            continue
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key:
            raise MalformedHeader(f"{_MALFORMED}: expected comma-separated key=value items")
        if key == "t":
            if timestamp is not None:
                raise MalformedHeader(f"{_MALFORMED}: more than one t")
            # isascii + isdigit refuses signs, underscores and non-ASCII digits int() accepts.
            if not (value.isascii() and value.isdigit()) or len(value) > 12:
                raise MalformedHeader(f"{_MALFORMED}: t must be an integer unix time")
            timestamp = int(value)
        elif key == _SCHEME:
            if not value:
                raise MalformedHeader(f"{_MALFORMED}: empty v1")
            signatures.append(value)
    if timestamp is None:
        raise MalformedHeader(f"{_MALFORMED}: no t timestamp")
    if not signatures:
        raise MalformedHeader(f"{_MALFORMED}: no v1 signature")
    return timestamp, signatures


def verify_signature(
    body: bytes | str,
    header: str | None,
    secret: str,
    tolerance: int = DEFAULT_TOLERANCE_S,
    *,
    now: float | None = None,
) -> int:
    """Check ``header`` against ``body`` and ``secret``; return the signed timestamp.

    The signature is checked before the timestamp, so a forged request
    learns nothing about the receiver's clock. Every ``v1`` entry is compared
    with ``hmac.compare_digest``, with no early exit, so the time taken does
    not depend on which entry matched.
    """
    if isinstance(body, str):
        body = _body_bytes(body)
    timestamp, candidates = parse_header(header)
    expected = hmac.new(
        secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256
    ).hexdigest().encode()
    matched = False
    for candidate in candidates:
        # Bytes, not str: compare_digest refuses non-ASCII str, and a header is untrusted.
        # surrogatepass: a header decoded leniently may hold lone surrogates; they never match.
        matched |= hmac.compare_digest(expected, candidate.encode("utf-8", "surrogatepass"))
    if not matched:
        raise BadSignature("invalid signature")
    current = time.time() if now is None else now
    if timestamp < current - tolerance:
        raise StaleTimestamp("timestamp too old")
    if timestamp > current + tolerance:
        raise StaleTimestamp("timestamp too far in the future")
    return timestamp


def verify(
    body: bytes | str,
    header: str | None,
    secret: str,
    tolerance: int = DEFAULT_TOLERANCE_S,
    *,
    now: float | None = None,
) -> dict[str, Any]:
    """Verify a received webhook and return its parsed JSON body.

    ``body`` is the raw request body (bytes, or str encoded as UTF-8) exactly
    as received, before any JSON parsing. Raises ``MalformedHeader``,
    ``BadSignature`` or ``StaleTimestamp`` (all ``SignatureError``), or
    ``SignatureError`` itself when a correctly signed body is not a JSON
    object.
    """
    if isinstance(body, str):
        body = _body_bytes(body)
    verify_signature(body, header, secret, tolerance, now=now)
    try:
        event = envelope.loads(body)
    except ValueError:  # orjson.JSONDecodeError included
        raise SignatureError("body is not valid JSON") from None
    if not isinstance(event, dict):
        raise SignatureError("body is not a JSON object")
    return event
