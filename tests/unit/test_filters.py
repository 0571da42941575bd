"""Webhook filters: the Mongo-style dialect, its refusals, and a reference model."""

from __future__ import annotations

import copy
import operator
import re
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nevent_dispatch.errors import FilterError
from nevent_dispatch.pipeline import filters
from nevent_dispatch.pipeline.filters import MATCH_ALL, compile_filter, parse_filter

PROPERTY = settings(max_examples=300, deadline=None, database=None)


def make_purchase(total: float = 170.0, ticket_types: tuple[str, ...] = ("General Admission",)):
    """The customer docs' purchase.completed envelope, with a chosen total and tickets."""
    return {
        "id": "evt_01234567890",
        "type": "purchase.completed",
        "created": 1640995200,
        "data": {
            "purchase": {
                "id": "pur_abc123",
                "fan": {
                    "id": "fan_xyz789",
                    "email": "juan@example.com",
                    "first_name": "Juan",
                    "last_name": "García",
                },
                "event": {"id": "evt_festival2024", "name": "Festival Sónar 2024"},
                "tickets": [
                    {"type": kind, "quantity": 2, "price": 85.0, "currency": "EUR"}
                    for kind in ticket_types
                ],
                "total": total,
                "currency": "EUR",
                "payment_method": "card",
                "status": "completed",
            }
        },
        "organization_id": "org_abcdefghijk",
    }


def make_fan(**fan: Any):
    """The customer docs' fan.created envelope, with fields of the fan overridden."""
    base = {
        "id": "fan_new123",
        "email": "maria@example.com",
        "first_name": "María",
        "city": "Barcelona",
        "tags": ["techno", "vip"],
    }
    return {
        "id": "evt_01234567891",
        "type": "fan.created",
        "created": 1640995201,
        "data": {"fan": {**base, **fan}},
        "organization_id": "org_abcdefghijk",
    }


def matches(doc: object, envelope: dict[str, Any]) -> bool:
    return compile_filter(doc)(envelope)


def x(value: Any) -> dict[str, Any]:
    """A minimal envelope whose data.x is ``value``."""
    return {"id": "evt_1", "type": "t", "created": 0, "data": {"x": value}, "organization_id": "o"}


NO_X: dict[str, Any] = {"id": "e", "type": "t", "created": 0, "data": {}, "organization_id": "o"}


# --- the customer docs' examples ---------------------------------------------

OVER_100 = {"type": "purchase.completed", "data.purchase.total": {"$gt": 100}}
VIP_ONLY = {"data.purchase.tickets.type": "VIP"}


def test_purchases_over_100_matches_the_docs_purchase():
    """'Only purchases over 100 €' matches the 170 € purchase of the docs."""
    assert matches(OVER_100, make_purchase(total=170.0))


def test_purchases_over_100_skips_a_cheap_purchase():
    """'Only purchases over 100 €' skips a purchase of exactly 100 and one of 85."""
    assert not matches(OVER_100, make_purchase(total=100))
    assert not matches(OVER_100, make_purchase(total=85.0))


def test_purchases_over_100_skips_other_event_types():
    """'Only purchases over 100 €' skips a refund with a large total."""
    refund = make_purchase(total=500.0) | {"type": "purchase.refunded"}
    assert not matches(OVER_100, refund)


def test_vip_only_matches_when_any_ticket_is_vip():
    """'Only VIP tickets' matches when any ticket in the list has type VIP."""
    assert matches(VIP_ONLY, make_purchase(ticket_types=("General Admission", "VIP")))
    assert matches(VIP_ONLY, make_purchase(ticket_types=("VIP",)))


def test_vip_only_skips_the_docs_purchase():
    """'Only VIP tickets' skips the docs' purchase of general admission tickets."""
    assert not matches(VIP_ONLY, make_purchase())
    assert not matches(VIP_ONLY, make_purchase(ticket_types=()))


def test_vip_only_skips_a_fan_event():
    """'Only VIP tickets' skips an event whose data has no purchase."""
    assert not matches(VIP_ONLY, make_fan())


# --- documents and logical operators -----------------------------------------


def test_empty_document_matches_everything():
    """``{}`` compiles to MATCH_ALL."""
    assert compile_filter({}) is MATCH_ALL
    assert MATCH_ALL(make_fan()) and MATCH_ALL({})


def test_top_level_keys_are_all_required():
    """Several top-level keys form an implicit $and."""
    assert matches({"type": "fan.created", "data.fan.city": "Barcelona"}, make_fan())
    assert not matches({"type": "fan.created", "data.fan.city": "Madrid"}, make_fan())


def test_and_or_not_combine_filters():
    """$and needs every filter, $or any filter, $not the opposite of its filter."""
    fan = make_fan(city="Madrid")
    assert matches({"$and": [{"type": "fan.created"}, {"data.fan.city": "Madrid"}]}, fan)
    assert not matches({"$and": [{"type": "fan.created"}, {"data.fan.city": "Sevilla"}]}, fan)
    assert matches({"$or": [{"type": "fan.deleted"}, {"data.fan.city": "Madrid"}]}, fan)
    assert not matches({"$or": [{"type": "fan.deleted"}, {"data.fan.city": "Sevilla"}]}, fan)
    assert matches({"$not": {"data.fan.city": "Sevilla"}}, fan)
    assert not matches({"$not": {"type": "fan.created"}}, fan)


def test_logical_operators_nest():
    """$or inside $and inside $not evaluates as written."""
    either = {"$or": [{"a": 1}, {"data.fan.city": "Madrid"}]}
    doc = {"$not": {"$and": [{"type": "fan.created"}, either]}}
    assert not matches(doc, make_fan(city="Madrid"))
    assert matches(doc, make_fan(city="Sevilla"))


def test_envelope_may_be_any_mapping():
    """A read-only mapping envelope is matched like a dict."""
    envelope = MappingProxyType({"type": "t", "data": MappingProxyType({"x": {"y": 1}})})
    assert compile_filter({"data.x": {"y": 1}, "type": "t"})(envelope)


def test_predicate_does_not_read_the_document_after_compiling():
    """Mutating the document after compiling does not change the predicate."""
    doc: dict[str, Any] = {"data.x": {"$in": [1, {"a": [2]}]}}
    predicate = compile_filter(doc)
    doc["data.x"]["$in"][1]["a"].append(3)
    doc["data.x"]["$in"].append(5)
    assert predicate(x({"a": [2]}))
    assert not predicate(x(5))


# --- field operators ---------------------------------------------------------


def test_plain_value_is_equality():
    """A plain value means $eq, for strings, numbers, null and booleans alike."""
    for value in ("a", 3, 2.5, None, True, False):
        assert matches({"data.x": value}, x(value))
        assert matches({"data.x": {"$eq": value}}, x(value))
    assert not matches({"data.x": "a"}, x("b"))


def test_object_value_is_whole_object_equality():
    """An object without $ keys equals an object with the same members, in any order."""
    assert matches({"data.x": {"a": 1, "b": [1, {"c": None}]}}, x({"b": [1, {"c": None}], "a": 1}))
    assert not matches({"data.x": {"a": 1}}, x({"a": 1, "b": 2}))
    assert not matches({"data.x": {"a": 1, "b": 2}}, x({"a": 1}))
    assert matches({"data.x": {}}, x({}))
    assert not matches({"data.x": {}}, x({"a": 1}))


def test_list_value_matches_whole_list_or_an_element():
    """A list equals a list with the same items in order, or a list holding it."""
    assert matches({"data.x": [1, 2]}, x([1, 2]))
    assert not matches({"data.x": [1, 2]}, x([2, 1]))
    assert matches({"data.x": [1, 2]}, x([[1, 2], 3]))


def test_equality_looks_inside_a_list_value():
    """{"data.fan.tags": "vip"} matches tags ["techno", "vip"]."""
    assert matches({"data.fan.tags": "vip"}, make_fan())
    assert not matches({"data.fan.tags": "rock"}, make_fan())


def test_ne_is_negated_equality_over_the_path():
    """$ne holds when the value differs or is missing, and fails when any element equals."""
    assert matches({"data.x": {"$ne": 1}}, x(2))
    assert matches({"data.x": {"$ne": 1}}, NO_X)
    assert not matches({"data.x": {"$ne": 1}}, x(1))
    assert not matches({"data.fan.tags": {"$ne": "vip"}}, make_fan())


@pytest.mark.parametrize(
    ("op", "below", "equal", "above"),
    [
        ("$gt", False, False, True),
        ("$gte", False, True, True),
        ("$lt", True, False, False),
        ("$lte", True, True, False),
    ],
)
def test_comparisons_on_numbers(op, below, equal, above):
    """$gt, $gte, $lt and $lte compare numbers, ints and floats alike."""
    assert matches({"data.x": {op: 10}}, x(9.5)) is below
    assert matches({"data.x": {op: 10}}, x(10.0)) is equal
    assert matches({"data.x": {op: 10.0}}, x(10)) is equal
    assert matches({"data.x": {op: 10}}, x(11)) is above


def test_comparisons_on_strings():
    """Strings compare by code point, which orders ISO dates."""
    assert matches({"data.x": {"$gte": "2024-06-01", "$lt": "2024-07-01"}}, x("2024-06-15"))
    assert not matches({"data.x": {"$gte": "2024-06-01", "$lt": "2024-07-01"}}, x("2024-07-02"))


def test_comparisons_look_inside_a_list_value():
    """A comparison matches when any element of a list value satisfies it."""
    assert matches({"data.x": {"$gt": 5}}, x([1, 10]))
    assert not matches({"data.x": {"$gt": 50}}, x([1, 10]))


def test_operators_on_one_field_are_all_required():
    """Several operators on one field must all hold."""
    assert matches({"data.x": {"$gt": 1, "$lt": 5}}, x(3))
    assert not matches({"data.x": {"$gt": 1, "$lt": 5}}, x(7))


def test_in_and_nin():
    """$in matches a value equal to any listed one; $nin is its negation and holds when missing."""
    assert matches({"data.x": {"$in": ["a", 2]}}, x(2))
    assert matches({"data.fan.tags": {"$in": ["rock", "vip"]}}, make_fan())
    assert not matches({"data.x": {"$in": ["a", 2]}}, x("b"))
    assert not matches({"data.x": {"$in": []}}, x("b"))
    assert matches({"data.x": {"$nin": ["a", 2]}}, x("b"))
    assert matches({"data.x": {"$nin": ["a"]}}, NO_X)
    assert not matches({"data.fan.tags": {"$nin": ["vip"]}}, make_fan())


def test_exists():
    """$exists: true holds when the path reaches a value, null included."""
    assert matches({"data.x": {"$exists": True}}, x(None))
    assert not matches({"data.x": {"$exists": True}}, NO_X)
    assert matches({"data.x": {"$exists": False}}, NO_X)
    assert not matches({"data.x": {"$exists": False}}, x(0))


def test_regex_searches_strings():
    """$regex searches anywhere in a string; $options i ignores case."""
    assert matches({"data.fan.email": {"$regex": r"@example\.com$"}}, make_fan())
    assert not matches({"data.fan.email": {"$regex": "^EXAMPLE"}}, make_fan())
    assert matches({"data.fan.email": {"$regex": "MARIA", "$options": "i"}}, make_fan())
    assert matches({"data.x": {"$regex": "^b$", "$options": "m"}}, x("a\nb"))


def test_regex_looks_inside_lists_and_ignores_non_strings():
    """$regex matches a string element of a list and never a number."""
    assert matches({"data.fan.tags": {"$regex": "^tech"}}, make_fan())
    assert not matches({"data.x": {"$regex": "1"}}, x(1))


def test_field_not_negates_its_operators():
    """A field $not holds when its operators fail, including when the path is missing."""
    assert matches({"data.x": {"$not": {"$gt": 5}}}, x(3))
    assert not matches({"data.x": {"$not": {"$gt": 5}}}, x(7))
    assert matches({"data.x": {"$not": {"$gt": 5}}}, NO_X)
    assert matches({"data.x": {"$not": {"$regex": "^A", "$options": "i"}}}, x("b"))


# --- paths -------------------------------------------------------------------


def test_path_traverses_lists_of_objects_at_any_depth():
    """A path continues into every object of every list it meets."""
    envelope = x([{"y": [{"z": 1}, {"z": 2}]}, {"y": {"z": 3}}])
    for z in (1, 2, 3):
        assert matches({"data.x.y.z": z}, envelope)
    assert not matches({"data.x.y.z": 4}, envelope)


def test_numeric_segment_indexes_a_list():
    """A numeric segment picks that element of a list."""
    envelope = make_purchase(ticket_types=("General Admission", "VIP"))
    assert matches({"data.purchase.tickets.1.type": "VIP"}, envelope)
    assert not matches({"data.purchase.tickets.0.type": "VIP"}, envelope)
    assert not matches({"data.purchase.tickets.2.type": {"$exists": True}}, envelope)


def test_numeric_segment_is_also_an_object_key():
    """A numeric segment on an object is a key like any other."""
    assert matches({"data.x.0": "a"}, x({"0": "a"}))
    assert matches({"data.x.0": "a"}, x([{"0": "a"}]))


def test_missing_path_matches_only_negations():
    """A missing path fails every operator except $ne, $nin, $not and $exists: false."""
    positive = ({"$eq": None}, {"$gt": 0}, {"$in": [None]}, {"$regex": ""}, {"$exists": True})
    for condition in positive:
        assert not matches({"data.y.z": condition}, x(1))
    for condition in ({"$ne": 1}, {"$nin": [1]}, {"$not": {"$eq": 1}}, {"$exists": False}):
        assert matches({"data.y.z": condition}, x(1))


def test_path_through_a_scalar_is_missing():
    """A path that continues past a string or number reaches nothing."""
    assert not matches({"data.x.y": {"$exists": True}}, x("y"))
    assert not matches({"data.x.0": "a"}, x("abc"))


# --- types -------------------------------------------------------------------


def test_mismatched_types_never_match_and_never_raise():
    """Comparing across types is no match: string vs number, null, objects, lists."""
    for value in ("10", None, {"a": 1}, [], True, [None, "z"]):
        for op in ("$gt", "$gte", "$lt", "$lte"):
            assert not matches({"data.x": {op: 5}}, x(value))
    assert not matches({"data.x": {"$gt": "a"}}, x(5))
    assert not matches({"data.x": "1"}, x(1))
    assert not matches({"data.x": {"$regex": "."}}, x({"a": "b"}))


def test_booleans_are_not_numbers():
    """True does not equal 1, is not greater than 0, and 0 is not False."""
    assert not matches({"data.x": 1}, x(True))
    assert not matches({"data.x": True}, x(1))
    assert not matches({"data.x": False}, x(0))
    assert not matches({"data.x": {"$gt": 0}}, x(True))
    assert not matches({"data.x": {"$in": [1, 0]}}, x(False))
    assert not matches({"data.x": [1]}, x([True]))
    assert matches({"data.x": {"$ne": 1}}, x(True))


def test_ints_and_floats_are_equal_numbers():
    """100 equals 100.0, inside lists and objects too."""
    assert matches({"data.x": 100}, x(100.0))
    assert matches({"data.x": 100.0}, x(100))
    assert matches({"data.x": {"a": [1, 2.0]}}, x({"a": [1.0, 2]}))


# --- refusals ----------------------------------------------------------------


def refused(message: str):
    """Expect a FilterError with exactly ``message``."""
    return pytest.raises(FilterError, match=f"^{re.escape(message)}$")


def test_refuses_unknown_field_operator():
    """An unknown operator on a field is named with its path."""
    with refused("filter: unknown operator '$gtt' at data.purchase.total"):
        compile_filter({"data.purchase.total": {"$gtt": 100}})


def test_refuses_unknown_top_level_operator():
    """An unknown top-level operator, or a field operator at top level, is refused."""
    expected = "(expected $and, $or, $not or a field path)"
    with refused(f"filter: unknown operator '$nor' at top level {expected}"):
        compile_filter({"$nor": [{"a": 1}]})
    with refused(f"filter: unknown operator '$eq' at $or[1] {expected}"):
        compile_filter({"$or": [{"a": 1}, {"$eq": 1}]})


def test_refuses_unknown_operator_inside_field_not():
    """An unknown operator under a field $not is named with its path."""
    with refused("filter: unknown operator '$foo' at data.x"):
        compile_filter({"data.x": {"$not": {"$foo": 1}}})


@pytest.mark.parametrize("op", ["$in", "$nin"])
def test_refuses_membership_without_a_list(op):
    """$in and $nin need a list."""
    with refused(f"filter: {op} at data.x expects a list, got int"):
        compile_filter({"data.x": {op: 3}})


@pytest.mark.parametrize("op", ["$gt", "$gte", "$lt", "$lte"])
@pytest.mark.parametrize(
    ("operand", "kind"), [(True, "bool"), (None, "null"), ([1], "list"), ({"a": 1}, "dict")]
)
def test_refuses_comparison_with_a_non_orderable_operand(op, operand, kind):
    """Comparisons need a number or a string: not a bool, null, list or object."""
    with refused(f"filter: {op} at data.x expects a number or a string, got {kind}"):
        compile_filter({"data.x": {op: operand}})


def test_refuses_exists_without_a_bool():
    """$exists needs true or false, not a truthy number."""
    with refused("filter: $exists at data.x expects true or false, got int"):
        compile_filter({"data.x": {"$exists": 1}})


def test_refuses_regex_that_is_not_a_string():
    """$regex needs a string."""
    with refused("filter: $regex at data.x expects a string, got list"):
        compile_filter({"data.x": {"$regex": ["a"]}})


def test_refuses_regex_that_does_not_compile():
    """An invalid pattern is refused with the compiler's reason."""
    reason = "missing ]: [a-z"
    with refused(f"filter: invalid $regex at data.fan.email: {reason}"):
        compile_filter({"data.fan.email": {"$regex": "[a-z"}})


def test_refuses_unsupported_regex_option():
    """$options accepts only the flags i, m and s."""
    with refused("filter: $options at data.x has unsupported flag 'g' (allowed: ims)"):
        compile_filter({"data.x": {"$regex": "a", "$options": "ig"}})


def test_refuses_regex_options_that_are_not_a_string():
    """$options must be a string of flags."""
    with refused("filter: $options at data.x expects a string, got bool"):
        compile_filter({"data.x": {"$regex": "a", "$options": True}})


def test_refuses_options_without_regex():
    """$options alone has nothing to modify."""
    with refused("filter: $options at data.x requires a sibling $regex"):
        compile_filter({"data.x": {"$options": "i"}})


@pytest.mark.parametrize("op", ["$and", "$or"])
def test_refuses_empty_logical_list(op):
    """$and and $or need at least one filter."""
    with refused(f"filter: {op} expects a non-empty list, got an empty list"):
        compile_filter({op: []})


def test_refuses_logical_operand_that_is_not_a_list():
    """$and and $or take a list, not a single object."""
    with refused("filter: $or expects a list of filter objects, got dict"):
        compile_filter({"$or": {"a": 1}})


def test_refuses_logical_element_that_is_not_an_object():
    """Each element of $and is a filter object; the message names its index."""
    with refused("filter: $and[1] must be a JSON object, got str"):
        compile_filter({"$and": [{"a": 1}, "b"]})


def test_refuses_empty_filter_inside_logical_operator():
    """An empty filter inside $or or $not is refused as unfinished."""
    with refused("filter: $or[0] must not be an empty object"):
        compile_filter({"$or": [{}]})
    with refused("filter: $not must not be an empty object"):
        compile_filter({"$not": {}})


def test_refuses_top_level_not_that_is_not_an_object():
    """A top-level $not takes a filter object."""
    with refused("filter: $and[0].$not must be a JSON object, got int"):
        compile_filter({"$and": [{"$not": 3}]})


def test_refuses_field_not_without_operators():
    """A field $not takes an operator object, not a plain value."""
    expects = 'filter: $not at data.x expects an operator object such as {"$gt": 5}'
    with refused(f"{expects}, got int"):
        compile_filter({"data.x": {"$not": 5}})
    with refused(f"{expects}, got an object without operators"):
        compile_filter({"data.x": {"$not": {"a": 1}}})


def test_refuses_mixed_operator_and_plain_keys():
    """An object mixing $ keys and plain keys is neither a condition nor a value."""
    with refused("filter: cannot mix operators and plain keys at data.x: '$gt' and 'a'"):
        compile_filter({"data.x": {"$gt": 1, "a": 2}})


@pytest.mark.parametrize(
    ("doc", "kind"), [([], "list"), ("type", "str"), (None, "null"), (3, "int")]
)
def test_refuses_non_object_top_level(doc, kind):
    """A filter is a JSON object."""
    with refused(f"filter: must be a JSON object, got {kind}"):
        compile_filter(doc)


def test_refuses_empty_path():
    """An empty key is not a path."""
    with refused("filter: a field path must not be empty"):
        compile_filter({"": 1})


@pytest.mark.parametrize("path", ["data..x", ".data", "data."])
def test_refuses_empty_path_segment(path):
    """A path with an empty segment is refused."""
    with refused(f"filter: empty segment in path {path!r}"):
        compile_filter({path: 1})


def test_message_stays_on_one_line_for_a_path_with_a_newline():
    """A path with a control character is quoted in the message, which stays one line."""
    with refused("filter: $in at 'data.\\nx' expects a list, got int"):
        compile_filter({"data.\nx": {"$in": 1}})


def test_refuses_non_string_keys():
    """Object keys must be strings, at the top and inside values."""
    with refused("filter: object keys must be strings, got int at top level"):
        compile_filter({1: 1})
    with refused("filter: object keys must be strings, got int at data.x.$in[0]"):
        compile_filter({"data.x": {"$in": [{2: 1}]}})


@pytest.mark.parametrize(("value", "kind"), [({1}, "set"), ((1,), "tuple"), (b"a", "bytes")])
def test_refuses_non_json_values(value, kind):
    """Only dict, list, str, int, float, bool and None may appear in a filter."""
    with refused(f"filter: {kind} is not a JSON value at data.x.$eq"):
        compile_filter({"data.x": {"$eq": value}})


def nest(levels: int) -> dict[str, Any]:
    """A valid filter whose containers are nested ``levels`` deep."""
    doc: dict[str, Any] = {"a": 1}
    for _ in range(levels - 1):
        doc = {"$not": doc}
    return doc


def test_accepts_nesting_up_to_32_levels():
    """32 nested containers compile and evaluate."""
    assert compile_filter(nest(32))({"a": 2}) is True  # 31 negations of a false test


def test_refuses_nesting_deeper_than_32_levels():
    """33 nested containers are refused with a message naming the limit."""
    with pytest.raises(FilterError, match=r"^filter: nested deeper than 32 levels at \$not\.\$not"):
        compile_filter(nest(33))


def test_refuses_very_deep_and_cyclic_documents_without_recursion_error():
    """A document deeper than the interpreter's stack, or cyclic, is a FilterError."""
    with pytest.raises(FilterError, match="nested deeper than 32 levels"):
        compile_filter(nest(5000))
    cyclic: dict[str, Any] = {}
    cyclic["a"] = cyclic
    with pytest.raises(FilterError, match="nested deeper than 32 levels"):
        compile_filter(cyclic)


# --- parse_filter ------------------------------------------------------------


def test_parse_filter_returns_the_document():
    """parse_filter returns the parsed document, ready to store."""
    text = '{"data.purchase.total": {"$gt": 100}}'
    assert parse_filter(text) == {"data.purchase.total": {"$gt": 100}}


def test_parse_filter_refuses_invalid_json():
    """Text that is not JSON is refused with the parser's reason."""
    with refused("filter: not valid JSON: unexpected end of data: line 1 column 2 (char 1)"):
        parse_filter("{")


def test_parse_filter_refuses_an_invalid_filter():
    """Valid JSON that is not a valid filter is refused like compile_filter refuses it."""
    with refused("filter: $in at data.x expects a list, got str"):
        parse_filter('{"data.x": {"$in": "a"}}')


def test_public_api():
    """The module exports exactly its public API."""
    assert sorted(filters.__all__) == ["MATCH_ALL", "Predicate", "compile_filter", "parse_filter"]


# --- a reference interpreter -------------------------------------------------
# Deliberately naive: it re-reads the document for every envelope and shares no
# code with the module, so agreement on generated inputs means something.

REF_FLAGS = {"i": re.I, "m": re.M, "s": re.S}
REF_ORDER = {"$gt": operator.gt, "$gte": operator.ge, "$lt": operator.lt, "$lte": operator.le}


def ref_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


def ref_canon(value: Any) -> Any:
    """A hashable canonical form in which equal JSON values are equal."""
    kind = ref_kind(value)
    if kind == "list":
        return (kind, tuple(ref_canon(item) for item in value))
    if kind == "dict":
        return (kind, tuple(sorted((k, ref_canon(v)) for k, v in value.items())))
    return (kind, value)


def ref_reach(value: Any, segments: list[str]) -> list[Any]:
    if not segments:
        return [value]
    head, rest = segments[0], segments[1:]
    if isinstance(value, dict):
        return ref_reach(value[head], rest) if head in value else []
    if not isinstance(value, list):
        return []
    out = []
    if head.isdigit() and int(head) < len(value):
        out += ref_reach(value[int(head)], rest)
    for item in value:
        if isinstance(item, dict) and head in item:
            out += ref_reach(item[head], rest)
    return out


def ref_any(values: list[Any], test) -> bool:
    candidates = values + [item for v in values if isinstance(v, list) for item in v]
    return any(test(c) for c in candidates)


def ref_is_operators(condition: Any) -> bool:
    return isinstance(condition, dict) and bool(condition) and all(k.startswith("$") for k in condition)


def ref_condition(values: list[Any], condition: Any) -> bool:
    if not ref_is_operators(condition):
        return ref_any(values, lambda v: ref_canon(v) == ref_canon(condition))
    flags = 0
    for letter in condition.get("$options", ""):
        flags |= REF_FLAGS[letter]
    for op, arg in condition.items():
        if op == "$eq":
            ok = ref_condition(values, {"$in": [arg]})
        elif op == "$ne":
            ok = not ref_condition(values, {"$eq": arg})
        elif op == "$in":
            ok = ref_any(values, lambda v: ref_canon(v) in {ref_canon(a) for a in arg})
        elif op == "$nin":
            ok = not ref_condition(values, {"$in": arg})
        elif op == "$exists":
            ok = (len(values) > 0) == arg
        elif op == "$regex":
            ok = ref_any(values, lambda v: isinstance(v, str) and bool(re.search(arg, v, flags)))
        elif op == "$not":
            ok = not ref_condition(values, arg)
        elif op == "$options":
            ok = True
        else:
            ok = ref_any(
                values,
                lambda v: ref_kind(v) == ref_kind(arg) in ("number", "str")
                and REF_ORDER[op](v, arg),
            )
        if not ok:
            return False
    return True


def reference(doc: dict[str, Any], envelope: dict[str, Any]) -> bool:
    for key, value in doc.items():
        if key == "$and":
            ok = all(reference(sub, envelope) for sub in value)
        elif key == "$or":
            ok = any(reference(sub, envelope) for sub in value)
        elif key == "$not":
            ok = not reference(value, envelope)
        else:
            ok = ref_condition(ref_reach(envelope, key.split(".")), condition=value)
        if not ok:
            return False
    return True


# --- generated documents and envelopes --------------------------------------

# Few keys and few values, so that generated paths and operands often hit.
KEYS = st.sampled_from(["a", "b", "0"])
SCALARS = st.sampled_from(
    [None, True, False, 0, 1, 2, 0.0, 1.0, 1.5, "", "a", "b", "A", "ab", "b\na"]
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=6,
)
ENVELOPES = st.dictionaries(KEYS, JSON, max_size=4)
PATHS = st.lists(KEYS, min_size=1, max_size=3).map(".".join)
ORDERABLE = st.one_of(st.integers(0, 2), st.sampled_from([0.5, 1.0, "a", "ab", "b"]))
REGEXES = st.sampled_from(["a", "^a", "b$", "^$", "a.b", "A|b", "^b$"])
REGEX_OPTIONS = st.sampled_from(["", "i", "m", "s", "ims"])


def merge(fragments: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for fragment in fragments:
        merged.update(fragment)
    return merged


def single(ops: list[str], operands: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(lambda op, operand: {op: operand}, st.sampled_from(ops), operands)


def conditions(values, orderables) -> st.SearchStrategy[Any]:
    """Field conditions: a plain value (implicit $eq) or an operator object."""
    fragments = st.one_of(
        single(["$eq", "$ne"], values),
        single(["$in", "$nin"], st.lists(values, max_size=3)),
        single(list(REF_ORDER), orderables),
        single(["$exists"], st.booleans()),
        single(["$regex"], REGEXES),
        st.builds(lambda p, o: {"$regex": p, "$options": o}, REGEXES, REGEX_OPTIONS),
    )
    operators = st.recursive(
        st.lists(fragments, min_size=1, max_size=2).map(merge),
        lambda inner: st.builds(
            lambda ops, rest: rest | {"$not": ops},
            inner,
            st.lists(fragments, max_size=1).map(merge),
        ),
        max_leaves=3,
    )
    # A plain value never has $ keys: KEYS has none.
    return st.one_of(values, operators)


def filter_docs(fields) -> st.SearchStrategy[dict[str, Any]]:
    """Valid filter documents made of the given (path, condition) fields."""
    plain = st.lists(fields, min_size=1, max_size=2).map(dict)
    subs = lambda inner: st.lists(inner, min_size=1, max_size=2)  # noqa: E731
    return st.recursive(
        plain,
        lambda inner: st.lists(
            st.one_of(
                st.builds(lambda docs: {"$and": docs}, subs(inner)),
                st.builds(lambda docs: {"$or": docs}, subs(inner)),
                st.builds(lambda doc: {"$not": doc}, inner),
                plain,
            ),
            min_size=1,
            max_size=2,
        ).map(merge),
        max_leaves=4,
    )


ANY_FIELD = st.tuples(PATHS, conditions(JSON, ORDERABLE))
FILTER_DOCS = filter_docs(ANY_FIELD)


def reachable(value: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, Any]]:
    """(path, value) pairs found in ``value``: by key, by index, and through lists."""
    found = []
    if isinstance(value, dict):
        for key, item in value.items():
            found.append((".".join((*prefix, key)), item))
            found += reachable(item, (*prefix, key))
    elif isinstance(value, list) and prefix:
        for index, item in enumerate(value):
            found.append((".".join((*prefix, str(index))), item))
            found += reachable(item, (*prefix, str(index)))
            if isinstance(item, dict):
                found += reachable(item, prefix)
    return found


def near(value: Any) -> list[Any]:
    """Operands that may match ``value``: itself, its elements, and lookalikes of other types."""
    operands = [value, *(value if isinstance(value, list) else [])]
    for item in list(operands):
        if ref_kind(item) in ("bool", "number"):
            operands += [int(item), float(item), str(item)]
            if item in (0, 1):
                operands.append(bool(item))
    return operands


def condition_near(value: Any) -> st.SearchStrategy[Any]:
    operands = near(value)
    ordered = [v for v in operands if ref_kind(v) in ("number", "str")]
    orderables = st.sampled_from(ordered) | ORDERABLE if ordered else ORDERABLE
    return conditions(st.sampled_from(operands) | JSON, orderables)


@st.composite
def cases(draw) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A filter mostly written against an envelope's own paths and values, and envelopes."""
    envelope = draw(ENVELOPES)
    docs = FILTER_DOCS
    if found := reachable(envelope):
        hits = st.sampled_from(found).flatmap(
            lambda hit: st.tuples(st.just(hit[0]), condition_near(hit[1]))
        )
        # A single field is the most sensitive probe; larger documents mix in misses.
        docs = hits.map(lambda hit: dict([hit])) | filter_docs(st.one_of(hits, hits, ANY_FIELD))
    doc = draw(docs)
    return doc, [envelope, *draw(st.lists(ENVELOPES, max_size=2))]


@PROPERTY
@given(case=cases())
def test_compiled_filter_agrees_with_the_reference_interpreter(case):
    """compile_filter(doc)(envelope) equals a naive interpretation of the same semantics."""
    doc, envelopes = case
    predicate = compile_filter(doc)
    for envelope in envelopes:
        assert predicate(envelope) is reference(doc, envelope)


FUZZ_KEYS = st.sampled_from(
    ["a", "b.c", "0", "", "a..b", ".a", "$and", "$or", "$not", "$eq", "$ne", "$gt", "$gte", "$lt",
     "$lte", "$in", "$nin", "$exists", "$regex", "$options", "$where", "$", "a\nb"]
)
FUZZ_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=6),
    st.sampled_from(["i", "ims", "g", "[", "(a", "a{2,1}", "(?i)x"]),
)
FUZZ_JSON = st.recursive(
    FUZZ_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(FUZZ_KEYS, inner, max_size=3),
    max_leaves=12,
)
WILD_ENVELOPES = st.dictionaries(
    st.one_of(KEYS, st.text(max_size=3)),
    st.recursive(
        st.one_of(FUZZ_SCALARS, SCALARS),
        lambda inner: st.lists(inner, max_size=3)
        | st.dictionaries(KEYS | st.text(max_size=2), inner, max_size=3),
        max_leaves=10,
    ),
    max_size=4,
)


def containers(doc: Any) -> list[Any]:
    """Every non-empty object and list inside ``doc``, itself included."""
    found, stack = [], [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, (dict, list)) and node:
            found.append(node)
            stack.extend(node.values() if isinstance(node, dict) else node)
    return found


@st.composite
def damaged_docs(draw) -> dict[str, Any]:
    """A valid document with one value somewhere replaced by arbitrary JSON."""
    doc = copy.deepcopy(draw(FILTER_DOCS))
    node = draw(st.sampled_from(containers(doc)))
    slot = draw(st.sampled_from(list(node) if isinstance(node, dict) else range(len(node))))
    node[slot] = draw(FUZZ_JSON)
    return doc


# Arbitrary JSON rarely gets past the first check, so also try objects of
# paths and operator-like objects, and valid documents with one part damaged.
FUZZ_DOCS = st.one_of(
    FUZZ_JSON,
    st.dictionaries(
        PATHS | FUZZ_KEYS,
        FUZZ_JSON | st.dictionaries(FUZZ_KEYS, FUZZ_JSON, max_size=3),
        max_size=4,
    ),
    damaged_docs(),
)


@PROPERTY
@given(doc=FUZZ_DOCS, envelope=WILD_ENVELOPES)
def test_any_json_document_compiles_or_raises_filter_error(doc, envelope):
    """Arbitrary JSON either compiles to a predicate returning a bool, or raises FilterError."""
    try:
        predicate = compile_filter(doc)
    except FilterError as exc:
        assert str(exc).startswith("filter: ") and "\n" not in str(exc)
        return
    assert isinstance(predicate(envelope), bool)


@PROPERTY
@given(doc=FILTER_DOCS, envelope=WILD_ENVELOPES)
def test_compiled_filter_never_raises_on_arbitrary_envelopes(doc, envelope):
    """A valid filter evaluated on any JSON-like envelope returns a bool and never raises."""
    assert isinstance(compile_filter(doc)(envelope), bool)


@pytest.mark.parametrize("pattern", ["(a+)+$", "(a*)*b", "(x|y+)*", "(a|a)*$", "^(a|aa)+$",
                                     "^(a?){25}a{25}$"])
def test_catastrophic_backtracking_patterns_match_in_linear_time(pattern):
    """Patterns that take exponential time in a backtracking engine answer at once (RE2)."""
    import time

    predicate = compile_filter({"data.x": {"$regex": pattern}})
    started = time.perf_counter()
    for _ in range(10):
        predicate({"data": {"x": "a" * 5000 + "!"}})
    assert time.perf_counter() - started < 5.0


def test_backreferences_and_lookarounds_are_refused_with_the_reason():
    """RE2 has no backtracking constructs: they are refused when the filter is saved."""
    with pytest.raises(FilterError, match=r"invalid \$regex at data.x: invalid perl operator"):
        compile_filter({"data.x": {"$regex": "(?=a)b"}})


def test_overlong_regex_is_refused():
    """Patterns are bounded in length."""
    with pytest.raises(FilterError, match="longer than 512"):
        compile_filter({"data.x": {"$regex": "a" * 513}})


@pytest.mark.parametrize("pattern", ["a+b+", r"^[a-z]+@nevent\.es$", "(ab)+", "((a)+)?"])
def test_ordinary_regexes_are_accepted(pattern):
    """Single-level repetition is fine."""
    compile_filter({"data.x": {"$regex": pattern}})
