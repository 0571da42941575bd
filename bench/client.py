"""The bare client: the limit of the stack the daemon runs on.

Run as ``python -m bench.client``; prints one JSON object. It posts the same
~1 KB body with the same headers over the same TLS, through the same
``ClientSession`` the daemon makes (``sender.make_session``: one session, one
connector bounded by the concurrency), on uvloop, as fast as it can for
``--requests`` requests — no database, no signing, no lanes. The daemon's
throughput divided by this one's is the share of the machine's loopback HTTPS
capacity the daemon reaches.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from nevent_dispatch.config import DeliveryConfig
from nevent_dispatch.pipeline.sender import make_session
from nevent_dispatch.wire.signing import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, USER_AGENT

from .payload import EVENT_TYPE, Payloads
from .stats import percentile

#: Headers of the same names and sizes as the daemon's (their values need no computing here).
HEADERS = {
    "Content-Type": "application/json",
    "User-Agent": USER_AGENT,
    EVENT_HEADER: EVENT_TYPE,
    DELIVERY_HEADER: "00000000-0000-4000-8000-000000000000",
    SIGNATURE_HEADER: "t=1700000000,v1=" + "0" * 64,
}


async def hammer(urls: list[str], requests: int, concurrency: int, ca_file: Path,
                 body: bytes, timeout_s: float) -> dict[str, Any]:
    config = DeliveryConfig(max_in_flight=concurrency, allow_private_networks=True,
                            ca_file=ca_file, timeout=10.0)
    session = make_session(config)
    issued = ok = errors = 0
    latencies: list[float] = []

    async def worker() -> None:
        nonlocal issued, ok, errors
        while issued < requests:
            url = urls[issued % len(urls)]
            issued += 1
            t0 = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=HEADERS,
                                        allow_redirects=False) as response:
                    await response.content.read(1024)
                    status = response.status
            except Exception:  # noqa: BLE001 - counted, the loop goes on
                errors += 1
                continue
            latencies.append(time.perf_counter() - t0)
            if 200 <= status < 300:
                ok += 1
            else:
                errors += 1

    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            await asyncio.gather(*(worker() for _ in range(min(concurrency, requests))))
        timed_out = False
    except TimeoutError:
        timed_out = True
    finally:
        elapsed = time.perf_counter() - started
        await session.close()
    done = ok + errors
    return {
        "requests": done, "ok": ok, "errors": errors, "timed_out": timed_out,
        "elapsed_s": elapsed, "rate": ok / elapsed if elapsed > 0 else 0.0,
        "p50_ms": percentile(latencies, 0.50) * 1000 if latencies else None,
        "p95_ms": percentile(latencies, 0.95) * 1000 if latencies else None,
        "p99_ms": percentile(latencies, 0.99) * 1000 if latencies else None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.client", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="URL prefix; the path index is appended")
    parser.add_argument("--paths", type=int, default=1,
                        help="rotate over this many paths, like that many webhooks (1)")
    parser.add_argument("--requests", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--ca", required=True, type=Path, help="CA file to trust")
    parser.add_argument("--body-bytes", type=int, default=1024)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds for the whole run")
    args = parser.parse_args(argv)
    urls = [f"{args.url}{i}" for i in range(max(1, args.paths))]
    body = Payloads(args.body_bytes).body()
    coro = hammer(urls, args.requests, args.concurrency, args.ca, body, args.timeout)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency of nevent-dispatch
        result = asyncio.run(coro)
    else:
        result = uvloop.run(coro)
    result["body_bytes"] = len(body)
    print(orjson.dumps(result).decode(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
