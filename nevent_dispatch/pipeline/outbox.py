"""Reading the application's outbox: bounded pages after a cursor, woken by change.

Owns change detection (``PRAGMA data_version``, which moves when another
connection commits) and the page loop. It never holds a write lock on the
application's database and never loads more than one page at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from ..store.sqlite import OutboxRow, Store


class OutboxReader:
    def __init__(self, store: Store, *, cursor: int, page_size: int, poll_interval: float,
                 stopping: asyncio.Event) -> None:
        self._store = store
        self.cursor = cursor
        self._page_size = page_size
        self._poll = poll_interval
        self._stopping = stopping
        #: True when the last read found nothing new (an until-idle run may end then).
        self.caught_up = False

    async def pages(self) -> AsyncIterator[list[OutboxRow]]:
        """Yield pages of new rows as they are committed, until stopping is set.

        The caller advances ``cursor`` once a page is safely recorded.
        """
        version = await self._store.outbox_version()
        while not self._stopping.is_set():
            rows = await self._store.outbox_page(self.cursor, self._page_size)
            if rows:
                self.caught_up = False
                yield rows
                continue
            self.caught_up = True
            # Nothing new: wait until another connection commits (or stop).
            while not self._stopping.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self._poll)
                current = await self._store.outbox_version()
                if current != version:
                    version = current
                    break
