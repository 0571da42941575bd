"""The pure core: token bucket, retry timing, envelopes, batching, matching."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nevent_dispatch.models import Kind, Outcome, Webhook
from nevent_dispatch.pipeline.lanes import Item, Job, Lane
from nevent_dispatch.pipeline.matcher import Matcher, type_predicate
from nevent_dispatch.pipeline.ratelimit import TokenBucket
from nevent_dispatch.pipeline.retry import next_attempt_at, parse_retry_after
from nevent_dispatch.wire.envelope import BATCH_OVERHEAD, Rejection, batch_body, parse_row, take_batch

SCHEDULE = (60.0, 300.0, 1800.0, 7200.0, 21600.0)


class FakeClock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def time(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


def test_bucket_allows_the_burst_then_the_rate():
    """A fresh bucket gives its burst at once, then refills at events_per_minute / 60 per s."""
    clock = FakeClock()
    bucket = TokenBucket(120, 10, clock.monotonic())
    assert bucket.available(clock.monotonic()) == 10
    bucket.take(10, clock.monotonic())
    assert bucket.wait(1, clock.monotonic()) == pytest.approx(0.5)
    clock.advance(0.5)
    assert bucket.available(clock.monotonic()) == 1


def test_bucket_never_lets_a_window_exceed_burst_plus_rate():
    """Greedy sending over 5 simulated minutes never beats capacity + rate × window."""
    clock = FakeClock()
    bucket = TokenBucket(120, 20, clock.monotonic())
    sent: list[float] = []
    while clock.t < 1_700_000_300:
        wait = bucket.wait(1, clock.monotonic())
        if wait:
            clock.advance(wait)
            continue
        bucket.take(1, clock.monotonic())
        sent.append(clock.t)
    for i, start in enumerate(sent):
        in_window = sum(1 for s in sent[i:] if s < start + 60)
        assert in_window <= 20 + 120
    assert len(sent) >= 20 + 120 * 5 - 1


def test_bucket_capacity_is_capped_by_the_rate_and_at_least_one():
    """A 5/min webhook cannot burst 100; a bucket always holds at least one event."""
    assert TokenBucket(5, 100, 0).capacity == 5
    assert TokenBucket(1, 0, 0).capacity == 1


def test_bucket_wait_for_more_than_capacity_is_the_wait_for_capacity():
    """A batch larger than the bucket waits for a full bucket, not forever."""
    bucket = TokenBucket(60, 10, 0)
    bucket.take(10, 0)
    assert bucket.wait(100, 0) == pytest.approx(10.0)


@pytest.mark.parametrize(("attempts", "delay"), [(1, 60), (2, 300), (3, 1800), (4, 7200), (5, 21600)])
def test_retry_follows_the_documented_schedule(attempts, delay):
    """1 min, 5 min, 30 min, 2 h, 6 h after attempts 1..5."""
    assert next_attempt_at(attempts_in_round=attempts, schedule=SCHEDULE, retries=True,
                           outcome=Outcome.HTTP_ERROR, now=1000.0) == 1000.0 + delay


def test_retry_stops_after_the_fifth_retry():
    """The sixth failed attempt is final."""
    assert next_attempt_at(attempts_in_round=6, schedule=SCHEDULE, retries=True,
                           outcome=Outcome.TIMEOUT, now=0) is None


@pytest.mark.parametrize("outcome", [Outcome.SUCCESS, Outcome.REFUSED, Outcome.GONE])
def test_no_retry_for_success_or_final_outcomes(outcome):
    """Success, refused destinations and vanished events are not retried."""
    assert next_attempt_at(attempts_in_round=1, schedule=SCHEDULE, retries=True, outcome=outcome,
                           now=0) is None


def test_no_retry_when_retries_are_off():
    """A webhook with retries off gets one attempt."""
    assert next_attempt_at(attempts_in_round=1, schedule=SCHEDULE, retries=False,
                           outcome=Outcome.HTTP_ERROR, now=0) is None


def test_retry_after_longer_than_the_step_is_honoured_but_capped():
    """Retry-After 600 on the first failure waits 600 s; 10 days is capped at 6 h."""
    kw = dict(attempts_in_round=1, schedule=SCHEDULE, retries=True, outcome=Outcome.HTTP_ERROR, now=0)
    assert next_attempt_at(retry_after=600, **kw) == 600
    assert next_attempt_at(retry_after=10, **kw) == 60
    assert next_attempt_at(retry_after=864000, **kw) == 21600


def test_retry_after_parses_seconds_and_http_dates():
    """Both Retry-After forms are understood; garbage is ignored."""
    assert parse_retry_after("120", 0) == 120
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412480 - 60) == pytest.approx(60)
    assert parse_retry_after("soon", 0) is None
    assert parse_retry_after(None, 0) is None


def test_envelope_has_the_documented_keys_in_order():
    """The body is {"id","type","created","data","organization_id"}, serialized once."""
    event = parse_row((7, b"evt_1", b"fan.created", b"org_a", b'{"fan": {"id": "f"}}', 1640995201), 1 << 20)
    assert not isinstance(event, Rejection)
    assert list(orjson.loads(event.body)) == ["id", "type", "created", "data", "organization_id"]
    assert orjson.loads(event.body)["data"] == {"fan": {"id": "f"}}


@pytest.mark.parametrize(("row", "reason"), [
    ((1, b"e", b"fan.created", b"o", b"{bad", 1), "not valid JSON"),
    ((1, b"e", b"fan.created", b"o", b"[1]", 1), "JSON object, got a JSON array"),
    ((1, b"e", b"fan.created", b"o", b'"s"', 1), "got a JSON string"),
    ((1, b"e", b"", b"o", b"{}", 1), "type is empty"),
    ((1, b"e", b"fan.created", b"", b"{}", 1), "organization_id is empty"),
    ((1, b"e", b"fan\x00x", b"o", b"{}", 1), "NUL"),
    ((1, b"e", b"\xff", b"o", b"{}", 1), "UTF-8"),
    ((1, b"e", b"fan.created", b"o", b"\xff{}", 1), "JSON"),
    ((1, b"e", b"fan.created", b"o", b"[" * 5000 + b"]" * 5000, 1), "nested too deeply"),
])
def test_bad_rows_are_rejected_with_a_reason(row, reason):
    """Each kind of bad outbox row becomes a Rejection that says what is wrong."""
    rejection = parse_row(row, 1 << 20)
    assert isinstance(rejection, Rejection) and reason in rejection.reason


def test_batch_body_wraps_the_envelopes():
    """A batch is {"type": "batch", "events": [...]}, each event its own envelope."""
    body = batch_body([b'{"id":"a"}', b'{"id":"b"}'])
    assert orjson.loads(body) == {"type": "batch", "events": [{"id": "a"}, {"id": "b"}]}
    assert len(batch_body([])) == BATCH_OVERHEAD


def test_take_batch_respects_count_and_bytes():
    """At most max_events, never over max_bytes, at least one."""
    assert take_batch([10] * 250, 100, 1 << 20) == 100
    assert take_batch([400_000] * 5, 100, 1 << 20) == 2
    sizes = [400_000] * 2
    assert BATCH_OVERHEAD + sum(sizes) + 1 <= 1 << 20
    assert take_batch([2_000_000], 100, 1 << 20) == 1


def test_type_patterns():
    """'*' takes all, 'purchase.*' a family, names themselves, unknown types included."""
    assert type_predicate(["*"])("anything.new")
    family = type_predicate(["purchase.*", "fan.created"])
    assert family("purchase.refunded") and family("fan.created")
    assert not family("fan.updated") and not family("purchases.x")


def _webhook(id_: str, org: str, events: tuple[str, ...] = ("*",), active: bool = True,
             filter_: object = None) -> Webhook:
    return Webhook(id_, org, id_, "https://example.com/", "s" * 20, events, filter_, False, True,
                   None, active, 0, 0)


def test_matcher_keeps_organizations_apart_and_skips_inactive():
    """Only active webhooks of the event's organization subscribed to its type match."""
    matcher = Matcher([_webhook("a1", "a"), _webhook("a2", "a", ("fan.*",)),
                       _webhook("a3", "a", active=False), _webhook("b1", "b")],
                      lambda doc: (lambda env: True))
    assert [w.id for w in matcher.match("a", "purchase.completed", {})] == ["a1"]
    assert [w.id for w in matcher.match("a", "fan.created", {})] == ["a1", "a2"]
    assert [w.id for w in matcher.match("c", "fan.created", {})] == []


def test_matcher_applies_compiled_filters():
    """A webhook's filter, compiled once, decides per event."""
    compiled: list[object] = []

    def compile_filter(doc):
        compiled.append(doc)
        return lambda env: env["data"]["total"] > doc["min"]

    matcher = Matcher([_webhook("a1", "a", filter_={"min": 100})], compile_filter)
    assert matcher.match("a", "purchase.completed", {"data": {"total": 170}})
    assert not matcher.match("a", "purchase.completed", {"data": {"total": 50}})
    assert len(compiled) == 1


class _BatchHost:
    """The parts of a lane host that batch planning reads."""

    max_events = 100
    max_wait = 5.0
    speed = 1.0
    max_bytes = 1000
    per_webhook = 4

    def stopping(self) -> bool:
        return False

    def admit(self, lane: Lane, work: object) -> bool:
        return True

    def forget(self, lane: Lane, work: object) -> None:
        pass


def _lane_with(*sizes: int) -> Lane:
    lane = Lane(Webhook(id="wh_1", organization_id="org", name="n", url="https://x.test/",
                        secret="whsec_x", events=("*",), filter=None, batch=True, retries=True,
                        rate_limit=None, active=True, created_at=0.0, updated_at=0.0),
                TokenBucket(6000, 100, 0.0), _BatchHost(), cap=512, mark=0)  # type: ignore[arg-type]
    for n, size in enumerate(sizes):
        lane.extend([Item(n, f"evt_{n}", "fan.created", b"x" * size, 0.0)])
    return lane


def test_a_batch_waits_while_more_events_fit_and_goes_when_full_or_old():
    assert _lane_with(300, 300, 300)._plan_batch(1.0) == (0, 4.0)  # 929 bytes: room left
    assert _lane_with(300, 300, 300, 300)._plan_batch(1.0) == (3, 0.0)  # the 4th overflows
    assert _lane_with(300, 300)._plan_batch(5.0) == (2, 0.0)  # waited max_wait
    lane = _lane_with(*[1] * 100)
    assert lane._plan_batch(0.0) == (100, 0.0)  # max_events
    for _ in range(100):
        lane._pop()
    assert (lane.item_bytes, lane.jobs, len(lane.queue)) == (0, 0, 0)


def test_a_batch_never_carries_more_events_than_the_bucket_holds():
    """With batch.max_events above the bucket's capacity, batches are cut to the capacity."""
    lane = _lane_with(*[1] * 100)
    lane.bucket = TokenBucket(10, 100, 0.0)  # 10/min: the bucket holds 10
    assert lane.batch_limit() == 10
    assert lane._plan_batch(0.0) == (10, 0.0)


def test_a_job_behind_waiting_events_closes_their_batch():
    lane = _lane_with(10, 10)
    lane.extend([Job(7, "uuid", Kind.BATCH, "batch", None, b"{}", 3, 1, 0)])
    assert lane._plan_batch(0.0) == (2, 0.0)
    assert [type(w).__name__ for w in lane.clear()] == ["Item", "Item", "Job"]
    assert (lane.item_bytes, lane.jobs) == (0, 0)


_TEXTS = st.one_of(st.sampled_from([b"", b" ", b"org_a", b"fan.created", b"a\x00b", b"\xff\xfe",
                                    "str", 7]), st.binary(max_size=6))
_DATA = st.one_of(st.sampled_from([b'{"a":1}', b"[1]", b"{", b'{"x":"\xff"}', b"null", b"{}",
                                   b'{"n":' + b"[" * 600 + b"]" * 600 + b"}"]),
                  st.binary(max_size=12))


@given(event_id=_TEXTS, type_=_TEXTS, org=_TEXTS, data=_DATA,
       created=st.sampled_from([1_700_000_000, True, 1.5, None, "1"]))
def test_the_fast_intake_path_decides_exactly_as_the_checked_one(event_id, type_, org, data,
                                                                   created):
    from nevent_dispatch.wire.envelope import _parse_checked

    row = (42, event_id, type_, org, data, created)
    for limit in (40, 65_536):
        assert parse_row(row, limit) == _parse_checked(row, limit)


def test_delivery_ids_are_unique_time_ordered_uuid7():
    import uuid

    from nevent_dispatch.pipeline.attempts import new_delivery_uuid

    ids = [new_delivery_uuid(1_700_000_000.0 + n / 1000) for n in range(5000)]
    parsed = [uuid.UUID(i) for i in ids]
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 and str(u) == i
               for u, i in zip(parsed, ids, strict=True))
    assert len(set(ids)) == len(ids)
    assert [i[:13] for i in ids] == sorted(i[:13] for i in ids)  # milliseconds lead
    assert ids[0].startswith(f"{1_700_000_000_000:012x}"[:8])


def test_a_forked_child_draws_other_delivery_ids_than_its_parent():
    import os

    from nevent_dispatch.pipeline.attempts import new_delivery_uuid

    new_delivery_uuid(0.0)  # the pool holds bytes the child must not reuse
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, new_delivery_uuid(0.0).encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 100).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert child != new_delivery_uuid(0.0)


async def test_slots_go_to_waiting_lanes_first_come_first_served():
    import asyncio

    from nevent_dispatch.pipeline.lanes import Slots

    slots = Slots(1)
    a, b, c = (_lane_with() for _ in range(3))
    assert slots.take() and slots.locked() and not slots.take()
    got: list[Lane] = []

    async def wait(lane: Lane) -> None:
        await slots.acquire(lane)
        got.append(lane)

    tasks = [asyncio.create_task(wait(lane)) for lane in (a, b, c)]
    await asyncio.sleep(0)
    assert slots.first_waiting() is a
    tasks[1].cancel()  # b gives up: it is skipped, never handed a slot
    await asyncio.sleep(0)
    slots.release()
    await asyncio.sleep(0)
    assert got == [a] and slots.first_waiting() is c
    slots.release()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert got == [a, c] and slots.first_waiting() is None
    slots.release()
    slots.release()
    assert slots.free == 2 and not slots.locked()


async def test_a_slot_handed_to_a_cancelled_waiter_passes_on():
    import asyncio

    from nevent_dispatch.pipeline.lanes import Slots

    slots = Slots(1)
    assert slots.take()
    first = asyncio.create_task(slots.acquire(_lane_with()))
    second = asyncio.create_task(slots.acquire(_lane_with()))
    await asyncio.sleep(0)
    slots.release()  # handed to the first waiter...
    first.cancel()  # ...which is cancelled before it runs: the slot must reach the second
    await asyncio.gather(first, return_exceptions=True)
    await asyncio.wait_for(second, 1)
    assert slots.free == 0 and slots.first_waiting() is None


def test_listen_default_port_is_the_receivers() -> None:
    """The CLI names listen's default port without importing the receiver (aiohttp's server)."""
    from nevent_dispatch import receiver
    from nevent_dispatch.cli import local
    assert local.LISTEN_PORT == receiver.DEFAULT_PORT


def test_the_command_line_starts_without_the_pipeline_or_aiohttp() -> None:
    """--help and the reading commands do not pay for the delivery path's imports."""
    import subprocess
    import sys
    code = ("import sys; import nevent_dispatch.cli; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'aiohttp' "
            "or m.startswith('nevent_dispatch.pipeline.dispatcher') or m == 'argcomplete'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_publish_is_the_function_whatever_was_imported_first() -> None:
    """The package's ``publish`` is the function even once the module of the same name has
    been imported (as the command line does), in a fresh interpreter."""
    import subprocess
    import sys
    code = ("import nevent_dispatch.cli.local, nevent_dispatch.publish; "
            "from nevent_dispatch import publish; print(callable(publish))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
