"""A token bucket per webhook: pure arithmetic on an injected monotonic time.

Owns the rate limit's maths: ``capacity`` tokens at most, refilled at
``rate`` tokens per second, one token per event (a batch takes one per event).
In any window of T seconds a webhook receives at most ``capacity + rate × T``
events. It must not sleep: callers ask how long to wait and wait themselves.
"""

from __future__ import annotations


class TokenBucket:
    __slots__ = ("rate", "capacity", "_tokens", "_stamp")

    def __init__(self, events_per_minute: int, burst: int, now: float) -> None:
        self.rate = events_per_minute / 60.0
        #: A bucket never holds more than a minute's worth, nor less than one event.
        self.capacity = float(max(1, min(burst, events_per_minute)))
        self._tokens = self.capacity
        self._stamp = now

    def following(self, previous: TokenBucket, now: float) -> TokenBucket:
        """This bucket, taking over what ``previous`` (the same webhook's) had left: a lane
        made again (webhook re-enabled, mode or limit changed) must not start full."""
        previous._refill(now)
        self._tokens = min(self.capacity, previous._tokens)
        self._stamp = now
        return self

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now

    def available(self, now: float) -> int:
        """Whole events that may be sent right now."""
        self._refill(now)
        return int(self._tokens + 1e-9)

    def take(self, count: int, now: float) -> None:
        """Spend ``count`` tokens (callers ask ``available`` first)."""
        self._refill(now)
        self._tokens -= count

    def wait(self, count: int, now: float) -> float:
        """Seconds until ``count`` tokens (at most the capacity) are available."""
        self._refill(now)
        missing = min(count, self.capacity) - self._tokens
        return 0.0 if missing <= 1e-9 else missing / self.rate
