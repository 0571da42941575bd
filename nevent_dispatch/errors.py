"""The exception tree of nevent-dispatch.

Exceptions are for bugs and bad input; delivery outcomes are data
(see ``models.Outcome``), never exceptions.

    DispatchError                 root: the CLI prints it as one line
    ├── ConfigError               a bad config key ("delivery.timeout: must be > 0, got 0")
    ├── ValidationError           bad input from a user or the application
    │   ├── FilterError           an invalid webhook filter
    │   └── UrlError              a refused webhook URL
    ├── NotFound                  a webhook or delivery id that does not exist
    ├── Conflict                  a change the current state does not allow (retry of a delivered one)
    ├── StoreError                a database cannot be opened, migrated or written (store/sqlite)
    │   └── StateInUse            another daemon holds the state database (statelock)
    └── SignatureError            a webhook request that fails verification
        ├── MalformedHeader       the signature header cannot be parsed
        ├── BadSignature          no v1 entry matches the body and secret
        └── StaleTimestamp        t is outside the tolerance
"""

from __future__ import annotations


class DispatchError(Exception):
    """Root of every error nevent-dispatch raises on purpose."""


class ConfigError(DispatchError):
    """A configuration value is missing, unknown, of the wrong type or impossible."""


class ValidationError(DispatchError, ValueError):
    """Input from a user or the application is refused."""


class FilterError(ValidationError):
    """A webhook filter document is invalid; the message names the offending part."""


class UrlError(ValidationError):
    """A webhook URL is refused (scheme, host, credentials, private address)."""


class NotFound(DispatchError, LookupError):
    """A webhook, delivery or event id does not exist."""


class Conflict(DispatchError):
    """The request is valid but the current state does not allow it."""


class SignatureError(DispatchError):
    """A received webhook request does not verify."""


class MalformedHeader(SignatureError):
    """The X-Nevent-Signature header is missing pieces or is not parseable."""


class BadSignature(SignatureError):
    """No v1 signature in the header matches the body and the secret."""


class StaleTimestamp(SignatureError):
    """The header's timestamp is further from now than the tolerance allows."""
