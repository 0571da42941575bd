"""The operator's CLI end to end: emit, webhooks test/replay, run, deliveries, listen, demo.

Every command runs as a real ``python -m nevent_dispatch`` subprocess on this
test's own TOML config and SQLite files. Receivers are either in-process TLS
servers (``make_receiver``, so the CLI runs in a thread while the event loop
answers) or a real ``nevent-dispatch listen`` subprocess.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from nevent_dispatch import BadSignature, StaleTimestamp, verify
from nevent_dispatch.catalog import EVENT_TYPES
from nevent_dispatch.wire.samples import sample_data

from ..conftest import (
    Receiver,
    Request,
    drain,
    emit,
    free_port,
    one_line_error,
    seed_verify,
    server_context,
    usage_error,
)

SECRET = "whsec_operations-test-secret-0123456789"
WRONG_SECRET = "whsec_not-the-listener-secret-9876543210"
LIST_HEADER = ["ID", "DELIVERY", "WEBHOOK", "TYPE", "EVENTS", "STATE", "TRIES", "LAST", "CREATED",
               "NEXT"]
CLI_TIMEOUT_S = 60.0


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k not in ("NEVENT_DISPATCH_CONFIG", "NEVENT_DISPATCH_DEBUG")}


class Ops:
    """The CLI on one test's own config file and databases, in ``tmp``."""

    def __init__(self, tmp: Path, tls_ca: Path) -> None:
        self.tmp = tmp
        self.tls_ca = tls_ca
        self.config_path = tmp / "dispatch.toml"
        self.configure(ca_file=tls_ca)

    def configure(self, *, ca_file: Path | str | None, allow_http: bool = False,
                  retry_schedule: tuple[float, ...] = (0.05, 0.05)) -> None:
        """(Re)write the TOML file every later command reads."""
        schedule = ", ".join(str(s) for s in retry_schedule)
        self.config_path.write_text(f"""
[database]
outbox = "{self.tmp / 'app.db'}"
state = "{self.tmp / 'state.db'}"

[outbox]
poll_interval = 0.01

[delivery]
allow_private_networks = true
allow_http = {str(allow_http).lower()}
ca_file = "{ca_file or ''}"
retry_schedule = [{schedule}]
timeout = 5.0

[batch]
max_wait = 0.05

[api]
listen = "127.0.0.1:0"
""", encoding="utf-8")

    def __call__(self, *args: str, timeout: float = CLI_TIMEOUT_S,
                 ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "nevent_dispatch", "--config", str(self.config_path), *args],
            cwd=self.tmp, env=_env(), capture_output=True, text=True, timeout=timeout,
            check=False)

    async def in_thread(self, *args: str, timeout: float = CLI_TIMEOUT_S,
                        ) -> subprocess.CompletedProcess[str]:
        """Run a command without blocking the event loop that serves the receivers."""
        return await asyncio.to_thread(self, *args, timeout=timeout)

    def ok(self, *args: str) -> str:
        result = self(*args)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result.stdout

    def json(self, *args: str) -> Any:
        return orjson.loads(self.ok(*args, "--json"))

    def create_webhook(self, url: str, *extra: str, org: str = "org_1", secret: str = SECRET,
                       enable: bool = True) -> str:
        created = self.json("webhooks", "create", "--org", org, "--url", url, "--name", "ops hook",
                            "--secret", secret, *extra)
        if enable:
            self.ok("webhooks", "enable", created["id"])
        return str(created["id"])

    def deliveries(self, *filters: str) -> list[dict[str, Any]]:
        return list(self.json("deliveries", "list", *filters))

    def outbox(self) -> list[dict[str, Any]]:
        """The outbox rows as the application's database holds them."""
        conn = sqlite3.connect(self.tmp / "app.db")
        try:
            rows = conn.execute(
                "SELECT id, event_id, type, organization_id, data FROM outbox ORDER BY id").fetchall()
        finally:
            conn.close()
        return [{"id": r[0], "event_id": r[1], "type": r[2], "organization_id": r[3],
                 "data": orjson.loads(r[4])} for r in rows]


@pytest.fixture
def ops(tmp_path: Path, tls: dict[str, Any]) -> Ops:
    """The CLI on a fresh config in tmp_path that trusts the test CA, with 0.05 s retries."""
    ops = Ops(tmp_path, tls["ca_file"])
    ops.ok("init")
    return ops


async def _run_until_idle(ops: Ops) -> None:
    result = await ops.in_thread("run", "--until-idle")
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr)


# -- emit ------------------------------------------------------------------------------------


@pytest.mark.parametrize("event_type", ["purchase.completed", "fan.created", "sms.delivered"])
def test_emit_inserts_the_realistic_sample_of_the_type(ops: Ops, event_type: str) -> None:
    """Without --data, emit inserts one outbox row whose data is the type's sample."""
    out = ops.ok("emit", event_type, "--org", "org_1")
    [row] = ops.outbox()
    assert out.strip() == f"emitted 1 {event_type} for org_1 ({row['event_id']}, outbox id 1)"
    assert (row["type"], row["organization_id"]) == (event_type, "org_1")
    assert row["data"] == sample_data(event_type)
    assert row["event_id"].startswith("evt_")


def test_emit_with_data_count_and_json_output(ops: Ops) -> None:
    """--data sets the object, --count inserts that many, --json reports their outbox ids."""
    report = ops.json("emit", "purchase.completed", "--org", "org_9", "--count", "3",
                      "--data", '{"purchase": {"total": 250.5, "vip": true}}')
    rows = ops.outbox()
    assert report == {"type": "purchase.completed", "organization_id": "org_9",
                      "outbox_ids": [1, 2, 3], "event_ids": [r["event_id"] for r in rows],
                      "count": 3, "active_webhooks": []}
    assert [r["id"] for r in rows] == [1, 2, 3]
    assert len({r["event_id"] for r in rows}) == 3
    assert all(r["data"] == {"purchase": {"total": 250.5, "vip": True}} for r in rows)
    out = ops.ok("emit", "fan.created", "--org", "org_9", "--count", "2").strip()
    first, last = (r["event_id"] for r in ops.outbox()[3:5])
    assert out == f"emitted 2 fan.created for org_9 ({first}..{last}, outbox ids 4..5)"


def test_emit_count_out_of_range_is_a_usage_error(ops: Ops) -> None:
    result = ops("emit", "fan.created", "--org", "org_1", "--count", "0")
    assert usage_error(result) == "argument --count: must be 1..10000000, got '0'"
    if (ops.tmp / "app.db").exists():
        assert ops.outbox() == []


@pytest.mark.parametrize(("extra", "message"), [
    (("--data", "{not json"), "nevent-dispatch: data: not valid JSON"),
    (("--data", "[1, 2, 3]"), "nevent-dispatch: publish: data must be a JSON object"),
])
def test_emit_refuses_bad_input_in_one_line_and_inserts_nothing(
        ops: Ops, extra: tuple[str, ...], message: str) -> None:
    """Invalid JSON, a zero count and a non-object data exit 1 with one line; the outbox is untouched."""
    result = ops("emit", "fan.created", "--org", "org_1", *extra)
    assert one_line_error(result).startswith(message)
    assert result.stdout == ""
    if (ops.tmp / "app.db").exists():
        assert ops.outbox() == []


# -- webhooks test ---------------------------------------------------------------------------


async def test_webhooks_test_sends_the_signed_sample_to_an_inactive_webhook(
        ops: Ops, make_receiver: Callable[..., Any]) -> None:
    """`webhooks test --type` POSTs the signed sample envelope now, and records it as a test delivery."""
    receiver = await make_receiver()
    webhook_id = ops.create_webhook(receiver.url, org="org_7", enable=False)

    result = await ops.in_thread("webhooks", "test", webhook_id, "--type", "fan.created")
    assert result.returncode == 0, (result.stdout, result.stderr)
    [request] = receiver.requests
    delivery_uuid = request.headers["X-Nevent-Delivery"]
    assert result.stdout.startswith(f"sent test fan.created to {webhook_id}: 200 in ")
    assert f" ms (delivery {delivery_uuid})" in result.stdout

    assert request.headers["X-Nevent-Event"] == "fan.created"
    assert request.headers["User-Agent"] == "Nevent-Webhooks/1.0"
    assert seed_verify(request.body, request.headers["X-Nevent-Signature"], SECRET)
    body = request.json()
    assert list(body) == ["id", "type", "created", "data", "organization_id"]
    assert (body["type"], body["organization_id"]) == ("fan.created", "org_7")
    assert body["data"] == sample_data("fan.created")
    assert abs(body["created"] - time.time()) < 60

    [delivery] = ops.deliveries("--webhook", webhook_id)
    assert (delivery["kind"], delivery["state"], delivery["delivery_id"]) == (
        "test", "delivered", delivery_uuid)
    assert (delivery["event_type"], delivery["event_id"], delivery["last_status"]) == (
        "fan.created", body["id"], 200)
    assert ops.json("webhooks", "show", webhook_id)["active"] is False


async def test_webhooks_test_json_defaults_to_purchase_completed(
        ops: Ops, make_receiver: Callable[..., Any]) -> None:
    """Without --type the sample is purchase.completed; --json reports status, latency and outcome."""
    receiver = await make_receiver()
    webhook_id = ops.create_webhook(receiver.url, enable=False)
    result = await ops.in_thread("webhooks", "test", webhook_id, "--json")
    assert result.returncode == 0, (result.stdout, result.stderr)
    report = orjson.loads(result.stdout)
    assert (report["kind"], report["state"], report["outcome"]) == ("test", "delivered", "success")
    assert report["event_type"] == "purchase.completed" and report["last_status"] == 200
    assert report["latency_ms"] > 0
    [request] = receiver.requests
    assert request.headers["X-Nevent-Event"] == "purchase.completed"
    assert request.json()["data"] == sample_data("purchase.completed")


async def test_webhooks_test_against_a_failing_receiver_exits_1_and_records_the_failure(
        ops: Ops, make_receiver: Callable[..., Any]) -> None:
    """A 500 answer makes `webhooks test` exit 1; the test delivery is failed (500), not retried."""
    receiver = await make_receiver(statuses=[500, 500, 500])
    webhook_id = ops.create_webhook(receiver.url, enable=False)
    result = await ops.in_thread("webhooks", "test", webhook_id)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert f"to {webhook_id}: 500 in " in result.stdout
    assert "response: nope" in result.stdout
    assert len(receiver.requests) == 1
    [delivery] = ops.deliveries("--webhook", webhook_id)
    assert (delivery["kind"], delivery["state"], delivery["last_status"]) == ("test", "failed", 500)
    assert delivery["next_at"] is None


def test_webhooks_test_refuses_an_unknown_type(ops: Ops) -> None:
    """An unknown --type is a one-line error naming it, with the did-you-mean of --events
    (the registry's message, as over the API); nothing is sent or recorded."""
    webhook_id = ops.create_webhook("https://127.0.0.1:9/hook", enable=False)
    line = one_line_error(ops("webhooks", "test", webhook_id, "--type", "purchase.complete"))
    assert line == ("nevent-dispatch: type: unknown event type 'purchase.complete' "
                    "(did you mean 'purchase.completed'?)")
    assert ops.deliveries() == []


# -- run --until-idle and the history --------------------------------------------------------


@dataclass
class History:
    """What the shared `run --until-idle` left behind: webhooks, requests and outbox rows."""

    ops: Ops
    receiver: Receiver
    single: str
    batch: str
    outbox: list[dict[str, Any]]


async def _deliver_sample_traffic(ops: Ops, tls: dict[str, Any]) -> History:
    receiver = Receiver(url="")

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        receiver.requests.append(Request(request.path, dict(request.headers), body, time.time()))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context(tls["cert"]))
        await site.start()
        base = f"https://127.0.0.1:{runner.addresses[0][1]}"
        single = ops.create_webhook(f"{base}/hook", org="org_1")
        batch = ops.create_webhook(f"{base}/batch", "--batch", org="org_2")
        ops.ok("emit", "fan.created", "--org", "org_1", "--count", "2")
        ops.ok("emit", "purchase.completed", "--org", "org_1")
        ops.ok("emit", "email.sent", "--org", "org_2", "--count", "2")
        ops.ok("emit", "email.opened", "--org", "org_2")
        await _run_until_idle(ops)
    finally:
        await runner.cleanup()
    return History(ops, receiver, single, batch, ops.outbox())


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory, tls: dict[str, Any]) -> History:
    """Two webhooks (one in batch mode), six events, delivered once by `run --until-idle`.

    The tests that use it only read the history, so one run serves them all.
    """
    ops = Ops(tmp_path_factory.mktemp("history"), tls["ca_file"])
    ops.ok("init")
    # A thread of its own keeps this loop apart from the tests' event loops.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, _deliver_sample_traffic(ops, tls)).result(timeout=120)


def test_run_until_idle_delivers_every_emitted_event_and_exits_0(history: History) -> None:
    """Each org's events reach its webhook: one request each, and one batch request of three."""
    receiver, outbox = history.receiver, history.outbox
    assert sorted(e["id"] for e in receiver.events()) == sorted(r["event_id"] for r in outbox)
    singles = [r for r in receiver.requests if r.path == "/hook"]
    [batch] = [r for r in receiver.requests if r.path == "/batch"]
    assert sorted(r.json()["id"] for r in singles) == sorted(
        r["event_id"] for r in outbox if r["organization_id"] == "org_1")
    assert batch.headers["X-Nevent-Event"] == "batch"
    assert [e["id"] for e in batch.json()["events"]] == [
        r["event_id"] for r in outbox if r["organization_id"] == "org_2"]
    assert all(seed_verify(r.body, r.headers["X-Nevent-Signature"], SECRET)
               for r in receiver.requests)


def test_deliveries_list_text_is_an_aligned_table_newest_first(history: History) -> None:
    """The text list has the header row and one row per delivery, each column starting under its title."""
    ops = history.ops
    rows_json = ops.deliveries()
    header, *rows = ops.ok("deliveries", "list").splitlines()
    assert header.split() == LIST_HEADER
    assert len(rows) == len(rows_json) == 4
    start = {title: header.index(title) for title in LIST_HEADER}
    for row, d in zip(rows, rows_json, strict=True):
        cells = {title: row[start[title]:].split(" ")[0] for title in LIST_HEADER}
        assert cells["ID"] == str(d["id"])
        assert cells["DELIVERY"] == d["delivery_id"]
        assert cells["WEBHOOK"] == d["webhook_id"]
        assert cells["TYPE"] == d["event_type"]
        assert cells["EVENTS"] == str(d["event_count"])
        assert cells["STATE"] == "delivered"
        assert cells["TRIES"] == "1"
        assert cells["LAST"] == "200"
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(\d+[smhd] ago\) +-$",
                        row[start["CREATED"]:])
    assert [d["id"] for d in rows_json] == sorted((d["id"] for d in rows_json), reverse=True)


def test_deliveries_list_filters_by_webhook_status_since_and_limit(history: History) -> None:
    """--webhook, --status, --since and --limit narrow the history; an empty result says so."""
    ops, single, batch = history.ops, history.single, history.batch
    by_single = ops.deliveries("--webhook", single)
    assert len(by_single) == 3 and {d["webhook_id"] for d in by_single} == {single}
    assert {d["kind"] for d in by_single} == {"event"}
    [only_batch] = ops.deliveries("--webhook", batch)
    assert (only_batch["kind"], only_batch["event_type"], only_batch["event_count"]) == (
        "batch", "batch", 3)

    assert len(ops.deliveries("--status", "delivered")) == 4
    assert ops.deliveries("--status", "failed") == []
    assert ops.ok("deliveries", "list", "--status", "failed").strip() == "no deliveries"
    assert len(ops.deliveries("--since", "1h")) == 4
    assert ops.deliveries("--since", str(int(time.time()) + 3600)) == []

    everything = ops.deliveries()
    limited = ops.deliveries("--limit", "2")
    assert [d["id"] for d in limited] == [d["id"] for d in everything[:2]]

    assert usage_error(ops("deliveries", "list", "--limit", "0")) == (
        "argument --limit: must be 1..1000, got '0'")
    assert one_line_error(ops("deliveries", "list", "--since", "yesterday")).startswith(
        "nevent-dispatch: since: expected a unix time, an ISO 8601 date")
    # The same reading of times as the management API: a duration also written "-1h".
    assert len(ops.deliveries("--since=-1h")) == len(everything)


def test_deliveries_show_by_number_and_by_uuid_lists_the_attempts(history: History) -> None:
    """`deliveries show` accepts the number or the X-Nevent-Delivery uuid and lists each attempt."""
    ops = history.ops
    [newest, *_] = ops.deliveries("--webhook", history.single)
    by_number = ops.ok("deliveries", "show", str(newest["id"]))
    by_uuid = ops.ok("deliveries", "show", newest["delivery_id"])
    for text in (by_number, by_uuid):
        assert f"delivery:     {newest['id']} ({newest['delivery_id']})" in text
    assert f"event:        {newest['event_id']}" in by_number
    assert "state:        delivered" in by_number
    attempts_part = by_number.split("\nattempts:\n", 1)[1]
    header, row = attempts_part.strip().splitlines()
    assert header.split() == ["#", "WHEN", "OUTCOME", "STATUS", "LATENCY", "ERROR", "RESPONSE"]
    assert row[header.index("OUTCOME"):].startswith("success")
    assert row[header.index("STATUS"):].startswith("200")
    assert row[header.index("LATENCY"):].split(" ")[1] == "ms"

    shown = ops.json("deliveries", "show", newest["delivery_id"])
    assert shown == ops.json("deliveries", "show", str(newest["id"]))
    assert shown["id"] == newest["id"] and shown["events"] == []
    [attempt] = shown["attempt_log"]
    assert (attempt["number"], attempt["status"], attempt["outcome"]) == (1, 200, "success")
    assert attempt["latency_ms"] > 0 and attempt["response"] == "ok"

    line = one_line_error(ops("deliveries", "show", "999999"))
    assert line == "nevent-dispatch: delivery '999999' not found"


def test_deliveries_show_of_a_batch_lists_its_events(history: History) -> None:
    """A batch delivery shows the id and type of every event it carried, in order."""
    ops = history.ops
    [batch] = ops.deliveries("--webhook", history.batch)
    expected = [(r["event_id"], r["type"]) for r in history.outbox
                if r["organization_id"] == "org_2"]
    text = ops.ok("deliveries", "show", str(batch["id"]))
    assert "event:        3 events" in text
    listed = text.split("events in this batch (3):\n", 1)[1].split("\n\n", 1)[0]
    assert [tuple(line.split()) for line in listed.splitlines()] == expected
    shown = ops.json("deliveries", "show", batch["delivery_id"])
    assert [(e["id"], e["type"]) for e in shown["events"]] == expected
    assert [a["status"] for a in shown["attempt_log"]] == [200]


# -- failures, retry and replay --------------------------------------------------------------


async def test_failed_deliveries_are_retried_and_replayed_with_their_delivery_ids(
        ops: Ops, make_receiver: Callable[..., Any]) -> None:
    """`deliveries retry` and `webhooks replay` requeue failures; the next run reuses their ids."""
    answer = {"status": 500}
    answered: list[tuple[str, int]] = []

    async def handler(request: web.Request) -> web.Response:
        status = answer["status"]
        answered.append((request.headers["X-Nevent-Delivery"], status))
        return web.Response(status=status, text="down" if status >= 300 else "ok")

    receiver = await make_receiver(handler=handler)
    ops.configure(ca_file=ops.tls_ca, retry_schedule=(0.05,))
    webhook_id = ops.create_webhook(receiver.url)
    ops.ok("emit", "purchase.refunded", "--org", "org_1", "--count", "3")
    await _run_until_idle(ops)

    failed = ops.deliveries("--webhook", webhook_id)
    assert [(d["state"], d["attempts"], d["last_status"]) for d in failed] == [
        ("failed", 2, 500)] * 3
    assert len(answered) == 6
    assert ops.deliveries("--status", "failed") == failed

    first, *rest = failed
    out = ops.ok("deliveries", "retry", str(first["id"]))
    assert out.startswith(f"requeued delivery {first['id']} ({first['delivery_id']})")
    assert ops.json("deliveries", "show", str(first["id"]))["state"] == "pending"
    line = one_line_error(ops("deliveries", "retry", first["delivery_id"]))
    assert line == (f"nevent-dispatch: delivery {first['id']} is pending: only failed deliveries "
                    "can be retried")

    out = ops.ok("webhooks", "replay", webhook_id, "--status", "failed")
    assert out.startswith(f"requeued 2 failed deliveries of {webhook_id}")
    assert {d["state"] for d in ops.deliveries("--webhook", webhook_id)} == {"pending"}

    answer["status"] = 200
    await _run_until_idle(ops)
    after = ops.deliveries("--webhook", webhook_id)
    assert [(d["state"], d["attempts"], d["last_status"]) for d in after] == [
        ("delivered", 3, 200)] * 3
    failed_ids = {delivery for delivery, status in answered if status == 500}
    delivered_ids = [delivery for delivery, status in answered if status == 200]
    assert len(delivered_ids) == 3
    assert set(delivered_ids) == failed_ids == {d["delivery_id"] for d in failed}
    assert len(receiver.events()) == 9
    assert len({e["id"] for e in receiver.events()}) == 3

    shown = ops.json("deliveries", "show", str(first["id"]))
    assert [(a["number"], a["status"]) for a in shown["attempt_log"]] == [(1, 500), (2, 500), (3, 200)]
    line = one_line_error(ops("deliveries", "retry", str(first["id"])))
    assert line == (f"nevent-dispatch: delivery {first['id']} is delivered: only failed "
                    "deliveries can be retried")
    assert ops.ok("webhooks", "replay", webhook_id) == (
        f"no failed deliveries of {webhook_id}: nothing requeued\n")


# -- listen ----------------------------------------------------------------------------------


@dataclass
class Listener:
    """A `nevent-dispatch listen --json` subprocess writing its lines to a file."""

    proc: subprocess.Popen[bytes]
    out_path: Path
    err_path: Path
    port: int
    banner: dict[str, Any] | None = None

    def lines(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.out_path.read_bytes().splitlines()]

    def records(self) -> list[dict[str, Any]]:
        """One record per request received (the banner line excluded)."""
        return self.lines()[1:]

    def wait_ready(self, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            raw = self.out_path.read_bytes()
            if raw.endswith(b"\n"):
                self.banner = orjson.loads(raw.splitlines()[0])
                return self.banner
            if self.proc.poll() is not None:
                pytest.fail(f"listen exited {self.proc.returncode}: {self.err_path.read_text()}")
            time.sleep(0.02)
        pytest.fail(f"listen printed nothing in {timeout} s: {self.err_path.read_text()}")

    def stop(self, signum: int = signal.SIGTERM) -> int:
        """Send ``signum`` and wait; killed if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


@pytest.fixture
def listen(ops: Ops) -> Iterator[Callable[..., Listener]]:
    """Start `listen --port <free> --json ARGS…` on ops' config; every one is stopped at the end."""
    started: list[Listener] = []

    def start(*args: str) -> Listener:
        port = free_port()
        n = len(started)
        out_path, err_path = ops.tmp / f"listen{n}.out", ops.tmp / f"listen{n}.err"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "nevent_dispatch", "--config", str(ops.config_path),
                 "listen", "--port", str(port), "--json", *args],
                cwd=ops.tmp, env=_env(), stdout=out, stderr=err)
        listener = Listener(proc, out_path, err_path, port)
        started.append(listener)
        listener.wait_ready()
        return listener

    yield start
    for listener in started:
        listener.stop()


def _event_ids(ops: Ops, emitted: dict[str, Any]) -> list[str]:
    by_outbox_id = {r["id"]: r["event_id"] for r in ops.outbox()}
    return [by_outbox_id[i] for i in emitted["outbox_ids"]]


def test_listen_verifies_real_deliveries_and_flags_a_wrong_secret(
        ops: Ops, listen: Callable[..., Listener]) -> None:
    """listen prints a valid JSON line per delivery; a wrong secret gets 401s and fails."""
    ops.configure(ca_file=None, allow_http=True)
    listener = listen("--secret", SECRET)
    assert listener.banner == {"listening": f"http://127.0.0.1:{listener.port}", "ca_file": None}
    base = f"http://127.0.0.1:{listener.port}"
    good = ops.create_webhook(f"{base}/hook", secret=SECRET)
    bad = ops.create_webhook(f"{base}/wrong", secret=WRONG_SECRET)
    emitted = ops.json("emit", "attendance.checked_in", "--org", "org_1", "--count", "3")
    event_ids = _event_ids(ops, emitted)

    result = ops("run", "--until-idle")
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr)
    records = listener.records()

    valid = [r for r in records if r["path"] == "/hook"]
    assert [r["signature"] for r in valid] == ["valid"] * 3
    assert sorted(r["events"][0]["id"] for r in valid) == sorted(event_ids)
    assert all(r["status"] == 200 and r["event_type"] == "attendance.checked_in" for r in valid)
    assert all(r["body"]["data"] == sample_data("attendance.checked_in") for r in valid)

    invalid = [r for r in records if r["path"] == "/wrong"]
    assert len(invalid) == 9, "first attempt and two retries of each of the 3 events"
    assert {(r["signature"], r["status"], r["reason"]) for r in invalid} == {
        ("invalid", 401, "invalid signature")}
    assert len(records) == 12

    assert [(d["state"], d["last_status"]) for d in ops.deliveries("--webhook", good)] == [
        ("delivered", 200)] * 3
    assert [(d["state"], d["attempts"], d["last_status"])
            for d in ops.deliveries("--webhook", bad)] == [("failed", 3, 401)] * 3
    # A SIGINT ignored by this process (a background job) is ignored by listen too.
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        assert listener.stop(signal.SIGINT) == 0, "Ctrl-C stops listen cleanly"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="listen --tls needs openssl")
def test_listen_tls_ca_file_lets_the_daemon_deliver_over_https(
        ops: Ops, listen: Callable[..., Listener]) -> None:
    """The ca_file printed by `listen --tls`, used as delivery.ca_file, makes the https delivery succeed."""
    listener = listen("--tls", "--secret", SECRET)
    banner = listener.banner
    assert banner is not None and banner["listening"] == f"https://127.0.0.1:{listener.port}"
    ca_file = Path(banner["ca_file"])
    assert ca_file.is_file() and ca_file.is_relative_to(ops.tmp)
    ops.configure(ca_file=ca_file)
    webhook_id = ops.create_webhook(f"https://127.0.0.1:{listener.port}/hook")
    emitted = ops.json("emit", "event.published", "--org", "org_1")

    result = ops("run", "--until-idle")
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr)
    [record] = listener.records()
    assert (record["signature"], record["status"]) == ("valid", 200)
    assert [e["id"] for e in record["events"]] == _event_ids(ops, emitted)
    [delivery] = ops.deliveries("--webhook", webhook_id)
    assert (delivery["state"], delivery["last_status"]) == ("delivered", 200)


@pytest.mark.parametrize(("extra", "message"), [
    (("--status", "500,abc"), "argument --status: expected codes like 500,200, got '500,abc'"),
    (("--status", "100,200"), "argument --status: codes must be 200..599, got '100,200'"),
    (("--fail-rate", "1.5"), "argument --fail-rate: must be 0..1, got '1.5'"),
    (("--port", "70000"), "argument --port: must be 0..65535, got '70000'"),
    (("--port", "http"), "argument --port: expected a number 0..65535, got 'http'"),
])
def test_listen_refuses_bad_options_as_usage_errors(ops: Ops, extra: tuple[str, ...],
                                                    message: str) -> None:
    """Bad --status, --fail-rate or --port values are a bad command line: exit 2 and
    argparse's usage, before listening."""
    result = ops("listen", *extra, timeout=30)
    assert usage_error(result) == message
    assert result.stdout == ""


def test_listen_status_plan_fails_first_then_the_retry_succeeds(
        ops: Ops, listen: Callable[..., Listener]) -> None:
    """`listen --status 500,200` answers 500 then 200: the daemon's retry, same delivery id, succeeds."""
    ops.configure(ca_file=None, allow_http=True)
    listener = listen("--secret", SECRET, "--status", "500,200")
    webhook_id = ops.create_webhook(f"http://127.0.0.1:{listener.port}/hook")
    ops.ok("emit", "sms.sent", "--org", "org_1")

    result = ops("run", "--until-idle")
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr)
    first, second = listener.records()
    assert (first["status"], second["status"]) == (500, 200)
    assert first["signature"] == second["signature"] == "valid"
    assert first["delivery_id"] == second["delivery_id"]
    uuid.UUID(first["delivery_id"])
    [delivery] = ops.deliveries("--webhook", webhook_id)
    assert (delivery["state"], delivery["attempts"], delivery["delivery_id"]) == (
        "delivered", 2, first["delivery_id"])
    shown = ops.json("deliveries", "show", str(delivery["id"]))
    assert [a["status"] for a in shown["attempt_log"]] == [500, 200]


# -- demo ------------------------------------------------------------------------------------


def test_demo_in_an_empty_directory_delivers_all_17_types_under_var(tmp_path: Path) -> None:
    """With no config, `demo` works on ./var and shows every event type delivered."""
    workdir = tmp_path / "empty"
    workdir.mkdir()
    result = subprocess.run([sys.executable, "-m", "nevent_dispatch", "demo"], cwd=workdir,
                            env=_env(), capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert len(EVENT_TYPES) == 17
    for event_type in EVENT_TYPES:
        assert f" {event_type} " in result.stdout, event_type
    assert "delivered 17 of 17; see them with: " in result.stdout
    assert result.stdout.count("signature valid") == 17
    assert (workdir / "var").is_dir()
    assert (workdir / "var" / "dispatch.db").is_file() and (workdir / "var" / "nevent.db").is_file()


# -- verify ----------------------------------------------------------------------------------


async def test_verify_accepts_a_real_delivery_and_refuses_tampering_wrong_secret_and_staleness(
        store: Any, make_receiver: Callable[..., Any], make_webhook: Callable[..., Any]) -> None:
    """nevent_dispatch.verify returns the envelope of a real request; any alteration raises."""
    receiver = await make_receiver()
    _, secret = await make_webhook(store, receiver.url, secret=SECRET)
    emit(store.config, [("purchase.completed", "org_a", sample_data("purchase.completed"))])
    await drain(store.config, store)
    [request] = receiver.requests
    body, header = request.body, request.headers["X-Nevent-Signature"]

    envelope = verify(body, header, secret)
    assert envelope == orjson.loads(body)
    assert envelope["type"] == "purchase.completed" and envelope["organization_id"] == "org_a"
    assert verify(body.decode(), header, secret) == envelope

    with pytest.raises(BadSignature):
        verify(body.replace(b"170.0", b"1.0"), header, secret)
    with pytest.raises(BadSignature):
        verify(body, header, WRONG_SECRET)
    t = int(header.split(",")[0].removeprefix("t="))
    with pytest.raises(StaleTimestamp):
        verify(body, header, secret, now=t + 301)
    with pytest.raises(StaleTimestamp):
        verify(body, header, secret, now=t - 301)
    assert verify(body, header, secret, now=t + 299) == envelope


# -- help ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "expected"), [
    (("deliveries", "--help"), ("list", "show", "retry")),
    (("run", "--help"), ("--until-idle", "--config")),
])
def test_help_of_run_and_deliveries_exits_0(tmp_path: Path, args: tuple[str, ...],
                                            expected: tuple[str, ...]) -> None:
    """`--help` of a command or group prints its usage and options and exits 0."""
    result = subprocess.run([sys.executable, "-m", "nevent_dispatch", *args], cwd=tmp_path,
                            env=_env(), capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: nevent-dispatch {args[0]}")
    for word in expected:
        assert word in result.stdout
