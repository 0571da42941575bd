"""The SSRF guard's table: which addresses a webhook may reach, and how a refusal is named."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest

from nevent_dispatch.wire import addresses
from nevent_dispatch.wire.addresses import address_problem

UNSPECIFIED = "an unspecified address"
LOOPBACK = "a loopback address"
LINK_LOCAL = "a link-local address"
MULTICAST = "a multicast address"
RESERVED = "a reserved address"
PRIVATE = "a private address"
NON_PUBLIC = "a non-public address"


def problem(address: str) -> str | None:
    return address_problem(ipaddress.ip_address(address))


# (range, an address inside it, the reason, the public address right next to it or None).
RANGES = [
    ("0.0.0.0/8", "0.255.255.255", NON_PUBLIC, "1.0.0.0"),
    ("0.0.0.0/32", "0.0.0.0", UNSPECIFIED, None),
    ("10.0.0.0/8", "10.255.255.255", PRIVATE, "11.0.0.0"),
    ("100.64.0.0/10", "100.127.255.255", NON_PUBLIC, "100.128.0.0"),
    ("127.0.0.0/8", "127.255.255.255", LOOPBACK, "128.0.0.0"),
    ("169.254.0.0/16", "169.254.255.255", LINK_LOCAL, "169.255.0.0"),
    ("172.16.0.0/12", "172.31.255.255", PRIVATE, "172.32.0.0"),
    ("192.0.0.0/24", "192.0.0.255", NON_PUBLIC, "192.0.1.0"),
    ("192.0.2.0/24", "192.0.2.255", NON_PUBLIC, "192.0.3.0"),
    ("192.88.99.0/24", "192.88.99.255", NON_PUBLIC, "192.88.100.0"),
    ("192.168.0.0/16", "192.168.255.255", PRIVATE, "192.169.0.0"),
    ("198.18.0.0/15", "198.19.255.255", NON_PUBLIC, "198.20.0.0"),
    ("198.51.100.0/24", "198.51.100.255", NON_PUBLIC, "198.51.101.0"),
    ("203.0.113.0/24", "203.0.113.255", NON_PUBLIC, "203.0.114.0"),
    ("224.0.0.0/4", "224.0.0.0", MULTICAST, "223.255.255.255"),
    ("240.0.0.0/4", "255.255.255.254", RESERVED, None),
    ("255.255.255.255/32", "255.255.255.255", RESERVED, None),
    ("::/128", "::", UNSPECIFIED, None),
    ("::1/128", "::1", LOOPBACK, None),
    ("::/96", "::8.8.8.8", RESERVED, None),
    ("::ffff:0:0/96", "::ffff:127.0.0.1", LOOPBACK, None),
    ("64:ff9b::/96", "64:ff9b::10.0.0.1", PRIVATE, None),
    ("64:ff9b:1::/48", "64:ff9b:1:ffff:ffff:ffff:ffff:ffff", NON_PUBLIC, None),
    ("100::/64", "100::ffff:ffff:ffff:ffff", NON_PUBLIC, None),
    ("2001::/23", "2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff", RESERVED, "2001:200::"),
    ("2001::/32", "2001::", NON_PUBLIC, "2000:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
    ("2001:2::/48", "2001:2:0:ffff:ffff:ffff:ffff:ffff", NON_PUBLIC, None),
    ("2001:10::/28", "2001:1f:ffff:ffff:ffff:ffff:ffff:ffff", NON_PUBLIC, None),
    ("2001:20::/28", "2001:2f:ffff:ffff:ffff:ffff:ffff:ffff", NON_PUBLIC, "2001:30::"),
    ("2001:db8::/32", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", NON_PUBLIC, "2001:db9::"),
    ("2002::/16", "2002:7f00:1::", LOOPBACK, "2003::"),
    ("3fff::/20", "3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff", NON_PUBLIC, "3fff:1000::"),
    ("5f00::/16", "5f00:ffff:ffff:ffff:ffff:ffff:ffff:ffff", NON_PUBLIC, None),
    ("fc00::/7", "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", PRIVATE, None),
    ("fe80::/10", "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", LINK_LOCAL, None),
    ("fec0::/10", "feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", PRIVATE, None),
    ("ff00::/8", "ff00::", MULTICAST, None),
    ("::/3", "1fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", RESERVED, "2000::"),
    ("4000::/2", "4000::", RESERVED, "3fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
    ("8000::/1", "8000::", RESERVED, None),
]


@pytest.mark.parametrize(("network", "inside", "reason", "outside"), RANGES,
                         ids=[r[0] for r in RANGES])
def test_each_non_public_range_is_refused_with_its_reason_up_to_its_edge(
        network: str, inside: str, reason: str, outside: str | None) -> None:
    """An address at the edge of each range is refused with the range's reason; its neighbour is public."""
    net = ipaddress.ip_network(network)
    assert ipaddress.ip_address(inside) in net
    assert problem(inside) == reason
    if outside is not None:
        neighbour = int(ipaddress.ip_address(outside))
        assert neighbour in (int(net.network_address) - 1, int(net.broadcast_address) + 1)
        assert problem(outside) is None


def test_every_range_in_the_table_is_tested() -> None:
    """No range of the module's table goes without a case here or among the carve-outs."""
    tested = {r[0] for r in RANGES} | set(CARVE_OUTS)
    table = {cidr for cidr, _ in (*addresses.IPV4_RANGES, *addresses.IPV6_RANGES)}
    assert table == tested


CARVE_OUTS = {
    "192.0.0.9/32": ("192.0.0.8", NON_PUBLIC),
    "192.0.0.10/32": ("192.0.0.11", NON_PUBLIC),
    "2001:1::1/128": ("2001:1::", RESERVED),
    "2001:1::2/128": ("2001:1::4", RESERVED),
    "2001:1::3/128": ("2001:1::4", RESERVED),
    "2001:3::/32": ("2001:4::", RESERVED),
    "2001:4:112::/48": ("2001:4:113::", RESERVED),
    "2001:30::/28": ("2001:40::", RESERVED),
}


@pytest.mark.parametrize("network", list(CARVE_OUTS))
def test_globally_reachable_assignments_inside_refused_blocks_are_public(network: str) -> None:
    """Anycast and AS112-style assignments in IETF protocol blocks are allowed; their neighbours are not."""
    net = ipaddress.ip_network(network)
    assert problem(str(net.network_address)) is None
    assert problem(str(net.broadcast_address)) is None
    neighbour, reason = CARVE_OUTS[network]
    assert problem(neighbour) == reason


@pytest.mark.parametrize(("address", "reason"), [
    ("2002:7f00:1::", LOOPBACK),
    ("2002:a9fe:a9fe::", LINK_LOCAL),
    ("2002:a00:1:1234::1", PRIVATE),
    ("2002:808:808::", None),
    ("2002:808:808:ffff:ffff:ffff:ffff:ffff", None),
])
def test_6to4_is_judged_by_the_ipv4_it_embeds(address: str, reason: str | None) -> None:
    """2002::/16 carries an IPv4 in bits 16-48: loopback or link-local inside is refused, public is not."""
    assert problem(address) == reason


@pytest.mark.parametrize(("address", "reason"), [
    ("64:ff9b::10.0.0.1", PRIVATE),
    ("64:ff9b::169.254.169.254", LINK_LOCAL),
    ("64:ff9b::8.8.8.8", None),
    ("::ffff:127.0.0.1", LOOPBACK),
    ("::ffff:10.0.0.1", PRIVATE),
    ("::ffff:8.8.8.8", None),
    ("::127.0.0.2", LOOPBACK),
    ("::8.8.8.8", RESERVED),
])
def test_nat64_mapped_and_compatible_addresses_are_judged_by_the_embedded_ipv4(
        address: str, reason: str | None) -> None:
    """NAT64 and IPv4-mapped reach the embedded IPv4; IPv4-compatible is refused even when it is public."""
    assert problem(address) == reason


@pytest.mark.parametrize("address", ["2001::1", "2001:0:4136:e378:8000:63bf:3fff:fdd2"])
def test_teredo_is_refused(address: str) -> None:
    """Teredo hides its client's IPv4; any 2001::/32 address is refused."""
    assert problem(address) == NON_PUBLIC


def test_site_local_is_refused() -> None:
    """fec0::/10, deprecated but still routed inside some sites, is refused as private."""
    assert problem("fec0::1") == PRIVATE


@pytest.mark.parametrize("address", [
    "8.8.8.8", "1.1.1.1", "9.9.9.9", "93.184.215.14",
    "2606:4700:4700::1111", "2a00:1450:4001::1", "2001:4860:4860::8888",
])
def test_well_known_public_addresses_are_accepted(address: str) -> None:
    """Public resolvers and web hosts on both families pass the guard."""
    assert problem(address) is None


def test_the_table_does_not_lean_on_the_standard_library_flags() -> None:
    """The module classifies with its own table, not ipaddress's is_private/is_global & co."""
    source = Path(addresses.__file__).read_text(encoding="utf-8")
    for flag in ("is_private", "is_global", "is_reserved", "is_loopback", "is_link_local",
                 "is_multicast", "is_unspecified", "is_site_local", "ipv4_mapped", "sixtofour",
                 "teredo"):
        assert f".{flag}" not in source, flag


def test_the_sender_does_not_import_the_registry() -> None:
    """Importing the sender loads the address table without loading nevent_dispatch.registry."""
    code = "import sys, nevent_dispatch.pipeline.sender; print('nevent_dispatch.registry' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == "False"


def test_public_api_is_pinned() -> None:
    """The names the registry and the sender import."""
    assert addresses.__all__ == ["IPAddress", "address_problem"]
