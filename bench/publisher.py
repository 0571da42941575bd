"""The steady publisher: events through ``publish()`` at a fixed rate, one commit each.

Run as ``python -m bench.publisher``; writes ``{"commits": [[seq, committed_at], …],
"commit_s": [seconds each insert and commit took, …], …}`` as JSON to ``--out``.
Each event is inserted with ``nevent_dispatch.publish`` on the application's own
``sqlite3`` connection and committed on its own, as one web request of the
application would; its data carries ``seq`` and ``sent_at`` (the wall time just
before the insert). The schedule is absolute (event i is due
at start + i / rate), so one slow commit is caught up instead of delaying every
later event; when the publisher cannot keep up, the achieved rate says so.
"""

from __future__ import annotations

import argparse
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

import orjson

from nevent_dispatch import publish

from .payload import EVENT_TYPE, Payloads, org_name


def publish_steadily(outbox: Path, rate: float, duration_s: float, orgs: int, first_seq: int,
                     payloads: Payloads) -> dict[str, object]:
    count = int(rate * duration_s)
    commits: list[tuple[int, float]] = []
    took: list[float] = []
    conn = sqlite3.connect(outbox, timeout=5.0)
    try:
        start = time.monotonic()
        for i in range(count):
            due = start + i / rate
            ahead = due - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            seq = first_seq + i
            began = time.perf_counter()
            publish(conn, EVENT_TYPE, org_name(seq % orgs), payloads.data(seq, time.time()))
            conn.commit()
            commits.append((seq, time.time()))
            took.append(time.perf_counter() - began)
        elapsed = time.monotonic() - start
    finally:
        conn.close()
    return {"commits": commits, "commit_s": took, "elapsed_s": elapsed,
            "achieved_rate": count / elapsed if elapsed > 0 else 0.0}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.publisher", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outbox", required=True, type=Path)
    parser.add_argument("--rate", required=True, type=float, help="events per second")
    parser.add_argument("--duration", required=True, type=float, help="seconds")
    parser.add_argument("--orgs", type=int, default=100, help="spread over this many organizations")
    parser.add_argument("--first-seq", type=int, default=1_000_000_000)
    parser.add_argument("--body-bytes", type=int, default=1024)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    result = publish_steadily(args.outbox, args.rate, args.duration, args.orgs, args.first_seq,
                              Payloads(args.body_bytes))
    args.out.write_bytes(orjson.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
