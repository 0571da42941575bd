"""Isolation and secrets: organizations never see each other's events; secrets never leak.

The matcher is property-tested against a reference written from the product
brief; one end-to-end run checks several organizations at once. Secrets are
looked for, as plain strings, in the daemon's log, every CLI output, every
error and a dump of both databases; signatures are compared in constant
time; the database files the daemon creates are readable by their owner only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import random
import re
import secrets
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nevent_dispatch.catalog import EVENT_TYPES
from nevent_dispatch.errors import BadSignature
from nevent_dispatch.models import Webhook
from nevent_dispatch.pipeline.filters import compile_filter
from nevent_dispatch.pipeline.matcher import Matcher
from nevent_dispatch.wire import signing

from ..conftest import drain, emit, insert_raw
from .conftest import run_cli, toml_config, wait_until

# -- the matcher, property-tested -----------------------------------------------------------

#: Organization ids chosen to collide if anything compared them loosely.
ORG_IDS = ["org_a", "org_b", "ORG_A", "org_a ", "org_a\u00a0", "org_á", "org_a.b", "org", "1", ""]
TYPES = [*EVENT_TYPES, "fan", "fanatic.created", "purchase.completed.v2", "custom.thing"]
PATTERNS = ["*", "fan.*", "purchase.*", "email.*", "fanatic.*", *list(EVENT_TYPES)[:6],
            "custom.thing"]

#: Filters with a reference meaning: (document, predicate over the event's org and data).
FILTERS: list[tuple[Any, Any]] = [
    (None, lambda org, data: True),
    ({"data.vip": True}, lambda org, data: data.get("vip") is True),
    ({"data.vip": {"$ne": True}}, lambda org, data: data.get("vip") is not True),
    ({"organization_id": "org_b"}, lambda org, data: org == "org_b"),
    ({"$or": [{"organization_id": "org_a"}, {"data.vip": True}]},
     lambda org, data: org == "org_a" or data.get("vip") is True),
]


def reference_accepts(patterns: tuple[str, ...], type_: str) -> bool:
    for pattern in patterns:
        if pattern == "*" or pattern == type_:
            return True
        if pattern.endswith(".*") and type_.startswith(pattern[:-1]):
            return True
    return False


@st.composite
def webhooks(draw: Any) -> list[tuple[Webhook, Any]]:
    out = []
    for n in range(draw(st.integers(0, 12))):
        document, meaning = draw(st.sampled_from(FILTERS))
        webhook = Webhook(
            id=f"wh_{n:016x}", organization_id=draw(st.sampled_from(ORG_IDS)), name=f"hook {n}",
            url="https://hooks.example.com/x", secret="whsec_" + "x" * 20,
            events=tuple(draw(st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=3,
                                       unique=True))),
            filter=document, batch=draw(st.booleans()), retries=True, rate_limit=None,
            active=draw(st.booleans()), created_at=0.0, updated_at=0.0)
        out.append((webhook, meaning))
    return out


EVENTS = st.lists(st.tuples(st.sampled_from(ORG_IDS), st.sampled_from(TYPES),
                            st.fixed_dictionaries({"vip": st.booleans() | st.none()})),
                  min_size=1, max_size=20)


@settings(max_examples=400, deadline=None)
@given(hooks=webhooks(), events=EVENTS)
def test_an_event_reaches_exactly_the_active_subscribed_webhooks_of_its_own_organization(
        hooks, events, figures):
    """Matcher.match agrees with the reference: same organization (exactly), active, type, filter."""
    figures.add("fuzz_examples.matcher.match")
    matcher = Matcher([w for w, _ in hooks], compile_filter)
    for org, type_, data in events:
        envelope = {"id": "evt_1", "type": type_, "created": 0, "data": data,
                    "organization_id": org}
        got = matcher.match(org, type_, envelope)
        assert all(w.organization_id == org for w in got), "another organization's webhook"
        expected = [w.id for w, meaning in hooks if w.active and w.organization_id == org
                    and reference_accepts(w.events, type_) and meaning(org, data)]
        assert sorted(w.id for w in got) == sorted(expected)


async def test_several_organizations_in_one_run_each_receive_only_their_own_events(
        store, make_receiver, make_webhook, figures):
    """Three organizations, six webhooks, 300 events: no event crosses an organization."""
    rng = random.Random(7)
    orgs = ["org_a", "org_b", "org_c"]
    receivers = {}
    for org in orgs:
        for batch in (False, True):
            receiver = receivers[(org, batch)] = await make_receiver()
            await make_webhook(store, receiver.url, org=org, batch=batch, rate_limit=1_000_000,
                               name=f"{org} {'batch' if batch else 'single'}")
    events = [(rng.choice(["fan.created", "purchase.completed"]), rng.choice(orgs + ["org_x"]),
               {"n": n}) for n in range(300)]
    emit(store.config, events)
    await drain(store.config, store)
    for (org, _batch), receiver in receivers.items():
        got = receiver.events()
        assert {e["organization_id"] for e in got} <= {org}
        assert sorted(e["data"]["n"] for e in got) == [
            n for n, (_, o, _) in enumerate(events) if o == org]


# -- secrets ---------------------------------------------------------------------------------

SECRET_RE = re.compile(r"secret: (whsec_[A-Za-z0-9_\-]+) \(shown once")


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.slow
async def test_no_secret_appears_in_logs_outputs_errors_or_history(
        make_config, make_receiver, raw_server, tls, daemon, tmp_path, figures):
    """Generated, given and rotated secrets: only the creation output shows one, once."""
    config = make_config(delivery={"retry_schedule": (0.05,), "timeout": 1.0})
    path = toml_config(tmp_path / "secrets.toml", config, log={"level": "debug"})
    initialised = run_cli("init", config_path=path, cwd=tmp_path)
    assert initialised.returncode == 0, initialised.stderr
    outputs: list[str] = []

    async def cli(*args: str, stdin: str | None = None, ok: bool = True) -> str:
        result = await asyncio.to_thread(run_cli, *args, config_path=path, cwd=tmp_path,
                                         stdin=stdin)
        outputs.append(result.stdout + result.stderr)
        if ok:
            assert result.returncode == 0, result.stderr
        return result.stdout

    healthy = await make_receiver()
    failing = await make_receiver(statuses=[500] * 10)
    wrong_host = await raw_server(lambda r, w, s: asyncio.sleep(0),
                                  cert=tls["ca"].issue_cert("example.org"))
    given_secret = "whsec_given_" + secrets.token_hex(16)
    rotated = "whsec_rotated_" + secrets.token_hex(16)
    too_long = "whsec_long_" + secrets.token_hex(200)

    created = await cli("webhooks", "create", "--org", "org_a", "--url", healthy.url,
                        "--name", "generated")
    [generated] = SECRET_RE.findall(created)
    hook_ids = [re.search(r"created webhook (wh_\w+)", created).group(1)]  # type: ignore[union-attr]
    for url, name in ((failing.url, "failing"), (wrong_host.url, "wrong host")):
        out = await cli("webhooks", "create", "--org", "org_a", "--url", url, "--name", name,
                        "--secret", "-", "--json", stdin=given_secret + "\n")
        hook_ids.append(orjson.loads(out)["id"])
    for hook in hook_ids:
        await cli("webhooks", "enable", hook)
    await cli("webhooks", "show", hook_ids[0])
    await cli("webhooks", "show", hook_ids[1], "--json")
    await cli("webhooks", "list")
    await cli("webhooks", "list", "--json")
    await cli("webhooks", "update", hook_ids[1], "--secret", "-", stdin=rotated + "\n")
    await cli("webhooks", "update", hook_ids[1], "--secret", too_long, ok=False)
    await cli("webhooks", "update", hook_ids[2], "--secret", given_secret + " x", ok=False)
    await cli("webhooks", "test", hook_ids[0])
    await cli("webhooks", "test", hook_ids[1], ok=False)

    emit(config, [("fan.created", "org_a", {"n": n}) for n in range(5)])
    insert_raw(config, [("fan.created", "org_a", "{broken"), ("", "org_a", "{}")])
    process = daemon(config, "[log]\nlevel = \"debug\"\n", "--until-idle")
    assert await asyncio.to_thread(process.wait, 60) == 0
    for hook in hook_ids:
        await cli("deliveries", "list", "--webhook", hook)
        listed = orjson.loads(await cli("deliveries", "list", "--webhook", hook, "--json"))
        for delivery in listed[:1]:
            await cli("deliveries", "show", str(delivery["id"]))
            await cli("deliveries", "show", delivery["delivery_id"], "--json")
    await cli("deliveries", "list", "--status", "failed")
    await cli("deliveries", "list", "--status", "rejected", "--json")

    log = (tmp_path / "daemon.log").read_text(encoding="utf-8", errors="replace")
    assert log.count('"event":"attempt"') >= 10, "the daemon did deliver (and log) attempts"
    conn = sqlite3.connect(config.database.state)
    try:
        state_dump = [line for line in conn.iterdump() if not line.startswith('INSERT INTO "webhooks"')]
        stored = {row[0] for row in conn.execute("SELECT secret FROM webhooks")}
    finally:
        conn.close()
    conn = sqlite3.connect(config.database.outbox)
    try:
        outbox_dump = list(conn.iterdump())
    finally:
        conn.close()
    assert stored == {generated, rotated, given_secret}, "the secrets are where signing needs them"

    everything = {"daemon log": log, "state dump (webhooks table excluded)": "\n".join(state_dump),
                  "outbox dump": "\n".join(outbox_dump)}
    for n, text in enumerate(outputs):
        everything[f"CLI output {n}"] = text
    for secret in (generated, given_secret, rotated, too_long):
        for where, text in everything.items():
            count = text.count(secret)
            if secret == generated and where == "CLI output 0":
                assert count == 1, "the generated secret is shown once, at creation"
            else:
                assert count == 0, f"secret found in {where}"
    assert len(healthy.requests) >= 6 and len(failing.requests) >= 5
    figures.add("secret_places_checked", len(everything))


def test_signatures_are_compared_in_constant_time_with_no_early_exit(monkeypatch):
    """verify() compares every v1 entry with hmac.compare_digest, even after a match."""
    calls: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(signing.hmac, "compare_digest", spy)
    body, secret, t = b'{"id":"evt_1"}', "whsec_" + "k" * 24, 1_700_000_000
    good = signing.signature(secret, t, body)
    header = f"t={t},v1={good},v1={'0' * 64},v1=abc"
    assert signing.verify(body, header, secret, now=t) == {"id": "evt_1"}
    assert len(calls) == 3, "one constant-time comparison per v1 entry"
    calls.clear()
    with pytest.raises(BadSignature):
        signing.verify(body, f"t={t},v1={'f' * 64}", secret, now=t)
    assert len(calls) == 1


def _db_files(*paths: Path) -> list[Path]:
    return [Path(f"{p}{suffix}") for p in paths for suffix in ("", "-wal", "-shm")]


def test_databases_created_by_init_are_private(tmp_path, make_config):
    """`init` on fresh paths creates both databases with no group or other permission."""
    config = make_config(database={"outbox": tmp_path / "var" / "app.db",
                                   "state": tmp_path / "var" / "state.db"})
    path = toml_config(tmp_path / "init.toml", config)
    with umask(0o022):
        result = run_cli("init", config_path=path, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for file in _db_files(config.database.outbox, config.database.state):
        if file.exists():
            assert stat.S_IMODE(file.stat().st_mode) & 0o077 == 0, oct(file.stat().st_mode)


@pytest.mark.slow
async def test_database_files_of_a_running_daemon_are_private(make_config, daemon, tmp_path):
    """The daemon's state and outbox databases and their -wal/-shm are owner-only."""
    config = make_config(database={"outbox": tmp_path / "fresh" / "app.db",
                                   "state": tmp_path / "fresh" / "state.db"})
    with umask(0o022):
        process = daemon(config)
    try:
        files = _db_files(config.database.outbox, config.database.state)
        await wait_until(lambda: all(f.exists() for f in files), 15,
                         what="the databases and their -wal/-shm files")
        emit(config, [("fan.created", "org_a", {})])  # the application writes too
        await asyncio.sleep(0.3)
        modes = {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in files}
        assert all(stat.S_IMODE(f.stat().st_mode) & 0o077 == 0 for f in files), modes
    finally:
        process.stop()
