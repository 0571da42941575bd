"""The webhook registry: what a webhook may be, and the operations that change one.

Owns the validation of every field a user gives a webhook (URL and its
destination, event subscriptions, secret, name, organization, rate limit,
filter) as pure functions, and the thin async operations — create, update,
enable/disable, delete — that validate, build a ``Webhook`` and hand it to
``Store``. Where an address may point is ``wire.addresses``' table, which the
sender applies again to the address it actually connects to.

It must not run SQL (``store/`` does), read the clock (``now`` is given) or
print: refusals are ``ValidationError``/``UrlError`` with one line that starts
with the field name and never contains a secret.
"""

from __future__ import annotations

import asyncio
import dataclasses
import difflib
import ipaddress
import secrets
import socket
import urllib.parse
from collections.abc import Sequence
from typing import Any

from .catalog import EVENT_TYPES
from .config import Config
from .errors import UrlError, ValidationError
from .models import Webhook
from .store.sqlite import Store
from .wire.addresses import IPAddress, address_problem

__all__ = [
    "MAX_NAME_LENGTH",
    "MAX_RATE_LIMIT",
    "MAX_SECRET_LENGTH",
    "MAX_URL_LENGTH",
    "MIN_SECRET_LENGTH",
    "address_problem",
    "check_destination",
    "create",
    "delete",
    "generate_secret",
    "mask_secret",
    "new_webhook_id",
    "parse_events",
    "set_active",
    "update",
    "validate_event_type",
    "validate_name",
    "validate_org",
    "validate_rate_limit",
    "validate_secret",
    "validate_url",
]

MAX_URL_LENGTH = 2048
MIN_SECRET_LENGTH = 16
MAX_SECRET_LENGTH = 256
MAX_NAME_LENGTH = 200
MAX_RATE_LIMIT = 10_000_000
#: Prefix of generated secrets, as the customer docs show them.
SECRET_PREFIX = "whsec_"
#: The subscription to every event type.
ALL_EVENTS = "*"

_SCHEME_DEFAULT_PORTS = {"https": 443, "http": 80}


def _has_blank_or_control(text: str) -> bool:
    return any(c.isspace() or not c.isprintable() for c in text)


# -- URL -------------------------------------------------------------------------------------


def validate_url(url: str, *, allow_http: bool) -> str:
    """Return ``url`` if it is an acceptable webhook URL, else raise ``UrlError``.

    Only the URL's shape is checked here; where it points is ``check_destination``'s job.
    """
    if not isinstance(url, str) or not url:
        raise UrlError("url: must not be empty")
    if len(url) > MAX_URL_LENGTH:
        raise UrlError(f"url: must be at most {MAX_URL_LENGTH} characters, got {len(url)}")
    if _has_blank_or_control(url):
        raise UrlError("url: must not contain spaces or control characters")
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:
        raise UrlError(f"url: not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if not scheme:
        raise UrlError("url: missing scheme (it must start with https://)")
    if scheme == "http" and not allow_http:
        raise UrlError(
            "url: must be https:// (set delivery.allow_http = true for local development)")
    if scheme not in _SCHEME_DEFAULT_PORTS:
        raise UrlError(f"url: unsupported scheme {scheme!r}")
    if "@" in parts.netloc:
        raise UrlError("url: must not contain credentials (user:password@)")
    if "#" in url:
        raise UrlError("url: must not contain a fragment (#...)")
    host = parts.hostname
    if not host:
        raise UrlError("url: missing host")
    _check_host(host)
    try:
        port = parts.port
    except ValueError:
        raise UrlError(f"url: invalid port in {parts.netloc!r} (must be 1..65535)") from None
    if port is not None and not 1 <= port <= 65535:
        raise UrlError(f"url: invalid port {port} (must be 1..65535)")
    if parts.netloc.endswith(":"):
        raise UrlError(f"url: invalid port in {parts.netloc!r} (must be 1..65535)")
    return url


def _check_host(host: str) -> None:
    if _ip_literal(host) is not None:
        return
    if ":" in host:
        raise UrlError(f"url: invalid IPv6 address {host!r}")
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        raise UrlError(f"url: invalid host {host!r}") from None
    labels = ascii_host.removesuffix(".").split(".")
    for label in labels:
        if not label or len(label) > 63 or not all(c.isalnum() or c in "-_" for c in label):
            raise UrlError(f"url: invalid host {host!r}")


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


def check_destination(url: str, *, allow_private: bool, resolve: bool = True) -> None:
    """Refuse ``url`` when its host does not resolve or any address it resolves to is not public.

    An IP literal is checked as is. With ``resolve`` false no DNS query is made and
    only IP literals and ``localhost`` names are checked. Blocking: call it in a thread
    from async code.
    """
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    literal = _ip_literal(host)
    if literal is not None:
        addresses: list[IPAddress] = [literal]
    elif not resolve:
        if host.rstrip(".") == "localhost" or host.rstrip(".").endswith(".localhost"):
            addresses = [ipaddress.ip_address("127.0.0.1")]
        else:
            return
    else:
        port = parts.port or _SCHEME_DEFAULT_PORTS.get(parts.scheme.lower(), 443)
        addresses = _resolve(host, port)
    if allow_private:
        return
    for address in addresses:
        problem = address_problem(address)
        if problem is not None:
            raise UrlError(
                f"url: host {host!r} resolves to {address}, {problem} "
                "(set delivery.allow_private_networks = true to allow)")


def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise UrlError(f"url: cannot resolve host {host!r}") from None
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = _ip_literal(str(sockaddr[0]))
        if address is not None and address not in addresses:
            addresses.append(address)
    if not addresses:
        raise UrlError(f"url: cannot resolve host {host!r}")
    return addresses


# -- event subscriptions ---------------------------------------------------------------------


def _prefixes(types: Sequence[str]) -> list[str]:
    """Every ``prefix.*`` pattern that matches at least one of ``types``."""
    found: list[str] = []
    for name in types:
        pieces = name.split(".")
        for n in range(1, len(pieces)):
            pattern = ".".join(pieces[:n]) + ".*"
            if pattern not in found:
                found.append(pattern)
    return found


def _did_you_mean(word: str, candidates: Sequence[str]) -> str:
    lowered = {c.lower(): c for c in candidates}
    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return f" (did you mean {lowered[close[0]]!r}?)" if close else ""


def parse_events(spec: str | Sequence[str], extra_types: Sequence[str] = ()) -> tuple[str, ...]:
    """Parse a subscription: ``*``, ``prefix.*`` patterns and type names, comma-separated.

    Names must be documented types or in ``extra_types``; a pattern's prefix must
    match at least one of those. ``*`` subsumes everything else.
    """
    items = [spec] if isinstance(spec, str) else list(spec)
    names: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ValidationError(f"events: must be event type names, got {item!r}")
        names.extend(piece.strip() for piece in item.split(",") if piece.strip())
    if not names:
        raise ValidationError("events: must name at least one event type (or '*' for all)")
    if ALL_EVENTS in names:
        return (ALL_EVENTS,)
    known = [*EVENT_TYPES, *(t for t in extra_types if t not in EVENT_TYPES)]
    prefixes = _prefixes(known)
    result: list[str] = []
    for name in names:
        if name.endswith(".*") and "*" not in name[:-2]:
            if name not in prefixes:
                raise ValidationError(
                    f"events: pattern {name!r} matches no known event type"
                    f"{_did_you_mean(name, prefixes)}")
        elif "*" in name:
            raise ValidationError(
                f"events: invalid pattern {name!r} (use '*' or a prefix such as 'purchase.*')")
        elif name not in known:
            hint = _did_you_mean(name, known) or (
                " (add it to events.extra_types to subscribe to a custom type)")
            raise ValidationError(f"events: unknown event type {name!r}{hint}")
        if name not in result:
            result.append(name)
    return tuple(result)


def validate_event_type(name: Any, extra_types: Sequence[str] = ()) -> str:
    """One event type name to send (a test): documented or in ``extra_types``."""
    if not isinstance(name, str) or not name:
        raise ValidationError(f"type: must be an event type name, got {name!r}")
    known = [*EVENT_TYPES, *(t for t in extra_types if t not in EVENT_TYPES)]
    if name not in known:
        hint = _did_you_mean(name, known) or f" (one of: {', '.join(known)})"
        raise ValidationError(f"type: unknown event type {name!r}{hint}")
    return name


# -- secrets and plain fields ----------------------------------------------------------------


def generate_secret() -> str:
    """A new signing secret: ``whsec_`` and 256 random bits, URL-safe base64."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def validate_secret(secret: str) -> str:
    """Return ``secret`` if it is strong enough to sign with; messages never contain it."""
    if not isinstance(secret, str):
        raise ValidationError("secret: must be a string")
    if len(secret) < MIN_SECRET_LENGTH:
        raise ValidationError(
            f"secret: must be at least {MIN_SECRET_LENGTH} characters, got {len(secret)} "
            "(omit it to have a strong one generated)")
    if len(secret) > MAX_SECRET_LENGTH:
        raise ValidationError(
            f"secret: must be at most {MAX_SECRET_LENGTH} characters, got {len(secret)}")
    if _has_blank_or_control(secret):
        raise ValidationError("secret: must not contain spaces or control characters")
    return secret


def mask_secret(secret: str) -> str:
    """A recognisable but useless form of ``secret``: ``whsec_k5E…****``, or ``****`` if short."""
    if len(secret) >= 32:
        return secret[:9] + "…****"
    return "****"


def validate_name(name: str) -> str:
    """Return the descriptive name, stripped; refuse an empty or overlong one."""
    if not isinstance(name, str) or not name.strip():
        raise ValidationError("name: must not be empty")
    name = name.strip()
    if len(name) > MAX_NAME_LENGTH:
        raise ValidationError(
            f"name: must be at most {MAX_NAME_LENGTH} characters, got {len(name)}")
    if not name.isprintable():
        raise ValidationError("name: must not contain control characters")
    return name


def validate_org(organization_id: str) -> str:
    """Return the organization id; refuse an empty or overlong one, or one with spaces."""
    if not isinstance(organization_id, str) or not organization_id:
        raise ValidationError("organization_id: must not be empty")
    if len(organization_id) > MAX_NAME_LENGTH:
        raise ValidationError(
            f"organization_id: must be at most {MAX_NAME_LENGTH} characters, "
            f"got {len(organization_id)}")
    if _has_blank_or_control(organization_id):
        raise ValidationError(
            "organization_id: must not contain spaces or control characters, "
            f"got {organization_id!r}")
    return organization_id


def validate_rate_limit(n: int) -> int:
    """Return ``n`` if it is a sane per-webhook limit in events per minute."""
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_RATE_LIMIT:
        raise ValidationError(
            f"rate_limit: must be an integer from 1 to {MAX_RATE_LIMIT} events per minute, "
            f"got {n!r}")
    return n


def new_webhook_id() -> str:
    return "wh_" + secrets.token_hex(8)


def _parse_filter(text: str) -> Any:
    from .pipeline.filters import parse_filter  # the filter dialect is only needed when one is saved

    return parse_filter(text)


async def _check_url(url: str, config: Config) -> str:
    url = validate_url(url, allow_http=config.delivery.allow_http)
    # getaddrinfo blocks; the default executor keeps the loop responsive.
    await asyncio.to_thread(
        check_destination, url, allow_private=config.delivery.allow_private_networks)
    return url


# -- operations ------------------------------------------------------------------------------


async def create(store: Store, config: Config, *, organization_id: str, url: str, name: str,
                 secret: str | None = None, events: str | Sequence[str] = ALL_EVENTS,
                 filter: str | None = None, batch: bool = False, retries: bool = True,
                 rate_limit: int | None = None, now: float) -> tuple[Webhook, str | None]:
    """Validate and save a new, inactive webhook; return it and the secret if one was generated."""
    organization_id = validate_org(organization_id)
    name = validate_name(name)
    patterns = parse_events(events, config.events.extra_types)
    document = None if filter is None else _parse_filter(filter)
    if rate_limit is not None:
        validate_rate_limit(rate_limit)
    generated = None
    if secret is None:
        secret = generated = generate_secret()
    else:
        validate_secret(secret)
    url = await _check_url(url, config)
    webhook = Webhook(
        id=new_webhook_id(), organization_id=organization_id, name=name, url=url, secret=secret,
        events=patterns, filter=document, batch=bool(batch), retries=bool(retries),
        rate_limit=rate_limit, active=False, created_at=now, updated_at=now,
    )
    await store.insert_webhook(webhook)
    return webhook, generated


async def update(store: Store, config: Config, webhook_id: str, *, url: str | None = None,
                 name: str | None = None, secret: str | None = None,
                 events: str | Sequence[str] | None = None, filter: str | None = None,
                 clear_filter: bool = False, batch: bool | None = None,
                 retries: bool | None = None, rate_limit: int | None = None,
                 clear_rate_limit: bool = False, now: float) -> Webhook:
    """Change the given fields of a webhook (None = keep); return the saved webhook."""
    if filter is not None and clear_filter:
        raise ValidationError("filter: give a new filter or clear it, not both")
    if rate_limit is not None and clear_rate_limit:
        raise ValidationError("rate_limit: give a new limit or reset it to the default, not both")
    current = await store.get_webhook(webhook_id)
    changes: dict[str, Any] = {}
    if name is not None:
        changes["name"] = validate_name(name)
    if events is not None:
        changes["events"] = parse_events(events, config.events.extra_types)
    if filter is not None:
        changes["filter"] = _parse_filter(filter)
    elif clear_filter:
        changes["filter"] = None
    if batch is not None:
        changes["batch"] = bool(batch)
    if retries is not None:
        changes["retries"] = bool(retries)
    if rate_limit is not None:
        changes["rate_limit"] = validate_rate_limit(rate_limit)
    elif clear_rate_limit:
        changes["rate_limit"] = None
    if secret is not None:
        changes["secret"] = validate_secret(secret)
    if url is not None:
        changes["url"] = await _check_url(url, config)
    webhook = dataclasses.replace(current, **changes, updated_at=now)
    await store.update_webhook(webhook)
    return webhook


async def set_active(store: Store, webhook_id: str, active: bool, now: float) -> Webhook:
    """Enable or disable a webhook; only active webhooks receive events."""
    webhook = dataclasses.replace(await store.get_webhook(webhook_id), active=bool(active),
                                  updated_at=now)
    await store.update_webhook(webhook)
    return webhook


async def delete(store: Store, webhook_id: str, now: float) -> Webhook:
    """Remove a webhook (its delivery history stays); return what was removed."""
    webhook = await store.get_webhook(webhook_id)
    await store.delete_webhook(webhook_id, now)
    return webhook
