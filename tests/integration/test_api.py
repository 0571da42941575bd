"""The management API end to end: a real daemon subprocess, real sockets, aiohttp's client.

Every daemon is ``nevent-dispatch init`` + ``nevent-dispatch run`` on a TOML file of the
test's own, with ``api.listen = "127.0.0.1:0"`` (or a Unix socket); its URL is read
from its ``api_listening`` log line. Receivers are local HTTPS servers trusted through
``delivery.ca_file``. Every daemon and receiver is stopped by its fixture or a
``finally``, even when the test fails.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import io
import itertools
import re
import shutil
import socket
import sqlite3
import stat
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from nevent_dispatch.api import openapi
from nevent_dispatch.api.app import OPEN_PATHS, build_app
from nevent_dispatch.api.auth import Tokens
from nevent_dispatch.config import Config
from nevent_dispatch.models import Kind, State
from nevent_dispatch.pipeline.attempts import new_delivery_row
from nevent_dispatch.store.sqlite import Store
from nevent_dispatch.store.sqlite.sql import QUERIES
from nevent_dispatch.wire.signing import verify

from ..conftest import free_port, one_line_error, seed_verify
from .api_support import (
    ApiDaemon,
    Client,
    ReceiverProcess,
    client,
    delivered_count,
    emit_events,
    run_cli,
    wait_until,
)

ORG = "org_seed"
SECRET = "whsec_api-integration-secret-0123456789"


@pytest.fixture
async def start_api(tmp_path: Path, make_config: Callable[..., Config]
                    ) -> AsyncIterator[Callable[..., Any]]:
    """Start API daemons (init, run, wait for ``api_listening``); all killed at the end."""
    started: list[ApiDaemon] = []

    async def factory(config: Config | None = None, *, listen: str = "127.0.0.1:0",
                      name: str | None = None, extra: str = "") -> ApiDaemon:
        daemon = ApiDaemon(tmp_path, config or make_config(), listen=listen,
                           name=name or f"api{len(started)}", extra=extra)
        started.append(daemon)
        daemon.init()
        daemon.start()
        await daemon.listening()
        return daemon

    yield factory
    for daemon in started:
        daemon.kill()


@pytest.fixture
def figure(request: pytest.FixtureRequest) -> Callable[[str, Any], None]:
    """Keep a measured figure with the test's report (its user_properties, shown in a JUnit
    XML report), like record_property but without its warning under xunit2."""
    def keep(name: str, value: Any) -> None:
        request.node.user_properties.append((name, value))
    return keep


class Switch:
    """What a receiver answers, changed by the test."""

    def __init__(self) -> None:
        self.status = 200

    async def handle(self, request: web.Request) -> web.Response:
        return web.Response(status=self.status, text="ok" if self.status < 300 else "nope")


def webhooks(org: str = ORG) -> str:
    return f"/v1/organizations/{org}/webhooks"


def deliveries(org: str = ORG) -> str:
    return f"/v1/organizations/{org}/deliveries"


async def delivery_of_event(api: Client, event_id: str, org: str = ORG) -> dict[str, Any] | None:
    reply = await api.get(deliveries(org), params={"event_id": event_id})
    assert reply.status == 200, reply.raw
    return reply.body["data"][0] if reply.body["data"] else None


async def settled(api: Client, event_id: str, state: str, org: str = ORG) -> dict[str, Any]:
    """The delivery of ``event_id`` once it is in ``state``."""
    async def check() -> dict[str, Any] | None:
        found = await delivery_of_event(api, event_id, org)
        return found if found is not None and found["state"] == state else None
    found: dict[str, Any] = await wait_until(check, 30, f"delivery of {event_id} {state}")
    return found


# -- 1. the seed flow ----------------------------------------------------------------------------


async def test_the_seed_flow_over_http_create_test_enable_deliver_fail_retry_replay(
        start_api: Callable[..., Any], make_config: Callable[..., Config],
        make_receiver: Callable[..., Any]) -> None:
    """Create (inactive, secret once) → signed test → enable → delivered → listed with its
    attempts (by id and uuid) → failed → retry and replay resend it under the same uuid."""
    switch = Switch()
    receiver = await make_receiver(handler=switch.handle)
    config = make_config(delivery={"retry_schedule": (0.05,)})
    daemon = await start_api(config)
    async with client(daemon) as api:
        created = await api.post(webhooks(), {"name": "CRM sync", "url": receiver.url,
                                              "events": ["purchase.*"], "secret": SECRET})
        assert created.status == 201, created.raw
        webhook = created.body
        assert webhook["active"] is False and webhook["secret"] == SECRET
        assert created.headers["Location"] == f"{webhooks()}/{webhook['id']}"
        generated = await api.post(webhooks(), {"name": "generated", "url": receiver.url})
        assert generated.status == 201 and generated.body["secret"].startswith("whsec_")

        shown = await api.get(f"{webhooks()}/{webhook['id']}")
        assert shown.status == 200
        assert shown.body["secret"] != SECRET and shown.body["secret"].endswith("…****")
        listed = await api.get(webhooks())
        assert {w["id"]: w["secret"] for w in listed.body["data"]} == {
            webhook["id"]: shown.body["secret"],
            generated.body["id"]: generated.body["secret"][:9] + "…****"}
        assert SECRET not in listed.raw.decode() and generated.body["secret"] not in listed.raw.decode()

        # A signed sample, even inactive.
        tested = await api.post(f"{webhooks()}/{webhook['id']}/test", {"type": "purchase.completed"})
        assert tested.status == 200, tested.raw
        assert (tested.body["outcome"], tested.body["status"], tested.body["subscribed"]) == (
            "success", 200, True)
        assert tested.body["delivery"]["kind"] == "test"
        [sample] = receiver.requests
        event = verify(sample.body, sample.headers["X-Nevent-Signature"], SECRET)
        assert seed_verify(sample.body, sample.headers["X-Nevent-Signature"], SECRET)
        assert event["type"] == "purchase.completed" and event["organization_id"] == ORG
        assert sample.headers["X-Nevent-Delivery"] == tested.body["delivery"]["delivery_id"]

        enabled = await api.post(f"{webhooks()}/{webhook['id']}/enable")
        assert enabled.status == 200 and enabled.body["active"] is True
        # No wait: enable answers once the running pipeline applied it, so an event
        # committed right after the answer is delivered ("from now on").

        # An event from the outbox arrives signed, and its history is readable.
        [event_id] = emit_events(config, [("purchase.completed", ORG, {"total": 170.0})])
        delivered = await settled(api, event_id, "delivered")
        [request] = [r for r in receiver.requests if r.json()["id"] == event_id]
        assert verify(request.body, request.headers["X-Nevent-Signature"], SECRET)["data"] == {
            "total": 170.0}
        assert request.headers["X-Nevent-Delivery"] == delivered["delivery_id"]
        assert (delivered["webhook_id"], delivered["attempts"], delivered["kind"]) == (
            webhook["id"], 1, "event")
        by_id = await api.get(f"{deliveries()}/{delivered['id']}")
        by_uuid = await api.get(f"{deliveries()}/{delivered['delivery_id']}")
        assert by_id.status == by_uuid.status == 200 and by_id.body == by_uuid.body
        [attempt] = by_id.body["attempt_log"]
        assert (attempt["outcome"], attempt["status"], attempt["number"]) == ("success", 200, 1)
        listed = await api.get(deliveries(), params={"webhook_id": webhook["id"]})
        assert [d["id"] for d in listed.body["data"]] == [delivered["id"],
                                                          tested.body["delivery"]["id"]]

        # Failing: two attempts (retry_schedule [0.05]), then failed.
        switch.status = 500
        [failing] = emit_events(config, [("purchase.refunded", ORG, {"n": 1})])
        failed = await settled(api, failing, "failed")
        assert (failed["attempts"], failed["last_status"]) == (2, 500)
        detail = await api.get(f"{deliveries()}/{failed['delivery_id']}")
        assert [(a["number"], a["outcome"], a["status"]) for a in detail.body["attempt_log"]] == [
            (1, "http_error", 500), (2, "http_error", 500)]
        assert (await api.post(f"{deliveries()}/{delivered['id']}/retry")).status == 409

        # retry: requeued under the same uuid, then delivered.
        switch.status = 200
        retried = await api.post(f"{deliveries()}/{failed['id']}/retry")
        assert retried.status == 200, retried.raw
        assert retried.body["requeued"] is True and retried.body["webhook_active"] is True
        assert retried.body["delivery"]["delivery_id"] == failed["delivery_id"]
        again = await settled(api, failing, "delivered")
        assert again["id"] == failed["id"] and again["attempts"] == 3
        uuids = [r.headers["X-Nevent-Delivery"] for r in receiver.requests
                 if r.json()["id"] == failing]
        assert uuids == [failed["delivery_id"]] * 3

        # replay: the webhook's failed deliveries go again, same uuid.
        switch.status = 500
        [other] = emit_events(config, [("purchase.cancelled", ORG, {"n": 2})])
        failed = await settled(api, other, "failed")
        switch.status = 200
        replayed = await api.post(f"{webhooks()}/{webhook['id']}/replay", {"status": "failed"})
        assert replayed.status == 200, replayed.raw
        assert replayed.body == {"webhook_id": webhook["id"], "requeued": 1, "webhook_active": True}
        again = await settled(api, other, "delivered")
        assert again["delivery_id"] == failed["delivery_id"]
        assert {r.headers["X-Nevent-Delivery"] for r in receiver.requests
                if r.json()["id"] == other} == {failed["delivery_id"]}
        stats = await api.get(f"{webhooks()}/{webhook['id']}/stats")
        assert stats.status == 200 and stats.body["deliveries"]["delivered"] == 4
    assert daemon.stop() == 0


# -- 2. auth -------------------------------------------------------------------------------------


async def test_every_route_but_healthz_needs_a_token_of_the_file_reread_live(
        start_api: Callable[..., Any]) -> None:
    """No, a wrong or a malformed token is 401; a token added to the file works and one
    deleted from it stops working within seconds, no restart; no token is ever logged."""
    daemon = await start_api()
    first = daemon.token
    assert stat.S_IMODE(daemon.token_file.stat().st_mode) == 0o600
    assert first.startswith("ndapi_")
    second = "ndapi_second-token-added-by-the-operator-000000"
    async with client(daemon, token=None) as anonymous:
        assert (await anonymous.get("/healthz")).body == {"status": "ok"}
        for headers in ({}, {"Authorization": f"Bearer {first}x"},
                        {"Authorization": "Bearer "}, {"Authorization": first},
                        {"Authorization": f"Basic {first}"}, {"Authorization": f"Bearer {second}"}):
            for path in ("/v1/event-types", "/openapi.json", webhooks(), deliveries()):
                reply = await anonymous.get(path, headers=headers)
                assert reply.status == 401, (path, headers)
                assert reply.error["code"] == "unauthorized"
                assert reply.headers["WWW-Authenticate"] == 'Bearer realm="nevent-dispatch"'
        assert (await anonymous.post(webhooks(), {"name": "x", "url": "https://127.0.0.1:9/h"})
                ).status == 401
        assert (await anonymous.get("/v1/event-types", headers={
            "Authorization": f"bearer {first}"})).status == 200, "the scheme is case-insensitive"

        async def status_with(token: str) -> int:
            reply = await anonymous.get("/v1/event-types",
                                        headers={"Authorization": f"Bearer {token}"})
            return reply.status

        assert await status_with(first) == 200
        with daemon.token_file.open("a") as f:
            f.write(f"# added by the operator\n{second}\n")
        await wait_until(lambda: _is(status_with(second), 200), 5, "the added token accepted")
        assert await status_with(first) == 200

        daemon.token_file.write_text(f"# the first token revoked\n{second}\n")
        await wait_until(lambda: _is(status_with(first), 401), 5, "the deleted token refused")
        assert await status_with(second) == 200

    assert daemon.stop() == 0
    log = daemon.log_text()
    assert "api_tokens_loaded" in log
    assert first not in log and second not in log
    assert first not in daemon.init_output and "Traceback" not in log


async def _is(status: Any, expected: int) -> bool:
    return bool(await status == expected)


# -- 3. tenant isolation -------------------------------------------------------------------------


async def test_the_ids_of_one_organization_are_not_found_under_another(
        start_api: Callable[..., Any], make_config: Callable[..., Config],
        make_receiver: Callable[..., Any]) -> None:
    """Every route taking an id answers 404 (like a missing id) for org A's webhooks and
    deliveries under org B, changes nothing, and B's lists hold none of A's items."""
    switch = Switch()
    receiver = await make_receiver(handler=switch.handle)
    config = make_config(delivery={"retry_schedule": ()})
    daemon = await start_api(config)
    a, b = "org_alpha", "org_beta"
    async with client(daemon) as api:
        hook_a = (await api.post(webhooks(a), {"name": "A", "url": receiver.url})).body
        hook_b = (await api.post(webhooks(b), {"name": "B", "url": receiver.url})).body
        sample_a = (await api.post(f"{webhooks(a)}/{hook_a['id']}/test")).body["delivery"]
        assert (await api.post(f"{webhooks(a)}/{hook_a['id']}/enable")).status == 200
        await daemon.caught_up()
        switch.status = 500
        [event_a] = emit_events(config, [("fan.created", a, {"n": 1})])
        failed_a = await settled(api, event_a, "failed", a)
        switch.status = 200
        sent = len(receiver.requests)

        missing = "wh_0000000000000000"
        for method, tail, body in [
                ("GET", "", None), ("PATCH", "", {"name": "hijacked"}), ("DELETE", "", None),
                ("POST", "/enable", None), ("POST", "/disable", None), ("POST", "/test", None),
                ("POST", "/replay", {"status": "failed"}), ("GET", "/stats", None)]:
            for webhook_id in (hook_a["id"], missing):
                kw = {} if body is None else {"json": body}
                reply = await api.call(method, f"{webhooks(b)}/{webhook_id}{tail}", **kw)
                assert reply.status == 404, (method, tail, reply.raw)
                assert reply.error == {"code": "not_found", "field": None,
                                       "message": f"webhook {webhook_id!r} not found"}
        for ref in (sample_a["id"], sample_a["delivery_id"], failed_a["id"],
                    failed_a["delivery_id"]):
            for method, tail in (("GET", ""), ("POST", "/retry")):
                reply = await api.call(method, f"{deliveries(b)}/{ref}{tail}")
                assert reply.status == 404, (method, ref, reply.raw)
                assert reply.error == {"code": "not_found", "field": None,
                                       "message": f"delivery {str(ref)!r} not found"}
        filtered = await api.get(deliveries(b), params={"webhook_id": hook_a["id"]})
        assert filtered.status == 404 and filtered.error["code"] == "not_found"
        for key, value in (("event_id", event_a), ("event_type", "fan.created")):
            assert (await api.get(deliveries(b), params={key: value})).body["data"] == []

        assert [w["id"] for w in (await api.get(webhooks(b))).body["data"]] == [hook_b["id"]]
        assert (await api.get(deliveries(b))).body == {"data": [], "next_cursor": None}
        # Nothing happened to A's webhook nor its deliveries.
        still = (await api.get(f"{webhooks(a)}/{hook_a['id']}")).body
        assert (still["name"], still["active"]) == ("A", True)
        assert len(receiver.requests) == sent, "no test send, no retry, no replay"
        assert (await delivery_of_event(api, event_a, a)) == failed_a
        listed_a = (await api.get(deliveries(a))).body["data"]
        assert [d["id"] for d in listed_a] == [failed_a["id"], sample_a["id"]]
        # And A itself may retry it (the id was a real, retryable one).
        assert (await api.post(f"{deliveries(a)}/{failed_a['id']}/retry")).status == 200
        await settled(api, event_a, "delivered", a)
    assert daemon.stop() == 0


# -- 4. validation -------------------------------------------------------------------------------

GOOD = {"name": "valid", "url": "https://127.0.0.1:9/hook"}
KNOWN = "name, url, events, secret, filter, batch, retries, rate_limit"
#: Refusals the registry makes for every face: (body field, value, CLI arguments).
REGISTRY_REFUSALS: list[tuple[str, Any, list[str], str]] = [
    ("events", ["purchase.complete"], ["--events", "purchase.complete"],
     "events: unknown event type 'purchase.complete' (did you mean 'purchase.completed'?)"),
    ("url", "example.com/hook", ["--url", "example.com/hook"],
     "url: missing scheme (it must start with https://)"),
    ("url", "http://127.0.0.1:9/hook", ["--url", "http://127.0.0.1:9/hook"],
     "url: must be https:// (set delivery.allow_http = true for local development)"),
    ("url", "https://user:pw@127.0.0.1/hook", ["--url", "https://user:pw@127.0.0.1/hook"],
     "url: must not contain credentials (user:password@)"),
    ("secret", "short", ["--secret", "short"],
     "secret: must be at least 16 characters, got 5 (omit it to have a strong one generated)"),
    ("filter", {"data.total": {"$near": 3}}, ["--filter", '{"data.total": {"$near": 3}}'], ""),
    ("filter", {"$or": "x"}, ["--filter", '{"$or": "x"}'], ""),
    ("rate_limit", 0, ["--rate-limit", "0"],
     "rate_limit: must be an integer from 1 to 10000000 events per minute, got 0"),
]
#: A JSON value of the wrong type per field, and the refusal.
WRONG_TYPES: list[tuple[str, Any, str]] = [
    ("name", 5, "name: must be a string, got 5"),
    ("name", None, "name: must be a string, got null"),
    ("events", None, 'events: must be a list of event type names (or "*")'),
    ("batch", None, "batch: must be true or false, got null"),
    ("url", ["https://127.0.0.1/h"], 'url: must be a string, got ["https://127.0.0.1/h"]'),
    ("events", 5, 'events: must be a list of event type names (or "*")'),
    ("events", ["fan.created", 3], 'events: must be a list of event type names (or "*")'),
    ("secret", 1234567890123456789, "secret: must be a string, got 1234567890123456789"),
    ("filter", "{}", "filter: must be a JSON object (see the filter syntax)"),
    ("filter", [], "filter: must be a JSON object (see the filter syntax)"),
    ("batch", "yes", 'batch: must be true or false, got "yes"'),
    ("retries", 1, "retries: must be true or false, got 1"),
    ("rate_limit", "10", 'rate_limit: must be a whole number of events per minute, got "10"'),
    ("rate_limit", True, "rate_limit: must be a whole number of events per minute, got true"),
    ("rate_limit", 1.5, "rate_limit: must be a whole number of events per minute, got 1.5"),
]


async def test_refusals_name_their_field_with_the_messages_of_the_cli(
        start_api: Callable[..., Any], tmp_path: Path) -> None:
    """Bad events (did-you-mean), URLs (http:// refused), secrets, filters and rate limits
    are 422 with the CLI's own one-line message; wrong JSON types and unknown fields name
    their field; nothing refused is saved."""
    daemon = await start_api()
    org = "org_val"
    async with client(daemon) as api:
        for field, value, cli_args, message in REGISTRY_REFUSALS:
            body = {**GOOD, field: value}
            reply = await api.post(webhooks(org), body)
            assert reply.status == 422, (body, reply.raw)
            assert (reply.error["code"], reply.error["field"]) == ("validation_error", field)
            args = {"--org": org, "--name": GOOD["name"], "--url": GOOD["url"]}
            args.update(zip(cli_args[::2], cli_args[1::2], strict=True))
            cli = await asyncio.to_thread(run_cli, daemon.config_path, "webhooks", "create",
                                          *[x for kv in args.items() for x in kv], cwd=tmp_path)
            assert one_line_error(cli) == f"nevent-dispatch: {reply.error['message']}"
            if message:
                assert reply.error["message"] == message
            else:
                assert reply.error["message"].startswith("filter: ")

        for field, value, message in WRONG_TYPES:
            reply = await api.post(webhooks(org), {**GOOD, field: value})
            assert reply.status == 422, (field, value, reply.raw)
            assert reply.error == {"code": "validation_error", "field": field, "message": message}
        reply = await api.post(webhooks(org), {"name": "no url"})
        assert reply.error == {"code": "validation_error", "field": "url",
                               "message": "url: is required"}
        reply = await api.post(webhooks(org), {**GOOD, "colour": "blue"})
        assert reply.status == 422
        assert reply.error == {"code": "validation_error", "field": "colour",
                               "message": f"colour: unknown field (known: {KNOWN})"}
        reply = await api.post(webhooks(org), [GOOD])
        assert (reply.status, reply.error["field"]) == (422, "body")

        # The body itself: invalid JSON, none, another content type.
        for data, content_type, status, code in [
                (b'{"name": "x",', "application/json", 400, "invalid_json"),
                (b"", "application/json", 400, "bad_request"),
                (b'{"name": "x"}', "text/plain", 415, "unsupported_media_type"),
                (b"name=x&url=y", "application/x-www-form-urlencoded", 415,
                 "unsupported_media_type")]:
            reply = await api.call("POST", webhooks(org), data=data,
                                   headers={"Content-Type": content_type})
            assert (reply.status, reply.error["code"]) == (status, code), (data, reply.raw)
        assert (await api.get(webhooks(org))).body["data"] == [], "nothing refused was saved"
        charset = await api.call("POST", webhooks(org), data=orjson.dumps(GOOD),
                                 headers={"Content-Type": "application/json; charset=utf-8"})
        assert charset.status == 201, charset.raw
        webhook = charset.body["id"]

        # The other routes with bodies speak the same way.
        one = f"{webhooks(org)}/{webhook}"
        checks: list[tuple[str, str, dict[str, Any], str, str]] = [
                ("PATCH", one, {}, "body", "body: give at least one field to change"),
                ("PATCH", one, {"events": ["purchase.complete"]}, "events",
                 REGISTRY_REFUSALS[0][3]),
                ("PATCH", one, {"url": "http://127.0.0.1:9/hook"}, "url", REGISTRY_REFUSALS[2][3]),
                ("POST", one + "/test", {"type": "purchase.complete"}, "type",
                 "type: unknown event type 'purchase.complete' (did you mean 'purchase.completed'?)"),
                ("POST", one + "/test", {"type": 5}, "type",
                 "type: must be an event type name, got 5"),
                ("POST", one + "/replay", {"status": "delivered"}, "status",
                 "status: only failed deliveries are replayed, got 'delivered'"),
                ("POST", one + "/replay", {"since": "2h", "until": "3h"}, "until",
                 "until: must be later than since"),
                ("POST", one + "/enable", {"force": True}, "force",
                 "force: unknown field (this route takes no fields)")]
        for method, path, body, field, message in checks:
            reply = await api.call(method, path, json=body)
            assert reply.status == 422, (method, path, body, reply.raw)
            assert reply.error == {"code": "validation_error", "field": field,
                                   "message": message}
        assert (await api.get(one)).body["url"] == GOOD["url"], "no refused change was saved"

        # Query parameters.
        for params, field, start in [
                ({"limit": "0"}, "limit", "limit: must be 1..1000, got 0"),
                ({"limit": "1001"}, "limit", "limit: must be 1..1000, got 1001"),
                ({"limit": "ten"}, "limit", "limit: must be a whole number, got 'ten'"),
                ({"cursor": "garbage"}, "cursor",
                 "cursor: not a cursor this API returned, got 'garbage'"),
                ({"status": "lost"}, "status", "status: must be one of pending, queued,"),
                ({"since": "last tuesday"}, "since", "since: expected a unix time, an ISO 8601"),
                ({"until": "1e12"}, "until", "until: not a usable unix time"),
                ({"colour": "blue"}, "colour", "colour: unknown query parameter")]:
            reply = await api.get(deliveries(org), params=params)
            assert (reply.status, reply.error["code"], reply.error["field"]) == (
                422, "validation_error", field), (params, reply.raw)
            assert reply.error["message"].startswith(start), reply.error
        reply = await api.get(f"{one}/stats", params={"since": "soon"})
        assert (reply.status, reply.error["field"]) == (422, "since")
        reply = await api.get(webhooks("org with space"))
        assert (reply.status, reply.error["field"]) == (422, "organization_id")
        reply = await api.post(webhooks(org), GOOD, headers={"Idempotency-Key": "k" * 256})
        assert (reply.status, reply.error["field"]) == (400, "Idempotency-Key")
        reply = await api.get("/v1/nothing-here")
        assert (reply.status, reply.error["code"]) == (404, "not_found")
        reply = await api.call("PUT", one, json=GOOD)
        assert (reply.status, reply.error["code"]) == (405, "method_not_allowed")
        assert "PATCH" in reply.headers["Allow"]
    assert daemon.stop() == 0


async def test_bodies_over_max_body_bytes_are_413_at_once_and_the_server_keeps_serving(
        start_api: Callable[..., Any]) -> None:
    """70 KB, 10 MB (declared length) and 10 MB chunked bodies are refused 413 without
    waiting for the body; the connection does not hang and the API still answers."""
    daemon = await start_api()
    org = "org_big"
    async with client(daemon) as api:
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(100):
                yield b" " * 100_000

        ten_mb = io.BytesIO(b"{" + b" " * 10_000_000 + b"}")
        for data in (orjson.dumps({**GOOD, "name": "x" * 70_000}), ten_mb, chunks()):
            reply = await asyncio.wait_for(api.call(
                "POST", webhooks(org), data=data, headers={"Content-Type": "application/json"}), 15)
            assert reply.status == 413
            assert reply.error == {
                "code": "payload_too_large", "field": None,
                "message": "request body larger than 65536 bytes (api.max_body_bytes)"}
        # The raw view: the answer comes before the body has been sent.
        host, port = daemon.url.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(f"POST {webhooks(org)} HTTP/1.1\r\nHost: api\r\n"
                         f"Authorization: Bearer {daemon.token}\r\n"
                         "Content-Type: application/json\r\nContent-Length: 10000000\r\n\r\n"
                         .encode() + b" " * 65536)
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 413 ")
        finally:
            writer.close()
        assert (await api.get("/healthz")).status == 200
        assert (await api.get(webhooks(org))).body["data"] == []
    assert daemon.stop() == 0


# -- 5. pagination ------------------------------------------------------------------------------


async def test_walking_the_deliveries_by_cursor_while_new_ones_arrive_skips_and_repeats_none(
        start_api: Callable[..., Any], make_config: Callable[..., Config],
        make_receiver: Callable[..., Any]) -> None:
    """limit=7 pages followed by next_cursor to the end, while events keep coming: ids
    strictly decrease (newest first), none repeats, none that existed at the start is
    missed, and the last page has no next_cursor."""
    receiver = await make_receiver()
    config = make_config(rate_limit={"events_per_minute": 1_000_000, "burst": 10_000})
    daemon = await start_api(config)
    org = "org_pages"
    async with client(daemon) as api:
        hook = (await api.post(webhooks(org), {"name": "pages", "url": receiver.url})).body
        await api.post(f"{webhooks(org)}/{hook['id']}/enable")
        await daemon.caught_up()
        emit_events(config, [("fan.created", org, {"n": n}) for n in range(120)])
        await wait_until(lambda: delivery_count(api, org, 120), 30, "120 deliveries")
        before = {d["id"] for d in (await api.get(deliveries(org), params={"limit": "1000"})
                                    ).body["data"]}

        stop = asyncio.Event()

        async def keep_emitting() -> int:
            sent = 0
            while not stop.is_set():
                emit_events(config, [("fan.updated", org, {"n": sent + k}) for k in range(3)])
                sent += 3
                await asyncio.sleep(0.02)
            return sent

        emitter = asyncio.create_task(keep_emitting(), name="emitter")
        walked: list[int] = []
        pages = 0
        try:
            cursor = None
            while True:
                params = {"limit": "7", **({"cursor": cursor} if cursor else {})}
                page = await api.get(deliveries(org), params=params)
                assert page.status == 200, page.raw
                assert len(page.body["data"]) <= 7
                walked += [d["id"] for d in page.body["data"]]
                pages += 1
                cursor = page.body["next_cursor"]
                if cursor is None:
                    break
                await asyncio.sleep(0.02)
                assert pages < 100
        finally:
            stop.set()
            emitted = await emitter
        assert walked == sorted(walked, reverse=True) and len(set(walked)) == len(walked)
        assert before <= set(walked), f"skipped: {sorted(before - set(walked))}"
        assert pages >= len(before) // 7
        after = {d["id"] for d in (await api.get(deliveries(org), params={"limit": "1000"})
                                   ).body["data"]}
        assert emitted >= 30 and len(after) > len(set(walked)), "deliveries arrived meanwhile"
    assert daemon.stop() == 0


async def delivery_count(api: Client, org: str, at_least: int) -> bool:
    reply = await api.get(deliveries(org), params={"limit": "1000"})
    return len(reply.body["data"]) >= at_least


# -- 6. idempotency ----------------------------------------------------------------------------


async def test_an_idempotency_key_replays_the_first_create_and_refuses_another_body(
        start_api: Callable[..., Any]) -> None:
    """Same key and body: the same webhook, once, marked Idempotent-Replayed (also when
    sent concurrently); same key, other body: 409; the same key in another org is its own."""
    daemon = await start_api()
    a, b = "org_idem_a", "org_idem_b"
    body = {"name": "once", "url": "https://127.0.0.1:9/hook", "events": ["fan.*"]}
    key = {"Idempotency-Key": "create-once-7f3a"}
    async with client(daemon) as api:
        first = await api.post(webhooks(a), body, headers=key)
        assert first.status == 201 and "Idempotent-Replayed" not in first.headers
        again = await api.post(webhooks(a), body, headers=key)
        assert again.status == 201 and again.headers["Idempotent-Replayed"] == "true"
        assert again.body == first.body
        reordered = await api.post(webhooks(a), dict(reversed(list(body.items()))), headers=key)
        assert reordered.body == first.body, "the same JSON object in another key order"

        conflict = await api.post(webhooks(a), {**body, "name": "twice"}, headers=key)
        assert conflict.status == 409
        assert conflict.error == {"code": "idempotency_conflict", "field": "Idempotency-Key",
                                  "message": "Idempotency-Key: already used with a different body"}

        other_org = await api.post(webhooks(b), body, headers=key)
        assert other_org.status == 201 and "Idempotent-Replayed" not in other_org.headers
        assert other_org.body["id"] != first.body["id"]
        assert other_org.body["organization_id"] == b

        racing = await asyncio.gather(*[
            api.post(webhooks(a), {**body, "name": "raced"}, headers={"Idempotency-Key": "race"})
            for _ in range(10)])
        assert {r.status for r in racing} == {201}
        assert len({r.body["id"] for r in racing}) == 1
        assert sum("Idempotent-Replayed" in r.headers for r in racing) == 9

        without = [await api.post(webhooks(a), body) for _ in range(2)]
        assert without[0].body["id"] != without[1].body["id"], "no key: two webhooks"
        names = sorted(w["name"] for w in (await api.get(webhooks(a))).body["data"])
        assert names == ["once", "once", "once", "raced"]
        assert [w["id"] for w in (await api.get(webhooks(b))).body["data"]] == [
            other_org.body["id"]]
    assert daemon.stop() == 0


# -- 7. unix socket ------------------------------------------------------------------------------


async def test_the_api_on_a_unix_socket_is_0660_and_removed_at_exit(
        start_api: Callable[..., Any], make_config: Callable[..., Config]) -> None:
    """listen = "unix:/…/api.sock": the socket is mode 0660, answers over UnixConnector
    (token still required), is removed at a clean exit, and a stale one left by a
    killed daemon is replaced at the next start."""
    folder = Path(tempfile.mkdtemp(prefix="nd-api-", dir="/tmp"))  # sun_path holds 108 bytes
    try:
        path = folder / "api.sock"
        config = make_config()
        daemon = await start_api(config, listen=f"unix:{path}")
        assert daemon.url == f"unix:{path}"
        mode = path.stat().st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o660
        async with client(daemon) as api:
            assert (await api.get("/healthz")).body == {"status": "ok"}
            types = await api.get("/v1/event-types")
            assert types.status == 200 and len(types.body["data"]) == 17
            assert (await api.get("/v1/event-types", token=None)).status == 401
            created = await api.post(webhooks(), {"name": "unix", "url": "https://127.0.0.1:9/h"})
            assert created.status == 201
        assert daemon.stop() == 0
        assert not path.exists(), "the socket file is removed at exit"

        killed = await start_api(config, listen=f"unix:{path}", name="killed")
        killed.kill()
        assert path.exists(), "a SIGKILLed daemon leaves its socket behind"
        restarted = await start_api(config, listen=f"unix:{path}", name="restarted")
        async with client(restarted) as api:
            assert [w["name"] for w in (await api.get(webhooks())).body["data"]] == ["unix"]
        assert restarted.stop() == 0
        assert not path.exists()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- 8. a port already taken ---------------------------------------------------------------------


async def test_a_taken_port_exits_2_with_one_line_naming_api_listen(
        start_api: Callable[..., Any], make_config: Callable[..., Config],
        tmp_path: Path) -> None:
    """A daemon whose api.listen port is held by a socket, or by another daemon's API, exits
    2 at start with one stderr line naming api.listen, no traceback, and releases its lock."""
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        for name, taken in (("held", port), ("daemon", None)):
            if taken is None:
                taken = free_port()
                first = await start_api(make_config(), listen=f"127.0.0.1:{taken}", name="first")
                assert first.url == f"http://127.0.0.1:{taken}"
            folder = tmp_path / name
            folder.mkdir()
            config = make_config(database={"outbox": folder / "app.db",
                                           "state": folder / "state.db"})
            second = ApiDaemon(folder, config, listen=f"127.0.0.1:{taken}", name=name)
            second.init()
            result = await asyncio.to_thread(run_cli, second.config_path, "run", cwd=folder)
            line = one_line_error(result, 2)
            assert line.startswith(
                f"nevent-dispatch: api.listen: cannot listen on '127.0.0.1:{taken}': "), line
            assert line.endswith("address already in use"), line
            assert "Traceback" not in result.stdout
            assert "daemon_started" not in result.stdout
            assert (folder / "state.db.lock").read_text() == "", "the state lock is released"
        assert first.exited() is None, "the first daemon is unharmed"
        assert first.stop() == 0
    finally:
        holder.close()


# -- 11. the OpenAPI document and the routes -----------------------------------------------------


async def test_every_route_of_the_application_is_in_the_openapi_document_and_back(
        store: Store, tmp_path: Path) -> None:
    """The router's (path, method) pairs are exactly the document's (HEAD only beside a
    GET); every operation lists 401 unless it is open, and every path parameter is declared."""
    app = build_app(store.config, store, Tokens(tmp_path / "token"))
    routes = {(route.resource.canonical, route.method) for route in app.router.routes()
              if route.resource is not None}
    heads = {path for path, method in routes if method == "HEAD"}
    gets = {path for path, method in routes if method == "GET"}
    assert heads <= gets
    served = {(path, method) for path, method in routes if method != "HEAD"}
    documented = {(path, method.upper()) for path, item in openapi.DOCUMENT["paths"].items()
                  for method in item}
    assert served == documented, (served - documented, documented - served)
    for path, item in openapi.DOCUMENT["paths"].items():
        for method, operation in item.items():
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == set(re.findall(r"{(\w+)}", path)), (path, method)
            if path not in OPEN_PATHS:
                assert "401" in operation["responses"], (path, method)
    schemas = openapi.DOCUMENT["components"]["schemas"]
    refs = set(re.findall(r'"#/components/schemas/(\w+)"', orjson.dumps(openapi.DOCUMENT).decode()))
    assert refs <= set(schemas), refs - set(schemas)


# -- 12. the list queries use their index --------------------------------------------------------


async def test_the_list_queries_of_the_api_search_their_index_without_sorting(
        store: Store) -> None:
    """On a state database with a few thousand deliveries, deliveries_of_org and
    deliveries_of_webhook SEARCH deliveries_org / deliveries_webhook, with no temporary
    b-tree for the ORDER BY and no full scan, whatever filters are given."""
    now = time.time()
    rows = [new_delivery_row(webhook_id=f"wh_{n % 7:016x}", kind=Kind.EVENT,
                             event_type=("fan.created", "purchase.completed")[n % 2],
                             event_id=f"evt_{n:024x}", outbox_id=n, event_count=1,
                             state=(State.PENDING, State.REJECTED)[n % 2], now=now + n / 1000,
                             organization_id=f"org_{n % 11}") for n in range(1, 4001)]
    await store.record_intake(rows, [], 4000)
    assert len(await store.list_deliveries(organization_id="org_3", limit=1000)) > 300

    conn = sqlite3.connect(store.config.database.state)
    try:
        for name, index in (("deliveries_of_org", "deliveries_org"),
                            ("deliveries_of_webhook", "deliveries_webhook")):
            sql = QUERIES[name]
            for filters in ({}, {"state": "pending"}, {"event_type": "fan.created"},
                            {"event_id": "evt_1"}, {"since": now, "until": now + 2},
                            {"org": "org_3", "webhook_id": "wh_0000000000000003"}):
                params = {"org": "org_3", "webhook_id": "wh_0000000000000003", "state": None,
                          "event_type": None, "event_id": None, "since": None, "until": None,
                          "before": 2 ** 62, "limit": 51, **filters}
                plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]
                assert any(step.startswith(f"SEARCH deliveries USING INDEX {index} (")
                           for step in plan), (name, filters, plan)
                assert not any("TEMP B-TREE" in step for step in plan), (name, filters, plan)
                assert not any(step.startswith("SCAN deliveries") for step in plan), (name, plan)
    finally:
        conn.close()


# -- 9. schemathesis -----------------------------------------------------------------------------

FUZZ_ORG = "org_fuzz"
#: Where every webhook the fuzzer makes or changes points: a closed port on 127.0.0.1, so
#: no generated URL ever sends traffic anywhere else (nor asks DNS).
SAFE_URL = "https://127.0.0.1:9/hook"
#: Examples per operation and mode; with shrinking off the whole run stays under a minute.
POSITIVE_EXAMPLES = 100
NEGATIVE_EXAMPLES = 50


def _fuzz(schema_url: str, base_url: str, token: str, ids: dict[str, list[str]]
          ) -> tuple[dict[str, int], list[str]]:
    """Run every operation of the live document; the statuses seen, and the failures."""
    from hypothesis import strategies as st
    from schemathesis import GenerationMode
    from schemathesis import openapi as st_openapi
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        negative_data_rejection,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    auth = {"Authorization": f"Bearer {token}"}
    schema = st_openapi.from_url(schema_url, headers=auth, timeout=30)
    checks = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_headers_conformance, response_schema_conformance]
    seen: dict[str, int] = {}
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    # Deleting last, so the other operations find the webhooks alive.
    operations.sort(key=lambda op: op.method.upper() == "DELETE")
    documented = {f"{method.upper()} {path}" for path, item in openapi.DOCUMENT["paths"].items()
                  for method in item}
    # schemathesis leaves out the operation that served the document it loaded.
    assert {op.label for op in operations} == documented - {"GET /openapi.json"}

    def call_and_check(case: Any, checks: list[Any]) -> None:
        response = case.call(base_url=base_url, headers=auth, timeout=30)
        key = f"{case.method} {case.path} {response.status_code}"
        seen[key] = seen.get(key, 0) + 1
        case.validate_response(response, checks=checks, headers=auth)

    def safe(case: Any) -> Any:
        if isinstance(case.body, dict) and isinstance(case.body.get("url"), str):
            case.body["url"] = SAFE_URL
        return case

    for op in operations:
        kind = "deliveries" if "/deliveries/" in op.path else "webhooks"
        described = openapi.DOCUMENT["paths"][op.path][op.method.lower()]
        modes = [(GenerationMode.POSITIVE, POSITIVE_EXAMPLES)]
        # Something to get wrong: a query, a header or a body (a path string stays a string;
        # the token is fixed).
        if ("requestBody" in described
                or any(p["in"] != "path" for p in described.get("parameters", []))):
            modes.append((GenerationMode.NEGATIVE, NEGATIVE_EXAMPLES))
        for mode, examples in modes:
            # The token is fixed, not generated: a negative case then breaks the request
            # itself rather than merely dropping the token (test 2 covers that).
            strategies = [op.as_strategy(mode, headers=auth)]
            if "{org}" in op.path:
                strategies.append(op.as_strategy(mode, headers=auth,
                                                 path_parameters={"org": FUZZ_ORG}))
            if "{id}" in op.path:
                strategies += [op.as_strategy(mode, headers=auth,
                                              path_parameters={"org": FUZZ_ORG, "id": i})
                               for i in ids[kind]]
            label = f"{op.method.upper()} {op.path} ({mode.value})"
            extra = [negative_data_rejection] if mode == GenerationMode.NEGATIVE else []
            try:
                _explore(st.one_of(strategies).map(safe), examples,
                         functools.partial(call_and_check, checks=checks + extra))
            except Exception as exc:  # noqa: BLE001 - every operation is tried; all are reported
                failures.append(f"{label}: {exc}"[:3000])
    return seen, failures


def _explore(strategy: Any, examples: int, check: Callable[[Any], None]) -> None:
    """``check`` on ``examples`` cases drawn from ``strategy`` (reproducible: derandomized;
    not shrunk, to keep the time bounded)."""
    import hypothesis

    @hypothesis.settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                         phases=[hypothesis.Phase.generate],
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(case=strategy)
    def run(case: Any) -> None:
        check(case)

    run()


async def test_schemathesis_finds_no_5xx_and_every_response_matches_the_live_document(
        start_api: Callable[..., Any], make_config: Callable[..., Config],
        figure: Callable[[str, Any], None]) -> None:
    """Every operation of /openapi.json (as served, with the token), positive and negative
    examples, on real webhooks and deliveries of one org: no 5xx, every status documented,
    every body of the documented schema, invalid input refused."""
    daemon = await start_api(make_config())
    async with client(daemon) as api:
        hooks = [(await api.post(webhooks(FUZZ_ORG), {"name": f"fuzz {n}", "url": SAFE_URL})).body
                 for n in range(3)]
        sample = (await api.post(f"{webhooks(FUZZ_ORG)}/{hooks[0]['id']}/test")).body["delivery"]
        await api.post(f"{webhooks(FUZZ_ORG)}/{hooks[1]['id']}/enable")
        await daemon.caught_up()
        [event_id] = emit_events(daemon.config, [("fan.created", FUZZ_ORG, {"n": 1})])
        failed = await settled(api, event_id, "failed", FUZZ_ORG)
    ids = {"webhooks": [h["id"] for h in hooks],
           "deliveries": [str(sample["id"]), sample["delivery_id"], str(failed["id"]),
                          failed["delivery_id"]]}
    started = time.monotonic()
    seen, failures = await asyncio.to_thread(_fuzz, f"{daemon.url}/openapi.json", daemon.url,
                                             daemon.token, ids)
    figure("schemathesis_seconds", round(time.monotonic() - started, 1))
    figure("schemathesis_calls", sum(seen.values()))
    figure("schemathesis_statuses", seen)
    assert not failures, "\n\n".join(failures)
    assert not [key for key in seen if key.endswith(tuple(f" 5{n:02d}" for n in range(100)))]
    assert sum(seen.values()) >= 200
    statuses = {key.rsplit(" ", 1)[1] for key in seen}
    assert {"200", "201", "404", "422"} <= statuses, statuses
    assert daemon.exited() is None and "api_internal_error" not in daemon.log_text()
    assert daemon.stop() == 0


# -- 10. hostile clients ------------------------------------------------------------------------

LOAD_EVENTS = 3000
#: Events published per second while the clients attack (a steady stream, ~12 s of it).
LOAD_RATE = 250
SLOWLORIS_CONNECTIONS = 20
BURST = 1000


async def slowloris(host: str, port: int, stop: asyncio.Event) -> tuple[int, bool]:
    """One connection sending a request's headers one byte every 0.5 s, never ending them;
    the bytes sent, and whether the server hung up."""
    head = b"GET /v1/event-types HTTP/1.1\r\nHost: api\r\nX-Slow: " + b"a" * 4000
    reader, writer = await asyncio.open_connection(host, port)
    sent = 0
    try:
        while not stop.is_set() and sent < len(head):
            writer.write(head[sent:sent + 1])
            await writer.drain()
            sent += 1
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
            if reader.at_eof():
                return sent, True
        return sent, False
    except (ConnectionError, OSError):
        return sent, True
    finally:
        writer.close()


async def ten_megabytes_raw(host: str, port: int, token: str) -> tuple[bytes, float]:
    """A 10 MB declared body sent in 64 KB writes until the server answers; its status line
    and the seconds it took."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"POST {webhooks('org_load')} HTTP/1.1\r\nHost: api\r\n"
                     f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                     "Content-Length: 10000000\r\n\r\n".encode())
        answer = asyncio.ensure_future(reader.readuntil(b"\r\n\r\n"))
        with contextlib.suppress(ConnectionError):
            for _ in range(10_000_000 // 65536 + 1):
                if answer.done():
                    break
                writer.write(b" " * 65536)
                await asyncio.wait_for(writer.drain(), 15)
        head = await asyncio.wait_for(answer, 15)
        return head.split(b"\r\n", 1)[0], time.monotonic() - started
    finally:
        writer.close()


async def test_hostile_clients_neither_stop_the_deliveries_nor_the_api(
        start_api: Callable[..., Any], make_config: Callable[..., Config], tmp_path: Path,
        tls: dict[str, Any], figure: Callable[[str, Any], None]) -> None:
    """While 3,000 events stream to a fast receiver: 20 slowloris connections, a 10 MB body
    (raw and through the client) and 1,000 concurrent requests. Every event is delivered,
    deliveries progress during each attack, /healthz answers throughout, and no 5xx."""
    receiver = ReceiverProcess(tmp_path, tls)
    try:
        config = make_config(rate_limit={"events_per_minute": 10_000_000, "burst": 100_000})
        daemon = await start_api(config)
        host, port = daemon.url.removeprefix("http://").rsplit(":", 1)
        async with client(daemon, limit=0) as api:
            hook = (await api.post(webhooks("org_load"), {"name": "load", "url": receiver.url})).body
            await api.post(f"{webhooks('org_load')}/{hook['id']}/enable")
            await daemon.caught_up()

            samples: list[tuple[float, int]] = []
            health: list[tuple[float, int]] = []
            done = asyncio.Event()

            async def count() -> int:
                return await asyncio.to_thread(delivered_count, config, hook["id"])

            async def monitor() -> None:
                while not done.is_set():
                    samples.append((time.monotonic(), await count()))
                    started = time.monotonic()
                    reply = await api.get("/healthz", token=None)
                    health.append((time.monotonic() - started, reply.status))
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(done.wait(), 0.2)

            async def publish() -> None:
                per_step = LOAD_RATE // 10
                t0 = time.monotonic()
                for n in range(0, LOAD_EVENTS, per_step):
                    emit_events(config, [("fan.created", "org_load", {"n": k})
                                         for k in range(n, min(n + per_step, LOAD_EVENTS))])
                    await asyncio.sleep(max(0.0, t0 + (n + per_step) / LOAD_RATE - time.monotonic()))

            async def mark() -> tuple[float, int]:
                return time.monotonic(), await count()

            def per_s(first: tuple[float, int], last: tuple[float, int]) -> float:
                return round((last[1] - first[1]) / (last[0] - first[0]), 1)

            watcher = asyncio.create_task(monitor(), name="monitor")
            publisher = asyncio.create_task(publish(), name="publisher")
            t0 = time.monotonic()
            try:
                await asyncio.sleep(1.0)
                quiet = await mark()
                await asyncio.sleep(1.0)
                stop_slow = asyncio.Event()
                slow = [asyncio.create_task(slowloris(host, int(port), stop_slow))
                        for _ in range(SLOWLORIS_CONNECTIONS)]
                slow_start = await mark()
                await asyncio.sleep(1.0)
                big_start = await mark()
                status_line, raw_s = await ten_megabytes_raw(host, int(port), daemon.token)
                assert status_line.startswith(b"HTTP/1.1 413"), status_line
                started = time.monotonic()
                big = await api.call("POST", webhooks("org_load"),
                                     data=io.BytesIO(b" " * 10_000_000),
                                     headers={"Content-Type": "application/json"})
                client_s = time.monotonic() - started
                assert big.status == 413
                await asyncio.sleep(0.5)
                burst_start = await mark()
                replies = await asyncio.gather(*[
                    api.get("/v1/event-types") if n % 2 else
                    api.get(deliveries("org_load"), params={"limit": "50"})
                    for n in range(BURST)])
                burst_s = time.monotonic() - burst_start[0]
                await asyncio.sleep(0.5)
                burst_end = await mark()
                stop_slow.set()
                slowed = await asyncio.gather(*slow)
                await publisher
                await wait_until(lambda: count_is(count, LOAD_EVENTS), 60, "every event delivered")
                all_s = time.monotonic() - t0
            finally:
                done.set()
                publisher.cancel()
                await asyncio.gather(watcher, publisher, return_exceptions=True)

        statuses = collections.Counter(r.status for r in replies)
        figure("published_per_s", LOAD_RATE)
        figure("delivered_per_s_before_attacks", per_s(quiet, slow_start))
        figure("delivered_per_s_under_slowloris", per_s(slow_start, big_start))
        figure("delivered_per_s_during_10mb", per_s(big_start, burst_start))
        figure("delivered_per_s_during_burst", per_s(burst_start, burst_end))
        figure("all_delivered_s", round(all_s, 1))
        figure("burst_s", round(burst_s, 2))
        figure("burst_statuses", dict(statuses))
        figure("ten_mb_raw_413_s", round(raw_s, 3))
        figure("ten_mb_client_413_s", round(client_s, 3))
        figure("slowloris_bytes_sent", sum(s for s, _ in slowed))
        figure("slowloris_closed_by_server", sum(closed for _, closed in slowed))
        figure("healthz_probes", len(health))
        figure("healthz_max_ms", round(1000 * max(s for s, _ in health), 1))
        assert statuses == {200: BURST}, statuses
        assert {s for _, s in health} == {200}
        assert big_start[1] > slow_start[1], "deliveries went on under slowloris"
        assert burst_start[1] > big_start[1], "deliveries went on during the 10 MB bodies"
        assert burst_end[1] > burst_start[1], "deliveries went on during the burst"
        assert all(b >= a for (_, a), (_, b) in itertools.pairwise(samples))
        assert all_s < 60 + LOAD_EVENTS / LOAD_RATE
        async with client(daemon) as api:
            assert (await api.get("/healthz")).status == 200
        log = daemon.log_text()
        assert "api_internal_error" not in log and "Traceback" not in log
        assert daemon.stop() == 0
    finally:
        receiver.stop()


async def count_is(count: Callable[[], Any], expected: int) -> bool:
    return bool(await count() >= expected)
