"""One daemon run: ``nevent-dispatch run`` as a subprocess, watched from outside.

Owns starting the real command a user starts (pinned to the measured CPU),
watching it without touching it — progress from read-only queries of its state
database, memory from ``/proc/PID/status`` — stopping it with SIGTERM as
systemd does, and reading its final counts from the state database once it has
exited. It must never write to the daemon's databases.
"""

from __future__ import annotations

import math
import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from .procs import Cores, Processes

#: Seconds between two progress polls.
POLL_S = 0.1
#: Seconds between two memory samples.
SAMPLE_S = 0.5

_PROGRESS_EVENTS = "SELECT coalesce(max(id), 0) FROM attempts"
_PROGRESS_BATCHES = ("SELECT coalesce(sum(d.event_count), 0) FROM attempts a "
                     "JOIN deliveries d ON d.id = a.delivery_id")
_SUCCESSES = ("SELECT count(*), coalesce(sum(d.event_count), 0), "
              "max(a.started_at + a.latency_ms / 1000.0) "
              "FROM attempts a JOIN deliveries d ON d.id = a.delivery_id "
              "WHERE a.outcome = 'success'")
_ATTEMPTS = "SELECT count(*), min(started_at), max(started_at + latency_ms / 1000.0) FROM attempts"


def command() -> list[str]:
    """``nevent-dispatch`` as installed next to this Python, else ``python -m nevent_dispatch``."""
    script = Path(sys.executable).with_name("nevent-dispatch")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "nevent_dispatch"]


@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    rss_kb: int
    #: Deliveries (or, in batch mode, events) attempted when the sample was taken.
    progress: int


@dataclass(slots=True)
class RunResult:
    """What one daemon run did, read from its state database after it exited."""

    spawned_at: float
    expected: int
    attempts: int = 0
    successes: int = 0
    success_events: int = 0
    first_attempt_at: float = math.nan
    last_attempt_end: float = math.nan
    last_success_at: float = math.nan
    peak_rss_kb: int = 0
    #: CPU seconds of the event loop's (main) thread and of the other threads (SQLite, DNS).
    cpu_main_s: float = math.nan
    cpu_other_s: float = math.nan
    samples: list[Sample] = field(default_factory=list)
    exit_code: int | None = None
    timed_out: bool = False
    #: Warning and error log lines by event name.
    log_events: Counter[str] = field(default_factory=Counter)

    def rate(self, *, events: bool = False) -> float:
        """Successes (or events in them) per second, from spawn to the last 2xx."""
        span = self.last_success_at - self.spawned_at
        done = self.success_events if events else self.successes
        return done / span if span > 0 else math.nan

    def steady_rate(self, *, events: bool = False) -> float:
        """The same from the first attempt on, without the process start-up."""
        span = self.last_success_at - self.first_attempt_at
        done = self.success_events if events else self.successes
        return done / span if span > 0 else math.nan

    @property
    def startup_s(self) -> float:
        return self.first_attempt_at - self.spawned_at

    def rss_at(self, fraction: float) -> int | None:
        """RSS (kB) of the first sample taken once ``fraction`` of the work was attempted."""
        for sample in self.samples:
            if sample.progress >= fraction * self.expected:
                return sample.rss_kb
        return None


def cpu_s(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) of ``pid``'s main thread and of all its other threads."""
    tick = os.sysconf("SC_CLK_TCK")

    def read(path: str) -> float:
        # The fields after the ")" closing the command name; utime and stime are 14th and 15th.
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick

    try:
        total = read(f"/proc/{pid}/stat")  # includes threads that already ended
        main = read(f"/proc/{pid}/task/{pid}/stat")
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return math.nan, math.nan
    return main, total - main


def memory_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in kB; zeros once it is gone."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith(b"VmHWM:"):
                    hwm = int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return rss, hwm


class Daemon:
    def __init__(self, procs: Processes, cores: Cores, config: Path, state: Path,
                 log: Path) -> None:
        self._procs = procs
        self._cores = cores
        self._config = config
        self._state = state
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.result: RunResult | None = None
        self._db: sqlite3.Connection | None = None

    def start(self, expected: int) -> RunResult:
        self.result = RunResult(spawned_at=time.time(), expected=expected)
        self.proc = self._procs.start(
            [*self._cores.for_client(), *command(), "--config", str(self._config), "run"],
            log=self.log)
        return self.result

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def progress(self, *, batch: bool) -> int:
        if self._db is None:
            self._db = sqlite3.connect(f"file:{self._state}?mode=ro", uri=True, timeout=5.0)
        try:
            row = self._db.execute(_PROGRESS_BATCHES if batch else _PROGRESS_EVENTS).fetchone()
        except sqlite3.OperationalError:  # busy for longer than the timeout: try next poll
            return self.result.samples[-1].progress if self.result and self.result.samples else 0
        return int(row[0])

    def sample(self, progress: int) -> None:
        assert self.result is not None
        rss, hwm = memory_kb(self.pid)
        if rss:
            self.result.samples.append(Sample(time.time(), rss, progress))
            self.result.peak_rss_kb = max(self.result.peak_rss_kb, hwm)

    def watch(self, *, batch: bool, timeout_s: float) -> RunResult:
        """Poll until ``expected`` work was attempted, the daemon exits, or ``timeout_s``."""
        result = self.result
        assert result is not None
        deadline = time.monotonic() + timeout_s
        next_sample = 0.0
        while self.alive():
            done = self.progress(batch=batch)
            if time.monotonic() >= next_sample or done >= result.expected:
                self.sample(done)
                next_sample = time.monotonic() + SAMPLE_S
            if done >= result.expected:
                break
            if time.monotonic() >= deadline:
                result.timed_out = True
                break
            time.sleep(POLL_S)
        return result

    def stop(self) -> RunResult:
        """SIGTERM (the daemon drains), then read what it recorded."""
        result = self.result
        assert result is not None and self.proc is not None
        if self.alive():
            _, hwm = memory_kb(self.pid)
            result.peak_rss_kb = max(result.peak_rss_kb, hwm)
            result.cpu_main_s, result.cpu_other_s = cpu_s(self.pid)
        result.exit_code = self._procs.stop(self.proc)
        if self._db is not None:
            self._db.close()
            self._db = None
        self._read_results(result)
        result.log_events = _log_events(self.log)
        return result

    def _read_results(self, result: RunResult) -> None:
        conn = sqlite3.connect(f"file:{self._state}?mode=ro", uri=True, timeout=30.0)
        try:
            successes, events, last_success = conn.execute(_SUCCESSES).fetchone()
            attempts, first, last = conn.execute(_ATTEMPTS).fetchone()
        finally:
            conn.close()
        result.successes, result.success_events = int(successes), int(events)
        result.attempts = int(attempts)
        result.last_success_at = math.nan if last_success is None else float(last_success)
        result.first_attempt_at = math.nan if first is None else float(first)
        result.last_attempt_end = math.nan if last is None else float(last)


def _log_events(log: Path) -> Counter[str]:
    """Warning and error lines of a daemon log, counted by event name."""
    found: Counter[str] = Counter()
    try:
        with open(log, "rb") as lines:
            for line in lines:
                if b'"level":"info"' not in line and b'"level":"debug"' not in line:
                    _count(line, found)
    except FileNotFoundError:
        pass
    return found


def _count(line: bytes, found: Counter[str]) -> None:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        if line.strip():
            found["(not JSON) " + line.decode(errors="replace").strip()[:120]] += 1
        return
    if isinstance(record, dict) and record.get("level") in ("warning", "error", "critical"):
        found[f"{record.get('level')}: {record.get('event')}"] += 1
