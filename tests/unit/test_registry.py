"""Webhook validation: what the registry accepts and how it says no (pure, no DNS)."""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from typing import Any

import pytest

from nevent_dispatch import registry
from nevent_dispatch.catalog import EVENT_TYPES
from nevent_dispatch.errors import UrlError, ValidationError
from nevent_dispatch.registry import (
    check_destination,
    generate_secret,
    mask_secret,
    new_webhook_id,
    parse_events,
    validate_name,
    validate_org,
    validate_rate_limit,
    validate_secret,
    validate_url,
)
from nevent_dispatch.wire.addresses import address_problem

# -- URLs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "https://hooks.example.com/nevent",
    "https://hooks.example.com:8443/nevent?source=nevent&v=1",
    "https://127.0.0.1:9/hook",
    "https://[2001:db8::1]/hook",
    "HTTPS://Example.COM/",
    "https://bücher.example/hook",
])
def test_valid_https_urls_are_returned_unchanged(url: str) -> None:
    """A well-formed https:// URL is accepted as given."""
    assert validate_url(url, allow_http=False) == url


def test_http_url_is_refused_unless_allow_http() -> None:
    """http:// is refused with a hint naming the development setting, and accepted with it."""
    with pytest.raises(UrlError) as info:
        validate_url("http://hooks.example.com/x", allow_http=False)
    assert str(info.value) == (
        "url: must be https:// (set delivery.allow_http = true for local development)")
    url = "http://hooks.example.com/x"
    assert validate_url(url, allow_http=True) == url


@pytest.mark.parametrize(("url", "message"), [
    ("javascript:alert(1)", "url: unsupported scheme 'javascript'"),
    ("ftp://files.example.com/x", "url: unsupported scheme 'ftp'"),
    ("file:///etc/passwd", "url: unsupported scheme 'file'"),
    ("hooks.example.com/x", "url: missing scheme"),
    ("//hooks.example.com/x", "url: missing scheme"),
    ("https:///x", "url: missing host"),
    ("https://", "url: missing host"),
    ("https://user:pass@hooks.example.com/x", "url: must not contain credentials"),
    ("https://token@hooks.example.com/x", "url: must not contain credentials"),
    ("https://hooks.example.com/x#frag", "url: must not contain a fragment"),
    ("https://hooks.example.com/x#", "url: must not contain a fragment"),
    ("https://hooks.example.com:0/x", "url: invalid port"),
    ("https://hooks.example.com:65536/x", "url: invalid port"),
    ("https://hooks.example.com:http/x", "url: invalid port"),
    ("https://hooks.example.com:/x", "url: invalid port"),
    ("https://hooks.example.com/a b", "url: must not contain spaces"),
    (" https://hooks.example.com/x", "url: must not contain spaces"),
    ("https://hooks.example.com/x\n", "url: must not contain spaces"),
    ("https://hooks.example.com/\x00", "url: must not contain spaces or control characters"),
    ("https://hooks..example.com/x", "url: invalid host"),
    ("https://ho<st.example.com/x", "url: invalid host"),
    ("https://[::1/x", "url: not a valid URL"),
    ("", "url: must not be empty"),
    ("https://hooks.example.com/" + "a" * 2048, "url: must be at most 2048 characters"),
])
def test_bad_urls_are_refused_with_a_message_naming_the_problem(url: str, message: str) -> None:
    """Each kind of bad URL gets its own one-line UrlError starting with 'url: '."""
    with pytest.raises(UrlError) as info:
        validate_url(url, allow_http=True)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_url_of_exactly_2048_characters_is_accepted() -> None:
    """The length limit is inclusive."""
    url = "https://hooks.example.com/"
    url += "a" * (2048 - len(url))
    assert validate_url(url, allow_http=False) == url


# -- destinations ----------------------------------------------------------------------------


@pytest.mark.parametrize(("address", "problem"), [
    ("127.0.0.1", "a loopback address"),
    ("10.1.2.3", "a private address"),
    ("192.168.0.10", "a private address"),
    ("172.16.5.4", "a private address"),
    ("fc00::1", "a private address"),
    ("169.254.169.254", "a link-local address"),
    ("fe80::1", "a link-local address"),
    ("::1", "a loopback address"),
    ("::ffff:127.0.0.1", "a loopback address"),
    ("::ffff:10.0.0.1", "a private address"),
    ("224.0.0.1", "a multicast address"),
    ("ff02::1", "a multicast address"),
    ("0.0.0.0", "an unspecified address"),
    ("::", "an unspecified address"),
    ("240.0.0.1", "a reserved address"),
    ("100.64.0.1", "a non-public address"),
    ("8.8.8.8", None),
    ("2606:4700:4700::1111", None),
    ("::ffff:8.8.8.8", None),
])
def test_address_problem_names_each_kind_of_non_public_address(address: str,
                                                               problem: str | None) -> None:
    """Loopback, private, link-local, multicast and reserved addresses are named; public is None."""
    assert address_problem(ipaddress.ip_address(address)) == problem


def test_destination_ip_literal_in_a_private_range_is_refused_without_dns(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An IP literal is classified directly, and the message names the setting that allows it."""
    monkeypatch.setattr(socket, "getaddrinfo", _no_dns)
    with pytest.raises(UrlError) as info:
        check_destination("https://169.254.169.254/latest", allow_private=False)
    assert str(info.value) == (
        "url: host '169.254.169.254' resolves to 169.254.169.254, a link-local address "
        "(set delivery.allow_private_networks = true to allow)")
    with pytest.raises(UrlError, match="a loopback address"):
        check_destination("https://[::ffff:127.0.0.1]:8443/x", allow_private=False)
    check_destination("https://127.0.0.1:9/hook", allow_private=True)
    check_destination("https://8.8.8.8/hook", allow_private=False)


def test_destination_is_refused_when_any_resolved_address_is_private(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A name resolving to a public and a private address is refused for the private one."""
    monkeypatch.setattr(socket, "getaddrinfo", _fake_dns({
        "hooks.example.com": ["93.184.216.34", "10.0.0.7"],
        "localhost": ["127.0.0.1"],
    }))
    with pytest.raises(UrlError) as info:
        check_destination("https://hooks.example.com/x", allow_private=False)
    assert "resolves to 10.0.0.7, a private address" in str(info.value)
    with pytest.raises(UrlError) as info:
        check_destination("https://localhost/x", allow_private=False)
    assert str(info.value) == (
        "url: host 'localhost' resolves to 127.0.0.1, a loopback address "
        "(set delivery.allow_private_networks = true to allow)")
    check_destination("https://hooks.example.com/x", allow_private=True)


def test_destination_resolving_only_to_public_addresses_is_accepted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A host whose every address is public passes."""
    monkeypatch.setattr(socket, "getaddrinfo", _fake_dns({"hooks.example.com": ["93.184.216.34"]}))
    check_destination("https://hooks.example.com/x", allow_private=False)


def test_unresolvable_host_is_refused_even_when_private_networks_are_allowed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A host that does not resolve cannot receive anything."""
    monkeypatch.setattr(socket, "getaddrinfo", _fake_dns({}))
    with pytest.raises(UrlError) as info:
        check_destination("https://x.invalid/hook", allow_private=True)
    assert str(info.value) == "url: cannot resolve host 'x.invalid'"


def test_destination_without_resolving_checks_only_literals_and_localhost(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """resolve=False makes no DNS query; localhost names still count as loopback."""
    monkeypatch.setattr(socket, "getaddrinfo", _no_dns)
    check_destination("https://hooks.example.com/x", allow_private=False, resolve=False)
    with pytest.raises(UrlError, match="a loopback address"):
        check_destination("https://api.localhost/x", allow_private=False, resolve=False)
    with pytest.raises(UrlError, match="a private address"):
        check_destination("https://10.0.0.1/x", allow_private=False, resolve=False)


def _no_dns(*args: object, **kwargs: object) -> None:
    raise AssertionError("no DNS query expected")


def _fake_dns(table: dict[str, list[str]]) -> Callable[..., list[tuple[Any, ...]]]:
    def getaddrinfo(host: str, port: int, *args: object, **kwargs: object) -> list[tuple[Any, ...]]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
             (a, port, 0, 0) if ":" in a else (a, port))
            for a in table[host]
        ]

    return getaddrinfo


# -- events ----------------------------------------------------------------------------------


def test_there_are_the_seventeen_documented_event_types() -> None:
    """The catalogue the subscriptions are checked against is the customer docs' list."""
    assert len(EVENT_TYPES) == 17


def test_star_subscribes_to_everything_and_subsumes_other_entries() -> None:
    """'*' alone, or with other entries, is the subscription to every type."""
    assert parse_events("*") == ("*",)
    assert parse_events("purchase.completed, *") == ("*",)
    assert parse_events(["*"]) == ("*",)


def test_names_and_prefix_patterns_are_kept_in_order_without_duplicates() -> None:
    """Comma-separated names and 'prefix.*' patterns are trimmed, deduplicated, order kept."""
    assert parse_events("purchase.*, fan.created,purchase.*,fan.created") == (
        "purchase.*", "fan.created")
    assert parse_events(["email.opened", "sms.sent,sms.delivered"]) == (
        "email.opened", "sms.sent", "sms.delivered")
    assert parse_events("purchase.completed") == ("purchase.completed",)


def test_typo_in_an_event_type_is_refused_with_a_did_you_mean_hint() -> None:
    """An unknown name suggests the closest documented one."""
    with pytest.raises(ValidationError) as info:
        parse_events("fan.created,purchase.complete")
    assert str(info.value) == (
        "events: unknown event type 'purchase.complete' (did you mean 'purchase.completed'?)")


def test_unknown_event_type_without_a_close_match_points_to_extra_types() -> None:
    """A name nothing like a known type says how to subscribe to a custom type."""
    hint = r"unknown event type 'zzz' \(add it to events.extra_types"
    with pytest.raises(ValidationError, match=hint):
        parse_events("zzz")


def test_pattern_whose_prefix_matches_no_known_type_is_refused() -> None:
    """'prefix.*' must match at least one known type; a typo gets a hint."""
    with pytest.raises(ValidationError) as info:
        parse_events("purchse.*")
    assert str(info.value) == (
        "events: pattern 'purchse.*' matches no known event type (did you mean 'purchase.*'?)")
    with pytest.raises(ValidationError, match="matches no known event type"):
        parse_events("ticket.*")


@pytest.mark.parametrize("spec", ["purch*", "*.completed", "purchase.*.x*", "**"])
def test_other_wildcards_are_refused(spec: str) -> None:
    """Only '*' and a trailing '.*' are patterns."""
    with pytest.raises(ValidationError, match="events: invalid pattern"):
        parse_events(spec)


@pytest.mark.parametrize("spec", ["", " , ", [], [""]])
def test_empty_subscription_is_refused(spec: str | list[str]) -> None:
    """A webhook must subscribe to something."""
    with pytest.raises(ValidationError, match="events: must name at least one event type"):
        parse_events(spec)


def test_extra_types_can_be_subscribed_by_name_and_prefix() -> None:
    """Types configured in events.extra_types are known names and prefixes."""
    extra = ("ticket.scanned", "loyalty.points.added")
    assert parse_events("ticket.scanned,loyalty.*,loyalty.points.*", extra) == (
        "ticket.scanned", "loyalty.*", "loyalty.points.*")
    with pytest.raises(ValidationError, match="unknown event type 'ticket.scanned'"):
        parse_events("ticket.scanned")


# -- secrets ---------------------------------------------------------------------------------


def test_generated_secret_has_the_documented_prefix_and_256_random_bits() -> None:
    """whsec_ followed by 43 URL-safe base64 characters, different every time."""
    secret = generate_secret()
    assert re.fullmatch(r"whsec_[A-Za-z0-9_-]{43}", secret)
    assert generate_secret() != secret
    assert validate_secret(secret) == secret


@pytest.mark.parametrize(("secret", "message"), [
    ("short-secret", "secret: must be at least 16 characters"),
    ("x" * 257, "secret: must be at most 256 characters"),
    ("a secret with spaces", "secret: must not contain spaces"),
    ("tab\tseparated-secret-value", "secret: must not contain spaces"),
])
def test_weak_or_malformed_secrets_are_refused_without_echoing_them(secret: str,
                                                                     message: str) -> None:
    """Secret refusals say what is wrong and never contain the secret."""
    with pytest.raises(ValidationError) as info:
        validate_secret(secret)
    assert str(info.value).startswith(message)
    assert secret not in str(info.value)


def test_secret_of_sixteen_characters_is_accepted() -> None:
    """The minimum length is inclusive."""
    assert validate_secret("0123456789abcdef") == "0123456789abcdef"


@pytest.mark.parametrize("secret", [
    "whsec_k5EKJQnf9sMX2vYzJdHG3L8pR",
    generate_secret(),
    "0123456789abcdef",
    "x" * 256,
])
def test_masked_secret_never_contains_the_whole_secret(secret: str) -> None:
    """The mask shows at most a short prefix, never enough to sign with."""
    masked = mask_secret(secret)
    assert secret not in masked
    assert masked.endswith("****")
    assert len(masked.replace("…", "").replace("*", "")) <= 9


def test_masked_generated_secret_keeps_a_recognisable_prefix() -> None:
    """A long secret shows its first nine characters so an operator can tell secrets apart."""
    assert mask_secret("whsec_k5EKJQnf9sMX2vYzJdHG3L8pRabcdef") == "whsec_k5E…****"


# -- names, organizations, rate limits, ids ----------------------------------------------------


def test_name_is_stripped_and_must_not_be_empty_or_overlong() -> None:
    """A name is trimmed; empty, blank and over-200-character names are refused."""
    assert validate_name("  Mi CRM  ") == "Mi CRM"
    assert validate_name("n" * 200) == "n" * 200
    for bad, message in [("", "name: must not be empty"), ("   ", "name: must not be empty"),
                         ("n" * 201, "name: must be at most 200 characters"),
                         ("a\x00b", "name: must not contain control characters")]:
        with pytest.raises(ValidationError, match=f"^{re.escape(message)}"):
            validate_name(bad)


@pytest.mark.parametrize(("org", "message"), [
    ("", "organization_id: must not be empty"),
    ("org 1", "organization_id: must not contain spaces"),
    ("org_1\n", "organization_id: must not contain spaces"),
    ("o" * 201, "organization_id: must be at most 200 characters"),
])
def test_bad_organization_ids_are_refused(org: str, message: str) -> None:
    """An organization id is a non-empty token without spaces, at most 200 characters."""
    with pytest.raises(ValidationError, match=f"^{re.escape(message)}"):
        validate_org(org)


def test_good_organization_id_is_returned() -> None:
    """A plain token is accepted as is."""
    assert validate_org("org_abcdefghijk") == "org_abcdefghijk"


@pytest.mark.parametrize("limit", [0, -1, 10_000_001, 10**12, True, 1.5, "100"])
def test_impossible_rate_limits_are_refused(limit: object) -> None:
    """Zero, negative, absurd and non-integer limits are refused."""
    with pytest.raises(ValidationError, match="^rate_limit: must be an integer from 1 to 10000000"):
        validate_rate_limit(limit)  # type: ignore[arg-type]


@pytest.mark.parametrize("limit", [1, 1000, 10_000_000])
def test_sane_rate_limits_are_accepted(limit: int) -> None:
    """Limits from 1 to 10 million events per minute are accepted."""
    assert validate_rate_limit(limit) == limit


def test_webhook_ids_are_wh_and_sixteen_hex_digits() -> None:
    """Ids look like wh_0123456789abcdef and do not repeat."""
    ids = {new_webhook_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(re.fullmatch(r"wh_[0-9a-f]{16}", i) for i in ids)


def test_public_api_is_pinned() -> None:
    """The names other modules and the CLI import from the registry."""
    assert set(registry.__all__) >= {
        "address_problem", "check_destination", "create", "delete", "generate_secret",
        "mask_secret", "new_webhook_id", "parse_events", "set_active", "update",
        "validate_name", "validate_org", "validate_rate_limit", "validate_secret",
        "validate_url",
    }
