"""Which webhooks receive an event: organization, subscribed types, filter.

Owns the compiled view of the active webhooks: built once per change of the
webhooks table (filters compiled then, never per event) and asked per event.
Pure: no I/O, no clock. An event is only ever matched against webhooks of its
own organization.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..models import Webhook

Predicate = Callable[[Mapping[str, Any]], bool]


def type_predicate(patterns: Sequence[str]) -> Callable[[str], bool]:
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


class Matcher:
    """The active webhooks, indexed by organization, with per-(org, type) routes cached."""

    def __init__(self, webhooks: Iterable[Webhook],
                 compile_filter: Callable[[Any], Predicate]) -> None:
        self._by_org: dict[str, list[tuple[Callable[[str], bool], Route]]] = {}
        self.webhooks: dict[str, Webhook] = {}
        for webhook in webhooks:
            if not webhook.active:
                continue
            self.webhooks[webhook.id] = webhook
            predicate = None if webhook.filter is None else compile_filter(webhook.filter)
            self._by_org.setdefault(webhook.organization_id, []).append(
                (type_predicate(webhook.events), Route(webhook, predicate)))
        self._routes: dict[tuple[str, str], tuple[Route, ...]] = {}
        #: Per (org, type) whose routes have no filter: the webhooks themselves.
        self._unfiltered: dict[tuple[str, str], tuple[Webhook, ...]] = {}

    def routes(self, organization_id: str, event_type: str) -> tuple[Route, ...]:
        """Webhooks of the organization subscribed to the type, before filters."""
        key = (organization_id, event_type)
        found = self._routes.get(key)
        if found is None:
            found = tuple(route for accepts, route in self._by_org.get(organization_id, ())
                          if accepts(event_type))
            if len(self._routes) > 100_000:  # unbounded type names must not grow memory
                self._routes.clear()
            self._routes[key] = found
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
            if len(self._unfiltered) > 100_000:
                self._unfiltered.clear()
            webhooks = self._unfiltered[key] = tuple(route.webhook for route in routes)
            return webhooks
        return [route.webhook for route in routes
                if route.filter is None or route.filter(envelope)]
