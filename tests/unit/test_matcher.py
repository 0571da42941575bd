"""The matcher's incremental changes: applying what changed equals loading everything again."""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from nevent_dispatch.errors import FilterError
from nevent_dispatch.models import Webhook
from nevent_dispatch.pipeline.filters import compile_filter
from nevent_dispatch.pipeline.matcher import Matcher

ORGS = ["org_a", "org_b", "org_c"]
TYPES = ["purchase.completed", "purchase.refunded", "fan.created", "custom.thing"]
PATTERNS = ["*", "purchase.*", "fan.*", "purchase.completed", "fan.created", "custom.thing"]
#: Valid filters, and one saved by an older version that no longer compiles.
FILTERS: list[Any] = [None, None, {"data.amount": {"$gt": 10}}, {"data.vip": True},
                      {"$or": [{"data.vip": True}, {"data.amount": {"$lte": 3}}]}]
BAD_FILTER = {"data.amount": {"$gtt": 10}}
IDS = [f"wh_{n:016x}" for n in range(8)]


def _webhook(id_: str, org: str = "org_a", events: tuple[str, ...] = ("*",), *,
             active: bool = True, filter_: Any = None, created_at: float = 0.0,
             **kw: Any) -> Webhook:
    return Webhook(id=id_, organization_id=org, name=kw.pop("name", id_),
                   url="https://example.com/", secret="s" * 20, events=events, filter=filter_,
                   batch=kw.pop("batch", False), retries=True, rate_limit=kw.pop("rate_limit", None),
                   active=active, created_at=created_at, updated_at=0.0)


def _valid(webhook: Webhook) -> bool:
    if webhook.filter is None:
        return True
    try:
        compile_filter(webhook.filter)
    except FilterError:
        return False
    return True


def _rebuilt(table: dict[str, Webhook]) -> Matcher:
    """A matcher loaded from scratch, as the watcher's full reload does (oldest first)."""
    rows = sorted(table.values(), key=lambda w: (w.created_at, w.id))
    return Matcher([w for w in rows if _valid(w)], compile_filter)


# A change: (id, None) deletes it; (id, fields) creates or rewrites it with those fields.
FIELDS = st.fixed_dictionaries({
    "org": st.sampled_from(ORGS),
    "events": st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=2, unique=True).map(tuple),
    "active": st.booleans(),
    "filter_": st.sampled_from([*FILTERS, BAD_FILTER]),
    "created_at": st.sampled_from([0.0, 1.0, 2.0]),
    "rate_limit": st.sampled_from([None, 60, 600]),
    "batch": st.booleans(),
})
CHANGES = st.lists(st.tuples(st.sampled_from(IDS), st.none() | FIELDS), min_size=1, max_size=4)
EVENTS = st.lists(st.tuples(st.sampled_from(ORGS), st.sampled_from(TYPES),
                            st.fixed_dictionaries({"amount": st.integers(0, 20),
                                                   "vip": st.booleans()})),
                  min_size=1, max_size=12)


def _matches(matcher: Matcher, events: list[tuple[str, str, dict[str, Any]]]) -> list[list[str]]:
    return [[w.id for w in matcher.match(org, type_, {"data": data, "organization_id": org})]
            for org, type_, data in events]


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(CHANGES, min_size=1, max_size=8), events=EVENTS)
def test_applying_random_changes_matches_exactly_like_a_matcher_rebuilt_from_scratch(steps, events):
    """Creations, updates, disables and deletes applied one change set at a time leave a
    matcher whose every match (order included) and active set equal a full rebuild's, with
    the caches warm between change sets."""
    table: dict[str, Webhook] = {}
    incremental = Matcher((), compile_filter)
    for changes in steps:
        _matches(incremental, events)  # warm the route caches the changes must invalidate
        changed: dict[str, Webhook | None] = {}
        for webhook_id, fields in changes:
            if fields is None:
                table.pop(webhook_id, None)
            else:
                old = table.get(webhook_id)
                if old is not None:  # an update keeps the organization and the creation time
                    fields = {**fields, "org": old.organization_id, "created_at": old.created_at}
                table[webhook_id] = _webhook(webhook_id, **fields)
            changed[webhook_id] = table.get(webhook_id)
        refused = incremental.apply(changed)
        assert sorted(r.webhook.id for r in refused) == sorted(
            i for i, w in changed.items() if w is not None and w.active and not _valid(w))
        rebuilt = _rebuilt(table)
        assert incremental.webhooks == rebuilt.webhooks
        assert _matches(incremental, events) == _matches(rebuilt, events)


def test_a_change_compiles_only_the_changed_filter():
    """With 1,000 filtered webhooks loaded, changing one compiles one filter, not 1,000."""
    compiled: list[Any] = []

    def counting(doc: Any) -> Any:
        compiled.append(doc)
        return compile_filter(doc)

    hooks = [_webhook(f"wh_{n:016x}", f"org_{n % 10}", filter_={"data.amount": {"$gt": n}})
             for n in range(1_000)]
    matcher = Matcher(hooks, counting)
    assert len(compiled) == 1_000
    compiled.clear()
    changed = dataclasses.replace(hooks[7], filter={"data.amount": {"$gt": 1}})
    assert matcher.apply({changed.id: changed}) == []
    assert compiled == [{"data.amount": {"$gt": 1}}]
    assert [w.id for w in matcher.match("org_7", "fan.created", {"data": {"amount": 5}})] == [
        changed.id]


def test_a_change_forgets_only_the_routes_of_its_organization_and_types():
    """Cached routes of other organizations, and of types the changed webhook neither had
    nor has, are kept as they were (the same objects)."""
    matcher = Matcher([_webhook("a1", "org_a", ("fan.*",)), _webhook("a2", "org_a", ("purchase.*",)),
                       _webhook("b1", "org_b")], compile_filter)
    fan_a = matcher.match("org_a", "fan.created", {})
    purchase_a = matcher.match("org_a", "purchase.completed", {})
    fan_b = matcher.match("org_b", "fan.created", {})
    renamed = _webhook("a1", "org_a", ("fan.*",), name="renamed")
    matcher.apply({"a1": renamed})
    assert matcher.match("org_a", "purchase.completed", {}) is purchase_a
    assert matcher.match("org_b", "fan.created", {}) is fan_b
    now = matcher.match("org_a", "fan.created", {})
    assert now is not fan_a and list(now) == [renamed]
    assert now[0].name == "renamed"


def test_an_invalid_filter_leaves_out_its_webhook_and_nothing_else():
    """One webhook whose saved filter no longer compiles is refused; the others of the same
    change set are applied."""
    matcher = Matcher([_webhook("a1", "org_a")], compile_filter)
    bad = _webhook("a2", "org_a", filter_=BAD_FILTER)
    good = _webhook("a3", "org_a", filter_={"data.vip": True}, created_at=1.0)
    disabled = _webhook("a1", "org_a", active=False)
    [refused] = matcher.apply({"a2": bad, "a3": good, "a1": disabled})
    assert refused.webhook is bad and isinstance(refused.error, FilterError)
    assert set(matcher.webhooks) == {"a3"}
    assert [w.id for w in matcher.match("org_a", "x", {"data": {"vip": True}})] == ["a3"]
    assert matcher.match("org_a", "x", {"data": {"vip": False}}) == []


def test_deleting_and_disabling_remove_and_re_enabling_restores_the_load_order():
    """A webhook re-enabled takes back its place among its organization's (oldest first)."""
    hooks = [_webhook(f"a{n}", "org_a", created_at=float(n)) for n in range(4)]
    matcher = Matcher(hooks, compile_filter)
    assert [w.id for w in matcher.match("org_a", "fan.created", {})] == ["a0", "a1", "a2", "a3"]
    matcher.apply({"a1": dataclasses.replace(hooks[1], active=False), "a3": None})
    assert [w.id for w in matcher.match("org_a", "fan.created", {})] == ["a0", "a2"]
    matcher.apply({"a1": hooks[1]})
    assert [w.id for w in matcher.match("org_a", "fan.created", {})] == ["a0", "a1", "a2"]
    assert set(matcher.webhooks) == {"a0", "a1", "a2"}
    matcher.apply({"a0": None, "a1": None, "a2": None, "zz": None})
    assert matcher.match("org_a", "fan.created", {}) == ()
    assert matcher.webhooks == {}
