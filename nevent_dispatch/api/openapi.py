"""The OpenAPI 3.1 document of the management API, served at ``/openapi.json``.

Owns the description of every route, parameter, body, response and error shape.
The tests hold the running API to it (schemathesis fuzzes it; every route of the
application must be in it and every path in it must be a route), so it cannot drift.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .. import __version__
from ..models import Kind, Outcome, State
from .http import json_response

_TIME = {"type": ["number", "null"], "description": "unix seconds"}
_TIME_PARAM: dict[str, Any] = {"oneOf": [{"type": "number"}, {"type": "string"}],
               "description": "unix seconds, ISO 8601 (2026-03-15T10:30:00Z) or a duration "
                              "ago (30m, 2h, 7d)"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "400": ("bad request: invalid JSON, a missing body or a bad header", "bad_request"),
    "401": ("missing or invalid bearer token", "unauthorized"),
    "404": ("no such resource in this organization", "not_found"),
    "409": ("a conflict with the current state", "conflict"),
    "413": ("request body larger than api.max_body_bytes", "payload_too_large"),
    "415": ("the body is not application/json", "unsupported_media_type"),
    "422": ("a field or parameter is refused; the message says why", "validation_error"),
}


def _responses(ok: str, schema: dict[str, Any], description: str, *errors: str
               ) -> dict[str, Any]:
    out: dict[str, Any] = {ok: _json(schema, description)}
    for code in ("400", "401", *errors):
        out[code] = _json(_ref("Error"), _ERRORS[code][0])
    return out


_ORG = {"name": "org", "in": "path", "required": True, "description": "organization id",
        "schema": {"type": "string"}}
_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_DELIVERY_ID = {**_ID, "description": "delivery number or X-Nevent-Delivery uuid"}
_WEBHOOK_ID = {**_ID, "description": "webhook id (wh_…)"}
_BODY_ERRORS = ("404", "413", "415", "422")

_WEBHOOK_FIELDS: dict[str, Any] = {
    "name": {"type": "string", "maxLength": 200},
    "url": {"type": "string", "description": "https:// URL of a public host"},
    "events": {"oneOf": [{"type": "array", "items": {"type": "string"}}, {"type": "string"}],
               "description": "event types or patterns: \"*\", \"purchase.*\", names"},
    "secret": {"type": "string", "minLength": 16, "maxLength": 256},
    "filter": {"type": ["object", "null"], "description": "filter document; null clears it"},
    "batch": {"type": "boolean"},
    "retries": {"type": "boolean"},
    "rate_limit": {"type": ["integer", "null"], "minimum": 1,
                   "description": "events per minute; null: the daemon's default"},
}

SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["code", "field", "message"], "properties": {
            "code": {"type": "string"}, "field": {"type": ["string", "null"]},
            "message": {"type": "string"}}}}},
    "Webhook": {"type": "object", "required": [
        "id", "organization_id", "name", "url", "secret", "events", "filter", "batch",
        "retries", "rate_limit", "active", "created_at", "updated_at"], "properties": {
        "id": {"type": "string"}, "organization_id": {"type": "string"},
        "name": {"type": "string"}, "url": {"type": "string"},
        "secret": {"type": "string", "description": "masked, except in the create response"},
        "events": {"type": "array", "items": {"type": "string"}},
        "filter": {"type": ["object", "null"]}, "batch": {"type": "boolean"},
        "retries": {"type": "boolean"}, "rate_limit": {"type": ["integer", "null"]},
        "active": {"type": "boolean"}, "created_at": {"type": "number"},
        "updated_at": {"type": "number"}, "deleted": {"type": "boolean"}}},
    "WebhookCreate": {"type": "object", "required": ["name", "url"], "additionalProperties": False,
                      "properties": _WEBHOOK_FIELDS},
    "WebhookUpdate": {"type": "object", "minProperties": 1, "additionalProperties": False,
                      "properties": _WEBHOOK_FIELDS},
    "WebhookList": {"type": "object", "required": ["data", "next_cursor"], "properties": {
        "data": {"type": "array", "items": _ref("Webhook")}, "next_cursor": {"type": "null"}}},
    "EventTypeList": {"type": "object", "required": ["data", "next_cursor"], "properties": {
        "data": {"type": "array", "items": {"type": "object", "required": ["type", "documented"],
                                            "properties": {"type": {"type": "string"},
                                                           "documented": {"type": "boolean"}}}},
        "next_cursor": {"type": "null"}}},
    "Delivery": {"type": "object", "required": [
        "id", "delivery_id", "organization_id", "webhook_id", "kind", "event_type", "event_id",
        "event_count", "state", "attempts", "next_at", "created_at", "updated_at",
        "last_status", "last_error"], "properties": {
        "id": {"type": "integer"},
        "delivery_id": {"type": "string", "description": "X-Nevent-Delivery"},
        "organization_id": {"type": ["string", "null"]},
        "webhook_id": {"type": ["string", "null"]},
        "kind": {"enum": [k.value for k in Kind]}, "event_type": {"type": "string"},
        "event_id": {"type": ["string", "null"]}, "event_count": {"type": "integer"},
        "state": {"enum": [s.value for s in State]},
        "attempts": {"type": "integer", "description": "attempts made so far"},
        "next_at": _TIME, "created_at": {"type": "number"}, "updated_at": {"type": "number"},
        "last_status": {"type": ["integer", "null"]}, "last_error": {"type": ["string", "null"]}}},
    "Attempt": {"type": "object", "required": [
        "number", "started_at", "latency_ms", "outcome", "status", "error", "response"],
        "properties": {
            "number": {"type": "integer"}, "started_at": {"type": "number"},
            "latency_ms": {"type": "number"}, "outcome": {"enum": [o.value for o in Outcome]},
            "status": {"type": ["integer", "null"]}, "error": {"type": ["string", "null"]},
            "response": {"type": ["string", "null"]}}},
    "DeliveryDetail": {"allOf": [_ref("Delivery"), {
        "type": "object", "required": ["attempt_log", "events"], "properties": {
            "attempt_log": {"type": "array", "items": _ref("Attempt")},
            "events": {"type": "array", "items": {
                "type": "object", "properties": {"id": {"type": "string"},
                                                 "type": {"type": "string"}}}}}}]},
    "DeliveryList": {"type": "object", "required": ["data", "next_cursor"], "properties": {
        "data": {"type": "array", "items": _ref("Delivery")},
        "next_cursor": {"type": ["string", "null"]}}},
    "TestRequest": {"type": "object", "additionalProperties": False, "properties": {
        "type": {"type": "string", "description": "event type of the sample"}}},
    "TestResult": {"type": "object", "required": [
        "delivery", "status", "outcome", "latency_ms", "error", "response", "subscribed"],
        "properties": {
            "delivery": _ref("Delivery"), "status": {"type": ["integer", "null"]},
            "outcome": {"enum": [o.value for o in Outcome]}, "latency_ms": {"type": "number"},
            "error": {"type": ["string", "null"]}, "response": {"type": ["string", "null"]},
            "subscribed": {"type": "boolean"}}},
    "ReplayRequest": {"type": "object", "additionalProperties": False, "properties": {
        "status": {"enum": ["failed"]}, "since": _TIME_PARAM, "until": _TIME_PARAM}},
    "ReplayResult": {"type": "object", "required": ["webhook_id", "requeued", "webhook_active"],
                     "properties": {"webhook_id": {"type": "string"},
                                    "requeued": {"type": "integer"},
                                    "webhook_active": {"type": "boolean"}}},
    "RetryResult": {"type": "object", "required": ["delivery", "requeued", "webhook_active"],
                    "properties": {"delivery": _ref("Delivery"), "requeued": {"const": True},
                                   "webhook_active": {"type": "boolean"}}},
    "Stats": {"type": "object", "required": ["webhook_id", "since", "deliveries", "attempts",
                                             "latency_ms"], "properties": {
        "webhook_id": {"type": "string"}, "since": {"type": "number"},
        "deliveries": {"type": "object", "additionalProperties": {"type": "integer"}},
        "attempts": {"type": "object", "additionalProperties": {"type": "integer"}},
        "latency_ms": {"type": "object", "required": ["p50", "p95", "sample"], "properties": {
            "p50": {"type": ["number", "null"]}, "p95": {"type": ["number", "null"]},
            "sample": {"type": "integer"}}}}},
    "Health": {"type": "object", "required": ["status"],
               "properties": {"status": {"type": "string"}}},
    "Readiness": {"type": "object", "required": ["status", "reasons"], "properties": {
        "status": {"enum": ["ok", "starting", "stalled", "stopping", "unknown"]},
        "reasons": {"type": "array", "items": {"type": "string"},
                    "description": "why the daemon is not ready (empty when ok)"},
        "checked_at": _TIME, "outbox_cursor": {"type": "integer"},
        "outbox_backlog": {"type": "integer", "description": "outbox rows not yet taken in"},
        "in_flight": {"type": "integer"}, "pid": {"type": "integer"}, "started_at": _TIME}},
}


def _op(summary: str, responses: dict[str, Any], parameters: list[dict[str, Any]],
        body: str | None = None, *, body_required: bool = False,
        extra: dict[str, Any] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "parameters": parameters, "responses": responses}
    if body is not None:
        op["requestBody"] = {"required": body_required,
                             "content": {"application/json": {"schema": _ref(body)}}}
    op.update(extra or {})
    return op


_LIST_PARAMS: list[dict[str, Any]] = [
    {"name": "webhook_id", "in": "query", "schema": {"type": "string"}},
    {"name": "status", "in": "query", "schema": {"enum": [s.value for s in State]}},
    {"name": "event_type", "in": "query", "schema": {"type": "string"}},
    {"name": "event_id", "in": "query", "schema": {"type": "string"}},
    {"name": "since", "in": "query", "schema": {"type": "string"},
     "description": _TIME_PARAM["description"]},
    {"name": "until", "in": "query", "schema": {"type": "string"},
     "description": _TIME_PARAM["description"]},
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
    {"name": "cursor", "in": "query", "schema": {"type": "string"},
     "description": "next_cursor of the previous page"},
]
_IDEMPOTENCY = {"name": "Idempotency-Key", "in": "header", "schema": {"type": "string"},
                "description": "the same key and body within 24 h return the first response"}

_W = "/v1/organizations/{org}/webhooks"
_D = "/v1/organizations/{org}/deliveries"

PATHS: dict[str, Any] = {
    "/healthz": {"get": {"summary": "the event loop answers", "security": [],
                         "responses": {"200": _json(_ref("Health"), "ok")}}},
    "/readyz": {"get": {"summary": "the pipeline progresses: 200 ok, else 503 starting, stalled "
                                   "or stopping with the reasons (also what feeds the systemd "
                                   "watchdog)", "security": [], "responses": {
        "200": _json(_ref("Readiness"), "ok"),
        "503": _json(_ref("Readiness"), "starting, stalled or stopping")}}},
    "/metrics": {"get": {"summary": "Prometheus text exposition of the daemon's metrics (no token "
                                    "unless api.metrics_token = true)", "responses": {
        "200": {"description": "Prometheus text format 0.0.4", "content": {"text/plain": {
            "schema": {"type": "string"}}}},
        "401": _json(_ref("Error"), _ERRORS["401"][0]),
        "404": _json(_ref("Error"), "metrics are off (metrics.enabled = false)")}}},
    "/openapi.json": {"get": {"summary": "this document", "responses": {
        "200": {"description": "OpenAPI 3.1", "content": {"application/json": {
            "schema": {"type": "object"}}}},
        "401": _json(_ref("Error"), _ERRORS["401"][0])}}},
    "/v1/event-types": {"get": _op("the event types webhooks may subscribe to",
                                   _responses("200", _ref("EventTypeList"), "event types"), [])},
    _W: {
        "get": _op("the organization's webhooks",
                   _responses("200", _ref("WebhookList"), "webhooks", "422"), [_ORG]),
        "post": _op("create an inactive webhook; the secret is in this response only",
                    _responses("201", _ref("Webhook"), "created", "409", "413", "415", "422"),
                    [_ORG, _IDEMPOTENCY], "WebhookCreate", body_required=True),
    },
    _W + "/{id}": {
        "get": _op("one webhook (secret masked)",
                   _responses("200", _ref("Webhook"), "the webhook", "404", "422"),
                   [_ORG, _WEBHOOK_ID]),
        "patch": _op("change fields of a webhook",
                     _responses("200", _ref("Webhook"), "changed", *_BODY_ERRORS),
                     [_ORG, _WEBHOOK_ID], "WebhookUpdate", body_required=True),
        "delete": _op("delete a webhook (its history stays)",
                      _responses("200", _ref("Webhook"), "deleted", "404", "422"),
                      [_ORG, _WEBHOOK_ID]),
    },
    _W + "/{id}/enable": {"post": _op(
        "activate: the webhook receives events from now on",
        _responses("200", _ref("Webhook"), "enabled", *_BODY_ERRORS), [_ORG, _WEBHOOK_ID])},
    _W + "/{id}/disable": {"post": _op(
        "deactivate: events emitted meanwhile are not sent to it",
        _responses("200", _ref("Webhook"), "disabled", *_BODY_ERRORS), [_ORG, _WEBHOOK_ID])},
    _W + "/{id}/test": {"post": _op(
        "send a signed sample event now (even inactive); never retried",
        _responses("200", _ref("TestResult"), "what the endpoint answered", *_BODY_ERRORS),
        [_ORG, _WEBHOOK_ID], "TestRequest")},
    _W + "/{id}/replay": {"post": _op(
        "requeue the webhook's failed deliveries (same delivery ids)",
        _responses("200", _ref("ReplayResult"), "how many were requeued", *_BODY_ERRORS),
        [_ORG, _WEBHOOK_ID], "ReplayRequest")},
    _W + "/{id}/stats": {"get": _op(
        "counts per state and outcome, latency p50/p95",
        _responses("200", _ref("Stats"), "figures", "404", "422"),
        [_ORG, _WEBHOOK_ID, {"name": "since", "in": "query", "schema": {"type": "string"},
                             "description": "default 24 h ago; " + _TIME_PARAM["description"]}])},
    _D: {"get": _op("deliveries, newest first, cursor-paginated",
                    _responses("200", _ref("DeliveryList"), "a page", "404", "422"),
                    [_ORG, *_LIST_PARAMS])},
    _D + "/{id}": {"get": _op("one delivery with its attempts (and a batch's events)",
                              _responses("200", _ref("DeliveryDetail"), "the delivery", "404",
                                         "422"), [_ORG, _DELIVERY_ID])},
    _D + "/{id}/retry": {"post": _op(
        "requeue one failed delivery (same delivery id)",
        _responses("200", _ref("RetryResult"), "requeued", "404", "409", "422"),
        [_ORG, _DELIVERY_ID])},
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "nevent-dispatch management API", "version": __version__,
             "description": "Webhooks of Nevent organizations and their delivery history. "
                            "Every route but /healthz, /readyz and (unless "
                            "api.metrics_token) /metrics needs Authorization: Bearer <token>."},
    "security": [{"bearer": []}],
    "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
                   "schemas": SCHEMAS},
    "paths": PATHS,
}


async def serve(request: web.Request) -> web.Response:
    return json_response(DOCUMENT)
