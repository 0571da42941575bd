"""SIGTERM drains: attempts in flight finish and are recorded; a second signal forces exit.

A real daemon delivers to a receiver that answers after a delay; the signal
arrives while the attempts are in flight.
"""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from nevent_dispatch.models import State

from ..conftest import emit
from .conftest import wait_until

IN_FLIGHT = 5


@pytest.mark.slow
async def test_sigterm_lets_in_flight_attempts_finish_and_exits_0_within_the_grace(
        store, make_config, make_receiver, make_webhook, daemon):
    """Five attempts waiting on a 1 s answer are delivered and recorded before exit 0."""
    config = make_config(delivery={"shutdown_grace": 5.0})
    receiver = await make_receiver(delay=1.0)
    webhook, _ = await make_webhook(store, receiver.url, rate_limit=100_000)
    process = daemon(config)
    emit(config, [("fan.created", "org_a", {"n": n}) for n in range(IN_FLIGHT)])
    await wait_until(lambda: len(receiver.requests) == IN_FLIGHT, 15, interval=0.01,
                     what="the attempts to be in flight")
    signalled = time.monotonic()
    process.signal(signal.SIGTERM)
    code = await asyncio.to_thread(process.wait, 15)
    elapsed = time.monotonic() - signalled

    assert code == 0
    assert elapsed < config.delivery.shutdown_grace, f"exit took {elapsed:.1f} s"
    assert elapsed > 0.5, "the answers were waited for"
    deliveries = await store.list_deliveries(webhook_id=webhook.id)
    assert len(deliveries) == IN_FLIGHT
    assert all(d.state is State.DELIVERED and d.attempts == 1 for d in deliveries), deliveries
    for delivery in deliveries:
        [attempt] = await store.attempts(delivery.id)
        assert attempt.status == 200 and attempt.latency_ms >= 900
    events = [line.get("event") for line in process.log_lines()]
    assert "signal_received" in events and "draining" in events and "dispatcher_stopped" in events
    assert len(receiver.requests) == IN_FLIGHT, "nothing was sent twice"


@pytest.mark.slow
async def test_attempts_longer_than_the_grace_are_cut_and_left_for_the_next_daemon(
        store, make_config, make_receiver, make_webhook, daemon):
    """Past the grace the attempt is cut; the delivery stays pending for the next daemon."""
    config = make_config(delivery={"shutdown_grace": 0.5})
    receiver = await make_receiver(delay=3.0)
    webhook, _ = await make_webhook(store, receiver.url)
    process = daemon(config)
    emit(config, [("fan.created", "org_a", {})])
    await wait_until(lambda: len(receiver.requests) == 1, 15, what="the attempt to start")
    signalled = time.monotonic()
    process.signal(signal.SIGTERM)
    assert await asyncio.to_thread(process.wait, 15) == 0
    assert time.monotonic() - signalled < 2.5
    [delivery] = await store.list_deliveries(webhook_id=webhook.id)
    assert delivery.state in (State.QUEUED, State.IN_FLIGHT, State.PENDING)
    assert delivery.attempts == 0, "a cut attempt is not counted as failed"


@pytest.mark.slow
@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGTERM])
async def test_a_second_signal_forces_exit_while_draining(
        second, store, make_config, make_receiver, make_webhook, daemon):
    """SIGTERM starts a long drain; a second SIGTERM or SIGINT ends the process at once."""
    config = make_config(delivery={"shutdown_grace": 60.0})
    receiver = await make_receiver(delay=30.0)
    await make_webhook(store, receiver.url)
    process = daemon(config)
    emit(config, [("fan.created", "org_a", {})])
    await wait_until(lambda: len(receiver.requests) == 1, 15, what="the attempt to start")
    process.signal(signal.SIGTERM)
    await wait_until(lambda: any(line.get("event") == "draining" for line in process.log_lines()),
                     10, what="the drain to start")
    signalled = time.monotonic()
    process.signal(second)
    code = await asyncio.to_thread(process.wait, 10)
    assert code != 0
    assert time.monotonic() - signalled < 3
    actions = [line.get("action") for line in process.log_lines()
               if line.get("event") == "signal_received"]
    assert actions == ["drain", "exit"]
