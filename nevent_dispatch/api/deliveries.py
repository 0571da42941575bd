"""The delivery history of an organization over HTTP: list, show, retry.

Owns the query parameters of the list (validated by ``history``, like the CLI's
options) and the JSON of its pages. It must not query the store itself beyond what
``history`` offers.
"""

from __future__ import annotations

import time

from aiohttp import web

from .. import history, registry
from ..views import delivery_detail_json, delivery_json
from .http import STORE, check_query, json_response, work_requeued

LIST_PARAMETERS = ("webhook_id", "status", "event_type", "event_id", "since", "until",
                   "limit", "cursor")


async def list_deliveries(request: web.Request) -> web.Response:
    org = registry.validate_org(request.match_info["org"])
    query = request.query
    check_query(request, LIST_PARAMETERS)
    now = time.time()
    since = query.get("since")
    until = query.get("until")
    page = await history.list_deliveries(
        request.app[STORE], organization_id=org, webhook_id=query.get("webhook_id"),
        status=query.get("status"), event_type=query.get("event_type"),
        event_id=query.get("event_id"),
        since=None if since is None else history.parse_time(since, now, "since"),
        until=None if until is None else history.parse_time(until, now, "until"),
        limit=history.parse_limit(query.get("limit")), cursor=query.get("cursor"))
    return json_response({"data": [delivery_json(d) for d in page.deliveries],
                          "next_cursor": page.next_cursor})


async def get_delivery(request: web.Request) -> web.Response:
    org = registry.validate_org(request.match_info["org"])
    delivery, attempts, events = await history.delivery_detail(
        request.app[STORE], request.match_info["id"], org)
    return json_response(delivery_detail_json(delivery, attempts, events))


async def retry_delivery(request: web.Request) -> web.Response:
    org = registry.validate_org(request.match_info["org"])
    delivery, active = await history.retry_delivery(request.app[STORE], request.match_info["id"],
                                                    org, time.time())
    work_requeued(request)
    return json_response({"delivery": delivery_json(delivery), "requeued": True,
                          "webhook_active": active})


def add_routes(router: web.UrlDispatcher) -> None:
    base = "/v1/organizations/{org}/deliveries"
    router.add_get(base, list_deliveries)
    router.add_get(base + "/{id}", get_delivery)
    router.add_post(base + "/{id}/retry", retry_delivery)
