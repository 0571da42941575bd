"""Hostile receivers: each attempt ends within the timeout, is recorded right, and harms no one.

Every receiver here misbehaves in one way (hangs, never answers, trickles,
floods, redirects, hangs up, shows a bad certificate, asks to slow down). For
each, the real dispatcher runs with ``delivery.timeout = 1`` next to a healthy
webhook of the same organization, and the test checks the recorded outcome,
that the attempt ended within the timeout, and that the healthy webhook's
latency stayed close to what it was before the hostile events arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket
import statistics
import struct
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import trustme

from nevent_dispatch.models import Outcome, State
from nevent_dispatch.pipeline.dispatcher import Dispatcher

from ..conftest import emit
from .conftest import RawServer, free_port, read_request, run_cli, toml_config, wait_until

TIMEOUT = 1.0
SNIPPET = 256
BIG = 50 * 1024 * 1024
#: Hostile events sent at once, so several attempts hang together.
HOSTILE_EVENTS = 3
HEALTHY_PROBES = 5


# -- the hostile handlers: (reader, writer, server) -------------------------------------------

async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, s: RawServer) -> None:
    """Reads the whole request, then never answers."""
    await read_request(reader, s)
    await asyncio.sleep(3600)


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, s: RawServer) -> None:
    """Accepts the TCP connection and never says a word (not even the TLS handshake)."""
    await asyncio.sleep(3600)


async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, s: RawServer) -> None:
    """Sends a perfectly good 200 answer, one byte a second."""
    await read_request(reader, s)
    for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok":
        writer.write(bytes([byte]))
        s.bytes_sent += 1
        await writer.drain()
        await asyncio.sleep(1)


async def trickle_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       s: RawServer) -> None:
    """Sends a 500 status at once, then its body one byte a second."""
    await read_request(reader, s)
    writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 1000\r\n\r\n")
    await writer.drain()
    for _ in range(1000):
        writer.write(b"x")
        s.bytes_sent += 1
        await writer.drain()
        await asyncio.sleep(1)


async def huge(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, s: RawServer) -> None:
    """Answers 200 with a 50 MB body, as fast as the client takes it."""
    await read_request(reader, s)
    writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n"
                 "Content-Type: text/plain\r\n\r\n".encode())
    chunk = b"z" * 65536
    while s.bytes_sent < BIG:
        writer.write(chunk)
        await writer.drain()
        s.bytes_sent += len(chunk)


async def huge_chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       s: RawServer) -> None:
    """Answers 500 with an endless chunked body."""
    await read_request(reader, s)
    writer.write(b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (65536, b"y" * 65536)
    while s.bytes_sent < BIG:
        writer.write(chunk)
        await writer.drain()
        s.bytes_sent += 65536


def redirect_to(location: str | None) -> Callable[..., Awaitable[None]]:
    async def redirect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       s: RawServer) -> None:
        while True:  # keep-alive: a followed redirect would come back on this connection
            await read_request(reader, s)
            target = location or s.url
            writer.write(f"HTTP/1.1 302 Found\r\nLocation: {target}\r\nContent-Length: 5\r\n\r\n"
                         "moved".encode())
            await writer.drain()
    return redirect


async def close_before_status(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                              s: RawServer) -> None:
    """Starts the status line, then hangs up."""
    await read_request(reader, s)
    writer.write(b"HTTP/1.1 20")
    await writer.drain()


async def close_mid_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         s: RawServer) -> None:
    """Answers 200 and hangs up after 7 of the 100 announced body bytes."""
    await read_request(reader, s)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
    await writer.drain()


async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, s: RawServer) -> None:
    """Reads the request, then resets the connection."""
    await read_request(reader, s)
    transport = writer.transport
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, s: RawServer) -> None:
    """Answers something that is not HTTP at all."""
    await read_request(reader, s)
    writer.write(b"\x00\xffSSH-2.0-OpenSSH_9.6\r\n" * 10)
    await writer.drain()
    await asyncio.sleep(3600)


async def huge_header(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      s: RawServer) -> None:
    """Answers 200 with a 1 MB header line."""
    await read_request(reader, s)
    writer.write(b"HTTP/1.1 200 OK\r\nX-Junk: " + b"j" * 1_000_000 + b"\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()


async def too_many_requests(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            s: RawServer) -> None:
    """429 with Retry-After: 3."""
    await read_request(reader, s)
    writer.write(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nContent-Length: 4\r\n\r\nslow")
    await writer.drain()


def ok_with(cert_kind: str) -> Callable[..., Awaitable[None]]:
    async def ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, s: RawServer) -> None:
        await read_request(reader, s)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
    ok.__doc__ = f"A normal answer, behind a {cert_kind} certificate."
    return ok


def expired_cert(ca: trustme.CA) -> trustme.LeafCert:
    now = dt.datetime.now(dt.UTC)
    return ca.issue_cert("127.0.0.1", "localhost", not_before=now - dt.timedelta(days=30),
                         not_after=now - dt.timedelta(days=1))


def not_yet_valid_cert(ca: trustme.CA) -> trustme.LeafCert:
    now = dt.datetime.now(dt.UTC)
    return ca.issue_cert("127.0.0.1", "localhost", not_before=now + dt.timedelta(days=1),
                         not_after=now + dt.timedelta(days=30))


def wrong_host_cert(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("example.org")


def untrusted_cert(ca: trustme.CA) -> trustme.LeafCert:
    return trustme.CA().issue_cert("127.0.0.1")


async def plain_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     s: RawServer) -> None:
    """Speaks plain HTTP on the port the webhook reaches over TLS."""
    await reader.read(1024)
    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()


@dataclass(frozen=True)
class Case:
    handler: Callable[..., Awaitable[None]] | None
    outcome: Outcome
    status: int | None = None
    #: A piece of the recorded error (None: no error recorded).
    error: str | None = None
    cert: Callable[[trustme.CA], trustme.LeafCert] | None = None
    #: The server speaks no TLS although the webhook URL is https.
    plain: bool = False
    retries: bool = False


CASES: dict[str, Case] = {
    "hangs after reading the request": Case(hang, Outcome.TIMEOUT, error="timeout"),
    "accepts the connection and never answers": Case(silent, Outcome.TIMEOUT, error="timeout",
                                                      plain=True),
    "trickles the answer one byte a second": Case(trickle, Outcome.TIMEOUT, error="timeout"),
    "trickles the body of a 500": Case(trickle_body, Outcome.HTTP_ERROR, 500, "HTTP 500"),
    "answers 200 with a 50 MB body": Case(huge, Outcome.SUCCESS, 200),
    "answers 500 with an endless chunked body": Case(huge_chunked, Outcome.HTTP_ERROR, 500,
                                                     "HTTP 500"),
    "redirects to itself": Case(redirect_to(None), Outcome.HTTP_ERROR, 302,
                                "redirects are not followed"),
    "redirects to 169.254.169.254": Case(
        redirect_to("http://169.254.169.254/latest/meta-data/iam/security-credentials/"),
        Outcome.HTTP_ERROR, 302, "redirects are not followed"),
    "hangs up in the status line": Case(close_before_status, Outcome.CONNECTION_ERROR,
                                        error="Server"),
    # The receiver said 200, so it has the event: success, with the broken body noted.
    "hangs up in the body of a 200": Case(close_mid_body, Outcome.SUCCESS, 200,
                                          "response body incomplete"),
    "resets the connection": Case(reset, Outcome.CONNECTION_ERROR, error="Error"),
    "answers something that is not HTTP": Case(garbage, Outcome.CONNECTION_ERROR, error="Error"),
    "answers a 1 MB header": Case(huge_header, Outcome.CONNECTION_ERROR, error="Error"),
    "has an expired certificate": Case(ok_with("expired"), Outcome.TLS_ERROR, error="expired",
                                       cert=expired_cert),
    "has a certificate not yet valid": Case(ok_with("future"), Outcome.TLS_ERROR, error="tls: ",
                                            cert=not_yet_valid_cert),
    "has a certificate for another host": Case(ok_with("wrong host"), Outcome.TLS_ERROR,
                                               error="mismatch", cert=wrong_host_cert),
    "has a certificate from an unknown CA": Case(ok_with("untrusted"), Outcome.TLS_ERROR,
                                                 error="certificate verify failed",
                                                 cert=untrusted_cert),
    "speaks plain HTTP to a TLS client": Case(plain_http, Outcome.TLS_ERROR, error="tls: ",
                                              plain=True),
    "refuses the connection": Case(None, Outcome.CONNECTION_ERROR, error="Connect"),
    "answers 429 with Retry-After: 3": Case(too_many_requests, Outcome.HTTP_ERROR, 429,
                                            "HTTP 429", retries=True),
}


def hostile_config(make_config: Callable[..., Any]) -> Any:
    return make_config(
        delivery={"timeout": TIMEOUT, "response_snippet_bytes": SNIPPET,
                  "retry_schedule": (0.05, 5.0), "shutdown_grace": 2.0},
        rate_limit={"events_per_minute": 1_000_000, "burst": 10_000})


async def start_hostile(case: Case, raw_server: Any, tls: dict[str, Any]) -> tuple[str, Any]:
    if case.handler is None:
        return f"https://127.0.0.1:{free_port()}/hook", None
    cert = case.cert(tls["ca"]) if case.cert else None
    server = await raw_server(case.handler, cert=cert, tls_on=not case.plain)
    return server.url.replace("http://", "https://"), server


async def probe(config: Any, receiver: Any, n: int) -> float:
    """Publish one event for the healthy webhook; return its end-to-end latency in seconds."""
    start = time.time()
    emit(config, [("email.sent", "org_a", {"probe": n})])

    def arrived() -> float | None:
        for request in receiver.requests:
            if request.json().get("data", {}).get("probe") == n:
                return request.received_at
        return None

    received_at = await wait_until(arrived, 10, interval=0.005, what=f"healthy probe {n}")
    return max(received_at - start, 0.0)


@pytest.mark.parametrize("name", list(CASES))
async def test_a_hostile_receiver_costs_one_bounded_attempt_and_delays_no_one(
        name, store, make_config, make_receiver, make_webhook, raw_server, tls, figures):
    """The attempt ends within the timeout with the right outcome; the healthy webhook is unaffected."""
    case = CASES[name]
    figures.note("faults", name)
    config = hostile_config(make_config)
    healthy = await make_receiver()
    url, server = await start_hostile(case, raw_server, tls)
    good, _ = await make_webhook(store, healthy.url, events="email.*", name="healthy")
    bad, _ = await make_webhook(store, url, events="fan.*", retries=case.retries, name="hostile")

    dispatcher = Dispatcher(config, store)
    task = asyncio.create_task(dispatcher.run())
    try:
        baseline = [await probe(config, healthy, n) for n in range(HEALTHY_PROBES)]
        emit(config, [("fan.created", "org_a", {"n": n}) for n in range(HOSTILE_EVENTS)])
        await asyncio.sleep(0.1)
        loaded = [await probe(config, healthy, HEALTHY_PROBES + n) for n in range(HEALTHY_PROBES)]

        async def attempted() -> bool:
            found = await store.list_deliveries(webhook_id=bad.id)
            return len(found) == HOSTILE_EVENTS and all(d.attempts >= 1 for d in found)

        await wait_until(attempted, TIMEOUT + 10, what="the hostile attempts to be recorded")
    finally:
        dispatcher.stop()
        await asyncio.wait_for(task, 15)

    for delivery in await store.list_deliveries(webhook_id=bad.id):
        first = (await store.attempts(delivery.id))[0]
        detail = (name, first)
        assert first.outcome is case.outcome, detail
        assert first.status == case.status, detail
        if case.error is None:
            assert first.error is None, detail
        else:
            assert case.error in (first.error or ""), detail
        assert first.latency_ms <= TIMEOUT * 1000 + 750, detail
        assert first.response is None or len(first.response.encode()) <= SNIPPET * 3, detail
        assert first.response is None or len(first.response) <= SNIPPET, detail
        if case.retries:
            assert delivery.state is State.PENDING and delivery.next_at is not None
            assert 2.5 <= delivery.next_at - first.started_at <= 3.5, "Retry-After: 3 honoured"
        else:
            expected = State.DELIVERED if case.outcome is Outcome.SUCCESS else State.FAILED
            assert delivery.state is expected, detail
    if server is not None and name.startswith("redirects"):
        assert len(server.requests) == HOSTILE_EVENTS, "a redirect is never followed"
    if server is not None and "50 MB" in name:
        assert server.bytes_sent < BIG, "the 50 MB body was not read whole"

    assert all(d.state is State.DELIVERED
               for d in await store.list_deliveries(webhook_id=good.id))
    base, under_fire = statistics.median(baseline), statistics.median(loaded)
    assert under_fire < 5 * base + 0.25, (
        f"healthy webhook slowed by {name}: median {under_fire:.3f} s vs {base:.3f} s before")


async def test_a_50_mb_answer_is_read_no_further_than_the_snippet(
        store, make_config, make_webhook, raw_server, figures):
    """Memory stays bounded: the peak traced allocation is far below the body's size."""
    figures.note("faults", "answers 200 with a 50 MB body (memory)")
    config = hostile_config(make_config)
    server = await raw_server(huge)
    webhook, _ = await make_webhook(store, server.url, retries=False)
    emit(config, [("fan.created", "org_a", {"n": n}) for n in range(4)])
    tracemalloc.start()
    try:
        started = time.monotonic()
        dispatcher = Dispatcher(config, store)
        await asyncio.wait_for(dispatcher.run(until_idle=True), 30)
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    deliveries = await store.list_deliveries(webhook_id=webhook.id)
    assert len(deliveries) == 4 and all(d.state is State.DELIVERED for d in deliveries)
    for delivery in deliveries:
        [attempt] = await store.attempts(delivery.id)
        assert attempt.response == "z" * SNIPPET
    assert peak < 16 * 1024 * 1024, f"peak traced memory {peak / 1e6:.1f} MB"
    assert elapsed < 10
    figures.set("huge_body_peak_traced_mb", round(peak / 1e6, 1))
    assert server.bytes_sent < BIG, "not even one whole body was taken"


async def test_a_receivers_answer_cannot_drive_the_operators_terminal(
        store, make_config, make_webhook, raw_server, tmp_path, figures):
    """Control characters in a response are shown escaped by `deliveries show`, never raw."""
    figures.note("faults", "answers with terminal escape sequences")

    async def escapes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      s: RawServer) -> None:
        await read_request(reader, s)
        body = b"\x1b[2J\x1b[31mALL GOOD\x1b[0m\r\x07\x08\x08\x08"
        writer.write(b"HTTP/1.1 500 Oops\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()

    config = hostile_config(make_config)
    server = await raw_server(escapes)
    webhook, _ = await make_webhook(store, server.url, retries=False)
    emit(config, [("fan.created", "org_a", {})])
    await asyncio.wait_for(Dispatcher(config, store).run(until_idle=True), 30)
    [delivery] = await store.list_deliveries(webhook_id=webhook.id)
    [attempt] = await store.attempts(delivery.id)
    assert "\x1b[2J" in (attempt.response or ""), "the history keeps what was answered"

    path = toml_config(tmp_path / "cli.toml", config)
    result = await asyncio.to_thread(run_cli, "deliveries", "show", str(delivery.id),
                                     config_path=path, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for line in result.stdout.splitlines():
        assert all(c.isprintable() for c in line), repr(line)
