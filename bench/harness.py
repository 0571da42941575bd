"""What every figure shares: sizes, files, processes, the bare client, and notes.

Owns ``Bench``, the building blocks the figures in ``scenarios.py`` are made
of: outboxes and state templates made once and reused, one directory per
daemon run (its state database removed afterwards), starting and finishing a
daemon run with its anomalies turned into notes, the bare client run on the
daemon's CPU, and the figures collected so far. It decides no figure's meaning.
"""

from __future__ import annotations

import math
import shutil
import sqlite3
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from nevent_dispatch import publish

from . import fixtures
from .daemon import Daemon, RunResult
from .fixtures import Layout
from .payload import EVENT_TYPE, Payloads
from .procs import Cores, Processes
from .receivers import Receiver, Sink
from .report import Figure
from .tls import Tls

#: The daemon's defaults (config.example.toml), used unless a figure says otherwise.
MAX_IN_FLIGHT = 256
PER_WEBHOOK = 16


@dataclass(frozen=True, slots=True)
class SlowVariant:
    webhooks: int
    max_in_flight: int = MAX_IN_FLIGHT
    per_webhook: int = PER_WEBHOOK

    @property
    def in_flight(self) -> int:
        """Attempts the settings allow at once: the global bound or the sum of per-webhook ones."""
        return min(self.max_in_flight, self.webhooks * self.per_webhook)

    @property
    def label(self) -> str:
        return (f"{self.webhooks} webhooks, max_in_flight {self.max_in_flight}, "
                f"max_in_flight_per_webhook {self.per_webhook}")


@dataclass(frozen=True, slots=True)
class Sizes:
    events: int
    memory_events: int
    fanout_webhooks: int
    latency_rates: tuple[int, ...]
    latency_s: float
    slow_events: int
    slow_variants: tuple[SlowVariant, ...]
    bare_requests: int
    repeat: int
    #: Events of just under 1 MB in the large-event memory figure.
    large_events: int = 600
    #: Due retries of the rate-limited webhook in the fairness figure.
    fair_backlog: int = 100_000
    #: Deliveries in the history of the API list-latency figure.
    api_history: int = 1_000_000
    body_bytes: int = 1024


def ms(seconds: float) -> float:
    return seconds * 1000.0


class Bench:
    """What every figure shares: receivers, files, processes, and the figures so far."""

    def __init__(self, *, sizes: Sizes, workdir: Path, procs: Processes, cores: Cores, tls: Tls,
                 fast: Receiver, sink: Sink, log_level: str, keep: bool,
                 overrides: dict[str, str] | None = None) -> None:
        self.sizes = sizes
        self.workdir = workdir
        self.procs = procs
        self.cores = cores
        self.tls = tls
        self.fast = fast
        self.sink = sink
        self.log_level = log_level
        self.keep = keep
        #: Config keys set for every run (``--set``), as TOML values by dotted key.
        self.overrides = dict(overrides or {})
        self.payloads = Payloads(sizes.body_bytes)
        self.figures: dict[str, Figure] = {}
        self.notes: list[str] = []
        #: This round's limits: bare client req/s on the fast receiver, one-at-a-time latency.
        self.fast_limit = math.nan
        self.floor_ms: dict[str, float] = {}
        self._outboxes: dict[str, Path] = {}
        self._templates: dict[str, Path] = {}
        self._runs = 0
        self._seq = 10_000_000

    # -- figures and notes ---------------------------------------------------------------------

    def figure(self, key: str, label: str, unit: str, **kw: Any) -> Figure:
        if key not in self.figures:
            self.figures[key] = Figure(label, unit, **kw)
        return self.figures[key]

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)
        print(f"  note: {text}", flush=True)

    # -- files ----------------------------------------------------------------------------------

    def outbox(self, name: str, events: int, orgs: int) -> Path:
        """A preloaded outbox shared by every run that reads it (the daemon only reads it)."""
        if name not in self._outboxes:
            path = self.workdir / "outboxes" / f"{name}.db"
            path.parent.mkdir(parents=True, exist_ok=True)
            took = fixtures.make_outbox(path, events, orgs, self.payloads)
            print(f"  outbox {name}: {events:,} events over {orgs} organizations "
                  f"in {took:.1f} s", flush=True)
            self._outboxes[name] = path
        return self._outboxes[name]

    def run_dir(self, name: str) -> Path:
        self._runs += 1
        folder = self.workdir / "runs" / f"{self._runs:03d}-{name}"
        folder.mkdir(parents=True)
        return folder

    def next_seq(self, count: int = 1) -> int:
        first, self._seq = self._seq, self._seq + count
        return first

    def alternating(self) -> tuple[bool, bool]:
        """(True, False) or (False, True), in turn: a figure measured beside its baseline in
        one round runs the two in an order that alternates between rounds."""
        return (True, False) if self.next_seq() % 2 else (False, True)

    def publish_now(self, outbox: Path, orgs: list[str]) -> float:
        """Publish one event per organization in one transaction; the commit's wall time."""
        conn = sqlite3.connect(outbox, timeout=5.0)
        try:
            for org in orgs:
                seq = self.next_seq()
                publish(conn, EVENT_TYPE, org, self.payloads.data(seq, time.time()))
            conn.commit()
            return time.time()
        finally:
            conn.close()

    # -- processes -------------------------------------------------------------------------------

    def bare(self, url: str, *, paths: int, requests: int, concurrency: int) -> dict[str, Any]:
        """Run the bare client on the daemon's CPU; its JSON result (empty when it failed)."""
        log = self.workdir / "bare.log"
        before = log.stat().st_size if log.exists() else 0
        argv = [*self.cores.for_client(), sys.executable, "-m", "bench.client", "--url", url,
                "--paths", str(paths), "--requests", str(requests), "--concurrency",
                str(concurrency), "--ca", str(self.tls.ca_file), "--body-bytes",
                str(self.sizes.body_bytes), "--timeout", str(self.timeout(requests))]
        code = self.procs.run(argv, log=log, timeout_s=self.timeout(requests) + 30)
        with open(log, "rb") as out:
            out.seek(before)
            lines = [line for line in out.read().splitlines() if line.startswith(b"{")]
        if code != 0 or not lines:
            self.note(f"the bare client failed (exit {code}); see {log}")
            return {}
        result: dict[str, Any] = orjson.loads(lines[-1])
        if result["errors"] or result["timed_out"]:
            self.note(f"the bare client had {result['errors']} errors"
                      f"{' and timed out' if result['timed_out'] else ''} against {url}")
        return result

    def timeout(self, work: int) -> float:
        """Seconds allowed for ``work`` deliveries: generous, but bounded (≥ 100/s)."""
        return 60.0 + work / 100.0

    def start_daemon(self, name: str, layout: Layout, outbox: Path, expected: int, *,
                     max_in_flight: int = MAX_IN_FLIGHT, per_webhook: int = PER_WEBHOOK,
                     prepare: Callable[[Path], None] | None = None,
                     settings: dict[str, str] | None = None) -> tuple[Daemon, Path]:
        """A daemon on a copy of the layout's state; ``settings`` (dotted keys → TOML values)
        add to the run's overrides, ``{dir}`` in them standing for the run's folder."""
        if layout.name not in self._templates:
            self._templates[layout.name] = fixtures.state_template(
                self.workdir / "templates", layout, self.tls.ca_file)
        folder = self.run_dir(name)
        state = fixtures.copy_state(self._templates[layout.name], folder / "state.db")
        fixtures.write_token(state)
        if prepare is not None:
            prepare(state)
        config = fixtures.write_config(
            folder / "config.toml", outbox=outbox, state=state, ca_file=self.tls.ca_file,
            log_level=self.log_level, max_in_flight=max_in_flight, per_webhook=per_webhook,
            overrides={**{k: v.replace("{dir}", str(folder)) for k, v in (settings or {}).items()},
                       **(self.overrides or {})})
        daemon = Daemon(self.procs, self.cores, config, state, folder / "daemon.log")
        daemon.start(expected)
        return daemon, folder

    def finish(self, name: str, daemon: Daemon, folder: Path) -> RunResult:
        """Stop the daemon, read its results, note anything odd, drop its state database."""
        result = daemon.stop()
        where = f"{name} ({folder.name})"
        if result.timed_out:
            self.note(f"{where}: not done after the time allowed; figures are partial")
        if result.exit_code not in (0, None):
            self.note(f"{where}: the daemon exited with status {result.exit_code}; "
                      f"log: {daemon.log}")
        for event, count in sorted(result.log_events.items()):
            self.note(f"{where}: daemon logged {count:,} × {event}")
        if not self.keep:
            fixtures.remove_database(folder / "state.db")
        return result

    def drain(self, name: str, layout: Layout, outbox: Path, expected: int, *,
              receiver: Receiver, batch: bool = False, **settings: int) -> RunResult:
        """Start the daemon on a preloaded outbox, wait until every item was attempted, stop it."""
        before = receiver.counts()
        daemon, folder = self.start_daemon(name, layout, outbox, expected, **settings)
        daemon.watch(batch=batch, timeout_s=self.timeout(expected))
        result = self.finish(name, daemon, folder)
        after = receiver.counts()
        received = after.ok - before.ok
        if received != result.successes:
            self.note(f"{name}: the receiver counted {received:,} 2xx answers, the daemon "
                      f"recorded {result.successes:,} successes")
        return result

    def cleanup(self) -> None:
        if not self.keep:
            shutil.rmtree(self.workdir / "outboxes", ignore_errors=True)


def describe(result: RunResult, what: str = "deliveries") -> str:
    span = result.last_success_at - result.spawned_at
    events = what == "events"
    done = result.success_events if events else result.successes
    return (f"{done:,} {what} of {result.expected:,} in {span:.2f} s from spawn "
            f"(start-up {result.startup_s:.2f} s, then {result.steady_rate(events=events):,.0f}/s); "
            f"{result.attempts:,} attempts; peak RSS {result.peak_rss_kb / 1024:.0f} MB; "
            f"CPU {result.cpu_main_s:.1f} s event loop + {result.cpu_other_s:.1f} s other "
            "threads (SQLite)")
