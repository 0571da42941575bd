"""What the delivery core's regression tests share: threaded receivers, a daemon bench, probes.

``ThreadedReceiver`` is a real HTTPS server on 127.0.0.1 running its own event
loop in a background thread, so that a test may block (CLI subprocesses,
SQLite inserts, sleeps) without stalling the receiver and distorting receipt
times. ``Bench`` is one test's nevent-dispatch installation: a minimal TOML
config on its own SQLite files (only the keys a test sets, so that the
daemon's defaults apply to the rest), ``init``, webhooks made with the CLI,
events inserted as the application does, reads of the state database and the
daemon subprocesses. The probes read a daemon's CPU time and resident memory
from ``/proc``.

Every receiver and daemon a bench starts is stopped by ``Bench.close``.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import ssl
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from nevent_dispatch.publish import publish

from ..conftest import Daemon, server_context
from .conftest import run_cli

# -- receivers -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hit:
    """One request as a receiver saw it."""

    received_at: float
    path: str
    headers: dict[str, str]
    #: The raw body (only its start when the receiver keeps only that).
    body: bytes
    size: int

    def json(self) -> Any:
        return orjson.loads(self.body)

    def events(self) -> list[dict[str, Any]]:
        """The events the request carried (a batch unpacked)."""
        body = self.json()
        return list(body["events"]) if body.get("type") == "batch" else [body]


#: How a receiver answers a request: (status, extra response headers).
Answer = tuple[int, dict[str, str]]
Decide = Callable[[Hit, "ThreadedReceiver"], Answer]


def always_ok(hit: Hit, receiver: ThreadedReceiver) -> Answer:
    return 200, {}


class ThreadedReceiver:
    """An HTTPS receiver with its own loop in a thread; ``decide`` picks each answer."""

    def __init__(self, cert: Any, decide: Decide = always_ok, *,
                 keep_bytes: int | None = None) -> None:
        self._context: ssl.SSLContext = server_context(cert)
        self._decide = decide
        #: Bytes of each body kept (None: all of it).
        self._keep_bytes = keep_bytes
        self._lock = threading.Lock()
        self._hits: list[Hit] = []
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._error: BaseException | None = None
        self.url = ""
        #: Time of the first request, for receivers whose answers depend on it.
        self.first_at: float | None = None

    @property
    def hits(self) -> list[Hit]:
        with self._lock:
            return list(self._hits)

    def count(self) -> int:
        with self._lock:
            return len(self._hits)

    def events(self) -> list[dict[str, Any]]:
        return [event for hit in self.hits for event in hit.events()]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        now = time.time()
        kept = body if self._keep_bytes is None else body[:self._keep_bytes]
        hit = Hit(now, request.path, dict(request.headers), kept, len(body))
        with self._lock:
            if self.first_at is None:
                self.first_at = now
            self._hits.append(hit)
        status, headers = self._decide(hit, self)
        return web.Response(status=status, text="ok" if status < 300 else "nope", headers=headers)

    async def _setup(self) -> None:
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._context)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"https://127.0.0.1:{port}/hook"

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._setup())
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self._error = exc
            ready.set()
            return
        ready.set()
        self._loop.run_forever()
        if self._runner is not None:
            self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def start(self) -> ThreadedReceiver:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), name="receiver",
                                        daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("receiver did not start within 10 s")
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


# -- the bench --------------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return orjson.dumps(str(value)).decode()  # a JSON string is a valid TOML basic string


class Bench:
    """One test's installation: config, databases, webhooks, receivers and daemons."""

    def __init__(self, folder: Path, tls: dict[str, Any], *, outbox_path: Path | None = None,
                 state_path: Path | None = None, **tables: dict[str, Any]) -> None:
        """Write the config (``tables`` override or add keys) and run ``init``."""
        self.folder = folder
        self.tls = tls
        self.outbox = outbox_path or folder / "app.db"
        self.state = state_path or folder / "state.db"
        self.receivers: list[ThreadedReceiver] = []
        self.daemons: list[Daemon] = []
        settings: dict[str, dict[str, Any]] = {
            "database": {"outbox": str(self.outbox), "state": str(self.state)},
            "delivery": {"allow_private_networks": True, "ca_file": str(tls["ca_file"]),
                         "timeout": 5.0},
            "api": {"listen": "127.0.0.1:0"},
        }
        for name, values in tables.items():
            settings.setdefault(name, {}).update(values)
        lines = []
        for name, values in settings.items():
            lines.append(f"[{name}]")
            lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
            lines.append("")
        self.config_path = folder / "dispatch.toml"
        self.config_path.write_text("\n".join(lines), encoding="utf-8")
        self.log_path = folder / "daemon.log"
        self.cli("init")

    # -- CLI and webhooks

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = run_cli(*args, config_path=self.config_path, cwd=self.folder)
        if check:
            assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result

    def webhook(self, url: str, *, org: str = "org_a", name: str = "hook", events: str = "*",
                rate_limit: int | None = None, batch: bool = False, active: bool = True) -> str:
        """Create a webhook with the CLI (and enable it); returns its id."""
        args = ["webhooks", "create", "--org", org, "--url", url, "--name", name, "--events",
                events, "--json"]
        if rate_limit is not None:
            args += ["--rate-limit", str(rate_limit)]
        if batch:
            args.append("--batch")
        webhook_id = str(orjson.loads(self.cli(*args).stdout)["id"])
        if active:
            self.cli("webhooks", "enable", webhook_id)
        return webhook_id

    def receiver(self, decide: Decide = always_ok, *,
                 keep_bytes: int | None = None) -> ThreadedReceiver:
        receiver = ThreadedReceiver(self.tls["cert"], decide, keep_bytes=keep_bytes).start()
        self.receivers.append(receiver)
        return receiver

    # -- the application's side

    def connect_outbox(self) -> sqlite3.Connection:
        return sqlite3.connect(self.outbox, timeout=30)

    def emit(self, events: Iterable[tuple[str, str, Any]]) -> float:
        """Insert events with publish() in one committed transaction; returns the commit time."""
        conn = self.connect_outbox()
        try:
            with conn:
                for type_, org, data in events:
                    publish(conn, type_, org, data)
            return time.time()
        finally:
            conn.close()

    def emit_paced(self, count: int, per_second: float, *, org: str = "org_a",
                   type_: str = "fan.created", start: int = 0) -> dict[int, float]:
        """Insert ``count`` events ``{"n": …}`` at ``per_second`` in small committed transactions.

        Returns each event's commit time by ``n``.
        """
        committed: dict[int, float] = {}
        step = 0.05
        per_step = max(1, round(per_second * step))
        conn = self.connect_outbox()
        try:
            t0 = time.monotonic()
            for first in range(start, start + count, per_step):
                numbers = range(first, min(first + per_step, start + count))
                with conn:
                    for n in numbers:
                        publish(conn, type_, org, {"n": n})
                now = time.time()
                committed.update((n, now) for n in numbers)
                ahead = t0 + (first - start + per_step) / per_second - time.monotonic()
                time.sleep(max(ahead, 0))
        finally:
            conn.close()
        return committed

    def insert_raw(self, rows: Sequence[tuple[Any, Any, Any]]) -> float:
        """Insert outbox rows (type, organization_id, data) as they are, bypassing publish()."""
        conn = self.connect_outbox()
        try:
            with conn:
                conn.executemany("INSERT INTO outbox (type, organization_id, data) VALUES (?, ?, ?)",
                                 rows)
            return time.time()
        finally:
            conn.close()

    # -- the state database

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of one read of the state database (a fresh connection: no snapshot kept)."""
        conn = sqlite3.connect(self.state, timeout=30)
        try:
            return list(conn.execute(sql, params))
        finally:
            conn.close()

    def insert_pending(self, webhook_id: str, org: str, count: int, *, attempts: int,
                       next_at: float, type_: str = "fan.created", outbox: bool = True) -> None:
        """Give ``webhook_id`` ``count`` pending event deliveries, due at ``next_at``, each
        after ``attempts`` HTTP 500 attempts, as intake and failed attempts would have.

        With ``outbox``, the events are written to the outbox first and the cursor is moved
        past them; without, the deliveries name outbox rows that are gone (enough for a
        webhook that is never enabled). Only for a stopped daemon: it builds in seconds a
        history the daemon would take minutes to make. The columns mirror
        ``insert_delivery`` and ``insert_attempt``.
        """
        events: list[tuple[int, str]]
        if outbox:
            conn = self.connect_outbox()
            try:
                with conn:
                    first = int(conn.execute("SELECT coalesce(max(id), 0) FROM outbox").fetchone()[0])
                    conn.executemany(
                        "INSERT INTO outbox (type, organization_id, data) VALUES (?, ?, ?)",
                        ((type_, org, f'{{"n": {n}}}') for n in range(count)))
                    events = conn.execute("SELECT id, event_id FROM outbox WHERE id > ? ORDER BY id",
                                          (first,)).fetchall()
            finally:
                conn.close()
        else:
            events = [(n, f"evt_gone{n:020x}") for n in range(1, count + 1)]
        raw = os.urandom(16 * len(events)).hex()
        uuids = [f"{raw[i:i + 8]}-{raw[i + 8:i + 12]}-4{raw[i + 13:i + 16]}-a{raw[i + 17:i + 20]}-"
                 f"{raw[i + 20:i + 32]}" for i in range(0, len(raw), 32)]
        now = time.time()
        state = sqlite3.connect(self.state, timeout=30)
        try:
            with state:
                base = int(state.execute("SELECT coalesce(max(id), 0) FROM deliveries").fetchone()[0])
                state.executemany(
                    "INSERT INTO deliveries (id, uuid, webhook_id, kind, event_type, event_id, "
                    "outbox_id, event_count, state, attempts, retry_base, next_at, created_at, "
                    "updated_at, last_status, last_error, body) VALUES "
                    "(?, ?, ?, 'event', ?, ?, ?, 1, 'pending', ?, 0, ?, ?, ?, ?, ?, NULL)",
                    ((base + i, uuids[i - 1], webhook_id, type_, event_id, outbox_id, attempts,
                      next_at, now - 60, now, 500 if attempts else None,
                      "HTTP 500" if attempts else None)
                     for i, (outbox_id, event_id) in enumerate(events, 1)))
                state.executemany(
                    "INSERT INTO attempts (delivery_id, number, started_at, latency_ms, outcome, "
                    "status, error, response) VALUES (?, ?, ?, 1.0, 'http_error', 500, 'HTTP 500', "
                    "'nope')",
                    ((base + i, number, now - 60 + number) for i in range(1, len(events) + 1)
                     for number in range(1, attempts + 1)))
                if outbox:
                    state.execute("UPDATE meta SET value = max(value, ?) WHERE key = 'cursor'",
                                  (events[-1][0],))
        finally:
            state.close()

    def unfinished(self, webhook_id: str) -> int:
        """Deliveries of the webhook still to be attempted or in progress."""
        rows = self.query("SELECT count(*) FROM deliveries WHERE webhook_id = ? "
                          "AND state NOT IN ('delivered', 'failed', 'rejected')", (webhook_id,))
        return int(rows[0][0])

    def cursor(self) -> int:
        return int(self.query("SELECT value FROM meta WHERE key = 'cursor'")[0][0])

    def outbox_max_id(self) -> int:
        conn = self.connect_outbox()
        try:
            return int(conn.execute("SELECT coalesce(max(id), 0) FROM outbox").fetchone()[0])
        finally:
            conn.close()

    # -- daemons

    def start_daemon(self, *args: str) -> Daemon:
        daemon = Daemon(self.config_path, self.log_path).start(*args)
        self.daemons.append(daemon)
        return daemon

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") \
            if self.log_path.exists() else ""

    def close(self) -> None:
        for daemon in self.daemons:
            daemon.stop()
        for receiver in self.receivers:
            receiver.stop()


# -- waiting and probes -------------------------------------------------------------------------


def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
             interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it is truthy; fail after ``timeout`` s, naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (``/proc/PID/stat``)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2:].split()  # after "pid (comm) "
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def settle(pid: int, *, quiet: float = 0.05, period: float = 0.5, timeout: float = 20.0) -> None:
    """Wait until a process's start-up is over: less than ``quiet`` s of CPU per ``period``."""
    deadline = time.monotonic() + timeout
    before = cpu_seconds(pid)
    while True:
        time.sleep(period)
        now = cpu_seconds(pid)
        if now - before < quiet:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} still busy after {timeout} s "
                                 f"({now - before:.2f} s of CPU in the last {period} s)")
        before = now


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (``VmRSS`` of ``/proc/PID/status``), 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return 0


class RssSampler:
    """Samples a process's resident memory every ``interval`` s in a thread; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = rss_bytes(self.pid)
            self.peak = max(self.peak, rss)
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def receipt_latencies(receiver: ThreadedReceiver, committed: dict[int, float],
                      key: str = "n") -> dict[int, float]:
    """Seconds from each event's commit to its first receipt, by ``data[key]``."""
    out: dict[int, float] = {}
    for hit in receiver.hits:
        for event in hit.events():
            n = event["data"].get(key)
            if n in committed and n not in out:
                out[n] = hit.received_at - committed[n]
    return out
