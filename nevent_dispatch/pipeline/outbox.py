"""Reading the application's outbox: bounded pages after a cursor, woken by change.

Owns change detection (``PRAGMA data_version``, which moves when another
connection commits) and the page loop. Pages are bounded in rows and in bytes.
While the outbox stays quiet the checks space out from ``poll_interval`` to
``idle_poll_interval`` (an idle daemon costs next to nothing) and drop back at
the first new row. It never holds a write lock on the application's database
and never loads more than one page at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from ..store.sqlite import OutboxRow, Store

#: Each quiet check waits this much longer than the last, up to the idle interval.
BACKOFF = 1.25


class OutboxReader:
    def __init__(self, store: Store, *, cursor: int, page_size: int, poll_interval: float,
                 stopping: asyncio.Event, idle_poll_interval: float | None = None,
                 max_page_bytes: int = 8 * 1024 * 1024) -> None:
        self._store = store
        self.cursor = cursor
        self._page_size = page_size
        self._poll = poll_interval
        self._idle_poll = max(poll_interval, idle_poll_interval or poll_interval)
        self._max_bytes = max_page_bytes
        self._stopping = stopping
        #: True when the last read found nothing new (an until-idle run may end then).
        self.caught_up = False

    async def pages(self) -> AsyncIterator[list[OutboxRow]]:
        """Yield pages of new rows as they are committed, until stopping is set.

        The caller advances ``cursor`` once a page is safely recorded.
        """
        version = await self._store.outbox_version()
        while not self._stopping.is_set():
            rows = await self._store.outbox_page(self.cursor, self._page_size, self._max_bytes)
            if rows:
                self.caught_up = False
                yield rows
                continue
            self.caught_up = True
            # Nothing new: wait until another connection commits (or stop).
            delay = self._poll
            while not self._stopping.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                current = await self._store.outbox_version()
                if current != version:
                    version = current
                    break
                delay = min(delay * BACKOFF, self._idle_poll)
