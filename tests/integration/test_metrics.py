"""Metrics of a real daemon: GET /metrics parsed with Prometheus's own parser, held to the
history; the figures' queries on their indexes; ``status`` with and without a daemon; the
shipped alert rules and dashboard (checked with promtool when it is installed).

Daemons are real ``nevent-dispatch run`` subprocesses, receivers real HTTPS servers on
127.0.0.1; every one is stopped by its fixture even when the test fails.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from nevent_dispatch import __version__, registry
from nevent_dispatch.config import Config, api_token_file
from nevent_dispatch.models import Kind, State
from nevent_dispatch.ops.metrics import Figures, Metrics
from nevent_dispatch.pipeline.attempts import new_delivery_row
from nevent_dispatch.pipeline.progress import Tally
from nevent_dispatch.store.sqlite import Store
from nevent_dispatch.store.sqlite.sql import QUERIES

from ..conftest import Daemon, emit, free_port, insert_raw, write_config
from .api_support import CLI_TIMEOUT_S, cli_env, wait_until

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "docs" / "alerts.yml"
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
#: The only label names the daemon's own metrics may carry: none names a tenant.
ALLOWED_LABELS = {"outcome", "state", "status", "version", "le"}
OPEN = ("pending", "queued", "in_flight")


def cli(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nevent_dispatch", "--config", str(config_path),
                           *args], env=cli_env(), capture_output=True, text=True,
                          timeout=CLI_TIMEOUT_S, check=False)


def query(config: Config, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(config.database.state, timeout=30)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


async def api_daemon(daemon: Callable[..., Daemon], config: Config, api: str = "",
                     listen: str = "127.0.0.1:0") -> tuple[Daemon, str]:
    """``init``, then a daemon serving the API; its process and URL."""
    tables = f'[api]\nlisten = "{listen}"\n{api}\n'
    path = write_config(config.database.state.with_name(f"init-{time.time_ns()}.toml"), config,
                        tables)
    result = cli(path, "init")
    assert result.returncode == 0, result.stderr
    log = config.database.state.parent / "daemon.log"  # shared by the daemons of a test
    before = len(log.read_bytes().splitlines()) if log.exists() else 0
    process = daemon(config, tables)

    def listening() -> str | None:
        assert process.proc is not None and process.proc.poll() is None, process.log_path.read_text()
        return next((line["url"] for line in process.log_lines()[before:]
                     if line.get("event") == "api_listening"), None)
    url: str = await wait_until(listening, 30, "api_listening")

    async def ready() -> bool:
        return (await get(f"{url}/readyz"))[0] == 200
    await wait_until(ready, 30, "/readyz 200")
    return process, url


async def get(url: str, token: str | None = None) -> tuple[int, str, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.text()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition by (name, sorted labels), read by Prometheus's parser."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


async def scrape(url: str, token: str | None = None) -> dict[Any, float]:
    status, content_type, text = await get(f"{url}/metrics", token)
    assert status == 200, text
    assert content_type.startswith("text/plain; version=0.0.4"), content_type
    return samples(text)


async def test_metrics_after_a_mixed_run_match_the_history(
        make_config: Callable[..., Config], store: Store, make_receiver: Callable[..., Any],
        make_webhook: Callable[..., Any], daemon: Callable[..., Daemon]) -> None:
    """Successes, 500s until failed, timeouts, a batch webhook and a rejected event: every
    counter equals what the state database recorded, no label names a tenant."""
    config = make_config(delivery={"timeout": 0.5, "retry_schedule": (0.05, 0.05)})
    ok, failing, slow, batch = (await make_receiver(), await make_receiver(statuses=[500] * 50),
                                await make_receiver(delay=2.0), await make_receiver())
    for receiver, options in ((ok, {}), (failing, {}), (slow, {"retries": False}),
                              (batch, {"batch": True})):
        await make_webhook(store, receiver.url, **options)
    await make_webhook(store, ok.url, active=False)  # inactive: never enabled
    disabled, _ = await make_webhook(store, ok.url)
    await registry.set_active(store, disabled.id, False, time.time() + 1)
    emit(config, [("purchase.completed", "org_a", {"n": n}) for n in range(5)])
    insert_raw(config, [("fan.created", "org_a", "not json")])
    process, url = await api_daemon(daemon, config)

    def settled() -> bool:
        left = query(config, f"SELECT count(*) FROM deliveries WHERE state IN {OPEN}")[0][0]
        waiting = query(config, "SELECT count(*) FROM batch_waiting")[0][0]
        return left == 0 and waiting == 0 and len(batch.events()) == 5
    await wait_until(settled, 60, "every delivery final")
    found = await scrape(url)

    for outcome, count in query(config, "SELECT outcome, count(*) FROM attempts GROUP BY 1"):
        assert value(found, "nevent_dispatch_attempts_total", outcome=outcome) == count, outcome
    outcomes = {o for (name, labels), v in found.items()
                if name == "nevent_dispatch_attempts_total" and v for _, o in labels}
    assert outcomes == {"success", "http_error", "timeout"}
    by_state = dict(query(config, "SELECT state, count(*) FROM deliveries GROUP BY 1"))
    assert by_state["rejected"] == 4 and by_state["failed"] == 10  # 500s and timeouts
    for state in ("delivered", "failed", "rejected"):
        assert value(found, "nevent_dispatch_deliveries_total", state=state) == by_state[state]
    (attempts, latency_ms), = query(config, "SELECT count(*), sum(latency_ms) FROM attempts")
    assert value(found, "nevent_dispatch_attempt_duration_seconds_count") == attempts
    assert math.isclose(value(found, "nevent_dispatch_attempt_duration_seconds_sum"),
                        latency_ms / 1000, abs_tol=0.01)
    assert value(found, "nevent_dispatch_attempt_duration_seconds_bucket", le="+Inf") == attempts
    first_attempts = query(config, "SELECT count(*) FROM deliveries WHERE attempts > 0")[0][0]
    assert value(found, "nevent_dispatch_delivery_lag_seconds_count") == first_attempts
    (batches, batch_events), = query(config, "SELECT count(*), sum(event_count) FROM deliveries "
                                             "WHERE kind = 'batch'")
    assert batches >= 1
    assert value(found, "nevent_dispatch_batches_total") == batches
    assert value(found, "nevent_dispatch_batch_events_count") == batches
    assert value(found, "nevent_dispatch_batch_events_sum") == batch_events == 5
    assert {s: value(found, "nevent_dispatch_webhooks", status=s)
            for s in ("active", "inactive", "disabled")} == {"active": 4, "inactive": 1,
                                                              "disabled": 1}
    for gauge in ("outbox_backlog_events", "retries_scheduled", "in_flight", "failing_webhooks",
                  "oldest_pending_seconds"):
        assert value(found, f"nevent_dispatch_{gauge}") == 0, gauge
    assert value(found, "nevent_dispatch_build_info", version=__version__) == 1
    assert value(found, "nevent_dispatch_ready") == 1, await get(f"{url}/readyz")
    for (name, labels), _ in found.items():
        if name.startswith("nevent_dispatch_"):
            assert {k for k, _ in labels} <= ALLOWED_LABELS, (name, labels)
            assert not any(re.search(r"wh_|org_|evt_", v) for _, v in labels), (name, labels)
    process.signal(15)
    assert process.wait() == 0


async def test_retries_waiting_show_in_metrics_and_status_with_and_without_a_daemon(
        make_config: Callable[..., Config], store: Store, make_receiver: Callable[..., Any],
        make_webhook: Callable[..., Any], daemon: Callable[..., Daemon]) -> None:
    """Three events answered 500 wait a minute for their retry: the gauges count them and the
    webhook; ``status`` (text and --json) says the daemon runs, is ready, and names the next
    retry in ISO 8601 and relative time; stopped, it says so from the databases."""
    config = make_config(delivery={"retry_schedule": (60.0,)})
    receiver = await make_receiver(statuses=[500] * 10)
    webhook, _ = await make_webhook(store, receiver.url)
    emit(config, [("fan.created", "org_a", {"n": n}) for n in range(3)])
    process, url = await api_daemon(daemon, config, listen=f"127.0.0.1:{free_port()}")
    await wait_until(lambda: len(receiver.requests) == 3, 30, "three attempts")
    found = await wait_until(lambda: _with_retries(url), 30,
                             "three retries scheduled")
    assert value(found, "nevent_dispatch_attempts_total", outcome="http_error") == 3
    assert value(found, "nevent_dispatch_failing_webhooks") == 1
    assert value(found, "nevent_dispatch_deliveries_total", state="failed") == 0

    result = await asyncio.to_thread(cli, process.config_path, "status", "--json")
    assert result.returncode == 0, result.stderr
    running = orjson.loads(result.stdout)
    assert running["daemon"] == {"running": True, "pid": process.proc.pid}  # type: ignore[union-attr]
    assert running["readiness"] == {"status": "ok", "reasons": []}
    assert running["retries"]["scheduled"] == 3
    assert running["retries"]["next_at"].endswith("Z") and 0 < running["retries"]["next_in_s"] <= 60
    assert running["failing_webhooks"] == [{"id": webhook.id, "retries_scheduled": 3,
                                            "next_at": running["retries"]["next_at"]}]
    for key in ("outbox_cursor", "outbox_backlog", "outbox_needed_from", "deliveries"):
        assert key in running
    assert running["deliveries"] == {"pending": 3}
    text = (await asyncio.to_thread(cli, process.config_path, "status")).stdout
    assert f"running (pid {process.proc.pid}), ready" in text  # type: ignore[union-attr]
    assert re.search(r"retries: +3 scheduled, next \S+Z \(in \d+s\)", text), text
    assert f"failing webhooks:    1: {webhook.id} (3 waiting)" in text

    process.signal(15)
    assert process.wait() == 0
    stopped = orjson.loads((await asyncio.to_thread(cli, process.config_path, "status",
                                                    "--json")).stdout)
    assert stopped["daemon"] == {"running": False, "pid": None}
    assert stopped["readiness"]["status"] == "not_running"
    assert stopped["retries"]["scheduled"] == 3 and stopped["outbox_backlog"] == 0
    text = (await asyncio.to_thread(cli, process.config_path, "status")).stdout
    assert text.startswith("daemon:              not running\n"), text


async def _with_retries(url: str) -> dict[Any, float] | None:
    found = await scrape(url)
    return found if value(found, "nevent_dispatch_retries_scheduled") == 3 else None


async def test_metrics_need_the_token_only_when_configured_and_can_be_turned_off(
        make_config: Callable[..., Config], daemon: Callable[..., Daemon]) -> None:
    """api.metrics_token = true: 401 without the bearer token, 200 with it; /readyz stays
    open. metrics.enabled = false: /metrics answers 404 naming the key."""
    config = make_config()
    process, url = await api_daemon(daemon, config, "metrics_token = true")
    token = next(line for line in api_token_file(config).read_text().splitlines()
                 if line.strip() and not line.startswith("#"))
    status, content_type, body = await get(f"{url}/metrics")
    assert status == 401 and content_type.startswith("application/json")
    assert orjson.loads(body)["error"]["code"] == "unauthorized"
    assert (await scrape(url, token))[("nevent_dispatch_ready", ())] == 1
    assert (await get(f"{url}/readyz"))[0] == 200
    process.signal(15)
    assert process.wait() == 0

    process, url = await api_daemon(daemon, config, "\n[metrics]\nenabled = false")
    status, _, body = await get(f"{url}/metrics")
    assert status == 404 and "metrics.enabled = false" in orjson.loads(body)["error"]["message"]
    assert (await get(f"{url}/readyz"))[0] == 200
    process.signal(15)
    assert process.wait() == 0


async def test_the_figures_queries_answer_from_their_indexes(store: Store) -> None:
    """Retries, failing webhooks and the oldest due work: right on a small history, and each
    a SEARCH of deliveries_pending or deliveries_state (no scan of the history)."""
    now = time.time()
    for n, active in ((1, True), (2, True), (3, False)):
        await store.insert_webhook(_webhook(f"wh_{n:016x}", active, now))
    rows = []
    for n in range(1, 301):
        webhook = f"wh_{n % 3 + 1:016x}"
        state = State.PENDING if n % 2 else State.REJECTED
        rows.append(new_delivery_row(webhook_id=webhook, kind=Kind.EVENT, event_type="fan.created",
                                     event_id=f"evt_{n:024x}", outbox_id=n, event_count=1,
                                     state=state, now=now - 100 + n / 10))
    await store.record_intake(rows, [], 300)
    conn = sqlite3.connect(store.config.database.state)
    try:
        with conn:  # some pending ones wait for a retry an hour from now
            conn.execute("UPDATE deliveries SET next_at = ?, attempts = 1 WHERE state = 'pending' "
                         "AND id % 5 = 0", (now + 3600,))
        retries = dict(conn.execute("SELECT webhook_id, count(*) FROM deliveries WHERE "
                                    "state = 'pending' AND next_at > ? GROUP BY 1", (now,)))
        first_due = conn.execute(
            "SELECT min(next_at) FROM deliveries d JOIN webhooks w ON w.id = d.webhook_id "
            "WHERE w.active = 1 AND state = 'pending' AND next_at <= ?", (now,)).fetchone()[0]
        plans = {name: [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + QUERIES[name], (now,))]
                 for name in ("retries_by_webhook", "failing_webhooks", "oldest_due")}
    finally:
        conn.close()
    assert {w: n for w, n, _ in await store.retries_by_webhook(now)} == retries
    assert sorted(await store.failing_webhooks(now)) == sorted(retries)
    assert await store.oldest_due(now) == pytest.approx(first_due)
    assert await store.webhook_counts() == {"active": 2, "inactive": 1, "disabled": 0}
    for name, plan in plans.items():
        assert any("USING INDEX deliveries_pending" in step or "USING COVERING INDEX "
                   "deliveries_pending" in step for step in plan), (name, plan)
        assert not any(re.match(r"SCAN (d|deliveries)\b", step) for step in plan), (name, plan)
    assert any("deliveries_state (state=?)" in step for step in plans["oldest_due"])


def _webhook(webhook_id: str, active: bool, now: float) -> Any:
    from nevent_dispatch.models import Webhook
    return Webhook(id=webhook_id, organization_id="org_a", name="w", url="https://example.test/",
                   secret="whsec_0123456789abcdef", events=("*",), filter=None, batch=False,
                   retries=True, rate_limit=None, active=active, created_at=now, updated_at=now)


# -- the shipped alert rules and dashboard ------------------------------------------------------

def exposed_names() -> set[str]:
    """Every series name the daemon's registry exposes (all families are always present)."""
    dispatcher = SimpleNamespace(host=SimpleNamespace(inflight=set()))
    metrics = Metrics(Tally(), dispatcher, None)
    metrics.collector.figures = Figures(0, 0.0, 0, 0, {"active": 0, "inactive": 0, "disabled": 0})
    from prometheus_client import generate_latest
    return {name for name, _ in samples(generate_latest(metrics.registry).decode())}


def used_names(text: str) -> set[str]:
    return set(re.findall(r"\b((?:nevent_dispatch|process)_[a-z_]+)\b", text))


def test_every_metric_in_the_alert_rules_and_dashboard_is_one_the_daemon_exposes() -> None:
    names = exposed_names()
    dashboard = orjson.loads(DASHBOARD.read_bytes())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert exprs, "the dashboard has queries"
    for where, text in (("alerts", ALERTS.read_text()), ("dashboard", "\n".join(exprs))):
        used = used_names(text)
        assert used, where
        assert used <= names, (where, used - names)
    rules = ALERTS.read_text()
    for alert in ("NeventDispatchDown", "NeventDispatchBacklogGrowing",
                  "NeventDispatchOldestPending", "NeventDispatchFailureRatio"):
        assert f"alert: {alert}" in rules


def test_promtool_accepts_the_alert_rules(tmp_path: Path) -> None:
    """``promtool check rules`` (the Debian package prometheus; CI installs it)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        assert not os.environ.get("CI"), "promtool is missing in CI (.ci/run installs prometheus)"
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    result = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_command_line_does_not_import_prometheus() -> None:
    """``status --help`` (and every command's start) runs without prometheus_client: only the
    daemon's API imports it, when it serves /metrics."""
    probe = ("import contextlib, sys\nfrom nevent_dispatch.cli import main\n"
             "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(None):\n"
             "    main(['status', '--help'])\n"
             "print('prometheus_client' in sys.modules, 'aiohttp.web' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=60, check=True, env=cli_env()).stdout
    assert out.split() == ["False", "False"]
