"""A management API client for the benchmark: lists deliveries at a steady rate, or walks
the history page by page, and prints its latencies as one JSON line.

Run as ``python -m bench.apiclient --socket API_SOCK --token-file F --org ORG …``: it waits
for the daemon's API socket to answer ``/healthz``, then sends
``GET /v1/organizations/{org}/deliveries?limit=N`` — ``--rate`` per second until SIGTERM
(or ``--requests`` have been sent), one at a time, following ``next_cursor`` for
``--pages`` pages before starting again from the newest.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from pathlib import Path

import aiohttp
import orjson

#: Host part of the URLs (the connection goes to the Unix socket).
BASE = "http://nevent-dispatch"


async def _wait_ready(session: aiohttp.ClientSession, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            async with session.get(f"{BASE}/healthz") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.02)
    raise SystemExit(f"the API did not answer within {timeout_s} s")


async def main(args: argparse.Namespace) -> dict[str, object]:
    base = BASE
    token = next(line.strip() for line in args.token_file.read_text().splitlines()
                 if line.strip() and not line.startswith("#"))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    latencies: list[float] = []
    errors = 0
    sent = 0
    orgs = args.org.split(",")
    interval = 1.0 / args.rate if args.rate > 0 else 0.0
    headers = {"Authorization": f"Bearer {token}"}
    connector = aiohttp.UnixConnector(path=str(args.socket))
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
        await _wait_ready(session, 60.0)
        cursor: str | None = None
        page = 0
        next_at = time.monotonic()
        while not stop.is_set() and (args.requests == 0 or sent < args.requests):
            org = orgs[sent % len(orgs)]
            url = f"{base}/v1/organizations/{org}/deliveries?limit={args.limit}"
            if cursor:
                url += f"&cursor={cursor}"
            t0 = time.perf_counter()
            try:
                async with session.get(url) as resp:
                    body = await resp.read()
                    if resp.status != 200:
                        errors += 1
                        cursor = None
                    else:
                        page += 1
                        cursor = orjson.loads(body)["next_cursor"] if page < args.pages else None
                        if cursor is None:
                            page = 0
            except aiohttp.ClientError:
                errors += 1
                cursor = None
            latencies.append((time.perf_counter() - t0) * 1000)
            sent += 1
            if interval:
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    try:
                        await asyncio.wait_for(stop.wait(), delay)
                    except TimeoutError:
                        pass
                else:
                    next_at = time.monotonic()
    ordered = sorted(latencies)

    def q(p: float) -> float | None:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else None

    return {"requests": sent, "errors": errors, "p50_ms": q(0.5), "p99_ms": q(0.99)}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--socket", type=Path, required=True, help="the daemon's api.listen socket")
    p.add_argument("--token-file", type=Path, required=True)
    p.add_argument("--org", required=True, help="organization ids, comma-separated (in turn)")
    p.add_argument("--rate", type=float, default=0.0, help="requests/s (0: back to back)")
    p.add_argument("--requests", type=int, default=0, help="stop after N (0: at SIGTERM)")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--pages", type=int, default=1, help="pages followed before the newest again")
    result = asyncio.run(main(p.parse_args()))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
