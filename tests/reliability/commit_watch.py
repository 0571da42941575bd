"""Note when each attempt becomes committed in a state database, from outside the daemon.

    python -m tests.reliability.commit_watch STATE_DB OUTPUT [INTERVAL_S]

A separate process (so that it takes no time from the test's receivers) reads
the attempts table every ``INTERVAL_S`` seconds (default 0.002) on its own
read-only connection and appends one line per attempt it has not seen yet:
``<wall time seen> <delivery uuid> <outcome>``. A row is visible only once the
transaction that wrote it has committed, so the time seen is the commit's, late
by at most the interval and one read. It runs until it is terminated; every
line is flushed as it is written. It must not write to the database.
"""

from __future__ import annotations

import sqlite3
import sys
import time
from pathlib import Path

NEW_ATTEMPTS = ("SELECT a.id, d.uuid, a.outcome FROM attempts a "
                "JOIN deliveries d ON d.id = a.delivery_id WHERE a.id > ? ORDER BY a.id")


def watch(state: Path, output: Path, interval: float) -> None:
    conn = sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=5,
                           isolation_level=None, check_same_thread=False)
    last = 0
    with output.open("a", encoding="utf-8") as out:
        while True:
            try:
                rows = conn.execute(NEW_ATTEMPTS, (last,)).fetchall()
            except sqlite3.OperationalError:  # a daemon recovering the file after a kill
                rows = []
            seen = time.time()
            if rows:
                out.writelines(f"{seen:.6f} {uuid} {outcome}\n" for _, uuid, outcome in rows)
                out.flush()
                last = rows[-1][0]
            time.sleep(interval)


def read(output: Path) -> dict[str, float]:
    """When each delivery's successful attempt was first seen committed, by delivery uuid."""
    committed: dict[str, float] = {}
    if output.exists():
        for line in output.read_text(encoding="utf-8").splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[2] == "success":
                committed.setdefault(parts[1], float(parts[0]))
    return committed


if __name__ == "__main__":
    watch(Path(sys.argv[1]), Path(sys.argv[2]),
          float(sys.argv[3]) if len(sys.argv) > 3 else 0.002)
