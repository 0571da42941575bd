"""Shared fixtures: real TLS receivers on 127.0.0.1, real SQLite files, real daemons.

Every server and daemon a test starts is stopped by its fixture, even when
the test fails.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import trustme
from aiohttp import web

from nevent_dispatch import registry
from nevent_dispatch.config import Config
from nevent_dispatch.pipeline.dispatcher import Dispatcher
from nevent_dispatch.publish import publish
from nevent_dispatch.store.sqlite import Store

#: Every (outbox_id, webhook_id) a batch-mode webhook holds in the state database: carried
#: by a batch delivery, or still waiting for one (after the webhook's batch mark).
BATCH_EVENTS_SQL = """
SELECT json_extract(e.value, '$[0]') AS outbox_id, d.webhook_id AS webhook_id
FROM batch_contents c JOIN deliveries d ON d.id = c.delivery_id, json_each(c.events) e
UNION ALL
SELECT json_extract(e.value, '$[0]'), w.webhook_id FROM batch_waiting w, json_each(w.events) e
WHERE json_extract(e.value, '$[0]') > coalesce(
    (SELECT m.outbox_id FROM batch_marks m WHERE m.webhook_id = w.webhook_id), 0)
"""


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def one_line_error(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """Assert a CLI refusal: exit ``code``, one ``nevent-dispatch: …`` line, no traceback."""
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("nevent-dispatch: ")
    return lines[0]


def usage_error(result: subprocess.CompletedProcess[str]) -> str:
    """Assert a malformed command line: exit 2, argparse's usage and one ``error:`` line last
    (``nevent-dispatch listen: error: argument --port: must be 0..65535, got '70000'``)."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    *usage, last = result.stderr.strip().splitlines()
    assert usage and usage[0].startswith("usage: nevent-dispatch"), result.stderr
    assert last.startswith("nevent-dispatch") and ": error: " in last, result.stderr
    return last.split(": error: ", 1)[1]


def seed_verify(raw_body: bytes, header: str, secret: str) -> bool:
    """The customer docs' Python snippet, written independently of nevent_dispatch.wire.signing."""
    parts = dict(part.split("=", 1) for part in header.split(","))
    timestamp, received = parts["t"], parts["v1"]
    signed_payload = f"{timestamp}.{raw_body.decode()}"
    expected = hmac.new(secret.encode(), signed_payload.encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, received)


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A local CA and a server certificate for 127.0.0.1 and localhost."""
    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost", "::1")
    ca_file = folder / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return {"ca": ca, "cert": cert, "ca_file": ca_file}


def server_context(cert: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Receiver:
    url: str
    requests: list[Request] = field(default_factory=list)

    def events(self) -> list[dict[str, Any]]:
        """Every event received, batches unpacked."""
        out = []
        for request in self.requests:
            body = request.json()
            out.extend(body["events"] if body.get("type") == "batch" else [body])
        return out


@pytest.fixture
async def make_receiver(tls: dict[str, Any]) -> AsyncIterator[Callable[..., Any]]:
    """Start HTTPS receivers answering ``statuses`` in turn (then 200), after ``delay`` s."""
    runners: list[web.AppRunner] = []

    async def factory(statuses: list[int] | None = None, delay: float = 0.0,
                      headers: dict[str, str] | None = None, handler: Any = None,
                      tls_on: bool = True) -> Receiver:
        plan = list(statuses or [])
        receiver = Receiver(url="")

        async def handle(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            receiver.requests.append(Request(request.path, dict(request.headers), body, time.time()))
            if handler is not None:
                return await handler(request)
            if delay:
                await asyncio.sleep(delay)
            status = plan.pop(0) if plan else 200
            return web.Response(status=status, text="ok" if status < 300 else "nope",
                                headers=headers if status >= 300 else None)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0,
                           ssl_context=server_context(tls["cert"]) if tls_on else None)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        receiver.url = f"{'https' if tls_on else 'http'}://127.0.0.1:{port}/hook"
        return receiver

    yield factory
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
def make_config(tmp_path: Path, tls: dict[str, Any]) -> Callable[..., Config]:
    """A config on this test's own SQLite files, trusting the local CA, with short retries."""

    def factory(**tables: Any) -> Config:
        base = Config().replace(
            database={"outbox": tmp_path / "app.db", "state": tmp_path / "state.db"},
            delivery={"allow_private_networks": True, "ca_file": tls["ca_file"],
                      "retry_schedule": (0.05, 0.05, 0.05, 0.05, 0.05), "timeout": 5.0},
            outbox={"poll_interval": 0.01},
            batch={"max_wait": 0.05},
            # A free port: daemons of parallel tests must not contend for the default one.
            api={"listen": "127.0.0.1:0"},
        )
        return base.replace(**tables) if tables else base

    return factory


@pytest.fixture
async def store(make_config: Callable[..., Config]) -> AsyncIterator[Store]:
    s = await Store.open(make_config())
    yield s
    await s.close()


@pytest.fixture
def make_webhook(make_config: Callable[..., Config]) -> Callable[..., Any]:
    """Create and activate a webhook; returns (webhook, secret)."""

    async def factory(store: Store, url: str, *, org: str = "org_a", active: bool = True,
                      secret: str | None = None, **kw: Any) -> tuple[Any, str]:
        webhook, generated = await registry.create(
            store, store.config, organization_id=org, url=url, name=kw.pop("name", "test hook"),
            secret=secret, now=time.time(), **kw)
        if active:
            webhook = await registry.set_active(store, webhook.id, True, time.time())
        return webhook, (secret or generated)  # type: ignore[return-value]

    return factory


def emit(config: Config, events: list[tuple[str, str, Any]]) -> None:
    """Insert events as the application does: publish() in one committed transaction."""
    conn = sqlite3.connect(config.database.outbox)
    try:
        with conn:
            for type_, org, data in events:
                publish(conn, type_, org, data)
    finally:
        conn.close()


def insert_raw(config: Config, rows: list[tuple[Any, Any, Any]]) -> None:
    """Insert outbox rows bypassing publish()'s checks, as a careless application might."""
    conn = sqlite3.connect(config.database.outbox)
    try:
        with conn:
            conn.executemany("INSERT INTO outbox (type, organization_id, data) VALUES (?, ?, ?)", rows)
    finally:
        conn.close()


async def drain(config: Config, store: Store, timeout: float = 30.0, **kw: Any) -> Dispatcher:
    """Run the real dispatcher until nothing is left to do."""
    dispatcher = Dispatcher(config, store, **kw)
    await asyncio.wait_for(dispatcher.run(until_idle=True), timeout)
    return dispatcher


# -- daemon subprocesses ---------------------------------------------------------------------

def write_config(path: Path, config: Config, extra: str = "") -> Path:
    """Write ``config``'s database and delivery essentials as TOML for a daemon subprocess."""
    d = config.delivery
    schedule = ", ".join(str(s) for s in d.retry_schedule)
    text = f"""
[database]
outbox = "{config.database.outbox}"
state = "{config.database.state}"

[outbox]
poll_interval = {config.outbox.poll_interval}

[delivery]
timeout = {d.timeout}
retry_schedule = [{schedule}]
allow_private_networks = {str(d.allow_private_networks).lower()}
ca_file = "{d.ca_file or ''}"
shutdown_grace = {d.shutdown_grace}

[batch]
max_wait = {config.batch.max_wait}

[rate_limit]
events_per_minute = {config.rate_limit.events_per_minute}
burst = {config.rate_limit.burst}
{"" if "[api]" in extra else f'[api]{chr(10)}listen = "{config.api.listen}"'}
{extra}
"""
    path.write_text(text)
    return path


class Daemon:
    """``nevent-dispatch run`` as a real subprocess, logging JSON lines to a file."""

    def __init__(self, config_path: Path, log_path: Path) -> None:
        self.config_path = config_path
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *args: str) -> Daemon:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nevent_dispatch", "run", "--config", str(self.config_path), *args],
            stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        return self

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        if not self._log.closed:
            self._log.close()

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log_path.read_bytes().splitlines():
            try:
                lines.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                lines.append({"raw": line.decode("utf-8", "replace")})
        return lines


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Start daemons on a config file; every one is killed at the end of the test."""
    started: list[Daemon] = []

    def factory(config: Config, extra: str = "", *args: str) -> Daemon:
        path = write_config(tmp_path / f"daemon{len(started)}.toml", config, extra)
        d = Daemon(path, tmp_path / "daemon.log").start(*args)
        started.append(d)
        return d

    yield factory
    for d in started:
        d.stop()
