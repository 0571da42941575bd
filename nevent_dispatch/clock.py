"""The only module that reads the time; everything else is handed a clock.

Tests hand a fake clock instead of sleeping.
"""

from __future__ import annotations

import time as _time
from typing import Protocol


class Clock(Protocol):
    #: Clock seconds per real second: waits computed on the clock sleep ``wait / speed``.
    speed: float

    def time(self) -> float: ...
    def monotonic(self) -> float: ...


class SystemClock:
    """Wall time for records and signatures, monotonic time for waiting."""

    speed = 1.0

    @staticmethod
    def time() -> float:
        return _time.time()

    @staticmethod
    def monotonic() -> float:
        return _time.monotonic()


SYSTEM = SystemClock()


class FastClock:
    """Monotonic time running ``speed`` times faster than real time (for tests and demos).

    Rate limits and batch waits computed on it complete ``speed`` times sooner,
    while wall time for signatures stays real.
    """

    def __init__(self, speed: float) -> None:
        self.speed = speed
        self._origin = _time.monotonic()

    @staticmethod
    def time() -> float:
        return _time.time()

    def monotonic(self) -> float:
        return self._origin + (_time.monotonic() - self._origin) * self.speed
