"""Support for the management API's tests: API daemons as real subprocesses, a JSON client,
a receiver in a process of its own, and a look at the state database from outside.

An ``ApiDaemon`` is ``nevent-dispatch init`` then ``nevent-dispatch run`` on a TOML file of
the test's own, its JSON log lines in a file; its URL is the one its ``api_listening``
line names. Whoever starts one stops it (``stop``/``kill`` by its pid), in a fixture or a
``finally``, even when the test fails. Nothing here talks to anything but 127.0.0.1 and
Unix sockets in the test's folders.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from nevent_dispatch.config import Config, api_token_file
from nevent_dispatch.publish import publish

from ..conftest import Daemon, write_config

#: Seconds a daemon has to say where it listens, and to stop after SIGTERM.
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
#: Seconds a CLI subprocess may take.
CLI_TIMEOUT_S = 60.0


def cli_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k not in ("NEVENT_DISPATCH_CONFIG", "NEVENT_DISPATCH_DEBUG")}


def run_cli(config_path: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m nevent_dispatch --config PATH ARGS…`` with a deadline."""
    return subprocess.run([sys.executable, "-m", "nevent_dispatch", "--config", str(config_path),
                           *args], cwd=cwd, env=cli_env(), capture_output=True, text=True,
                          timeout=CLI_TIMEOUT_S, check=False)


def api_tables(listen: str, extra: str = "") -> str:
    """The TOML of the API daemons: the API on ``listen``, debug logs (the watcher's
    ``webhooks_changed`` lines say when a change made over HTTP reached the pipeline)."""
    return f'\n[api]\nlisten = "{listen}"\n\n[log]\nlevel = "debug"\n{extra}'


class ApiDaemon:
    """One daemon serving the API, on its own config file and log."""

    def __init__(self, folder: Path, config: Config, *, listen: str = "127.0.0.1:0",
                 name: str = "api", extra: str = "") -> None:
        self.folder = folder
        self.config = config
        self.config_path = write_config(folder / f"{name}.toml", config, api_tables(listen, extra))
        self.log_path = folder / f"{name}.log"
        self.process: Daemon | None = None
        self.url = ""
        #: What ``init`` printed.
        self.init_output = ""

    @property
    def token_file(self) -> Path:
        return api_token_file(self.config)

    @property
    def pid(self) -> int:
        assert self.process is not None and self.process.proc is not None
        return self.process.proc.pid

    def init(self) -> subprocess.CompletedProcess[str]:
        result = run_cli(self.config_path, "init", cwd=self.folder)
        assert result.returncode == 0, result.stderr
        self.init_output = result.stdout + result.stderr
        return result

    def tokens(self) -> list[str]:
        return [line.strip() for line in self.token_file.read_text().splitlines()
                if line.strip() and not line.startswith("#")]

    @property
    def token(self) -> str:
        return self.tokens()[0]

    def start(self) -> ApiDaemon:
        self.process = Daemon(self.config_path, self.log_path).start()
        return self

    def exited(self) -> int | None:
        assert self.process is not None and self.process.proc is not None
        return self.process.proc.poll()

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def lines(self) -> list[dict[str, Any]]:
        assert self.process is not None
        return self.process.log_lines()

    async def wait_line(self, event: str, timeout: float = START_TIMEOUT_S,
                        where: Callable[[dict[str, Any]], bool] = lambda line: True,
                        events: tuple[str, ...] = ()) -> dict[str, Any]:
        """The first log line named ``event`` (or one of ``events``) that ``where`` accepts;
        fail if the daemon exits first or none comes within ``timeout``."""
        deadline = time.monotonic() + timeout
        names = events or (event,)
        while True:
            exited = self.exited()  # read before the log: its last lines count
            for line in self.lines():
                if line.get("event") in names and where(line):
                    return line
            assert exited is None, f"the daemon exited ({exited}) before {event}:\n{self.log_text()}"
            assert time.monotonic() < deadline, f"no {event} line within {timeout} s"
            await asyncio.sleep(0.05)

    async def listening(self) -> str:
        self.url = (await self.wait_line("api_listening"))["url"]
        return self.url

    async def caught_up(self) -> None:
        """Wait until the pipeline has applied every webhook change committed so far (an
        event emitted after this reaches a webhook enabled before it): the watcher's
        ``webhooks_changed`` line, or the ``webhooks_loaded`` of a pipeline that started
        after the change, names a revision at least as recent."""
        rev = webhooks_rev(self.config)
        await self.wait_line("webhooks_changed", where=lambda line: line.get("rev", -1) >= rev,
                             events=("webhooks_changed", "webhooks_loaded"))

    def stop(self) -> int:
        """SIGTERM and wait (SIGKILL if it outlives the deadline); the exit status."""
        assert self.process is not None and self.process.proc is not None
        proc = self.process.proc
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
        self.process.stop()  # closes the log file
        return int(proc.returncode)

    def kill(self) -> None:
        if self.process is not None:
            self.process.stop()


# -- the state and outbox databases, from outside -------------------------------------------------


def _read(config: Config, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{config.database.state}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def webhooks_rev(config: Config) -> int:
    return int(_read(config, "SELECT value FROM meta WHERE key = 'webhooks_rev'")[0][0])


def delivered_count(config: Config, webhook_id: str) -> int:
    return int(_read(config, "SELECT count(*) FROM deliveries WHERE webhook_id = ? AND "
                             "state = 'delivered'", (webhook_id,))[0][0])


def emit_events(config: Config, events: list[tuple[str, str, Any]]) -> list[str]:
    """Publish events in one committed transaction, as the application does; their ids."""
    conn = sqlite3.connect(config.database.outbox, timeout=30)
    try:
        with conn:
            rows = [publish(conn, type_, org, data) for type_, org, data in events]
        return [conn.execute("SELECT event_id FROM outbox WHERE id = ?", (row,)).fetchone()[0]
                for row in rows]
    finally:
        conn.close()


# -- the client ------------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    body: Any
    headers: Any
    raw: bytes

    @property
    def error(self) -> dict[str, Any]:
        assert isinstance(self.body, dict) and "error" in self.body, (self.status, self.raw)
        return dict(self.body["error"])


_DEFAULT: Any = object()


class Client:
    """JSON over HTTP to one daemon's API, with its token unless told otherwise."""

    def __init__(self, session: aiohttp.ClientSession, base: str, token: str | None) -> None:
        self.session, self.base, self.token = session, base, token

    async def call(self, method: str, path: str, *, json: Any = _DEFAULT, data: Any = None,
                   headers: dict[str, str] | None = None, token: Any = _DEFAULT,
                   params: Any = None) -> Reply:
        sent = dict(headers or {})
        bearer = self.token if token is _DEFAULT else token
        if bearer is not None:
            sent.setdefault("Authorization", f"Bearer {bearer}")
        if json is not _DEFAULT:
            data = orjson.dumps(json)
            sent.setdefault("Content-Type", "application/json")
        async with self.session.request(method, self.base + path, data=data, headers=sent,
                                        params=params) as response:
            raw = await response.read()
            try:
                body = orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                body = None
            return Reply(response.status, body, response.headers, raw)

    async def get(self, path: str, **kw: Any) -> Reply:
        return await self.call("GET", path, **kw)

    async def post(self, path: str, body: Any = _DEFAULT, **kw: Any) -> Reply:
        return await self.call("POST", path, json=body, **kw)

    async def patch(self, path: str, body: Any = _DEFAULT, **kw: Any) -> Reply:
        return await self.call("PATCH", path, json=body, **kw)

    async def delete(self, path: str, **kw: Any) -> Reply:
        return await self.call("DELETE", path, **kw)


@contextlib.asynccontextmanager
async def client(daemon: ApiDaemon, *, token: Any = _DEFAULT, limit: int = 100
                 ) -> AsyncIterator[Client]:
    """A client of ``daemon``'s API (TCP or Unix socket)."""
    connector: aiohttp.BaseConnector
    if daemon.url.startswith("unix:"):
        connector, base = aiohttp.UnixConnector(daemon.url.removeprefix("unix:")), "http://api"
    else:
        connector, base = aiohttp.TCPConnector(limit=limit), daemon.url
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        yield Client(session, base, daemon.token if token is _DEFAULT else token)


async def wait_until(check: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.05)


# -- a receiver in a process of its own ------------------------------------------------------------

RECEIVER_SCRIPT = """
import asyncio, ssl, sys
from aiohttp import web

async def main():
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(sys.argv[1])
    async def ok(request):
        await request.read()
        return web.Response(text="ok")
    app = web.Application()
    app.router.add_post("/{tail:.*}", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context, backlog=1024)
    await site.start()
    print(site._server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


class ReceiverProcess:
    """A fast HTTPS receiver answering 200 to every POST, in its own process (so that the
    test's own load does not slow what it measures)."""

    def __init__(self, folder: Path, tls: dict[str, Any]) -> None:
        pem = folder / "receiver.pem"
        tls["cert"].private_key_and_cert_chain_pem.write_to_path(str(pem))
        self.proc = subprocess.Popen([sys.executable, "-c", RECEIVER_SCRIPT, str(pem)],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     env=cli_env())
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], START_TIMEOUT_S)
        port = self.proc.stdout.readline().strip() if ready else b""
        if not port.isdigit():
            self.stop()
            raise AssertionError("the receiver did not start")
        self.url = f"https://127.0.0.1:{int(port)}/hook"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
