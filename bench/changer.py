"""The webhook changer: one webhook change at a steady rate, as the API would make them.

Run as ``python -m bench.changer``; writes ``{"commits": [committed_at, …], …}`` as
JSON to ``--out`` when it stops (SIGTERM, or after ``--duration``). Each change is
``registry.update`` on a ``Store`` of its own (another process than the daemon, as
the CLI and the API are): the name of a random webhook among ``--ids``, or its rate
limit, in turn. The schedule is absolute (change i is due at start + i / rate).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import time
from collections.abc import Sequence
from pathlib import Path

import orjson

from nevent_dispatch import registry
from nevent_dispatch.config import load
from nevent_dispatch.store.sqlite import Store


async def change_steadily(config_path: Path, ids: list[str], rate: float, duration_s: float,
                          seed: int) -> dict[str, object]:
    config = load(config_path)
    store = await Store.open(config, migrate=False)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    rng = random.Random(seed)
    commits: list[float] = []
    start = time.monotonic()
    try:
        for i in range(int(rate * duration_s)):
            ahead = start + (i + 1) / rate - time.monotonic()
            if ahead > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), ahead)
            if stop.is_set():
                break
            webhook_id = rng.choice(ids)
            if i % 2:
                await registry.update(store, config, webhook_id, rate_limit=rng.randint(60, 6_000),
                                      now=time.time())
            else:
                await registry.update(store, config, webhook_id, name=f"changed {i}",
                                      now=time.time())
            commits.append(time.time())
    finally:
        await store.close()
    elapsed = time.monotonic() - start
    return {"commits": commits, "elapsed_s": elapsed,
            "achieved_rate": len(commits) / elapsed if elapsed > 0 else 0.0}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.changer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, type=Path, help="the daemon's config file")
    parser.add_argument("--ids", required=True, type=Path,
                        help="a JSON list of the webhook ids to change")
    parser.add_argument("--rate", type=float, default=1.0, help="changes per second (1)")
    parser.add_argument("--duration", type=float, default=3600.0,
                        help="seconds at most; SIGTERM stops it sooner (3600)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    ids = orjson.loads(args.ids.read_bytes())
    result = asyncio.run(change_steadily(args.config, ids, args.rate, args.duration, args.seed))
    args.out.write_bytes(orjson.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
