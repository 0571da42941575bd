"""Intake of outbox rows: bodies carry data exactly as written, bad rows are refused with a reason."""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nevent_dispatch.catalog import EVENT_TYPES
from nevent_dispatch.models import Event
from nevent_dispatch.pipeline.filters import compile_filter
from nevent_dispatch.wire.envelope import MAX_DATA_DEPTH, Rejection, parse_row
from nevent_dispatch.wire.samples import sample_envelope

T = 1_700_000_000
LIMIT = 1 << 20


def row(data: bytes | str, type_: bytes | str = b"fan.created", org: bytes | str = b"org_a",
        event_id: bytes = b"evt_1", created: Any = T) -> tuple[Any, ...]:
    """An outbox row as the store reads it: (id, event_id, type, organization_id, data, created)."""
    return (7, event_id, _bytes(type_), _bytes(org), _bytes(data), created)


def _bytes(value: Any) -> Any:
    return value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value


def accepted(data: bytes | str, **kw: Any) -> Event:
    event = parse_row(row(data, **kw), LIMIT)
    assert isinstance(event, Event), event
    return event


def refused(data: bytes | str, **kw: Any) -> str:
    rejection = parse_row(row(data, **kw), LIMIT)
    assert isinstance(rejection, Rejection), rejection
    return rejection.reason


def wire(data: bytes) -> bytes:
    """The body as the envelope's contract spells it out, around ``data`` as written."""
    return (b'{"id":"evt_1","type":"fan.created","created":1700000000,"data":' + data
            + b',"organization_id":"org_a"}')


def nested(depth: int, kind: str = "[") -> bytes:
    """A data object ``depth`` containers deep, its own object included."""
    if kind == "[":
        return b'{"a":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"
    return b'{"a":' * (depth - 1) + b"{}" + b"}" * (depth - 1)


# -- exact payloads ------------------------------------------------------------------------

EXACT = {
    "integer beyond 64 bits": b'{"n":18446744073709551616}',
    "negative integer beyond 64 bits": b'{"n":-18446744073709551617}',
    "number beyond a double": b'{"n":1e400}',
    "negative number beyond a double": b'{"n":-1e400}',
    "1.0, 1 and 1.50 as written": b'{"a":1.0,"b":1,"c":1.50,"d":1E2,"e":-0}',
    "escapes kept escaped": b'{"s":"\\u00e9\\n\\/\\"","t":"\xc3\xa9"}',
    "whitespace inside data": b'{ "a" : [ 1 ,\n\t2 ] ,\r\n  "b" : { } }',
    "duplicate keys": b'{"a":1,"a":2}',
    "unpaired surrogate escape": b'{"s":"\\ud800 and \\uDC00"}',
    "integer of 5000 digits": b'{"n":' + b"9" * 5000 + b"}",
}


@pytest.mark.parametrize("data", EXACT.values(), ids=EXACT.keys())
def test_the_body_carries_data_exactly_as_written(data):
    """The body is the five-key envelope with the data text byte for byte, and parses as JSON."""
    event = accepted(data)
    assert event.body == wire(data)
    parsed = json.loads(event.body, parse_int=str)  # the stdlib converts 4300 digits at most
    assert list(parsed) == ["id", "type", "created", "data", "organization_id"]
    assert (parsed["id"], parsed["type"], parsed["created"], parsed["organization_id"]) == (
        "evt_1", "fan.created", str(T), "org_a")


def test_json_whitespace_around_data_is_stripped_and_only_that():
    """Leading and trailing spaces, tabs and newlines go; the text between them stays."""
    assert accepted(b' \t\r\n{"a": 1 }\n\n ').body == wire(b'{"a": 1 }')
    assert "not valid JSON" in refused(b'\x0c{"a":1}')  # form feed is not JSON whitespace


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
def test_ordinary_data_gives_the_body_orjson_gives_the_envelope(event_type):
    """For data written compactly, the body is exactly orjson.dumps of the envelope dict."""
    envelope = sample_envelope(event_type, "org_abcdefghijk", event_id="evt_0123456789abcdef", created=T)
    event = accepted(orjson.dumps(envelope["data"]), type_=event_type, org="org_abcdefghijk",
                     event_id=b"evt_0123456789abcdef")
    assert event.body == orjson.dumps(envelope)
    assert event.envelope == envelope


def test_ids_types_and_organizations_are_json_strings_as_orjson_writes_them():
    """Quotes, backslashes and non-ASCII in the text columns are escaped the usual way."""
    event = accepted(b"{}", type_='fan."quoted"\\x é', org="org_ñ", event_id=b'evt_"1"')
    assert event.body == orjson.dumps({"id": 'evt_"1"', "type": 'fan."quoted"\\x é', "created": T,
                                       "data": {}, "organization_id": "org_ñ"})


def test_the_body_is_an_exact_size_bytes_object():
    """No spare buffer behind a body: tens of thousands of them wait in the lanes."""
    body = accepted(orjson.dumps(sample_envelope("purchase.completed", "org_a")["data"])).body
    assert type(body) is bytes
    assert sys.getsizeof(body) == sys.getsizeof(b"") + len(body)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(), st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20)))
def test_any_json_object_written_by_orjson_goes_out_unchanged(data):
    """The body is orjson's envelope and filters see the data orjson reads back."""
    text = orjson.dumps(data)
    event = accepted(text)
    assert event.body == wire(text)
    assert event.envelope["data"] == orjson.loads(text)


# -- what filters see ----------------------------------------------------------------------


def matches(doc: dict[str, Any], data: bytes) -> bool:
    return compile_filter(doc)(accepted(data).envelope)


def test_filters_compare_an_integer_beyond_64_bits_as_a_number():
    """{"data.n": {"$gt": 5}} holds for 2**64 and not for -(2**64 + 1)."""
    assert matches({"data.n": {"$gt": 5}}, EXACT["integer beyond 64 bits"])
    assert not matches({"data.n": {"$gt": 5}}, EXACT["negative integer beyond 64 bits"])
    assert matches({"data.n": {"$lt": 0}}, EXACT["negative integer beyond 64 bits"])


def test_filters_read_a_number_beyond_a_double_as_infinite_without_crashing():
    """1e400 is above every number and equal to none; -1e400 below every number."""
    data = EXACT["number beyond a double"]
    assert accepted(data).envelope["data"] == {"n": float("inf")}
    assert matches({"data.n": {"$gt": 5}}, data)
    assert matches({"data.n": {"$gte": 1.7976931348623157e308}}, data)
    for doc in ({"data.n": {"$lt": 5}}, {"data.n": 5}, {"data.n": {"$in": [1, 2.5]}},
                {"data.n": {"$regex": "1"}}, {"data.n": "1e400"}):
        assert not matches(doc, data), doc
    assert matches({"data.n": {"$lt": -5}}, EXACT["negative number beyond a double"])


def test_filters_see_exact_integers_in_data_that_only_the_stdlib_reads():
    """Next to a number orjson refuses, an integer beyond 64 bits reaches filters exactly."""
    data = b'{"inf":1e400,"n":18446744073709551617,"m":' + b"9" * 5000 + b"}"
    seen = accepted(data).envelope["data"]
    assert seen["n"] == 18446744073709551617 and type(seen["n"]) is int
    assert seen["m"] == float("inf")
    assert not matches({"data.n": {"$eq": 18446744073709551616}}, data)
    assert matches({"data.n": {"$gt": 18446744073709551615}}, data)


def test_filters_see_the_last_of_duplicate_keys():
    """As orjson and the stdlib read them."""
    assert accepted(EXACT["duplicate keys"]).envelope["data"] == {"a": 2}
    assert matches({"data.a": 2}, EXACT["duplicate keys"])


def test_an_unpaired_surrogate_reaches_filters_as_a_replacement_character():
    """The body keeps the escape; a $regex filter on the string neither crashes nor sees it."""
    data = EXACT["unpaired surrogate escape"]
    assert accepted(data).envelope["data"] == {"s": "\ufffd and \ufffd"}
    assert matches({"data.s": {"$regex": "and"}}, data)
    assert matches({"data.s": {"$regex": "^\ufffd"}}, data)
    paired = b'{"s":"\\ud83d\\ude00","inf":1e400}'
    assert accepted(paired).body == wire(paired)
    assert accepted(paired).envelope["data"]["s"] == "\U0001f600"


# -- data refused --------------------------------------------------------------------------

NOT_JSON = {
    "NaN": b'{"n":NaN}',
    "Infinity": b'{"n":Infinity}',
    "-Infinity": b'{"n":-Infinity}',
    "NaN next to a number orjson refuses": b'{"a":1e400,"n":NaN}',
    "leading zero": b'{"n":01}',
    "trailing comma": b'{"a":1,}',
    "single quotes": b"{'a':1}",
    "raw control character in a string": b'{"a":"\x01"}',
    "two documents": b"{}{}",
    "byte order mark": b"\xef\xbb\xbf{}",
    "empty": b"",
    "only whitespace": b" \n ",
}


@pytest.mark.parametrize("data", NOT_JSON.values(), ids=NOT_JSON.keys())
def test_data_that_is_not_json_is_refused(data):
    """NaN and Infinity included, which the stdlib would accept."""
    assert refused(data).startswith("data is not valid JSON: ")


@pytest.mark.parametrize(("data", "kind"), [
    (b"[1, 2]", "array"), (b'"text"', "string"), (b"42", "number"), (b"1e400", "number"),
    (b"18446744073709551616", "number"), (b"null", "null"), (b"true", "boolean"), (b'"\\ud800"', "string"),
])
def test_data_that_is_not_a_json_object_is_refused(data, kind):
    """Valid JSON, but the envelope's data is an object."""
    assert refused(data) == f"data must be a JSON object, got a JSON {kind}"


@pytest.mark.parametrize("data", [b'{"a":"\xff"}', b'{"a":"\xc3"}', b'{"a":"\xc0\xaf"}',
                                  b'{"a":"\xed\xa0\x80"}', b'{"a":1e400,"b":"\xff"}'])
def test_data_that_is_not_utf8_is_refused(data):
    """Invalid bytes, a truncated or overlong sequence, an encoded surrogate."""
    reason = refused(data)
    assert reason.startswith("data is not valid JSON: ") and "UTF-8" in reason


@pytest.mark.parametrize("kind", ["[", "{"])
def test_data_nested_up_to_the_limit_is_accepted_and_one_level_more_refused(kind):
    """1021 levels go out as written (a batch of them is 1024, what orjson reads); 1022 are
    refused as nested too deeply."""
    assert MAX_DATA_DEPTH == 1021
    deepest = nested(MAX_DATA_DEPTH, kind)
    assert accepted(deepest).body == wire(deepest)
    assert refused(nested(MAX_DATA_DEPTH + 1, kind)) == (
        "data is nested too deeply (more than 1021 levels)")


def test_the_nesting_limit_holds_for_data_only_the_stdlib_reads():
    """Data that also holds a number orjson refuses: deep data still goes out, data past the
    limit (or past what the stdlib reads) is refused as nested too deeply, never raised."""
    def deep(depth: int) -> bytes:
        return b'{"inf":1e400,"a":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"
    assert accepted(deep(300)).body == wire(deep(300))
    assert "nested too deeply" in refused(deep(MAX_DATA_DEPTH + 1))


@pytest.mark.parametrize("depth", [1_100, 100_000])
def test_absurd_nesting_is_refused_without_an_exception(depth):
    """Past both parsers' own limits the row is still a Rejection, never a RecursionError."""
    assert re.fullmatch(r"data is nested too deeply \(more than 1021 levels\)"
                        r"|data is not valid JSON: depth limit exceeded.*", refused(nested(depth)))
    assert refused(b'{"x":1e400,"a":' + b"[" * depth + b"]" * depth + b"}") == (
        "data is nested too deeply (more than 1021 levels)")


@pytest.mark.parametrize("data", [nested(MAX_DATA_DEPTH, "["), b'{"x":1e400,"n":18446744073709551616}',
                                  b'{"s":"\\ud800"}'])
def test_our_own_verify_reads_every_body_we_send(data):
    """A single body and a batch body of accepted data verify and parse with ``verify``."""
    from nevent_dispatch.wire.envelope import batch_body
    from nevent_dispatch.wire.signing import sign, verify

    body = accepted(data).body
    for sent in (body, batch_body([body, body])):
        header = sign("whsec_0123456789abcdef", 1_700_000_000, sent)
        assert isinstance(verify(sent, header, "whsec_0123456789abcdef", now=1_700_000_000), dict)


def test_a_fault_after_a_number_orjson_refuses_is_the_reason_given():
    """The stdlib's account of the text, not orjson's complaint about the valid 1e400."""
    assert refused(NOT_JSON["NaN next to a number orjson refuses"]) == (
        "data is not valid JSON: NaN is not JSON")
    assert refused(b'{"a":"\\ud800","b":01}') == (
        "data is not valid JSON: Expecting ',' delimiter: line 1 column 20 (char 19)")


# -- the text columns ----------------------------------------------------------------------

UNPRINTABLE = {
    "CR": ("\r", r"\r"), "LF": ("\n", r"\n"), "TAB": ("\t", r"\t"), "ESC": ("\x1b", r"\x1b"),
    "DEL": ("\x7f", r"\x7f"), "NEL (U+0085)": ("\x85", r"\x85"), "C1 CSI (U+009B)": ("\x9b", r"\x9b"),
    "line separator": ("\u2028", r"\u2028"), "paragraph separator": ("\u2029", r"\u2029"),
}


@pytest.mark.parametrize(("char", "shown"), UNPRINTABLE.values(), ids=UNPRINTABLE.keys())
def test_a_control_character_in_the_type_is_refused_and_named(char, shown):
    """The type becomes the X-Nevent-Event header: a control character there is refused at once."""
    rejection = parse_row(row(b"{}", type_=f"fan.created{char}X-Evil: 1"), LIMIT)
    assert isinstance(rejection, Rejection)
    assert rejection.reason == f"type contains a control character ({shown})"
    assert rejection.type == f"fan.created{shown}X-Evil: 1"  # kept escaped, on one line


@pytest.mark.parametrize(("char", "shown"), UNPRINTABLE.values(), ids=UNPRINTABLE.keys())
def test_a_control_character_in_the_organization_is_refused_and_named(char, shown):
    """The organization ends up in log lines and the history: the same refusal."""
    rejection = parse_row(row(b"{}", org=f"org_a{char}"), LIMIT)
    assert isinstance(rejection, Rejection)
    assert rejection.reason == f"organization_id contains a control character ({shown})"
    assert rejection.organization_id == f"org_a{shown}"


def test_a_nul_in_the_type_or_the_organization_is_refused_as_a_nul_byte():
    """The reason the history has always given for it."""
    assert refused(b"{}", type_="fan\x00created") == "type contains a NUL byte"
    assert refused(b"{}", org="org\x00a") == "organization_id contains a NUL byte"


@pytest.mark.parametrize(("char", "shown"), [("\xa0", r"\xa0"), ("\u200b", r"\u200b"), ("\u202e", r"\u202e"),
                                             ("\ufeff", r"\ufeff"), ("\U000e0001", r"\U000e0001")])
def test_other_unprintable_characters_are_refused_and_named(char, shown):
    """No-break and zero-width spaces, bidi overrides, tags: invisible in a header or a log."""
    assert refused(b"{}", type_=f"fan{char}created") == f"type contains a non-printable character ({shown})"


@pytest.mark.parametrize("type_", [" fan.created", "fan.created ", "  fan.created  "])
def test_a_type_with_leading_or_trailing_spaces_is_refused(type_):
    """It would be a header value that does not round-trip."""
    assert refused(b"{}", type_=type_) == "type has leading or trailing spaces"


@pytest.mark.parametrize(("field", "value", "reason"), [
    ("type_", "", "type is empty"), ("type_", "   ", "type is empty"), ("type_", "\t", "type is empty"),
    ("org", "", "organization_id is empty"), ("org", "  ", "organization_id is empty"),
])
def test_empty_types_and_organizations_are_refused_as_empty(field, value, reason):
    """Blank counts as empty."""
    assert refused(b"{}", **{field: value}) == reason


def test_printable_unicode_in_the_type_and_organization_is_accepted():
    """Letters, spaces inside and punctuation are fine."""
    event = accepted(b"{}", type_="pedido.creado año", org="org_ñandú")
    assert (event.type, event.organization_id) == ("pedido.creado año", "org_ñandú")


# -- size and shape of the row -------------------------------------------------------------


def test_a_body_of_exactly_the_limit_is_accepted_and_one_byte_more_refused():
    """The limit is on the final body; the reason gives both sizes."""
    around = len(wire(b'{"p":""}'))
    for limit in (4096, 10_000):
        fits = b'{"p":"' + b"x" * (limit - around) + b'"}'
        event = parse_row(row(fits), limit)
        assert isinstance(event, Event) and len(event.body) == limit
        over = parse_row(row(b'{"p":"' + b"x" * (limit - around + 1) + b'"}'), limit)
        assert isinstance(over, Rejection)
        assert over.reason == f"payload is {limit + 1} bytes, over the {limit}-byte limit"


def test_data_larger_than_the_limit_is_refused_with_the_body_size():
    """An outsized row (valid or not) is measured, not parsed."""
    for data in (b'{"p":"' + b"x" * 5000 + b'"}', b"{" * 5000):
        assert refused_at(data, 4096) == f"payload is {len(wire(data))} bytes, over the 4096-byte limit"


def refused_at(data: bytes, limit: int) -> str:
    rejection = parse_row(row(data), limit)
    assert isinstance(rejection, Rejection)
    return rejection.reason


@pytest.mark.parametrize("created", ["yesterday", 1.5, True, None, 2**64, -(2**63) - 1])
def test_created_that_is_not_a_64_bit_integer_is_refused(created):
    """It is written as a JSON integer unix time."""
    assert refused(b"{}", created=created).startswith("created is not an integer unix time")


def test_text_columns_given_as_str_are_read_like_bytes():
    """A row from a text-mode connection gives the same event."""
    data = '{"n":1e400,"s":"é"}'
    event = parse_row((7, "evt_1", "fan.created", "org_a", data, T), LIMIT)
    assert isinstance(event, Event) and event.body == wire(data.encode())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64) | st.text(max_size=32).map(lambda s: s.encode("utf-8", "surrogatepass")),
       st.text(max_size=8), st.text(max_size=8))
def test_no_row_makes_intake_raise(data, type_, org):
    """Whatever the columns hold, the result is an Event or a Rejection with a one-line reason."""
    result = parse_row(row(data, type_=type_, org=org), LIMIT)
    if isinstance(result, Rejection):
        assert result.reason.isprintable() and result.type.isprintable()
        assert result.organization_id.isprintable()
    else:
        assert result.body == (b'{"id":"evt_1","type":' + orjson.dumps(type_) + b',"created":1700000000,'
                               b'"data":' + data.strip(b" \t\n\r") + b',"organization_id":'
                               + orjson.dumps(org) + b"}")
