"""The management API's server: the aiohttp application, its middlewares, its listener.

Owns what is applied around every route: bearer-token authentication (``auth.py``) for every
route but ``/healthz``, ``/readyz`` and — unless ``api.metrics_token`` — ``/metrics``; the
operations routes (readiness from ``ops/health.py``, Prometheus text from ``ops/metrics.py``,
imported only here); JSON errors for everything that goes wrong, in one shape
(``{"error": {"code", "field", "message"}}``) with the registry's own messages;
the body rules (JSON objects only, 415 otherwise, 413 above ``api.max_body_bytes``);
the listener (``api.listen``: TCP, a Unix socket, or off) and the ``api_listening``
line. A client can never see a traceback or a 500 for what it sent: an unexpected
error is logged and answered 500 ``internal_error``. It must not hold domain rules:
the routes call ``registry`` and ``history``, as the CLI does.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from ..config import Config, api_token_file, parse_listen
from ..errors import ConfigError, Conflict, NotFound, ValidationError
from ..logs import get_logger
from ..store.sqlite import Store
from .auth import Tokens
from .http import (
    CONFIG,
    PIPELINE,
    STORE,
    TOKENS,
    ApiError,
    Pipeline,
    error_response,
    field_of,
    json_response,
)

log = get_logger("nevent_dispatch")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Routes anyone may call.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
#: Open too, unless ``api.metrics_token`` (Prometheus scrapes it).
METRICS_PATH = "/metrics"
#: The daemon's operations side (``ops.Operations``), and its metrics when they are on.
OPERATIONS = web.AppKey("operations", object)
METRICS = web.AppKey("metrics", object)
_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found",
               405: "method_not_allowed", 409: "conflict", 413: "payload_too_large",
               415: "unsupported_media_type", 422: "validation_error"}


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, exc.field, exc.headers)
    except ValidationError as exc:
        return error_response(422, "validation_error", str(exc), field_of(str(exc)))
    except NotFound as exc:
        return error_response(404, "not_found", str(exc))
    except Conflict as exc:
        return error_response(409, "conflict", str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        message = exc.reason if exc.status != 404 else f"no route {request.path!r}"
        if exc.status == 413:
            message = (f"request body larger than {request.app[CONFIG].api.max_body_bytes} "
                       "bytes (api.max_body_bytes)")
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_response(exc.status, code, message, headers=headers)
    except Exception as exc:  # noqa: BLE001 - a client must never see a traceback
        log.error("api_internal_error", method=request.method, path=request.path,
                  error=f"{type(exc).__name__}: {exc}")
        return error_response(500, "internal_error", "internal error (logged by the daemon)")


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    path = request.path
    if path in OPEN_PATHS or (path == METRICS_PATH
                              and not request.app[CONFIG].api.metrics_token):
        return await handler(request)
    if not request.app[TOKENS].accepts(request.headers.get("Authorization")):
        raise ApiError(401, "unauthorized",
                       "missing or invalid bearer token (Authorization: Bearer <token>)",
                       headers={"WWW-Authenticate": 'Bearer realm="nevent-dispatch"'})
    return await handler(request)


def build_app(config: Config, store: Store, tokens: Tokens,
              pipeline: Pipeline | None = None, operations: Any = None) -> web.Application:
    from . import deliveries, openapi, webhooks

    app = web.Application(middlewares=[errors_middleware, auth_middleware],
                          client_max_size=config.api.max_body_bytes)
    app[STORE], app[CONFIG], app[TOKENS] = store, config, tokens
    if pipeline is not None:
        app[PIPELINE] = pipeline
    if operations is not None:
        app[OPERATIONS] = operations
        tally = operations.dispatcher.tally
        if tally is not None:
            from ..ops.metrics import Metrics  # Prometheus: only where metrics are served
            app[METRICS] = Metrics(tally, operations.dispatcher, operations.health)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get(METRICS_PATH, _metrics)
    app.router.add_get("/openapi.json", openapi.serve)
    webhooks.add_routes(app.router)
    deliveries.add_routes(app.router)
    app.on_response_prepare.append(_server_header)
    return app


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    """Name the service, not the versions of the libraries under it."""
    response.headers["Server"] = "nevent-dispatch"


async def _healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    """200 while the pipeline progresses; 503 with the reasons while it starts, stops or
    stalls (``ops/health.py`` judges)."""
    operations: Any = request.app.get(OPERATIONS)
    if operations is None:
        return json_response({"status": "unknown", "reasons": ["no pipeline runs in this process"]},
                             503)
    verdict = operations.health.current()
    body = {"status": verdict.status, "reasons": list(verdict.reasons),
            "checked_at": round(verdict.checked_at, 3), **verdict.figures, "pid": os.getpid(),
            "started_at": round(operations.started_at, 3)}
    return json_response(body, 200 if verdict.ok else 503)


async def _metrics(request: web.Request) -> web.Response:
    metrics: Any = request.app.get(METRICS)
    if metrics is None:
        why = ("metrics are off (metrics.enabled = false)"
               if OPERATIONS in request.app else "metrics are served by the running daemon only")
        raise ApiError(404, "not_found", why)
    body = await metrics.render(request.app[STORE], time.time())
    return web.Response(body=body, headers={"Content-Type": metrics.content_type})


class ApiServer:
    """The API of a running daemon: ``await start()`` binds, ``await stop()`` closes."""

    def __init__(self, config: Config, pipeline: Pipeline | None = None,
                 operations: Any = None) -> None:
        self.config = config
        self._pipeline = pipeline
        self._operations = operations
        self.url: str | None = None
        self._runner: web.AppRunner | None = None
        self._store: Store | None = None
        self._socket_path: Path | None = None

    async def start(self) -> None:
        listen = self.config.api.listen
        where = parse_listen(listen)
        # Its own connections: a slow list never waits behind, or delays, the pipeline's.
        self._store = await Store.open(self.config, migrate=False)
        tokens = Tokens(api_token_file(self.config))
        app = build_app(self.config, self._store, tokens, self._pipeline, self._operations)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     shutdown_timeout=1.0)
        await self._runner.setup()
        try:
            if isinstance(where, str):
                path = Path(where)
                _remove_stale_socket(path)
                site: web.BaseSite = web.UnixSite(self._runner, str(path))
                await site.start()
                os.chmod(path, 0o660)
                self._socket_path = path
                self.url = f"unix:{path}"
            else:
                host, port = where
                site = web.TCPSite(self._runner, host, port, reuse_address=True)
                await site.start()
                server: Any = site._server  # noqa: SLF001 - the port actually bound (":0")
                sockets = getattr(server, "sockets", None)
                bound = sockets[0].getsockname() if sockets else (host, port)
                shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
                self.url = f"http://{shown}:{bound[1]}"
        except OSError as exc:
            await self.stop()
            # asyncio's message repeats the address: only its last part is the reason.
            reason = str(exc.strerror or exc).rsplit(": ", 1)[-1]
            raise ConfigError(f"api.listen: cannot listen on {listen!r}: {reason}") from None
        log.info("api_listening", url=self.url, auth_file=str(tokens.path))

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._store is not None:
            await self._store.close()
            self._store = None
        if self._socket_path is not None:
            with contextlib.suppress(OSError):
                self._socket_path.unlink()
            self._socket_path = None


def _remove_stale_socket(path: Path) -> None:
    """A socket file left by a daemon that died (the state lock says none runs now) is
    removed; anything else at the path is an error."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(17, f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()
    else:
        raise OSError(98, f"{path} is in use by another process")
    finally:
        probe.close()
