"""The delivery state machine: one table of legal moves, and every statement held to it."""

from __future__ import annotations

import re

import pytest

from nevent_dispatch.models import OPEN_STATES, TRANSITIONS, State, check_transition, sources
from nevent_dispatch.store.sqlite.sql import QUERIES, _HERE

_MOVES = re.compile(r"^-- moves: (.+) -> (.+)$")


def _annotated() -> dict[str, tuple[list[str], list[str]]]:
    """Per statement name, its declared moves (sources, targets), from queries.sql."""
    found: dict[str, tuple[list[str], list[str]]] = {}
    name = None
    for line in (_HERE / "queries.sql").read_text(encoding="utf-8").splitlines():
        if line.startswith("-- name: "):
            name = line.removeprefix("-- name: ").strip()
        elif name and (m := _MOVES.match(line)):
            found[name] = ([s.strip() for s in m[1].split(",")], [t.strip() for t in m[2].split(",")])
    return found


def test_every_state_changing_statement_declares_its_moves():
    """A statement that sets deliveries.state names the moves it makes."""
    changing = {name for name, sql in QUERIES.items()
                if re.search(r"UPDATE deliveries SET state", sql)}
    assert changing and changing == set(_annotated())


@pytest.mark.parametrize("name", sorted(_annotated()))
def test_each_statement_makes_only_legal_moves_and_is_guarded_by_its_sources(name):
    """Declared moves are edges of TRANSITIONS, and the WHERE clause admits only their sources."""
    sources_, targets = _annotated()[name]
    sql = QUERIES[name]
    for source in sources_:
        for target in targets:
            assert State(target) in TRANSITIONS[State(source)], (name, source, target)
    guard = re.search(r"state (?:= '(\w+)'|IN \(([^)]*)\))", sql.split("WHERE", 1)[1])
    assert guard is not None, name
    guarded = {guard[1]} if guard[1] else {g.strip(" '") for g in guard[2].split(",")}
    assert guarded == set(sources_), (name, guarded)
    set_state = re.search(r"SET state = (?:'(\w+)'|\?)", sql)
    assert set_state is not None
    if set_state[1]:
        assert targets == [set_state[1]], name


def test_nothing_reads_queued_or_in_flight_work_back_as_waiting():
    """Lanes claim only pending deliveries; queued and in-flight ones are never claimed again."""
    for name in ("due_of_webhook", "claim_delivery"):
        assert "state = 'pending'" in QUERIES[name]
    assert sources(State.QUEUED) == (State.PENDING,)


def test_illegal_moves_are_refused():
    """The checked edges: a delivered delivery never moves; a pending one is not sent unqueued."""
    check_transition(None, State.QUEUED)
    check_transition(State.QUEUED, State.IN_FLIGHT)
    for old, new in [(State.DELIVERED, State.PENDING), (State.PENDING, State.IN_FLIGHT),
                     (State.REJECTED, State.PENDING), (None, State.IN_FLIGHT),
                     (State.IN_FLIGHT, State.QUEUED)]:
        with pytest.raises(ValueError, match="illegal delivery transition"):
            check_transition(old, new)


def test_open_states_are_exactly_those_with_a_way_to_an_end():
    assert OPEN_STATES == {State.PENDING, State.QUEUED, State.IN_FLIGHT}
    for state in State:
        assert bool(TRANSITIONS[state] - {State.PENDING}) or state in (
            State.DELIVERED, State.REJECTED, State.FAILED)
