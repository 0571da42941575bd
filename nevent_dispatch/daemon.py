"""The process shell: uvloop, logging, signals, the dispatcher's lifetime.

Owns what belongs to the process and nothing else: the event loop policy, the
signal handlers (installed through a context manager that restores the old
ones; the first SIGTERM/SIGINT/SIGHUP asks for a drain, a second forces exit),
the state lock (one daemon per state database, ``statelock.py``), opening and
closing the store, starting and stopping the management API (``api/``) and the
operations side (``ops/``: health checks, systemd notifications). The pipeline itself
lives in ``dispatcher.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

from .config import Config
from .logs import get_logger
from .ops import Operations
from .pipeline.dispatcher import Dispatcher
from .statelock import hold
from .store.sqlite import Store

log = get_logger("nevent_dispatch")

#: Signals that ask for a drain. SIGHUP drains too rather than reloading: webhooks are
#: already reloaded live, and its default action would kill the daemon mid-attempt.
DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

#: Collector thresholds of the daemon (Python's defaults are 700, 10, 10).
GC_THRESHOLDS = (20_000, 50, 100)


@contextlib.contextmanager
def stop_on_signals(loop: asyncio.AbstractEventLoop, dispatcher: Dispatcher) -> Iterator[None]:
    """First SIGTERM/SIGINT/SIGHUP: drain. Second: exit at once (like uvicorn)."""
    received: list[int] = []

    def handle(signum: int) -> None:
        received.append(signum)
        if len(received) == 1:
            log.info("signal_received", signal=signal.Signals(signum).name, action="drain")
            dispatcher.stop()
        else:
            log.warning("signal_received", signal=signal.Signals(signum).name, action="exit")
            os._exit(1)

    for signum in DRAIN_SIGNALS:
        loop.add_signal_handler(signum, handle, signum)
    try:
        yield
    finally:
        for signum in DRAIN_SIGNALS:
            loop.remove_signal_handler(signum)


async def serve(config: Config, *, until_idle: bool = False, api: bool = True,
                max_wait: float | None = None,
                on_waiting: Callable[[dict[str, Any]], None] | None = None,
                ) -> dict[str, Any] | None:
    """Lock the state, open the databases, serve the API, deliver until stopped, close
    everything in order (the API first: no change arrives for a pipeline that is gone; the
    health checks and notifications, which read the store, before the store)."""
    # Before the databases are opened: a second daemon must not even migrate them.
    with hold(config.database.state) as lock:
        store = await Store.open(config, wait_on_storage=True)
        server = None
        operations: Operations | None = None
        try:
            dispatcher = Dispatcher(config, store)
            dispatcher.max_wait, dispatcher.on_waiting = max_wait, on_waiting
            operations = Operations(config, dispatcher)
            if api and config.api.listen:
                from .api.app import ApiServer, Pipeline  # aiohttp's server: the daemon's only
                server = ApiServer(config, Pipeline(dispatcher.watcher.catch_up,
                                                    dispatcher.watcher.poke), operations)
            if server is not None:
                await server.start()
            operations.start()
            with stop_on_signals(asyncio.get_running_loop(), dispatcher):
                log.info("daemon_started", pid=os.getpid(), outbox=str(config.database.outbox),
                         state=str(config.database.state), lock=str(lock), until_idle=until_idle)
                await dispatcher.run(until_idle=until_idle)
        finally:
            if server is not None:
                await server.stop()
            if operations is not None:
                await operations.stop()
            await store.close()
            log.info("daemon_stopped")
    # An until-idle run whose max_wait ran out: what was left (None when it finished).
    return dispatcher.timed_out


def tune_gc() -> None:
    """Make the cyclic garbage collector cheap for a process that holds many live objects.

    Everything imported so far lives as long as the process: frozen, the collector
    never walks it again. The first generation is collected after 20,000 net
    allocations instead of 700: tens of thousands of queued jobs and in-flight
    requests otherwise cost a collection every few deliveries (~12 % of a drain).
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run(config: Config, *, until_idle: bool = False, api: bool = True,
        max_wait: float | None = None,
        on_waiting: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any] | None:
    """Run the daemon on uvloop's event loop; an until-idle run whose ``max_wait`` ran out
    returns what was left."""
    tune_gc()
    main = serve(config, until_idle=until_idle, api=api, max_wait=max_wait,
                 on_waiting=on_waiting)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        return asyncio.run(main)
    return uvloop.run(main)
