"""When to try a failed delivery again: one pure function of the attempt count.

Owns the retry decision. It must not read the clock or know about HTTP beyond
the Retry-After value it is handed.
"""

from __future__ import annotations

from collections.abc import Sequence
from email.utils import parsedate_to_datetime

from ..models import RETRYABLE, Outcome


def next_attempt_at(*, attempts_in_round: int, schedule: Sequence[float], retries: bool,
                    outcome: Outcome, now: float, retry_after: float | None = None) -> float | None:
    """The time of the next attempt, or None when the delivery has failed for good.

    ``attempts_in_round`` counts attempts made since the delivery was created or
    last replayed, this one included. A ``retry_after`` asking for longer than the
    scheduled step is honoured, but never beyond the schedule's last (longest) step.
    """
    if outcome is Outcome.SUCCESS or outcome not in RETRYABLE or not retries:
        return None
    if attempts_in_round > len(schedule) or attempts_in_round < 1:
        return None
    delay = schedule[attempts_in_round - 1]
    if retry_after is not None and retry_after > delay:
        delay = min(retry_after, max(schedule))
    return now + delay


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds asked for by a Retry-After header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - now)
