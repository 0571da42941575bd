"""Batched recording of the lanes' state changes: many moves, one state transaction.

Owns the buffer between the attempt tasks and the state database: attempts
started (queued → in flight), results (attempt rows and the delivery's next
state), queued deliveries given back (→ pending) or failed. They are appended
(no I/O on the attempt's path) and written together every ``interval`` seconds
or when the buffer is large; the final flush is shielded so a cancel cannot
lose it. After a flush it reports which webhooks have work due in the database
again (a retry, a release), so the scheduler can wake their lanes. It must not
decide states: it writes what it gets.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any

from ..store.sqlite import Finish, Store

#: (webhook id, when) — a webhook has a delivery due in the database at that time.
Due = tuple[str, float]


class Recorder:
    def __init__(self, store: Store, *, interval: float = 0.02, high_water: int = 2000,
                 on_flushed: Callable[[Sequence[Due]], None] | None = None) -> None:
        self._store = store
        self._interval = interval
        self._high_water = high_water
        self._started: list[tuple[float, int]] = []
        self._attempts: list[tuple[Any, ...]] = []
        self._finishes: list[Finish] = []
        self._released: list[tuple[float, float, int]] = []
        self._failed: list[tuple[float, int]] = []
        self._due: list[Due] = []
        self._ready = asyncio.Event()
        self._on_flushed = on_flushed
        self._lock = asyncio.Lock()

    def __len__(self) -> int:
        return (len(self._started) + len(self._attempts) + len(self._released)
                + len(self._failed))

    def _added(self) -> None:
        # Counting only what the flush waits for: an attempt's start and its result arrive
        # in pairs, and the first of a group, or a full buffer, wakes the writer.
        size = len(self._attempts) + len(self._started)
        if size <= 1 or size >= self._high_water:
            self._ready.set()

    def started(self, delivery_id: int, now: float) -> None:
        """An attempt at a queued delivery began."""
        self._started.append((now, delivery_id))
        if len(self._started) == 1 and not self._attempts:
            self._ready.set()

    def add(self, attempt: tuple[Any, ...], finish: Finish, due: Due | None) -> None:
        """An attempt's result; ``due`` when the delivery waits for a retry."""
        self._attempts.append(attempt)
        self._finishes.append(finish)
        if due is not None:
            self._due.append(due)
        self._added()

    def release(self, webhook_id: str, delivery_id: int, now: float) -> None:
        """A queued delivery goes back to the database, due now."""
        self._released.append((now, now, delivery_id))
        self._due.append((webhook_id, now))
        self._added()

    def fail(self, delivery_id: int, now: float) -> None:
        """A queued delivery of a deleted webhook ends as failed."""
        self._failed.append((now, delivery_id))
        self._added()

    def wake(self) -> None:
        """Let ``run`` notice that stopping was set."""
        self._ready.set()

    async def flush(self) -> None:
        async with self._lock:
            if not len(self):
                return
            taken = (self._started, self._attempts, self._finishes, self._released, self._failed)
            due = self._due
            self._started, self._attempts, self._finishes = [], [], []
            self._released, self._failed, self._due = [], [], []
            started = taken[0]
            if started and taken[2]:
                # An attempt that began and ended since the last flush is one move, queued →
                # its end (finish_attempt admits both): the in-flight step would be a second
                # update of the same row in the same transaction, seen by nobody.
                ended = {f.delivery_id for f in taken[2]}
                started = [s for s in started if s[1] not in ended]
            try:
                await self._store.record_results(started, *taken[1:])
            except BaseException:
                # Put them back so a later flush (or the final one) still writes them.
                for mine, old in zip((self._started, self._attempts, self._finishes,
                                      self._released, self._failed), taken, strict=True):
                    mine[:0] = old  # type: ignore[index]
                self._due[:0] = due
                raise
        if self._on_flushed is not None and due:
            self._on_flushed(due)

    async def run(self, stopping: asyncio.Event) -> None:
        """Flush whenever changes are waiting, pausing ``interval`` to gather a group."""
        while not stopping.is_set():
            await self._ready.wait()
            self._ready.clear()
            if len(self) < self._high_water:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stopping.wait(), self._interval)
            await self.flush()

    async def close(self) -> None:
        """The last flush; a cancel of the caller cannot interrupt the write."""
        await asyncio.shield(self.flush())
