"""The only module that reads the time; everything else is handed a clock.

Tests hand a fake clock instead of sleeping.
"""

from __future__ import annotations

import time as _time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float: ...
    def monotonic(self) -> float: ...


class SystemClock:
    """Wall time for records and signatures, monotonic time for waiting."""

    @staticmethod
    def time() -> float:
        return _time.time()

    @staticmethod
    def monotonic() -> float:
        return _time.monotonic()


SYSTEM = SystemClock()
