"""Shared pieces of the reliability tests: the figures for the report, raw servers, helpers.

The figures (kills survived, events published and lost, duplicates, faults and
bad inputs tried) are collected in one session-wide dict and written as JSON to
the path in $RELIABILITY_FIGURES when it is set; ``scripts/reliability_report.py``
turns them into ``docs/reliability.md``.

Every server, thread and subprocess started here is stopped by its fixture,
even when the test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import trustme

from nevent_dispatch.config import Config

from ..conftest import free_port  # noqa: F401 - re-exported for the reliability tests

#: Environment variable naming the JSON file the figures are written to.
FIGURES_ENV = "RELIABILITY_FIGURES"
#: Environment variable fixing the seed of the randomized tests.
SEED_ENV = "RELIABILITY_SEED"
#: Folder of the DNS stub loaded by CLI subprocesses (see ``tests/fixtures/dns_stub``).
DNS_STUB = Path(__file__).resolve().parent.parent / "fixtures" / "dns_stub"


# -- figures ------------------------------------------------------------------------------


class Figures:
    """Counters and notes the tests leave for the reliability report."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def add(self, key: str, amount: int = 1) -> None:
        self.data[key] = int(self.data.get(key, 0)) + amount

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value

    def note(self, key: str, item: Any) -> None:
        """Append ``item`` to the list under ``key`` (e.g. the names of faults tried)."""
        self.data.setdefault(key, []).append(item)


@pytest.fixture(scope="session")
def figures() -> Iterator[Figures]:
    collected = Figures()
    yield collected
    path = os.environ.get(FIGURES_ENV)
    if path:
        Path(path).write_bytes(orjson.dumps(collected.data, option=orjson.OPT_INDENT_2
                                            | orjson.OPT_SORT_KEYS))


# -- raw servers ---------------------------------------------------------------------------


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class RawServer:
    """A hand-written server on 127.0.0.1: it answers however its handler likes, or never."""

    url: str
    port: int
    #: Connections accepted so far.
    connections: int = 0
    #: Raw request heads (request line and headers) read by ``read_request``.
    requests: list[bytes] = field(default_factory=list)
    #: Bytes of response the handler managed to write.
    bytes_sent: int = 0


async def read_request(reader: asyncio.StreamReader, server: RawServer) -> bytes:
    """Read one HTTP request (head and Content-Length body); return the body."""
    head = await reader.readuntil(b"\r\n\r\n")
    server.requests.append(head)
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    return await reader.readexactly(length)


def server_context(cert: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context


@pytest.fixture
async def raw_server(tls: dict[str, Any]) -> AsyncIterator[Callable[..., Awaitable[RawServer]]]:
    """Start raw asyncio servers: ``await raw_server(handler, cert=..., tls_on=True)``.

    The handler gets ``(reader, writer, server)``; at teardown every connection it
    still holds is closed and every handler still running is cancelled.
    """
    servers: list[asyncio.base_events.Server] = []
    tasks: set[asyncio.Task[Any]] = set()
    writers: list[asyncio.StreamWriter] = []

    async def factory(handler: Callable[..., Awaitable[None]], *,
                      cert: trustme.LeafCert | None = None, tls_on: bool = True,
                      path: str = "/hook") -> RawServer:
        state = RawServer(url="", port=0)

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            tasks.add(task)
            writers.append(writer)
            state.connections += 1
            try:
                await handler(reader, writer, state)
            except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError):
                pass  # the client went away: that is the point of most of these servers
            finally:
                tasks.discard(task)
                writer.close()

        context = server_context(cert or tls["cert"]) if tls_on else None
        server = await asyncio.start_server(on_connect, "127.0.0.1", 0, ssl=context)
        servers.append(server)
        state.port = server.sockets[0].getsockname()[1]
        state.url = f"{'https' if tls_on else 'http'}://127.0.0.1:{state.port}{path}"
        return state

    yield factory
    for server in servers:
        server.close()
    for task in list(tasks):
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for writer in writers:
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 1)
    for server in servers:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1)


# -- CLI subprocesses ------------------------------------------------------------------------


def run_cli(*args: str, config_path: Path | None = None, hosts: dict[str, list[str]] | None = None,
            cwd: Path | None = None, stdin: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``python -m nevent_dispatch [--config PATH] ARGS…`` and return what it did.

    ``hosts`` answers name lookups in the subprocess from a fixed table (see
    ``tests/fixtures/dns_stub``) so that no DNS query leaves the machine.
    """
    env = {k: v for k, v in os.environ.items()
           if k not in ("NEVENT_DISPATCH_CONFIG", "NEVENT_DISPATCH_DEBUG")}
    pythonpath = [str(DNS_STUB), *filter(None, [env.get("PYTHONPATH")])]
    env["PYTHONPATH"] = os.pathsep.join(pythonpath)
    env["NEVENT_TEST_HOSTS"] = orjson.dumps(hosts or {}).decode()
    prefix = ("--config", str(config_path)) if config_path is not None else ()
    return subprocess.run([sys.executable, "-m", "nevent_dispatch", *prefix, *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout, check=False,
                          input=stdin)


def one_line_error(result: subprocess.CompletedProcess[str], *codes: int) -> str:
    """The single ``nevent-dispatch: …`` line of a refused command (no traceback)."""
    assert result.returncode in codes, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("nevent-dispatch: "), lines[0]
    return lines[0]


def toml_config(path: Path, config: Config, **extra: dict[str, Any]) -> Path:
    """Write every key a daemon subprocess needs from ``config``, plus ``extra`` tables.

    ``extra`` maps a table name to keys overriding or adding to it, e.g.
    ``log={"level": "debug"}``.
    """
    d = config.delivery
    tables: dict[str, dict[str, Any]] = {
        "database": {"outbox": str(config.database.outbox), "state": str(config.database.state)},
        "outbox": {"poll_interval": config.outbox.poll_interval,
                   "page_size": config.outbox.page_size},
        "delivery": {"timeout": d.timeout, "retry_schedule": list(d.retry_schedule),
                     "allow_http": d.allow_http,
                     "allow_private_networks": d.allow_private_networks,
                     "ca_file": str(d.ca_file or ""), "shutdown_grace": d.shutdown_grace,
                     "max_in_flight": d.max_in_flight,
                     "max_in_flight_per_webhook": d.max_in_flight_per_webhook,
                     "response_snippet_bytes": d.response_snippet_bytes,
                     "max_payload_bytes": d.max_payload_bytes},
        "batch": {"max_events": config.batch.max_events, "max_wait": config.batch.max_wait},
        "rate_limit": {"events_per_minute": config.rate_limit.events_per_minute,
                       "burst": config.rate_limit.burst},
        "log": {"format": config.log.format, "level": config.log.level},
        "api": {"listen": config.api.listen},
    }
    for name, values in extra.items():
        tables.setdefault(name, {}).update(values)
    lines = []
    for name, values in tables.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return orjson.dumps(str(value)).decode()  # a JSON string is a valid TOML basic string


# -- waiting ---------------------------------------------------------------------------------


async def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.02,
                     what: str = "condition") -> Any:
    """Poll ``predicate`` (sync or async) until it is truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)
