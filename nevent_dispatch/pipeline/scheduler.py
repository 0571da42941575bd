"""The retry scheduler: wakes a webhook's lane when work of it falls due in the database.

Owns, per webhook, the earliest time a pending delivery of it is due, in a
heap — fed by the recorder (a retry was scheduled, a delivery given back), by
intake (a page's overflow waits in the database), by the webhook watcher (a
webhook enabled, a replay from outside) — and a loop that sleeps until the
earliest of them, or until an earlier one is noted. It never queries the
database for "everything due": only the webhooks that have work are asked, one
index seek each, so the backlogs of disabled webhooks cost nothing. It must not
claim or send: it tells its host which lanes to wake.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
from collections.abc import Callable, Iterable

from ..clock import Clock

#: Longest sleep: a bound on how late a note lost to a race can be acted upon.
MAX_SLEEP = 5.0


class Scheduler:
    def __init__(self, clock: Clock, wake_lanes: Callable[[list[str]], None]) -> None:
        self._clock = clock
        self._wake_lanes = wake_lanes
        self._heap: list[tuple[float, str]] = []
        #: The earliest noted time per webhook (heap entries later than it are stale).
        self._due: dict[str, float] = {}
        self._wake = asyncio.Event()

    def __len__(self) -> int:
        return len(self._due)

    def note(self, webhook_id: str, at: float) -> None:
        """Work of ``webhook_id`` is due in the database at ``at`` (wall clock)."""
        current = self._due.get(webhook_id)
        if current is not None and current <= at:
            return
        self._due[webhook_id] = at
        heapq.heappush(self._heap, (at, webhook_id))
        if self._heap[0][1] == webhook_id:
            self._wake.set()

    def note_all(self, due: Iterable[tuple[str, float]]) -> None:
        for webhook_id, at in due:
            self.note(webhook_id, at)

    def forget(self, webhook_id: str) -> None:
        """The webhook went away or was disabled: its work is not scheduled any more."""
        self._due.pop(webhook_id, None)

    def earliest(self) -> float | None:
        return min(self._due.values(), default=None)

    def pop_due(self, now: float) -> list[str]:
        """The webhooks whose work is due at ``now``, removed from the schedule."""
        due: list[str] = []
        while self._heap and self._heap[0][0] <= now:
            at, webhook_id = heapq.heappop(self._heap)
            if self._due.get(webhook_id) == at:
                del self._due[webhook_id]
                due.append(webhook_id)
        if len(self._heap) > 4 * len(self._due) + 1024:  # stale entries: rebuild
            self._heap = [(at, w) for w, at in self._due.items()]
            heapq.heapify(self._heap)
        return due

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            self._wake.clear()
            due = self.pop_due(self._clock.time())
            if due:
                self._wake_lanes(due)
            earliest = self.earliest()
            delay = MAX_SLEEP if earliest is None else earliest - self._clock.time()
            delay = min(max(delay, 0.0), MAX_SLEEP)
            if delay <= 0:
                await asyncio.sleep(0)
                continue
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
