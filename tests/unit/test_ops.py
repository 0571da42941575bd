"""The operations side's pure parts: the health judge, the counters, the sd_notify settings."""

from __future__ import annotations

from nevent_dispatch.models import Outcome, State
from nevent_dispatch.ops.health import SCHEDULER_SLACK_S, Judge, Observation
from nevent_dispatch.ops.notify import address, watchdog_interval
from nevent_dispatch.pipeline.progress import Buckets, Tally

STALL = 30.0


def seen(**kw: object) -> Observation:
    base: dict[str, object] = {"started": True, "draining": False, "cursor": 10, "newest": 10}
    base.update(kw)
    return Observation(**base)  # type: ignore[arg-type]


def test_a_running_pipeline_with_nothing_wrong_is_ok_and_shows_its_figures() -> None:
    verdict = Judge(STALL).judge(seen(newest=12, in_flight=3), now=100.0, wall=1e9)
    assert (verdict.status, verdict.reasons) == ("ok", ())
    assert verdict.figures == {"outbox_cursor": 10, "outbox_backlog": 2, "in_flight": 3}


def test_before_the_pipeline_runs_the_verdict_is_starting_and_says_why_it_waits() -> None:
    judge = Judge(STALL)
    assert judge.judge(seen(started=False), 0.0, 0.0).status == "starting"
    waiting = judge.judge(seen(started=False, write_waited_s=31.0), 1.0, 1.0)
    assert waiting.status == "starting"
    assert waiting.reasons[0].startswith("state database: a write has waited 31 s")


def test_draining_is_stopping_whatever_else_is_seen() -> None:
    verdict = Judge(STALL).judge(seen(draining=True, dead_tasks=("stop-signal",)), 0.0, 0.0)
    assert verdict.status == "stopping"


def test_a_state_write_waiting_longer_than_the_bound_is_a_stall_naming_the_cause() -> None:
    judge = Judge(STALL)
    assert judge.judge(seen(write_waited_s=STALL), 0.0, 0.0).ok  # at the bound: not yet
    verdict = judge.judge(seen(write_waited_s=STALL + 1, storage_problem="db: database is full"),
                          1.0, 1.0)
    assert verdict.status == "stalled"
    assert verdict.reasons == ("state database: a write has waited 31 s (health.stall_after = 30)"
                               ": db: database is full",)


def test_intake_is_stalled_only_when_the_cursor_stands_still_over_a_backlog_too_long() -> None:
    judge = Judge(STALL)
    assert judge.judge(seen(cursor=10, newest=50), 0.0, 0.0).ok
    assert judge.judge(seen(cursor=10, newest=60), STALL, 0.0).ok
    stalled = judge.judge(seen(cursor=10, newest=60), STALL + 1, 0.0)
    assert stalled.reasons == ("intake: the cursor has stood at 10 for 31 s with 50 outbox rows "
                               "to take in",)
    assert judge.judge(seen(cursor=11, newest=60), STALL + 2, 0.0).ok  # it moved: the clock restarts
    assert judge.judge(seen(cursor=11, newest=60), 2 * STALL + 2, 0.0).ok
    assert not judge.judge(seen(cursor=11, newest=60), 2 * STALL + 3, 0.0).ok
    judge.judge(seen(cursor=11, newest=11), 2 * STALL + 4, 0.0)  # caught up: no backlog
    assert judge.judge(seen(cursor=11, newest=90), 3 * STALL, 0.0).ok


def test_scheduler_work_overdue_beyond_its_longest_sleep_dead_tasks_and_reads_are_stalls() -> None:
    judge = Judge(STALL)
    assert judge.judge(seen(overdue_s=STALL + SCHEDULER_SLACK_S), 0.0, 0.0).ok
    overdue = judge.judge(seen(overdue_s=STALL + SCHEDULER_SLACK_S + 1), 0.0, 0.0)
    assert overdue.reasons[0].startswith("retry scheduler: work due 36 s ago")
    dead = judge.judge(seen(dead_tasks=("recorder",), lane_failure="RuntimeError('x')"), 0.0, 0.0)
    assert dead.reasons == ("pipeline task recorder has stopped", "a lane failed: RuntimeError('x')")
    unreadable = judge.judge(seen(newest=None, unreadable=("outbox database: cannot read: x",)),
                             0.0, 0.0)
    assert (unreadable.status, unreadable.reasons) == ("stalled", ("outbox database: cannot read: x",))


def test_buckets_are_cumulative_with_inclusive_upper_bounds() -> None:
    buckets = Buckets((1.0, 5.0))
    for value in (0.5, 1.0, 3.0, 7.0):
        buckets.observe(value)
    assert buckets.cumulative() == [(1.0, 2), (5.0, 3), (float("inf"), 4)]
    assert buckets.sum == 11.5


def test_the_tally_counts_outcomes_final_states_and_first_attempt_lags() -> None:
    tally = Tally()
    tally.attempt(Outcome.SUCCESS, 20.0, State.DELIVERED, lag=2.5)
    tally.attempt(Outcome.HTTP_ERROR, 5.0, State.PENDING, lag=-0.2)  # a clock a hair behind
    tally.attempt(Outcome.TIMEOUT, 10_000.0, State.FAILED, lag=None)  # a retry: no lag
    tally.batch(7)
    assert tally.attempts[Outcome.SUCCESS] == tally.attempts[Outcome.HTTP_ERROR] == 1
    assert tally.deliveries == {State.DELIVERED: 1, State.FAILED: 1, State.REJECTED: 0}
    assert sum(tally.durations.counts) == 3 and tally.durations.sum == 10.025
    assert sum(tally.lag.counts) == 2 and tally.lag.sum == 2.5
    assert (tally.batches, tally.batch_events.sum) == (1, 7)


def test_notify_socket_addresses_and_the_watchdog_interval() -> None:
    assert address("/run/systemd/notify") == "/run/systemd/notify"
    assert address("@abstract/name") == "\0abstract/name"
    assert address("") is None and address("relative") is None
    assert watchdog_interval({"WATCHDOG_USEC": "60000000"}, 42) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "42"}, 42) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "7"}, 42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, 42) is None
    assert watchdog_interval({}, 42) is None
