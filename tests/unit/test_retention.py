"""Retention's pure parts: bounds from the config, how often it runs, batch sizes and pauses,
free pages kept, and the command's report."""

from __future__ import annotations

import pytest

from nevent_dispatch.cli.prune import report_json, report_lines
from nevent_dispatch.config import Config
from nevent_dispatch.errors import ConfigError
from nevent_dispatch.ops.retention import (
    EVERY_MAX_S,
    EVERY_MIN_S,
    Pacer,
    Report,
    deliveries_keep_s,
    outbox_keep_s,
    outbox_pacer,
    pages_to_release,
    rows_pacer,
    run_every_s,
)


def test_the_bounds_come_from_the_retention_table():
    """"30d" is thirty days, "0" keeps every delivery, "off" never prunes the outbox."""
    config = Config()
    assert deliveries_keep_s(config) == 30 * 86400
    assert outbox_keep_s(config) is None
    config = config.replace(retention={"deliveries": "0", "outbox": "3d"})
    assert deliveries_keep_s(config) is None
    assert outbox_keep_s(config) == 3 * 86400


def test_an_outbox_retention_shorter_than_the_retry_horizon_is_refused():
    """Retries re-read the outbox: config.validate refuses what retention would then break."""
    from nevent_dispatch.config import validate
    with pytest.raises(ConfigError, match="retention.outbox: must be \"off\" or at least"):
        validate(Config().replace(retention={"outbox": "1h"}))


def test_the_task_runs_every_tenth_of_the_shortest_retention_within_bounds():
    assert run_every_s(None, None) is None
    assert run_every_s(30 * 86400, None) == EVERY_MAX_S
    assert run_every_s(2.0, 3 * 86400) == EVERY_MIN_S
    assert run_every_s(None, 1200.0) == 120.0


def test_a_slow_batch_halves_the_next_and_a_fast_one_grows_it_towards_the_target():
    pacer = Pacer(1000, low=100, high=2000, target_s=0.006, most_s=0.010)
    pacer.after(0.020)
    assert pacer.size == 500
    pacer.after(0.003)  # half the target: twice the size, but at most half again
    assert pacer.size == 750
    pacer.after(0.006)
    assert pacer.size == 750
    pacer.after(0.008)
    assert pacer.size == round(750 * 0.006 / 0.008)
    for _ in range(20):
        pacer.after(0.0)
    assert pacer.size == 2000
    for _ in range(20):
        pacer.after(1.0)
    assert pacer.size == 100


def test_the_pause_after_a_batch_leaves_the_lock_free_at_least_as_long():
    """Retention holds the state database's write lock at most half of the time, the
    application's at most a third, and pauses at least 5 ms."""
    pacer = rows_pacer()
    assert pacer.after(0.006) == pytest.approx(0.006)
    assert pacer.after(0.0) == pytest.approx(0.005)
    outbox = outbox_pacer()
    assert outbox.after(0.003) == pytest.approx(0.006)
    outbox.after(0.006)  # over its 5 ms: the next batch is half as large
    assert outbox.size == 250


def test_free_pages_beyond_those_kept_are_released():
    assert pages_to_release(1000, 0) == 1000
    assert pages_to_release(1000, 300) == 700
    assert pages_to_release(200, 300) == 0
    assert pages_to_release(5, -1) == 5


def test_the_report_says_what_went_in_two_lines():
    report = Report(deliveries_before=1_800_000_000.0, outbox_before=1_800_100_000.0,
                    outbox_below=41, deliveries=1234, attempts=2345, batches=3, outbox=40,
                    released_bytes=3_200_000, seconds=0.42)
    assert report_lines(report) == [
        "pruned 1,234 deliveries (2,345 attempts, 3 batches) finished before 2027-01-15T08:00:00Z",
        "pruned 40 outbox rows (below id 41, created before 2027-01-16T11:46:40Z); 3.2 MB given "
        "back to the file system; 0.42 s"]
    assert report_json(report)["outbox_below_id"] == 41
    idle = Report(dry_run=True, seconds=0.01)
    assert report_lines(idle) == [
        'deliveries: none pruned (retention.deliveries = "0" keeps every one)',
        'outbox: not pruned (retention.outbox = "off"); 0.01 s, nothing changed']
    assert not idle.removed and report.removed
