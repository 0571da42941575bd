"""One HTTP attempt: sign, POST, read a bounded answer, map it to an Outcome.

Owns the process's single aiohttp ``ClientSession`` (TLS trust, source address,
the connect-time destination guard) and the one place where transport errors
become outcome values. It must not decide retries or touch the database.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from ..clock import SYSTEM, Clock
from ..config import DeliveryConfig
from ..models import Outcome
from ..wire.addresses import address_problem
from ..wire.signing import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, USER_AGENT, Signer
from .retry import parse_retry_after

_STATIC_HEADERS = {"Content-Type": "application/json", "User-Agent": USER_AGENT}


class DestinationRefused(OSError):
    """The destination resolves to an address the configuration does not allow."""


class GuardedResolver(AbstractResolver):
    """Resolves like aiohttp's default, then refuses non-public addresses (SSRF guard).

    The check runs on the addresses the connection will actually use, at connect
    time, so a DNS answer that changes after the webhook was saved is caught too.
    """

    def __init__(self, inner: AbstractResolver) -> None:
        self._inner = inner

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            problem = address_problem(ipaddress.ip_address(result["host"]))
            if problem:
                raise DestinationRefused(f"{host} resolves to {result['host']}, {problem}")
        return results

    async def close(self) -> None:
        await self._inner.close()


def ssl_context(ca_file: Any = None) -> ssl.SSLContext:
    """The system's trust store, plus ``ca_file`` when configured."""
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
    return context


def make_session(config: DeliveryConfig) -> aiohttp.ClientSession:
    """The one client session of the process; call inside the running loop."""
    resolver: AbstractResolver = aiohttp.ThreadedResolver()
    if not config.allow_private_networks:
        resolver = GuardedResolver(resolver)
    connector = aiohttp.TCPConnector(
        limit=config.max_in_flight,
        limit_per_host=0,  # the lanes bound each webhook themselves
        ssl=ssl_context(config.ca_file),
        resolver=resolver,
        local_addr=(config.source_address, 0) if config.source_address else None,
        ttl_dns_cache=60,
        enable_cleanup_closed=False,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=config.timeout),
        auto_decompress=False,
        skip_auto_headers=("Accept-Encoding", "Accept"),
        # Cookies set by one customer's endpoint must never reach another's.
        cookie_jar=aiohttp.DummyCookieJar(),
    )


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    status: int | None
    latency_ms: float
    error: str | None
    response: str | None
    #: Seconds asked for by Retry-After on a 429 or 503.
    retry_after: float | None
    started_at: float


@functools.lru_cache(maxsize=4096)
def _literal_problem(url: str) -> str | None:
    """Why a URL whose host is a literal IP must not be called (cached: webhooks repeat)."""
    host = aiohttp.helpers.URL(url).host or ""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    problem = address_problem(ip)
    return f"{host} is {problem}" if problem else None


def classify(exc: BaseException) -> tuple[Outcome, str]:
    """The one mapping from transport exceptions to outcomes."""
    if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error, DestinationRefused):
        return Outcome.REFUSED, f"destination refused: {exc.os_error}"
    if isinstance(exc, DestinationRefused):
        return Outcome.REFUSED, f"destination refused: {exc}"
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return Outcome.TIMEOUT, "timeout"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError | ssl.SSLError):
        return Outcome.TLS_ERROR, f"tls: {_short(exc)}"
    if isinstance(exc, aiohttp.ClientError | OSError):
        return Outcome.CONNECTION_ERROR, f"{type(exc).__name__}: {_short(exc)}"
    return Outcome.CONNECTION_ERROR, f"unexpected {type(exc).__name__}: {_short(exc)}"


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


class Sender:
    """Sends one signed request and reports what happened, never raising for the receiver's sake."""

    def __init__(self, session: aiohttp.ClientSession, config: DeliveryConfig,
                 clock: Clock = SYSTEM) -> None:
        self._session = session
        self._config = config
        self._clock = clock
        self._snippet = config.response_snippet_bytes
        self._signers: dict[str, Signer] = {}

    def _signer(self, secret: str) -> Signer:
        signer = self._signers.get(secret)
        if signer is None:
            if len(self._signers) > 10_000:
                self._signers.clear()
            signer = self._signers[secret] = Signer(secret)
        return signer

    async def send(self, *, url: str, secret: str, body: bytes, event_type: str,
                   delivery_uuid: str) -> Result:
        started_at = self._clock.time()
        t0 = self._clock.monotonic()
        if not self._config.allow_private_networks:
            problem = _literal_problem(url)
            if problem:
                return Result(Outcome.REFUSED, None, 0.0, f"destination refused: {problem}", None,
                              None, started_at)
        headers = {
            **_STATIC_HEADERS,
            EVENT_HEADER: event_type,
            DELIVERY_HEADER: delivery_uuid,
            # Signed afresh at each attempt: a retry hours later still passes the receiver's tolerance.
            SIGNATURE_HEADER: self._signer(secret).sign(int(started_at), body),
        }
        status: int | None = None
        try:
            async with self._session.post(url, data=body, headers=headers,
                                          allow_redirects=False) as resp:
                status = resp.status
                snippet, note = await self._read_snippet(resp)
                retry_after = None
                if status in (429, 503):
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"), started_at)
        except Exception as exc:  # noqa: BLE001 - every failure becomes an outcome
            outcome, error = classify(exc)
            return Result(outcome, status, (self._clock.monotonic() - t0) * 1000, error, None,
                          None, started_at)
        latency_ms = (self._clock.monotonic() - t0) * 1000
        if 200 <= status < 300:
            return Result(Outcome.SUCCESS, status, latency_ms, note, snippet, None, started_at)
        error = f"HTTP {status}"
        if 300 <= status < 400:
            error += " (redirects are not followed)"
        return Result(Outcome.HTTP_ERROR, status, latency_ms, error, snippet, retry_after, started_at)

    async def _read_snippet(self, resp: aiohttp.ClientResponse) -> tuple[str | None, str | None]:
        """Read at most the configured bytes of the body; a body that fails midway is kept as read."""
        limit = self._snippet
        if limit == 0:
            return None, None
        chunks: list[bytes] = []
        size = 0
        note = None
        try:
            while size < limit:
                chunk = await resp.content.read(limit - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if resp.content.at_eof():  # spares one more read on short answers
                    break
        except Exception as exc:  # noqa: BLE001 - the status already decided the outcome
            note = f"response body incomplete: {classify(exc)[1]}"
        return b"".join(chunks).decode("utf-8", "replace"), note
