"""The lanes' memory budget: a hard total, a per-lane cap, and a fair share for every lane."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from nevent_dispatch.pipeline.budget import ITEM_OVERHEAD, Budget
from nevent_dispatch.pipeline.ratelimit import TokenBucket

MB = 1024 * 1024


def _admit(budget: Budget, held: dict[str, list[int]], lane: str, size: int) -> bool:
    """Admit one item the way the lane host does: reclaim from others' newest items first."""
    cost = Budget.cost(size)
    ok, reclaim = budget.admit(lane, cost)
    if not ok:
        return False
    for other, nbytes in reclaim:
        items = held[other]
        while items and nbytes > 0:
            dropped = items.pop()
            budget.release(other, dropped)
            nbytes -= dropped
    budget.charge(lane, cost)
    held.setdefault(lane, []).append(cost)
    return True


def test_one_lane_cannot_take_more_than_its_cap_nor_the_total():
    budget = Budget(total_bytes=10 * MB, lane_bytes=4 * MB, lane_items=1000)
    held: dict[str, list[int]] = {}
    taken = sum(_admit(budget, held, "hog", MB - ITEM_OVERHEAD) for _ in range(10))
    assert taken == 4 and budget.held == 4 * MB


def test_lanes_of_equal_demand_do_not_take_work_from_each_other():
    """Two lanes at their share: neither is admitted by reclaiming the other's items."""
    budget = Budget(total_bytes=8 * MB, lane_bytes=8 * MB, lane_items=10_000)
    held: dict[str, list[int]] = {}
    for _ in range(1024):
        _admit(budget, held, "a", 4096 - ITEM_OVERHEAD)
        _admit(budget, held, "b", 4096 - ITEM_OVERHEAD)
    assert budget.of("a")[0] == budget.of("b")[0] == 4 * MB
    assert not _admit(budget, held, "a", 4096 - ITEM_OVERHEAD)
    assert budget.of("b")[0] == 4 * MB


def test_a_starving_lane_is_admitted_by_reclaiming_from_the_largest():
    """A hog fills the budget; another lane still gets room, taken from the biggest holder."""
    budget = Budget(total_bytes=8 * MB, lane_bytes=8 * MB, lane_items=10_000)
    held: dict[str, list[int]] = {}
    for _ in range(2000):
        _admit(budget, held, "hog", 4096 - ITEM_OVERHEAD)
    assert budget.held <= 8 * MB
    assert _admit(budget, held, "quiet", 1000)
    assert budget.held <= budget.total_bytes
    assert budget.of("hog")[0] < 8 * MB


def test_an_item_larger_than_the_lane_cap_is_still_admitted_alone():
    budget = Budget(total_bytes=32 * MB, lane_bytes=MB, lane_items=10)
    held: dict[str, list[int]] = {}
    assert _admit(budget, held, "big", 2 * MB)
    assert not _admit(budget, held, "big", 10)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 7), st.integers(1, 600_000), st.booleans()),
                max_size=300))
def test_the_total_is_never_exceeded_and_every_lane_gets_its_share(ops):
    """Whatever the sequence of admissions and sends: total ≤ budget; a lane holding less
    than total / 2n (n lanes holding anything, itself included) is never refused."""
    budget = Budget(total_bytes=4 * MB, lane_bytes=2 * MB, lane_items=50)
    held: dict[str, list[int]] = {}
    for lane_no, size, send in ops:
        lane = f"lane{lane_no}"
        if send and held.get(lane):
            budget.release(lane, held[lane].pop(0))
            continue
        mine, items = budget.of(lane)
        holding = len([k for k, v in held.items() if v]) + (0 if items else 1)
        cost = Budget.cost(size)
        fair = mine + cost <= budget.total_bytes / holding / 2 and budget.fits_lane(lane, cost)
        ok = _admit(budget, held, lane, size)
        if fair:
            assert ok, (lane, mine, cost, budget.held)
        assert budget.held <= budget.total_bytes or sum(map(len, held.values())) == 1
        assert budget.held == sum(sum(v) for v in held.values())


def test_a_bucket_made_again_carries_on_from_the_last_one():
    """Re-creating a webhook's lane (re-enabled, new limit) must not hand it a full bucket."""
    old = TokenBucket(600, 100, 0.0)
    old.take(100, 0.0)
    new = TokenBucket(600, 100, 1.0).following(old, 1.0)
    assert new.available(1.0) == 10  # one second at 10/s, not 100
    lower = TokenBucket(60, 100, 2.0).following(TokenBucket(600, 100, 0.0), 2.0)
    assert lower.available(2.0) == 60  # clipped to the new capacity
