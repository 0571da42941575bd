"""Batched recording of attempts: many results, one state transaction.

Owns the buffer between the attempt tasks and the state database: results are
appended (no I/O on the attempt's path) and written together every
``interval`` seconds or when the buffer is large. The final flush is shielded
so a cancel cannot lose it. It must not decide states: it writes what it gets.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from ..store.sqlite import Store


class Recorder:
    def __init__(self, store: Store, *, interval: float = 0.02, high_water: int = 2000,
                 on_flushed: Callable[[float | None], None] | None = None) -> None:
        self._store = store
        self._interval = interval
        self._high_water = high_water
        self._attempts: list[tuple[Any, ...]] = []
        self._finishes: list[tuple[Any, ...]] = []
        self._earliest_next: float | None = None
        self._ready = asyncio.Event()
        self._on_flushed = on_flushed
        self._lock = asyncio.Lock()

    def __len__(self) -> int:
        return len(self._attempts)

    def add(self, attempt: tuple[Any, ...], finish: tuple[Any, ...], next_at: float | None) -> None:
        self._attempts.append(attempt)
        self._finishes.append(finish)
        if next_at is not None and (self._earliest_next is None or next_at < self._earliest_next):
            self._earliest_next = next_at
        if len(self._attempts) == 1 or len(self._attempts) >= self._high_water:
            self._ready.set()

    def wake(self) -> None:
        """Let ``run`` notice that stopping was set."""
        self._ready.set()

    async def flush(self) -> None:
        async with self._lock:
            if not self._attempts:
                return
            attempts, finishes = self._attempts, self._finishes
            earliest, self._earliest_next = self._earliest_next, None
            self._attempts, self._finishes = [], []
            try:
                await self._store.record_results(attempts, finishes)
            except BaseException:
                # Put them back so a later flush (or the final one) still writes them.
                self._attempts[:0], self._finishes[:0] = attempts, finishes
                raise
        if self._on_flushed is not None:
            self._on_flushed(earliest)

    async def run(self, stopping: asyncio.Event) -> None:
        """Flush whenever results are waiting, pausing ``interval`` to gather a group."""
        while not stopping.is_set():
            await self._ready.wait()
            self._ready.clear()
            if len(self._attempts) < self._high_water:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stopping.wait(), self._interval)
            await self.flush()

    async def close(self) -> None:
        """The last flush; a cancel of the caller cannot interrupt the write."""
        await asyncio.shield(self.flush())
