"""The memory budget of the lanes: bytes held in memory, bounded in total and per lane.

Owns the arithmetic of fair sharing (pure: no I/O, no clock). Every body a lane
holds in memory — an event waiting for a batch, a delivery queued to be sent —
is charged to its lane, with a fixed overhead per item for the objects around
it. The guarantee:

- the lanes together never hold more than ``total_bytes``;
- one lane never holds more than ``lane_bytes`` nor ``lane_items`` items;
- a lane holding less than half its fair share, ``total_bytes / n`` with n
  the lanes holding anything, is always admitted: room is reclaimed from the
  lanes holding the most (above their share), newest items first. So one
  webhook's backlog, however large, can never keep another webhook's work out
  of memory: every webhook gets at least min(its demand, total / 2n). Lanes
  between half and all of their share wait for room instead of taking it:
  lanes of equal demand do not keep taking work from each other.

Reclaimed work is not lost: it is already recorded in the state database, and
its lane reads it again when it has room. It must not touch lanes' queues: it
tells its caller which lanes give back how many bytes.
"""

from __future__ import annotations

from collections.abc import Hashable

#: Bytes charged per item on top of its body: the job or item object, its queue slot.
ITEM_OVERHEAD = 400
#: When room must be reclaimed, room for this many more items of the same size is taken
#: too, so the next admissions of a starving lane are free.
RECLAIM_AHEAD = 8


class Budget:
    def __init__(self, total_bytes: int, lane_bytes: int, lane_items: int) -> None:
        self.total_bytes = total_bytes
        self.lane_bytes = lane_bytes
        self.lane_items = lane_items
        self.held = 0
        self._lanes: dict[Hashable, list[int]] = {}  # lane -> [bytes, items]

    @staticmethod
    def cost(body_size: int) -> int:
        return body_size + ITEM_OVERHEAD

    def of(self, lane: Hashable) -> tuple[int, int]:
        """(bytes, items) the lane holds."""
        found = self._lanes.get(lane)
        return (found[0], found[1]) if found else (0, 0)

    def fits_lane(self, lane: Hashable, cost: int) -> bool:
        held, items = self.of(lane)
        return items == 0 or (items < self.lane_items and held + cost <= self.lane_bytes)

    def admit(self, lane: Hashable, cost: int) -> tuple[bool, list[tuple[Hashable, int]]]:
        """Whether ``lane`` may hold one more item of ``cost`` bytes, and the bytes to reclaim
        from other lanes first (the caller drops that much of their newest work, then calls
        ``release`` for it, before ``charge``)."""
        if not self.fits_lane(lane, cost):
            return False, []
        if self.held + cost <= self.total_bytes:
            return True, []
        holding = len(self._lanes) + (0 if lane in self._lanes else 1)
        share = self.total_bytes / holding
        mine = self.of(lane)[0]
        if mine + cost > share / 2:
            return False, []  # not starving: it waits for its own work to drain
        need = self.held + cost - self.total_bytes + RECLAIM_AHEAD * cost
        reclaim: list[tuple[Hashable, int]] = []
        # The largest holders give back first, down to (at least) the share.
        for other, (held, _) in sorted(((k, v) for k, v in self._lanes.items() if k != lane),
                                       key=lambda kv: -kv[1][0]):
            if need <= 0 or held <= share:
                break
            give = min(need, int(held - share)) if held - share >= 1 else 0
            if give > 0:
                reclaim.append((other, give))
                need -= give
        return True, reclaim

    def lanes_holding(self) -> int:
        return len(self._lanes)

    def free_for(self, lane: Hashable) -> tuple[int, int]:
        """(bytes, items) the lane may still take without any room being reclaimed."""
        held, items = self.of(lane)
        return (min(self.total_bytes - self.held, self.lane_bytes - held),
                self.lane_items - items)

    def charge(self, lane: Hashable, cost: int, items: int = 1) -> None:
        found = self._lanes.get(lane)
        if found is None:
            self._lanes[lane] = [cost, items]
        else:
            found[0] += cost
            found[1] += items
        self.held += cost

    def release(self, lane: Hashable, cost: int, items: int = 1) -> None:
        found = self._lanes.get(lane)
        if found is None:
            return
        found[0] -= cost
        found[1] -= items
        self.held -= cost
        if found[1] <= 0:
            self.held -= found[0]  # rounding left behind by callers: never negative
            del self._lanes[lane]
