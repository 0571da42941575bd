"""Webhook filters: Mongo-style JSON documents compiled once into predicates.

Owns the dialect webhook users know from Convoy and Hookdeck, its validation
and its compilation into nested closures. A bad document is refused with one
``FilterError`` line naming the offending part, so it fails when the webhook
is saved, not when an event arrives. It must not touch storage or webhooks,
nor raise while matching: an envelope that does not fit (a missing path, a
string where a number was expected) is simply ``False``.

Semantics worth knowing:

* ``{"data.x": 5}`` is ``{"data.x": {"$eq": 5}}``; an object without ``$``
  keys is compared as a whole, key order ignored (``{}`` included).
* A path walks objects by key; on a list it continues into every object
  element, and a numeric segment also indexes it (``tickets.0.type``). A field
  matches if any reached value does; a reached list matches as a whole or by
  any element (``{"data.fan.tags": "vip"}`` matches ``["techno", "vip"]``).
* ``$ne``, ``$nin`` and a field ``$not`` negate the whole path, so they hold
  when it is missing. ``$exists`` counts ``null`` as present.
* Booleans are not numbers; ints and floats compare numerically; values of
  different types never match.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Callable, Mapping
from typing import Any

import orjson
import re2

from ..errors import FilterError

__all__ = ["MATCH_ALL", "Predicate", "compile_filter", "parse_filter"]

Predicate = Callable[[Mapping[str, Any]], bool]
# A field's condition sees every value its path reached (empty when missing).
_ValuesTest = Callable[[list[Any]], bool]
_ValueTest = Callable[[Any], bool]
# A path step: the key, and the same key as a list index when it is numeric.
_Step = tuple[str, int | None]

# Containers nested deeper are refused: it bounds compile recursion and
# closure depth, and no real filter comes near it.
_MAX_DEPTH = 32

_ORDERINGS: dict[str, Callable[[Any, Any], bool]] = {
    "$gt": operator.gt, "$gte": operator.ge, "$lt": operator.lt, "$lte": operator.le
}
_FIELD_OPERATORS = frozenset(
    {"$eq", "$ne", "$in", "$nin", "$exists", "$regex", "$options", "$not", *_ORDERINGS}
)
#: $options letters, passed to RE2 as inline flags.
_REGEX_FLAGS = frozenset("ims")


def _match_all(envelope: Mapping[str, Any]) -> bool:
    return True


#: The predicate of a webhook without a filter.
MATCH_ALL: Predicate = _match_all


def parse_filter(text: str) -> object:
    """Parse a filter from JSON text and check that it compiles; return the document."""
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise FilterError(f"filter: not valid JSON: {exc}") from exc
    compile_filter(doc)
    return doc


def compile_filter(doc: object) -> Predicate:
    """Compile a filter document into a predicate over event envelopes.

    Raises ``FilterError`` naming the offending part when ``doc`` is invalid.
    """
    if not isinstance(doc, dict):
        raise FilterError(f"filter: must be a JSON object, got {_type_name(doc)}")
    _check_shape(doc)
    if not doc:
        return MATCH_ALL
    return _compile_doc(doc, None)


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _label(path: str) -> str:
    # A key with a newline or control character must not break the one-line message.
    return path if path.isprintable() else repr(path)


def _check_shape(doc: dict[Any, Any]) -> None:
    """Refuse non-JSON values, non-string keys and excessive nesting.

    Iterative, so a pathologically deep (or cyclic) document is refused here
    instead of overflowing the stack in the recursive compiler.
    """
    stack: list[tuple[object, int, str]] = [(doc, 1, "top level")]
    while stack:
        value, depth, where = stack.pop()
        if isinstance(value, (dict, list)) and depth > _MAX_DEPTH:
            raise FilterError(f"filter: nested deeper than {_MAX_DEPTH} levels at {where}")
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise FilterError(
                        f"filter: object keys must be strings, got {_type_name(key)} at {where}"
                    )
                label = _label(key)
                stack.append((item, depth + 1, label if depth == 1 else f"{where}.{label}"))
        elif isinstance(value, list):
            stack.extend((item, depth + 1, f"{where}[{i}]") for i, item in enumerate(value))
        elif not (value is None or isinstance(value, (str, int, float))):
            raise FilterError(f"filter: {type(value).__name__} is not a JSON value at {where}")


# --- documents and logical operators -------------------------------------


def _compile_doc(doc: dict[str, Any], where: str | None) -> Predicate:
    """Compile a non-empty filter object; ``where`` names it in errors (None at top)."""
    checks: list[Predicate] = []
    for key, value in doc.items():
        at = f"{where}.{key}" if where else key
        if key in ("$and", "$or"):
            if not isinstance(value, list):
                raise FilterError(
                    f"filter: {at} expects a list of filter objects, got {_type_name(value)}"
                )
            if not value:
                raise FilterError(f"filter: {at} expects a non-empty list, got an empty list")
            subs = [_compile_sub(sub, f"{at}[{i}]") for i, sub in enumerate(value)]
            checks.append(_all_of(subs) if key == "$and" else _any_of(subs))
        elif key == "$not":
            checks.append(_negate(_compile_sub(value, at)))
        elif key.startswith("$"):
            raise FilterError(
                f"filter: unknown operator {key!r} at {where or 'top level'}"
                " (expected $and, $or, $not or a field path)"
            )
        else:
            checks.append(_compile_field(key, value))
    return _all_of(checks)


def _compile_sub(doc: object, where: str) -> Predicate:
    if not isinstance(doc, dict):
        raise FilterError(f"filter: {where} must be a JSON object, got {_type_name(doc)}")
    if not doc:
        # An empty operand is a filter that was left unfinished, not a wish to
        # match everything (or, under $not, nothing).
        raise FilterError(f"filter: {where} must not be an empty object")
    return _compile_doc(doc, where)


# Combinators shared by envelope predicates and field tests.
def _all_of(tests: list[Callable[[Any], bool]]) -> Callable[[Any], bool]:
    if len(tests) == 1:
        return tests[0]
    frozen = tuple(tests)
    return lambda arg: all(test(arg) for test in frozen)


def _any_of(tests: list[Callable[[Any], bool]]) -> Callable[[Any], bool]:
    frozen = tuple(tests)
    return lambda arg: any(test(arg) for test in frozen)


def _negate(test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda arg: not test(arg)


# --- paths -----------------------------------------------------------------


def _compile_field(path: str, condition: object) -> Predicate:
    steps = _parse_path(path)
    test = _compile_condition(condition, _label(path))
    return lambda envelope: test(_resolve(envelope, steps))


def _parse_path(path: str) -> tuple[_Step, ...]:
    if not path:
        raise FilterError("filter: a field path must not be empty")
    segments = path.split(".")
    if "" in segments:
        raise FilterError(f"filter: empty segment in path {path!r}")
    return tuple((segment, _as_index(segment)) for segment in segments)


def _as_index(segment: str) -> int | None:
    # Longer digit strings cannot index any real list, and int() refuses
    # thousands of digits.
    if segment.isascii() and segment.isdigit() and len(segment) <= 18:
        return int(segment)
    return None


def _resolve(envelope: Mapping[str, Any], steps: tuple[_Step, ...]) -> list[Any]:
    """Every value the path reaches, following lists into their elements."""
    current: list[Any] = [envelope]
    for key, index in steps:
        reached: list[Any] = []
        for value in current:
            if isinstance(value, Mapping):
                if key in value:
                    reached.append(value[key])
            elif isinstance(value, list):
                if index is not None and index < len(value):
                    reached.append(value[index])
                reached.extend(
                    item[key] for item in value if isinstance(item, Mapping) and key in item
                )
        if not reached:
            return reached
        current = reached
    return current


# --- field conditions ------------------------------------------------------


def _is_operator_object(condition: object, path: str) -> bool:
    if not isinstance(condition, dict) or not condition:
        return False
    dollar = [key for key in condition if key.startswith("$")]
    if len(dollar) == len(condition):
        return True
    if dollar:
        plain = next(key for key in condition if not key.startswith("$"))
        raise FilterError(
            f"filter: cannot mix operators and plain keys at {path}: {dollar[0]!r} and {plain!r}"
        )
    return False


def _compile_condition(condition: object, path: str) -> _ValuesTest:
    if not _is_operator_object(condition, path):
        return _any_value(_equals(condition))
    assert isinstance(condition, dict)
    for op in condition:
        if op not in _FIELD_OPERATORS:
            raise FilterError(f"filter: unknown operator {op!r} at {path}")
    if "$options" in condition and "$regex" not in condition:
        raise FilterError(f"filter: $options at {path} requires a sibling $regex")
    tests = [
        _compile_operator(op, operand, condition, path)
        for op, operand in condition.items()
        if op != "$options"
    ]
    return _all_of(tests)


def _compile_operator(op: str, operand: Any, condition: dict[str, Any], path: str) -> _ValuesTest:
    if op in ("$eq", "$ne"):
        test = _any_value(_equals(operand))
    elif op in ("$in", "$nin"):
        if not isinstance(operand, list):
            raise FilterError(f"filter: {op} at {path} expects a list, got {_type_name(operand)}")
        test = _any_value(_member_of(operand))
    elif op in _ORDERINGS:
        test = _any_value(_ordered(op, operand, path))
    elif op == "$regex":
        test = _any_value(_regex(operand, condition.get("$options"), path))
    elif op == "$exists":
        if not isinstance(operand, bool):
            raise FilterError(
                f"filter: $exists at {path} expects true or false, got {_type_name(operand)}"
            )
        return (lambda values: bool(values)) if operand else (lambda values: not values)
    else:  # $not: the only field operator left
        if not _is_operator_object(operand, path):
            got = "an object without operators" if isinstance(operand, dict) else None
            raise FilterError(
                f'filter: $not at {path} expects an operator object such as {{"$gt": 5}},'
                f" got {got or _type_name(operand)}"
            )
        return _negate(_compile_condition(operand, path))
    return _negate(test) if op in ("$ne", "$nin") else test


def _any_value(test: _ValueTest) -> _ValuesTest:
    """Lift a test on one value to the reached values, looking inside reached lists."""

    def any_value(values: list[Any]) -> bool:
        for value in values:
            if test(value):
                return True
            if isinstance(value, list) and any(test(item) for item in value):
                return True
        return False

    return any_value


def _equals(operand: Any) -> _ValueTest:
    # A private copy, so a caller mutating its document cannot change the predicate.
    frozen = copy.deepcopy(operand)
    return lambda value: _same(value, frozen)


def _member_of(operands: list[Any]) -> _ValueTest:
    frozen = copy.deepcopy(operands)
    return lambda value: any(_same(value, operand) for operand in frozen)


def _same(value: Any, operand: Any) -> bool:
    """JSON equality: bools are not numbers, 1 == 1.0, object key order is ignored."""
    if isinstance(operand, bool) or isinstance(value, bool):
        return value is operand
    if isinstance(operand, (int, float)):
        return isinstance(value, (int, float)) and value == operand
    if isinstance(operand, str):
        return isinstance(value, str) and value == operand
    if operand is None:
        return value is None
    if isinstance(operand, list):
        return (
            isinstance(value, list)
            and len(value) == len(operand)
            and all(_same(v, o) for v, o in zip(value, operand, strict=True))
        )
    return (
        isinstance(value, Mapping)
        and len(value) == len(operand)
        and all(key in value and _same(value[key], o) for key, o in operand.items())
    )


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _ordered(op: str, operand: object, path: str) -> _ValueTest:
    compare = _ORDERINGS[op]
    if isinstance(operand, str):
        return lambda value: isinstance(value, str) and compare(value, operand)
    if _is_number(operand):
        return lambda value: _is_number(value) and compare(value, operand)
    raise FilterError(
        f"filter: {op} at {path} expects a number or a string, got {_type_name(operand)}"
    )


def _regex(pattern: object, options: object, path: str) -> _ValueTest:
    if not isinstance(pattern, str):
        raise FilterError(f"filter: $regex at {path} expects a string, got {_type_name(pattern)}")
    flags = ""
    if options is not None:
        if not isinstance(options, str):
            raise FilterError(
                f"filter: $options at {path} expects a string, got {_type_name(options)}"
            )
        for letter in options:
            if letter not in _REGEX_FLAGS:
                raise FilterError(
                    f"filter: $options at {path} has unsupported flag {letter!r} (allowed: ims)"
                )
        flags = "".join(sorted(set(options)))
    if len(pattern) > MAX_REGEX_CHARS:
        raise FilterError(f"filter: $regex at {path} is longer than {MAX_REGEX_CHARS} characters")
    # RE2 matches in time linear in the input, whatever the pattern: a customer's
    # filter can never stall delivery with catastrophic backtracking (Python's re can).
    settings = re2.Options()
    settings.log_errors = False
    try:
        compiled = re2.compile(f"(?{flags}){pattern}" if flags else pattern, settings)
    except re2.error as exc:
        reason = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(
            exc.args[0], bytes) else str(exc)
        raise FilterError(f"filter: invalid $regex at {path}: {reason}") from None
    search = compiled.search
    return lambda value: isinstance(value, str) and search(value) is not None


#: Longest $regex accepted.
MAX_REGEX_CHARS = 512
