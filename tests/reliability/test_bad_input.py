"""Bad input: hostile outbox rows, refused webhook settings, and fuzzed parsers.

Every bad outbox row becomes a ``rejected`` record with a reason and never
stops the rows behind it; every refused CLI input is one clear line and exit
1; the config loader, ``verify()`` and the filter compiler only ever raise
their own error type on arbitrary input.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nevent_dispatch import config as config_module
from nevent_dispatch.errors import ConfigError, FilterError, SignatureError
from nevent_dispatch.pipeline.filters import compile_filter, parse_filter
from nevent_dispatch.wire.signing import sign, verify

from ..conftest import drain
from .conftest import one_line_error, run_cli, toml_config

LIMIT = 1_048_576
FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _oversized_data(limit: int) -> str:
    """A data object whose envelope is exactly ``limit + 1`` bytes when published now."""
    probe = {"id": "evt_" + "0" * 24, "type": "fan.created", "created": int(time.time()),
             "data": {"pad": ""}, "organization_id": "org_a"}
    return orjson.dumps({"pad": "x" * (limit + 1 - len(orjson.dumps(probe)))}).decode()


def _nested(depth: int) -> str:
    return '{"a":' + "[" * depth + "]" * depth + "}"


# name: (type SQL, organization SQL, data SQL, params, created SQL or None, reason pattern)
# The SQL expressions let a row carry what publish() never would (TEXT that is not UTF-8).
CORPUS: dict[str, tuple[str, str, str, tuple[Any, ...], str | None, str]] = {
    "invalid JSON": ("?", "?", "?", ("fan.created", "org_a", "{not json"), None,
                     r"data is not valid JSON"),
    "JSON array": ("?", "?", "?", ("fan.created", "org_a", "[1, 2]"), None,
                   r"must be a JSON object, got a JSON array"),
    "JSON string": ("?", "?", "?", ("fan.created", "org_a", '"text"'), None,
                    r"must be a JSON object, got a JSON string"),
    "JSON null": ("?", "?", "?", ("fan.created", "org_a", "null"), None,
                  r"must be a JSON object, got a JSON null"),
    "JSON number": ("?", "?", "?", ("fan.created", "org_a", "42"), None,
                    r"must be a JSON object, got a JSON number"),
    "empty data": ("?", "?", "?", ("fan.created", "org_a", ""), None, r"data is not valid JSON"),
    "empty type": ("?", "?", "?", ("", "org_a", "{}"), None, r"type is empty"),
    "blank type": ("?", "?", "?", ("   ", "org_a", "{}"), None, r"type is empty"),
    "NUL byte in type": ("?", "?", "?", ("fan.created\x00evil", "org_a", "{}"), None,
                         r"type contains a NUL byte"),
    "NUL byte in data": ("?", "?", "?", ("fan.created", "org_a", '{"a": "\x00"}'), None,
                         r"data is not valid JSON"),
    "NUL byte in organization": ("?", "?", "?", ("fan.created", "org_a\x00evil", "{}"), None,
                                 r"organization_id contains a NUL byte"),
    "invalid UTF-8 data (text)": ("?", "?", "CAST(? AS TEXT)",
                                  ("fan.created", "org_a", b'{"a": "\xff\xfe"}'), None,
                                  r"data is not valid JSON: .*UTF-8"),
    "invalid UTF-8 data (blob)": ("?", "?", "?", ("fan.created", "org_a", b"\xff\xfe{}"), None,
                                  r"data is not valid JSON: .*UTF-8"),
    "invalid UTF-8 type": ("CAST(? AS TEXT)", "?", "?", (b"fan.\xffcreated", "org_a", "{}"),
                           None, r"type is not valid UTF-8"),
    "invalid UTF-8 organization": ("?", "CAST(? AS TEXT)", "?", ("fan.created", b"org_\xff", "{}"),
                                   None, r"organization_id is not valid UTF-8"),
    "envelope of 1 MB + 1 byte": ("?", "?", "?", ("fan.created", "org_a", _oversized_data(LIMIT)),
                                  None, rf"payload is {LIMIT + 1} bytes, over the {LIMIT}-byte limit"),
    "JSON nested 100k levels": ("?", "?", "?", ("fan.created", "org_a", _nested(100_000)), None,
                                r"data is nested too deeply"),
    "JSON nested 1100 levels": ("?", "?", "?", ("fan.created", "org_a", _nested(1100)), None,
                               r"(?i)nest|deep|depth|recursion"),
    "empty organization": ("?", "?", "?", ("fan.created", "", "{}"), None,
                           r"organization_id is empty"),
    "blank organization": ("?", "?", "?", ("fan.created", "   ", "{}"), None,
                           r"organization_id is empty"),
    "created not a number": ("?", "?", "?", ("fan.created", "org_a", "{}"), "'yesterday'",
                             r"created is not an integer"),
}


def insert_bad(path: Path, name: str, marker: int) -> None:
    """Insert the corpus row ``name`` then a good event carrying ``marker``, in one transaction."""
    type_sql, org_sql, data_sql, params, created, _ = CORPUS[name]
    conn = sqlite3.connect(path)
    try:
        with conn:
            if created is None:
                conn.execute(f"INSERT INTO outbox (type, organization_id, data) "
                             f"VALUES ({type_sql}, {org_sql}, {data_sql})", params)
            else:
                conn.execute(f"INSERT INTO outbox (type, organization_id, data, created) "
                             f"VALUES ({type_sql}, {org_sql}, {data_sql}, {created})", params)
            conn.execute("INSERT INTO outbox (type, organization_id, data) VALUES (?, ?, ?)",
                         ("fan.created", "org_a", orjson.dumps({"after": marker}).decode()))
    finally:
        conn.close()


@pytest.mark.parametrize("name", list(CORPUS))
async def test_a_bad_outbox_row_is_rejected_with_its_reason_and_the_next_row_delivered(
        name, store, make_receiver, make_webhook, figures):
    """The bad row is a rejected record saying why; the good row behind it is delivered."""
    figures.note("bad_inputs", f"outbox: {name}")
    receiver = await make_receiver()
    await make_webhook(store, receiver.url, rate_limit=100_000)
    insert_bad(store.config.database.outbox, name, 1)
    dispatcher = await drain(store.config, store)

    assert [e["data"] for e in receiver.events()] == [{"after": 1}]
    rejected = await store.list_deliveries(state="rejected")
    assert len(rejected) == 1, rejected
    reason = rejected[0].last_error or ""
    assert re.search(CORPUS[name][-1], reason), reason
    assert "\n" not in reason and len(reason) < 400
    assert dispatcher.stats["rejected"] == 1
    assert await store.counts_by_state() == {"rejected": 1, "delivered": 1}


@pytest.mark.slow
async def test_the_daemon_survives_the_whole_corpus_and_delivers_every_good_event(
        store, make_receiver, make_webhook, daemon):
    """A real daemon fed every bad row between good ones exits 0 having delivered the good ones."""
    receiver = await make_receiver()
    await make_webhook(store, receiver.url, rate_limit=100_000)
    for n, name in enumerate(CORPUS):
        insert_bad(store.config.database.outbox, name, n)
    d = daemon(store.config, "", "--until-idle")
    code = await asyncio.to_thread(d.wait, 60)
    lines = d.log_lines()
    failures = [line for line in lines if line.get("event") in ("task_failed", "lane_failed")
                or "raw" in line]
    assert code == 0 and not failures, failures[:3]
    assert sorted(e["data"]["after"] for e in receiver.events()) == list(range(len(CORPUS)))
    rejected = await store.list_deliveries(state="rejected", limit=1000)
    assert len(rejected) == len(CORPUS)
    logged = [line for line in lines if line.get("event") == "event_rejected"]
    assert len(logged) == len(CORPUS)


# -- webhook settings refused by the CLI ----------------------------------------------------

#: Names the DNS stub of the CLI subprocesses resolves (no query leaves the machine).
HOSTS = {
    "hooks.example.com": ["93.184.216.34"],
    "loopback.example.com": ["127.0.0.1"],
    "intranet.example.com": ["10.0.0.1"],
    "metadata.example.com": ["169.254.169.254"],
    "v6loop.example.com": ["::1"],
    "mixed.example.com": ["93.184.216.34", "10.0.0.7"],
    "localhost": ["127.0.0.1", "::1"],
}

REFUSED: dict[str, tuple[tuple[str, ...], str]] = {
    "http scheme": (("--url", "http://hooks.example.com/x"), "url: must be https://"),
    "javascript scheme": (("--url", "javascript:alert(1)"), "url: "),
    "data scheme": (("--url", "data:text/html,hi"), "url: "),
    "file scheme": (("--url", "file:///etc/passwd"), "url: "),
    "userinfo": (("--url", "https://alice:pw-xyzzy@hooks.example.com/x"),
                 "url: must not contain credentials"),
    "unresolvable .invalid": (("--url", "https://hooks.example.invalid/x"), "url: cannot resolve host"),
    "name resolving to 127.0.0.1": (("--url", "https://loopback.example.com/x"), "a loopback address"),
    "name resolving to 10.0.0.1": (("--url", "https://intranet.example.com/x"), "a private address"),
    "name resolving to 169.254.169.254": (("--url", "https://metadata.example.com/x"),
                                          "a link-local address"),
    "name resolving to ::1": (("--url", "https://v6loop.example.com/x"), "a loopback address"),
    "name resolving to public and private": (("--url", "https://mixed.example.com/x"),
                                             "resolves to 10.0.0.7, a private address"),
    "localhost": (("--url", "https://localhost:8443/x"), "a loopback address"),
    "literal 127.0.0.1": (("--url", "https://127.0.0.1/x"), "a loopback address"),
    "literal 10.0.0.1": (("--url", "https://10.0.0.1/x"), "a private address"),
    "literal 169.254.169.254": (("--url", "https://169.254.169.254/latest/meta-data/"),
                                "a link-local address"),
    "literal ::1": (("--url", "https://[::1]/x"), "a loopback address"),
    "literal ::ffff:10.0.0.1": (("--url", "https://[::ffff:10.0.0.1]/x"), "a private address"),
    "rate limit 0": (("--rate-limit", "0"), "rate_limit: must be an integer from 1"),
    "negative rate limit": (("--rate-limit", "-5"), "rate_limit: must be an integer from 1"),
    "absurd rate limit": (("--rate-limit", str(10**15)), "rate_limit: must be an integer from 1"),
    "filter not JSON": (("--filter", "{data.total > 100}"), "filter: not valid JSON"),
    "filter unknown operator": (("--filter", '{"data.total": {"$gtt": 100}}'),
                                "filter: unknown operator '$gtt'"),
    "filter $where": (("--filter", '{"$where": "sleep(10)"}'), "filter: "),
    "filter bad regex": (("--filter", '{"data.name": {"$regex": "("}}'), "filter: invalid $regex"),
    "filter nested 40 levels": (("--filter", '{"$not": ' * 40 + '{"a": 1}' + "}" * 40),
                                "filter: "),
    # 60k levels: a longer single argument would exceed the kernel's per-argument limit.
    "filter nested 60k levels": (("--filter", "[" * 60_000 + "]" * 60_000), "filter: "),
    "filter not an object": (("--filter", "[1, 2]"), "filter: "),
    "unknown event type": (("--events", "purchase.compleated"), "events: unknown event type"),
    "short secret": (("--secret", "hunter2"), "secret: must be at least 16"),
    "secret with spaces": (("--secret", "correct horse battery staple"),
                           "secret: must not contain spaces"),
    "organization with spaces": (("--org", "org a"), "organization_id: "),
    "empty name": (("--name", " "), "name: must not be empty"),
}

SECRETS_IN_ARGS = ("hunter2", "correct horse battery staple", "pw-xyzzy")


@pytest.fixture
def cli_config(make_config, tmp_path) -> Path:
    """A config file on this test's initialised databases, with private networks not allowed."""
    path = toml_config(tmp_path / "cli.toml", make_config(delivery={"allow_private_networks": False}))
    initialised = run_cli("init", config_path=path, cwd=tmp_path)
    assert initialised.returncode == 0, initialised.stderr
    return path


@pytest.mark.parametrize("case", list(REFUSED))
def test_webhook_creation_refuses_bad_settings_with_one_clear_line(case, cli_config, tmp_path,
                                                                 figures):
    """Each bad URL, destination, rate limit, filter or secret: one line naming the field, exit 1."""
    figures.note("bad_inputs", f"webhook: {case}")
    extra, expected = REFUSED[case]
    options = {"--org": "org_a", "--url": "https://hooks.example.com/hook", "--name": "CRM"}
    rest: list[str] = []
    for flag, value in zip(extra[::2], extra[1::2], strict=True):
        if flag in options:
            options[flag] = value
        else:
            rest += [flag, value]
    args = ["webhooks", "create", *[x for pair in options.items() for x in pair], *rest]
    result = run_cli(*args, config_path=cli_config, hosts=HOSTS, cwd=tmp_path)
    line = one_line_error(result, 1)
    assert expected in line, line
    assert result.stdout == ""
    for secret in SECRETS_IN_ARGS:
        assert secret not in line
    state = tmp_path / "state.db"
    if state.exists():
        conn = sqlite3.connect(state)
        try:
            assert conn.execute("SELECT count(*) FROM webhooks").fetchone() == (0,)
        finally:
            conn.close()


def test_a_private_destination_is_accepted_only_when_private_networks_are_allowed(
        make_config, tmp_path):
    """The same loopback name that is refused by default is saved with the explicit setting."""
    path = toml_config(tmp_path / "dev.toml", make_config(delivery={"allow_private_networks": True}))
    assert run_cli("init", config_path=path, cwd=tmp_path).returncode == 0
    result = run_cli("webhooks", "create", "--org", "org_a", "--url",
                     "https://loopback.example.com/x", "--name", "dev", config_path=path,
                     hosts=HOSTS, cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_a_non_numeric_rate_limit_is_a_usage_error_without_traceback(cli_config, tmp_path):
    """argparse refuses --rate-limit abc with exit 2 and no traceback."""
    result = run_cli("webhooks", "create", "--org", "org_a", "--url", "https://hooks.example.com/x",
                     "--name", "CRM", "--rate-limit", "abc", config_path=cli_config, hosts=HOSTS,
                     cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--rate-limit: invalid int value: 'abc'" in result.stderr


def test_a_nul_character_in_a_database_path_is_a_one_line_config_error(tmp_path, make_config):
    """A TOML path with \\u0000 in it is refused naming the key, not an internal error."""
    path = tmp_path / "nul.toml"
    path.write_text(f'[database]\noutbox = "{tmp_path}/app\\u0000.db"\n'
                    f'state = "{tmp_path}/state.db"\n', encoding="utf-8")
    line = one_line_error(run_cli("init", config_path=path, cwd=tmp_path), 2)
    assert "database.outbox" in line, line


def test_a_float_key_with_a_huge_integer_is_a_one_line_config_error(tmp_path):
    """delivery.timeout = 1e400 written as an integer is refused naming the key."""
    path = tmp_path / "huge.toml"
    path.write_text("[delivery]\ntimeout = 1" + "0" * 400 + "\n", encoding="utf-8")
    line = one_line_error(run_cli("init", config_path=path, cwd=tmp_path), 2)
    assert line.startswith("nevent-dispatch: delivery.timeout: "), line[:200]


# -- fuzzing: the config loader ---------------------------------------------------------------

_TABLES = {f.name: [k.name for k in dataclasses.fields(f.default_factory())]  # type: ignore[misc]
           for f in dataclasses.fields(config_module.Config)}
_SCALARS = (st.none() | st.booleans() | st.integers() | st.floats()
            | st.sampled_from([0, -1, 2**63, 2**64, 10**400, -(10**400), 1e308, float("inf")])
            | st.text(max_size=20) | st.sampled_from(["", "json", "debug", "/nonexistent", "\x00"])
            | st.datetimes() | st.dates() | st.times())
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)


@st.composite
def raw_configs(draw: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.integers(0, 9)) == 0:
            raw[draw(st.text(max_size=8))] = draw(_VALUES)
            continue
        table = draw(st.sampled_from(sorted(_TABLES)))
        keys = st.sampled_from(_TABLES[table]) | st.text(max_size=8)
        raw[table] = draw(st.dictionaries(keys, _VALUES, max_size=4)
                          if draw(st.integers(0, 9)) else _VALUES)
    return raw


@FUZZ
@given(raw=raw_configs())
@example(raw={"delivery": {"timeout": 10**400}})
@example(raw={"delivery": {"retry_schedule": [1, -(10**400)]}})
@example(raw={"database": {"state": "var/\x00.db"}})
@example(raw={"outbox": {"page_size": 10**400}})
def test_config_from_any_nested_dict_is_a_config_or_a_config_error(raw, figures):
    """from_dict on arbitrary nested values: a valid Config, or one ConfigError line naming a key."""
    figures.add("fuzz_examples.config.from_dict")
    try:
        config = config_module.from_dict(raw)
    except ConfigError as exc:
        message = str(exc)
        assert message and ":" in message
        return
    assert isinstance(config, config_module.Config)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{orjson.dumps(k).decode()} = {_toml(v)}"
                               for k, v in value.items()) + "}"
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return orjson.dumps(str(value)).decode()


_TOML_SCALARS = (st.booleans() | st.integers() | st.floats(allow_nan=False)
                 | st.sampled_from([10**400, 2**64, -(10**30)]) | st.text(max_size=20)
                 | st.datetimes() | st.dates())
_TOML_VALUES = st.recursive(_TOML_SCALARS, lambda inner: st.lists(inner, max_size=3)
                            | st.dictionaries(st.text(max_size=5), inner, max_size=2), max_leaves=6)


@st.composite
def toml_texts(draw: Any) -> str:
    lines = []
    for table in draw(st.lists(st.sampled_from(sorted(_TABLES)) | st.text(max_size=6),
                               max_size=3, unique=True)):
        lines.append(f"[{orjson.dumps(table).decode()}]")
        keys = st.sampled_from(_TABLES.get(table) or ["x"]) | st.text(min_size=1, max_size=6)
        for key in draw(st.lists(keys, max_size=4, unique=True)):
            lines.append(f"{orjson.dumps(key).decode()} = {_toml(draw(_TOML_VALUES))}")
    if draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))), draw(st.text(max_size=30)))
    return "\n".join(lines)


@FUZZ
@given(text=toml_texts())
def test_config_from_any_toml_text_is_a_config_or_a_config_error(text, tmp_path, figures):
    """load() on arbitrary TOML-ish text: a Config, or a ConfigError; never another exception."""
    figures.add("fuzz_examples.config.load")
    path = tmp_path / "fuzz.toml"
    path.write_text(text, encoding="utf-8")
    try:
        config_module.load(path)
    except ConfigError as exc:
        assert str(exc)


def test_config_that_is_not_utf8_is_a_config_error(tmp_path):
    """A config file of arbitrary bytes is a ConfigError."""
    path = tmp_path / "bytes.toml"
    path.write_bytes(b"[delivery]\ntimeout = \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        config_module.load(path)


# -- fuzzing: verify() -----------------------------------------------------------------------

SECRET = "whsec_fuzzfuzzfuzzfuzzfuzz"
#: Any code point, lone surrogates included (a header or body may arrive decoded in any way),
#: with the characters of the header syntax and the awkward ones made frequent.
_ANY_TEXT = st.lists(st.sampled_from(["\ud800", "\udcff", "\x00", "é", "٣", ",", "=", " ", "t",
                                      "v1", "0", "f"]) | st.characters(exclude_categories=()),
                     max_size=40).map("".join)
_BODIES = st.binary(max_size=200) | _ANY_TEXT | st.builds(
    lambda d: orjson.dumps(d),
    st.dictionaries(st.text(max_size=5), st.integers(-(2**63), 2**63 - 1), max_size=3))


@st.composite
def headers(draw: Any, body: bytes | str) -> str | None:
    kind = draw(st.sampled_from(["any", "shaped", "signed", "tampered", "none"]))
    if kind == "none":
        return None
    if kind == "any":
        return draw(_ANY_TEXT)
    now = int(time.time())
    if kind in ("signed", "tampered"):
        raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
        header = sign(SECRET, now + draw(st.integers(-400, 400)), raw)
        if kind == "tampered":
            position = draw(st.integers(0, len(header)))
            header = header[:position] + draw(_ANY_TEXT) + header[position:]
        return header
    t = draw(st.integers(-(10**15), 10**15).map(str) | _ANY_TEXT)
    v1 = draw(st.text("0123456789abcdef", max_size=64) | _ANY_TEXT)
    items = draw(st.permutations([f"t={t}", f"v1={v1}", draw(_ANY_TEXT)]))
    return draw(st.sampled_from([",", ", ", ";"])).join(items)


@FUZZ
@given(data=st.data())
def test_verify_on_any_header_and_body_succeeds_or_raises_a_signature_error(data, figures):
    """verify() on arbitrary (often hostile) input returns a dict or raises SignatureError only."""
    figures.add("fuzz_examples.verify")
    body = data.draw(_BODIES, label="body")
    header = data.draw(headers(body), label="header")
    try:
        event = verify(body, header, SECRET)
    except SignatureError as exc:
        assert SECRET not in str(exc)
        return
    assert isinstance(event, dict)


@pytest.mark.parametrize(("body", "header"), [
    (b"{}", "t=1700000000,v1=\ud800"),
    (b"{}", "t=1700000000,v1=ab\udcff"),
    ("{}\ud800", "t=1700000000,v1=00"),
    ("{\udcff}", None),
])
def test_verify_refuses_lone_surrogates_with_a_signature_error(body, header):
    """Text a framework decoded with surrogates is refused as a SignatureError, not a crash."""
    with pytest.raises(SignatureError):
        verify(body, header, SECRET)


def test_verify_accepts_a_correct_signature_on_a_fuzzed_shape():
    """Control: a correctly signed object body verifies (the fuzz target can succeed)."""
    body = b'{"id": "evt_1"}'
    assert verify(body, sign(SECRET, int(time.time()), body), SECRET) == {"id": "evt_1"}


# -- fuzzing: the filter compiler, beyond tests/unit/test_filters.py ---------------------------

def _deep(depth: int, leaf: Any, kind: str) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value] if kind == "list" else {"x": value}
    return value


FILTERS = [
    {"data.x": {"x": {"x": 1}}},
    {"data.x": [[1]]},
    {"data.x": {"$in": [{"x": 1}, [[1]], "a"]}},
    {"data.x": {"$ne": {"x": {"x": 1}}}},
    {"data.x.x.x.x": {"$exists": True}},
    {"data.x": {"$regex": "a"}},
    {"data.x": {"$not": {"$gt": 1}}},
    {"$or": [{"data.x": 1}, {"data.x.0.0.0": 1}]},
]


@pytest.mark.parametrize("kind", ["list", "dict"])
@pytest.mark.parametrize("doc", FILTERS, ids=[orjson.dumps(f).decode() for f in FILTERS])
def test_compiled_filters_evaluate_envelopes_nested_as_deep_as_json_allows(doc, kind):
    """An envelope 1000 levels deep (JSON's practical limit) is matched without error."""
    envelope = {"type": "fan.created", "data": {"x": _deep(1000, "a", kind)}}
    assert isinstance(compile_filter(doc)(envelope), bool)


@pytest.mark.parametrize("depth", [33, 1000, 100_000])
@pytest.mark.parametrize("shape", ["object", "array", "not"])
def test_filter_text_nested_deeply_is_a_filter_error(depth, shape):
    """Deep filter JSON text is refused with a FilterError, never a RecursionError."""
    if shape == "object":
        text = '{"a": ' * depth + "1" + "}" * depth
    elif shape == "array":
        text = '{"data.x": ' + "[" * depth + "]" * depth + "}"
    else:
        text = '{"data.x": ' + '{"$not": ' * depth + '{"$eq": 1}' + "}" * depth + "}"
    with pytest.raises(FilterError, match=r"^filter: "):
        parse_filter(text)


@FUZZ
@given(text=st.text(max_size=200) | st.binary(max_size=200).map(
    lambda b: b.decode("utf-8", "replace")))
def test_filter_text_of_any_kind_parses_or_raises_a_filter_error(text, figures):
    """parse_filter on arbitrary text: a document or a one-line FilterError."""
    figures.add("fuzz_examples.filters.parse_filter")
    try:
        parse_filter(text)
    except FilterError as exc:
        assert str(exc).startswith("filter: ") and "\n" not in str(exc)


class Stalled(Exception):
    """The CPU budget of a match ran out."""


@contextlib.contextmanager
def cpu_budget(seconds: float) -> Iterator[None]:
    """Raise Stalled in the code run inside once it has used ``seconds`` of CPU.

    re's matching loop checks for signals, so a runaway match is interrupted
    (SIGPROF, which pytest-timeout's SIGALRM leaves alone).
    """
    def expire(signum: int, frame: Any) -> None:
        raise Stalled

    previous = signal.signal(signal.SIGPROF, expire)
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)


#: Patterns known to backtrack exponentially on "a" * 40 + "!".
BACKTRACKING = [
    r"^(a+)+$", r"(a*)*b", r"(.*a){12}", r"^(\w+\s?)*$", r"(x+x+)+y", r"(\d+)*\D",
    r"^(([a-z])+.)+[A-Z]([a-z])+$",
    r"(a|a)*$",
    r"^(?:a|a)*$",
    r"^(a|aa)+$",
    r"^(a|a?)+$",
    r"^(a?){25}a{25}$",
]


@pytest.mark.parametrize("pattern", BACKTRACKING)
def test_a_backtracking_regex_cannot_stall_matching(pattern, figures):
    """A $regex prone to catastrophic backtracking is refused when saved, or matches fast."""
    figures.note("bad_inputs", f"filter: $regex {pattern}")
    try:
        doc = parse_filter(orjson.dumps({"data.name": {"$regex": pattern}}).decode())
    except FilterError as exc:
        assert str(exc).startswith("filter: ")
        return
    predicate = compile_filter(doc)
    try:
        with cpu_budget(0.5):
            predicate({"data": {"name": "a" * 40 + "!"}})
    except Stalled:
        pytest.fail(f"{pattern!r} used over 0.5 s of CPU on one 41-character field")
