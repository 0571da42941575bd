"""The webhooks of an organization over HTTP: list, create (idempotent), show, change,
delete, enable/disable, test, replay, stats; and the event types.

Owns the mapping of JSON bodies onto ``registry`` and ``history`` calls, with the
types of the body's fields checked first (a wrong type names its field, like every
other refusal). Idempotency: a create with an ``Idempotency-Key`` header is answered,
for 24 hours, with the first response to that key and body; the same key with another
body is a 409. It must not validate a field itself: the registry does, for every face.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import orjson
from aiohttp import web

from .. import history, registry
from ..catalog import EVENT_TYPES
from ..errors import ValidationError
from ..pipeline.attempts import send_test
from ..pipeline.matcher import type_predicate
from ..views import delivery_json, webhook_json
from .http import (
    CONFIG,
    STORE,
    ApiError,
    check_fields,
    check_query,
    json_response,
    read_object,
    webhooks_changed,
    work_requeued,
)

#: Seconds an idempotency key is remembered.
IDEMPOTENCY_TTL_S = 24 * 3600
MAX_KEY_LENGTH = 255
#: Body fields of a create; a change (PATCH) takes the same but ``secret`` may be rotated.
CREATE_FIELDS = ("name", "url", "events", "secret", "filter", "batch", "retries", "rate_limit")

_key_locks: dict[tuple[str, str], asyncio.Lock] = {}


def _org(request: web.Request) -> str:
    return registry.validate_org(request.match_info["org"])


async def _webhook(request: web.Request) -> Any:
    return await history.get_webhook(request.app[STORE], request.match_info["id"], _org(request))


def _typed(body: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str, *,
           nullable: bool = False) -> Any:
    """The field's value, None when absent; null only where it means something (the
    document says which): elsewhere a null is refused, not read as "absent"."""
    if key not in body:
        return None
    value = body[key]
    if value is None and nullable:
        return None
    # A bool is an int to Python, not to JSON; the value is shown as the client wrote it.
    if (isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,))
            or not isinstance(value, kind)):
        raise ValidationError(f"{key}: must be {what}, got {orjson.dumps(value).decode()[:80]}")
    return value


def _events(body: dict[str, Any]) -> Any:
    if "events" not in body:
        return None
    events = body["events"]
    if isinstance(events, str):
        return events
    if isinstance(events, list) and all(isinstance(e, str) for e in events):
        return events
    raise ValidationError("events: must be a list of event type names (or \"*\")")


def _filter(body: dict[str, Any]) -> str | None:
    doc = body.get("filter")
    if doc is None:
        return None
    if not isinstance(doc, dict):
        raise ValidationError("filter: must be a JSON object (see the filter syntax)")
    return orjson.dumps(doc).decode()


def _rate_limit(body: dict[str, Any]) -> int | None:
    return _typed(body, "rate_limit", int, "a whole number of events per minute", nullable=True)


async def list_event_types(request: web.Request) -> web.Response:
    extra = request.app[CONFIG].events.extra_types
    data = [{"type": t, "documented": True} for t in EVENT_TYPES]
    data += [{"type": t, "documented": False} for t in extra if t not in EVENT_TYPES]
    return json_response({"data": data, "next_cursor": None})


async def list_webhooks(request: web.Request) -> web.Response:
    webhooks = await request.app[STORE].list_webhooks(_org(request))
    return json_response({"data": [webhook_json(w) for w in webhooks], "next_cursor": None})


async def create_webhook(request: web.Request) -> web.Response:
    org = _org(request)
    body = await read_object(request)
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return await _create(request, org, body)
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise ApiError(400, "bad_request",
                       f"Idempotency-Key: must be 1..{MAX_KEY_LENGTH} printable characters",
                       "Idempotency-Key")
    store = request.app[STORE]
    digest = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
    lock = _key_locks.setdefault((org, key), asyncio.Lock())
    try:
        async with lock:
            now = time.time()
            found = await store.idempotent_response(org, key)
            if found is not None and found[3] >= now - IDEMPOTENCY_TTL_S:
                request_hash, status, response, _ = found
                if request_hash != digest:
                    raise ApiError(409, "idempotency_conflict",
                                   "Idempotency-Key: already used with a different body",
                                   "Idempotency-Key")
                return web.Response(body=response, status=status,
                                    content_type="application/json",
                                    headers={"Idempotent-Replayed": "true"})
            answer = await _create(request, org, body)
            assert isinstance(answer.body, bytes)
            await store.remember_response(org, key, digest, answer.status, answer.body, now,
                                          now - IDEMPOTENCY_TTL_S)
            return answer
    finally:
        if not lock.locked() and not lock._waiters:  # noqa: SLF001 - forget idle locks
            _key_locks.pop((org, key), None)


async def _create(request: web.Request, org: str, body: dict[str, Any]) -> web.Response:
    check_fields(body, CREATE_FIELDS)
    name = _typed(body, "name", str, "a string")
    url = _typed(body, "url", str, "a string")
    if name is None:
        raise ValidationError("name: is required")
    if url is None:
        raise ValidationError("url: is required")
    events = _events(body)
    webhook, generated = await registry.create(
        request.app[STORE], request.app[CONFIG], organization_id=org, url=url,
        name=name,
        secret=_typed(body, "secret", str, "a string"),
        events=events if events is not None else registry.ALL_EVENTS,
        filter=_filter(body), batch=bool(_typed(body, "batch", bool, "true or false")),
        retries=_typed(body, "retries", bool, "true or false") is not False,
        rate_limit=_rate_limit(body), now=time.time())
    return json_response(webhook_json(webhook, secret=webhook.secret), 201,
                         {"Location": f"/v1/organizations/{org}/webhooks/{webhook.id}"})


async def get_webhook(request: web.Request) -> web.Response:
    return json_response(webhook_json(await _webhook(request)))


async def update_webhook(request: web.Request) -> web.Response:
    webhook = await _webhook(request)
    body = await read_object(request)
    check_fields(body, CREATE_FIELDS)
    if not body:
        raise ValidationError("body: give at least one field to change")
    new_secret = _typed(body, "secret", str, "a string")
    changed = await registry.update(
        request.app[STORE], request.app[CONFIG], webhook.id,
        url=_typed(body, "url", str, "a string"), name=_typed(body, "name", str, "a string"),
        secret=new_secret, events=_events(body), filter=_filter(body),
        clear_filter="filter" in body and body["filter"] is None,
        batch=_typed(body, "batch", bool, "true or false"),
        retries=_typed(body, "retries", bool, "true or false"),
        rate_limit=_rate_limit(body),
        clear_rate_limit="rate_limit" in body and body["rate_limit"] is None, now=time.time())
    await webhooks_changed(request)
    return json_response(webhook_json(changed))


async def delete_webhook(request: web.Request) -> web.Response:
    webhook = await _webhook(request)
    removed = await registry.delete(request.app[STORE], webhook.id, time.time())
    await webhooks_changed(request)
    return json_response({**webhook_json(removed), "deleted": True})


async def enable_webhook(request: web.Request) -> web.Response:
    return await _set_active(request, True)


async def disable_webhook(request: web.Request) -> web.Response:
    return await _set_active(request, False)


async def _set_active(request: web.Request, active: bool) -> web.Response:
    webhook = await _webhook(request)
    check_fields(await read_object(request, optional=True), ())
    changed = await registry.set_active(request.app[STORE], webhook.id, active, time.time())
    await webhooks_changed(request)
    return json_response(webhook_json(changed))


async def test_webhook(request: web.Request) -> web.Response:
    webhook = await _webhook(request)
    body = await read_object(request, optional=True)
    check_fields(body, ("type",))
    config = request.app[CONFIG]
    event_type = registry.validate_event_type(
        body["type"] if "type" in body else _default_test_type(webhook.events),
        config.events.extra_types)
    delivery, result = await send_test(config, request.app[STORE], webhook, event_type)
    return json_response({
        "delivery": delivery_json(delivery), "status": result.status,
        "outcome": result.outcome.value, "latency_ms": round(result.latency_ms, 1),
        "error": result.error, "response": result.response,
        "subscribed": type_predicate(webhook.events)(event_type)})


def _default_test_type(patterns: tuple[str, ...]) -> str:
    """Without a type: the first documented type the webhook is subscribed to."""
    accepts = type_predicate(patterns)
    return next((t for t in EVENT_TYPES if accepts(t)), next(iter(EVENT_TYPES)))


async def replay_webhook(request: web.Request) -> web.Response:
    webhook = await _webhook(request)
    body = await read_object(request, optional=True)
    check_fields(body, ("status", "since", "until"))
    now = time.time()
    since = None if "since" not in body else history.parse_time(body["since"], now, "since")
    until = None if "until" not in body else history.parse_time(body["until"], now, "until")
    count = await history.replay_webhook(request.app[STORE], webhook,
                                         status=body.get("status", "failed"), since=since,
                                         until=until, now=now)
    if count:
        work_requeued(request)
    return json_response({"webhook_id": webhook.id, "requeued": count,
                          "webhook_active": webhook.active})


async def webhook_stats(request: web.Request) -> web.Response:
    webhook = await _webhook(request)
    check_query(request, ("since",))
    now = time.time()
    raw = request.query.get("since")
    since = now - 86400 if raw is None else history.parse_time(raw, now, "since")
    return json_response(await history.webhook_stats(request.app[STORE], webhook, since))


def add_routes(router: web.UrlDispatcher) -> None:
    base = "/v1/organizations/{org}/webhooks"
    router.add_get("/v1/event-types", list_event_types)
    router.add_get(base, list_webhooks)
    router.add_post(base, create_webhook)
    router.add_get(base + "/{id}", get_webhook)
    router.add_patch(base + "/{id}", update_webhook)
    router.add_delete(base + "/{id}", delete_webhook)
    router.add_post(base + "/{id}/enable", enable_webhook)
    router.add_post(base + "/{id}/disable", disable_webhook)
    router.add_post(base + "/{id}/test", test_webhook)
    router.add_post(base + "/{id}/replay", replay_webhook)
    router.add_get(base + "/{id}/stats", webhook_stats)
