"""The aiohttp receiver: fast fallback, slow endpoint and latency probe in one process.

Run as ``python -m bench.sink --port P --cert C --key K [--delay S]``. Any POST is
accepted; the path decides the answer:

    /fail/…   500 at once (failure load)
    /slow/…   200 after ``--delay`` seconds (slow receivers)
    /lat/…    200 at once, recording the receipt time of each event's ``data.seq``
    other     200 at once (the fast receiver when nginx is missing)

``GET /__stats`` returns the counters (2xx, 5xx, time of the last receipt) and
``GET /__records`` returns and clears the latency records as
``[[seq, received_at, sent_at], …]``. It does not verify signatures: it stands
for a fast customer endpoint, not a careful one. SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
import time
from collections.abc import Sequence
from typing import Any

import orjson
from aiohttp import web


def _record(body: bytes, received_at: float, records: list[tuple[int, float, float]]) -> None:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return
    events = doc.get("events", [doc]) if isinstance(doc, dict) else []
    for event in events:
        data = event.get("data") if isinstance(event, dict) else None
        if isinstance(data, dict) and isinstance(data.get("seq"), int):
            records.append((data["seq"], received_at, float(data.get("sent_at") or 0.0)))


def make_app(delay_s: float) -> web.Application:
    stats: dict[str, Any] = {"ok": 0, "failed": 0, "last_at": 0.0}
    records: list[tuple[int, float, float]] = []

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        received_at = time.time()
        path = request.path
        if path.startswith("/fail/"):
            stats["failed"] += 1
            stats["last_at"] = received_at
            return web.Response(status=500)
        if path.startswith("/lat/"):
            _record(body, received_at, records)
        elif path.startswith("/slow/"):
            await asyncio.sleep(delay_s)
        stats["ok"] += 1
        stats["last_at"] = received_at
        return web.Response(status=200)

    async def get_stats(_request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(stats), content_type="application/json")

    async def get_records(_request: web.Request) -> web.Response:
        taken = records[:]
        records.clear()
        return web.Response(body=orjson.dumps(taken), content_type="application/json")

    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_get("/__stats", get_stats)
    app.router.add_get("/__records", get_records)
    app.router.add_post("/{tail:.*}", receive)
    return app


async def serve(port: int, cert: str, key: str, delay_s: float) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    runner = web.AppRunner(make_app(delay_s), access_log=None, shutdown_timeout=1.0,
                           handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=context, backlog=4096)
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sink", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True, help="PEM certificate chain")
    parser.add_argument("--key", required=True, help="PEM private key")
    parser.add_argument("--delay", type=float, default=0.05, metavar="S",
                        help="seconds /slow/ paths wait before answering (0.05)")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency of nevent-dispatch
        asyncio.run(serve(args.port, args.cert, args.key, args.delay))
    else:
        uvloop.run(serve(args.port, args.cert, args.key, args.delay))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
