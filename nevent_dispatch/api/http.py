"""What every route of the management API shares: the application's keys, the error
type and the JSON answers, the reading of bodies and query strings, and the hooks into
the running pipeline.

It must not know routes or the listener (``app.py`` assembles them).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from ..config import Config
from ..store.sqlite import Store
from .auth import Tokens

#: Keys of the application.
STORE = web.AppKey("store", Store)
CONFIG = web.AppKey("config", Config)
TOKENS = web.AppKey("tokens", Tokens)
#: The running pipeline, when the API is served by the daemon (None in tests of the app).
PIPELINE = web.AppKey("pipeline", object)


class Pipeline:
    """What the routes may ask of the daemon's pipeline: to apply a webhook change before
    the answer (``catch_up``), or to look for requeued work now (``poke``)."""

    def __init__(self, catch_up: Callable[[], Awaitable[bool]], poke: Callable[[], None]) -> None:
        self.catch_up, self.poke = catch_up, poke


async def webhooks_changed(request: web.Request) -> None:
    """After a webhook change: answer once the running pipeline applies it."""
    pipeline = request.app.get(PIPELINE)
    if isinstance(pipeline, Pipeline):
        await pipeline.catch_up()


def work_requeued(request: web.Request) -> None:
    pipeline = request.app.get(PIPELINE)
    if isinstance(pipeline, Pipeline):
        pipeline.poke()


class ApiError(Exception):
    """An answer other than success, with its code for the JSON error."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.headers = headers


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None
                  ) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, headers=headers,
                        content_type="application/json")


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "field": field, "message": message}}


def error_response(status: int, code: str, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None) -> web.Response:
    return json_response(error_body(code, message, field), status, headers)


def field_of(message: str) -> str | None:
    """The field a registry message is about: its words before the first colon."""
    head, sep, _ = message.partition(":")
    return head if sep and head.replace("_", "").replace(".", "").isalnum() else None


async def read_object(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    """The request's JSON object; an empty body is ``{}`` when ``optional``."""
    limit = request.app[CONFIG].api.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    raw = await request.read()
    if not raw:  # only no body at all is "no body": whitespace is not a JSON document
        if optional:
            return {}
        raise ApiError(400, "bad_request", "a JSON object body is required")
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type",
                       f"Content-Type must be application/json, got {request.content_type!r}")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(422, "validation_error", "body: must be a JSON object", "body")
    return body


def check_fields(body: dict[str, Any], allowed: tuple[str, ...]) -> None:
    """Refuse fields the route does not know (a typo must not be silently ignored)."""
    for key in body:
        if key not in allowed:
            known = f"known: {', '.join(allowed)}" if allowed else "this route takes no fields"
            raise ApiError(422, "validation_error",
                           f"{key if key.isidentifier() else repr(key)}: unknown field ({known})",
                           key if key.isidentifier() else "body")


def check_query(request: web.Request, allowed: tuple[str, ...]) -> None:
    """Refuse query parameters the route does not know (``?stauts=failed`` must not list
    everything)."""
    for key in request.query:
        if key not in allowed:
            raise ApiError(422, "validation_error",
                           f"{key if key.isidentifier() else repr(key)}: unknown query "
                           f"parameter (known: {', '.join(allowed)})",
                           key if key.isidentifier() else "query")
