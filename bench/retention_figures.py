"""The retention figures: what pruning costs the application, and the disk a history takes.

Owns the ``retention`` figure. A history is made once per benchmark: the daemon drains
the ``drain`` figure's outbox (one webhook per organization, every event delivered at the
first attempt) with retention off; its state file, folded and without VACUUM, gives the
disk used per million deliveries. Then, in each round and in alternating order, a daemon
starts on a copy of that history and of its outbox, with ``retention.deliveries = "1s"``
and ``retention.outbox = "2s"`` (so its first retention run prunes the whole history and
every outbox row) or with retention off, while the application publishes at a steady
rate from another process (``bench.publisher``), each ``publish()`` committed on its own
and timed. The figure is the application's insert latency during the daemon's largest
retention run (its window from its ``retention_pruned`` line: the time and the seconds
it took), beside the same span after the start of the run without retention; and how
long that run took. It decides nothing about the daemon.
"""

from __future__ import annotations

import shutil
import sqlite3
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from . import fixtures
from .fixtures import one_per_org
from .harness import Bench, ms
from .stats import percentile

#: Webhooks of the history (as in the drain figure).
WEBHOOKS = 100
#: The application's publish rate while the daemon prunes, commits per second.
RATE = 500
#: The daemon's settings with retention (the outbox bound must cover the retry horizon)
#: and without; both run with the same one-step retry schedule and info-level logs (the
#: retention_pruned lines are info).
COMMON = {"delivery.retry_schedule": "[1.0]", "log.level": '"info"'}
ON = {**COMMON, "retention.deliveries": '"1s"', "retention.outbox": '"2s"'}
OFF = {**COMMON, "retention.deliveries": '"0"', "retention.outbox": '"off"'}
#: Seconds a run waits, after publishing, for its first retention_pruned line.
PRUNE_WAIT_S = 120.0


def retention_cost(b: Bench) -> None:
    """Insert latency of the application while the daemon prunes, beside it without."""
    n = b.sizes.events
    layout = one_per_org("drain", WEBHOOKS, lambda i: b.fast.url(f"/ok/{i}"))
    outbox = b.outbox("drain", n, WEBHOOKS)
    history = _history(b, layout, outbox, n)
    if history is None:
        return
    #: Commits of each run: (seconds after the daemon's spawn, seconds the commit took).
    commits: dict[bool, list[tuple[float, float]]] = {}
    window: tuple[float, float] | None = None
    for on in b.alternating():
        spawned, timed, pruned = _run(b, on, layout, outbox, history, n)
        commits[on] = [(at - spawned, took) for at, took in timed]
        if on and pruned:
            start, end, line = max(pruned, key=lambda w: w[2]["deliveries"])
            window = (start - spawned, end - spawned)
            run = b.figure("retention-run", f"Retention: one paced run pruning {n:,} "
                           "deliveries, their attempts and their outbox rows", "s")
            run.samples.append(float(line["seconds"]))
            run.details.append(
                f"{line['deliveries']:,} deliveries, {line['attempts']:,} attempts, "
                f"{line['outbox']:,} outbox rows ({line['deliveries'] / line['seconds']:,.0f} "
                f"deliveries/s), {line['released_bytes'] / 1e6:,.1f} MB given back; from "
                f"{window[0]:.1f} s after spawn")
        elif on:
            b.note("retention: the daemon logged no retention_pruned line")
    if window is None or not commits.get(False):
        return
    low, high = window
    on_ms = [ms(took) for t, took in commits[True] if low <= t <= high]
    off_ms = [ms(took) for t, took in commits[False] if low <= t <= high]
    if not on_ms or not off_ms:
        b.note(f"retention: no commit during the pruning window ({low:.1f}..{high:.1f} s)")
        return
    for q in ("p50", "p99"):
        fig = b.figure(f"retention-insert-{q}", f"Application insert (publish + commit), {q}, "
                       f"while the daemon prunes {n:,} deliveries and outbox rows", "ms",
                       limit_label="the same span of a run without retention")
        fig.samples.append(percentile(on_ms, int(q[1:]) / 100))
        fig.limits.append(percentile(off_ms, int(q[1:]) / 100))
    b.figures["retention-insert-p50"].details.append(
        f"{len(on_ms):,} commits at {RATE}/s during {high - low:.1f} s of pruning (max "
        f"{max(on_ms):.1f} ms); {len(off_ms):,} without retention (max {max(off_ms):.1f} ms)")


def _run(b: Bench, on: bool, layout: Any, outbox: Path, history: Path, n: int
         ) -> tuple[float, list[tuple[float, float]], list[tuple[float, float, dict[str, Any]]]]:
    """One daemon on copies of the history and its outbox, with retention or without, while
    the application publishes: its spawn time, the timed commits, its retention runs."""
    name = f"retention-{'on' if on else 'off'}"
    folder = b.run_dir(f"{name}-outbox")
    run_outbox = folder / "outbox.db"
    shutil.copyfile(outbox, run_outbox)
    def prepare(state: Path) -> None:
        shutil.copyfile(history, state)
    daemon, run_folder = b.start_daemon(name, layout, run_outbox, n, prepare=prepare,
                                        settings=ON if on else OFF)
    spawned = time.time()
    try:
        timed = _publish(b, run_outbox, max(b.sizes.latency_s, 5.0), folder)
        pruned = _prune_windows(daemon.log)
        deadline = time.monotonic() + PRUNE_WAIT_S
        while on and not pruned and daemon.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
            pruned = _prune_windows(daemon.log)
    finally:
        b.finish(name, daemon, run_folder)
        fixtures.remove_database(run_outbox)
    return spawned, timed, pruned


def _history(b: Bench, layout: Any, outbox: Path, n: int) -> Path | None:
    """The state of a daemon that delivered every event of ``outbox``, made once per
    benchmark; the disk figure from its file."""
    path = b.workdir / "templates" / "retention-history.state.db"
    if path.exists():
        return path
    daemon, folder = b.start_daemon("retention-history", layout, outbox, n,
                                    settings={"retention.deliveries": '"0"'})
    state = folder / "state.db"
    empty = state.stat().st_size
    daemon.watch(batch=False, timeout_s=b.timeout(n))
    result = daemon.stop()
    try:
        if result.successes < n:
            b.note(f"retention: the history run delivered {result.successes:,} of {n:,}")
            return None
        fixtures.checkpoint(state)
        size = state.stat().st_size
        deliveries, attempts = _counts(state)
        shutil.copyfile(state, path)
    finally:
        fixtures.remove_database(state)
    fig = b.figure("retention-disk", "State file per million deliveries (one attempt each, "
                   "no VACUUM)", "MB")
    fig.samples.append((size - empty) / deliveries)  # bytes per delivery = MB per million
    fig.details.append(f"{size / 1e6:,.1f} MB for {deliveries:,} deliveries and {attempts:,} "
                       f"attempts ({(size - empty) / deliveries:,.0f} bytes each; response "
                       "snippets of a few bytes)")
    return path


def _counts(state: Path) -> tuple[int, int]:
    conn = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
    try:
        d = int(conn.execute("SELECT count(*) FROM deliveries").fetchone()[0])
        a = int(conn.execute("SELECT count(*) FROM attempts").fetchone()[0])
    finally:
        conn.close()
    return d, a


def _prune_windows(log: Path) -> list[tuple[float, float, dict[str, Any]]]:
    """(start, end, line) of each retention_pruned line of a daemon log, oldest first."""
    windows = []
    try:
        with open(log, "rb") as lines:
            for raw in lines:
                if b'"retention_pruned"' not in raw:
                    continue
                line = orjson.loads(raw)
                end = datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00")).timestamp()
                windows.append((end - float(line["seconds"]), end, line))
    except FileNotFoundError:
        pass
    return windows


def _publish(b: Bench, outbox: Path, duration: float, folder: Path) -> list[tuple[float, float]]:
    """Publish at ``RATE`` for ``duration`` from another process (``bench.publisher``):
    (wall time the insert began, seconds until its commit returned) of each event."""
    out = folder / "commits.json"
    argv = [sys.executable, "-m", "bench.publisher", "--outbox", str(outbox), "--rate", str(RATE),
            "--duration", str(duration), "--orgs", str(WEBHOOKS),
            "--first-seq", str(b.next_seq(int(RATE * duration))),
            "--body-bytes", str(b.sizes.body_bytes), "--out", str(out)]
    code = b.procs.run(argv, log=folder / "publisher.log", timeout_s=duration * 3 + 30)
    if code != 0 or not out.exists():
        b.note(f"retention: the publisher failed (exit {code})")
        return []
    published = orjson.loads(out.read_bytes())
    return [(float(at) - took, float(took))
            for (_, at), took in zip(published["commits"], published["commit_s"], strict=True)]
