"""Which webhooks receive an event: organization, subscribed types, filter.

Owns the compiled view of the active webhooks: built once at start (filters
compiled then, never per event), changed in place by ``apply`` for the
webhooks that changed — only their filters compiled again, only the routes
they take part in forgotten — and asked per event. Pure: no I/O, no clock. An
event is only ever matched against webhooks of its own organization.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..models import Webhook

Predicate = Callable[[Mapping[str, Any]], bool]
TypePredicate = Callable[[str], bool]

#: Cached (organization, type) routes, at most: unbounded type names must not grow memory.
MAX_CACHED = 100_000


def type_predicate(patterns: Sequence[str]) -> TypePredicate:
    """Compile subscription patterns: ``*``, prefix wildcards ``purchase.*`` and exact names."""
    if "*" in patterns:
        return lambda _type: True
    exact = frozenset(p for p in patterns if not p.endswith("*"))
    prefixes = tuple(p[:-1] for p in patterns if p.endswith("*"))
    if not prefixes:
        return exact.__contains__
    return lambda type_: type_ in exact or type_.startswith(prefixes)


@dataclass(frozen=True, slots=True)
class Route:
    webhook: Webhook
    #: None when the webhook has no filter (the common case costs nothing per event).
    filter: Predicate | None


#: One webhook of an organization: its compiled subscription, and its route.
_Entry = tuple[TypePredicate, Route]


class Refused(NamedTuple):
    """A webhook ``apply`` left out: its filter does not compile (saved by an older version)."""

    webhook: Webhook
    error: Exception


def _order(entry: _Entry) -> tuple[float, str]:
    # The order of a full load (``list_webhooks``): an organization's webhooks oldest first.
    webhook = entry[1].webhook
    return (webhook.created_at, webhook.id)


class Matcher:
    """The active webhooks, indexed by organization, with per-(org, type) routes cached.

    ``webhooks`` is changed in place by ``apply``: whoever holds it (the lane host) sees
    every change.
    """

    def __init__(self, webhooks: Iterable[Webhook],
                 compile_filter: Callable[[Any], Predicate]) -> None:
        """Index the active ``webhooks``; raises what ``compile_filter`` raises for a bad
        filter (``apply`` instead leaves that webhook out and says so)."""
        self._compile = compile_filter
        #: Per organization, its active webhooks in ``_order``.
        self._by_org: dict[str, list[_Entry]] = {}
        self.webhooks: dict[str, Webhook] = {}
        self._routes: dict[tuple[str, str], tuple[Route, ...]] = {}
        #: Per (org, type) whose routes have no filter: the webhooks themselves.
        self._unfiltered: dict[tuple[str, str], tuple[Webhook, ...]] = {}
        #: Per organization, the types of its entries in ``_routes`` (and so in
        #: ``_unfiltered``, whose keys are always among them): what a change forgets.
        self._cached: dict[str, set[str]] = {}
        for webhook in webhooks:
            if webhook.active:
                self._add(self._entry(webhook))

    def apply(self, changed: Mapping[str, Webhook | None]) -> list[Refused]:
        """Take in the current version of each changed webhook (None: deleted), by id.

        A webhook deleted, disabled or whose filter does not compile leaves the view; one
        created, enabled or updated takes its place in it. Only the changed filters are
        compiled and only the routes of the changed webhooks' organizations and types are
        forgotten; the other webhooks are untouched. Returns the webhooks left out for
        their filter (each is otherwise applied like a disabled one).
        """
        refused: list[Refused] = []
        for webhook_id, webhook in changed.items():
            entry = None
            if webhook is not None and webhook.active:
                try:
                    entry = self._entry(webhook)
                except Exception as exc:  # noqa: BLE001 - one bad filter must not stop the others
                    refused.append(Refused(webhook, exc))
            self._remove(webhook_id)
            if entry is not None:
                self._add(entry)
        return refused

    def _entry(self, webhook: Webhook) -> _Entry:
        predicate = None if webhook.filter is None else self._compile(webhook.filter)
        return (type_predicate(webhook.events), Route(webhook, predicate))

    def _add(self, entry: _Entry) -> None:
        webhook = entry[1].webhook
        entries = self._by_org.setdefault(webhook.organization_id, [])
        bisect.insort_right(entries, entry, key=_order)
        self.webhooks[webhook.id] = webhook
        self._forget(webhook.organization_id, entry[0])

    def _remove(self, webhook_id: str) -> None:
        webhook = self.webhooks.pop(webhook_id, None)
        if webhook is None:
            return
        org = webhook.organization_id
        entries = self._by_org[org]
        at = bisect.bisect_left(entries, (webhook.created_at, webhook.id), key=_order)
        assert entries[at][1].webhook is webhook, "the index and the view disagree"
        accepts = entries[at][0]
        del entries[at]
        if not entries:
            del self._by_org[org]
        self._forget(org, accepts)

    def _forget(self, org: str, accepts: TypePredicate) -> None:
        """Drop the cached routes of ``org`` for the types a changed webhook subscribes to."""
        types = self._cached.get(org)
        if not types:
            return
        for type_ in [t for t in types if accepts(t)]:
            types.discard(type_)
            key = (org, type_)
            del self._routes[key]
            self._unfiltered.pop(key, None)

    def routes(self, organization_id: str, event_type: str) -> tuple[Route, ...]:
        """Webhooks of the organization subscribed to the type, before filters."""
        key = (organization_id, event_type)
        found = self._routes.get(key)
        if found is None:
            found = tuple(route for accepts, route in self._by_org.get(organization_id, ())
                          if accepts(event_type))
            if len(self._routes) >= MAX_CACHED:
                self._routes.clear()
                self._unfiltered.clear()
                self._cached.clear()
            self._routes[key] = found
            self._cached.setdefault(organization_id, set()).add(event_type)
        return found

    def match(self, organization_id: str, event_type: str,
              envelope: Mapping[str, Any]) -> Sequence[Webhook]:
        """The webhooks that receive the event: same organization, type subscribed, filter passes."""
        key = (organization_id, event_type)
        webhooks = self._unfiltered.get(key)
        if webhooks is not None:
            return webhooks
        routes = self.routes(organization_id, event_type)
        if all(route.filter is None for route in routes):
            if len(self._unfiltered) >= MAX_CACHED:
                self._unfiltered.clear()
            webhooks = self._unfiltered[key] = tuple(route.webhook for route in routes)
            return webhooks
        return [route.webhook for route in routes
                if route.filter is None or route.filter(envelope)]
