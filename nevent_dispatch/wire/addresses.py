"""Which IP addresses a webhook may be sent to: the SSRF guard's table of non-public ranges.

Owns ``IPAddress`` and ``address_problem``, and the table behind it: every IPv4
and IPv6 range that is not publicly routable, written out here with a reason
and the RFC that sets it aside. The registry checks a webhook's destination
with it when the webhook is saved; the sender checks every address it is
about to connect to.

It must not consult the standard library's address classification (its tables
change between Python patch releases, and have missed ranges such as 6to4
addresses embedding loopback, or site-local ``fec0::/10``), resolve names, or
strip an IPv6 zone id: callers hand it a bare address. It is called on every
connection, so a lookup is one binary search over integer ranges built once
at import.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["IPAddress", "address_problem"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

UNSPECIFIED = "an unspecified address"
LOOPBACK = "a loopback address"
LINK_LOCAL = "a link-local address"
MULTICAST = "a multicast address"
#: Space set aside for future use, deprecated, or never allocated for unicast.
RESERVED = "a reserved address"
#: Space for use inside one organisation's network (RFC 1918 and its IPv6 siblings).
PRIVATE = "a private address"
#: Special-purpose space that is not routed on the public Internet.
NON_PUBLIC = "a non-public address"
#: A carve-out inside a refused range that is globally reachable after all.
PUBLIC = None


@dataclass(frozen=True, slots=True)
class Embedded:
    """The range carries an IPv4 address at bits ``shift``..``shift + 32`` (from the right).

    The embedded address is judged by the IPv4 table; when it is public the
    verdict is ``otherwise`` (None: the address is public too).
    """

    shift: int
    otherwise: str | None = None


Verdict = str | None | Embedded
V = TypeVar("V", str | None, Verdict)

# The more specific range wins where ranges nest: 0.0.0.0 is "an unspecified
# address" although it is also in 0.0.0.0/8, ::1 is "a loopback address" although
# it is also in ::/96, and a public carve-out beats the block around it.
IPV4_RANGES: tuple[tuple[str, str | None], ...] = (
    # RFC 1122 §3.2.1.3 and RFC 6890: "this host on this network"; only a source address.
    ("0.0.0.0/8", NON_PUBLIC),
    # RFC 1122 §3.2.1.3: the unspecified address (Linux connects it to the local host).
    ("0.0.0.0/32", UNSPECIFIED),
    # RFC 1918: private-use networks.
    ("10.0.0.0/8", PRIVATE),
    # RFC 6598: shared address space for carrier-grade NAT.
    ("100.64.0.0/10", NON_PUBLIC),
    # RFC 1122 §3.2.1.3: loopback.
    ("127.0.0.0/8", LOOPBACK),
    # RFC 3927: link-local (cloud metadata services live at 169.254.169.254).
    ("169.254.0.0/16", LINK_LOCAL),
    # RFC 1918: private-use networks.
    ("172.16.0.0/12", PRIVATE),
    # RFC 6890 §2.2.2: IETF protocol assignments (DS-Lite, NAT64 discovery, ...).
    ("192.0.0.0/24", NON_PUBLIC),
    # RFC 7723: Port Control Protocol anycast, globally reachable.
    ("192.0.0.9/32", PUBLIC),
    # RFC 8155: TURN server anycast, globally reachable.
    ("192.0.0.10/32", PUBLIC),
    # RFC 5737: documentation (TEST-NET-1).
    ("192.0.2.0/24", NON_PUBLIC),
    # RFC 7526: the deprecated 6to4 relay anycast prefix (RFC 3068).
    ("192.88.99.0/24", NON_PUBLIC),
    # RFC 1918: private-use networks.
    ("192.168.0.0/16", PRIVATE),
    # RFC 2544: network device benchmarking.
    ("198.18.0.0/15", NON_PUBLIC),
    # RFC 5737: documentation (TEST-NET-2).
    ("198.51.100.0/24", NON_PUBLIC),
    # RFC 5737: documentation (TEST-NET-3).
    ("203.0.113.0/24", NON_PUBLIC),
    # RFC 5771: multicast.
    ("224.0.0.0/4", MULTICAST),
    # RFC 1112 §4: reserved for future use.
    ("240.0.0.0/4", RESERVED),
    # RFC 919 §7 and RFC 8190: limited broadcast.
    ("255.255.255.255/32", RESERVED),
)

IPV6_RANGES: tuple[tuple[str, Verdict], ...] = (
    # RFC 4291 §2.4 and RFC 3587: only 2000::/3 is allocated as global unicast;
    # everything else is refused unless a more specific range below says otherwise.
    ("::/3", RESERVED),
    ("4000::/2", RESERVED),
    ("8000::/1", RESERVED),
    # RFC 4291 §2.5.2: the unspecified address.
    ("::/128", UNSPECIFIED),
    # RFC 4291 §2.5.3: loopback.
    ("::1/128", LOOPBACK),
    # RFC 4291 §2.5.5.1: IPv4-compatible addresses, deprecated. Some hosts still
    # tunnel them to the embedded IPv4, so that is named when it is not public,
    # and a public one is refused anyway.
    ("::/96", Embedded(0, RESERVED)),
    # RFC 4291 §2.5.5.2: IPv4-mapped addresses reach the embedded IPv4 itself.
    ("::ffff:0:0/96", Embedded(0)),
    # RFC 6052 §2.1: the NAT64 well-known prefix; the translator connects to the
    # embedded IPv4.
    ("64:ff9b::/96", Embedded(0)),
    # RFC 8215: NAT64 prefixes for local use, translated by the operator's own rules.
    ("64:ff9b:1::/48", NON_PUBLIC),
    # RFC 6666: discard-only prefix.
    ("100::/64", NON_PUBLIC),
    # RFC 2928 and RFC 6890 §2.2.3: IETF protocol assignments; mostly unassigned.
    ("2001::/23", RESERVED),
    # RFC 4380: Teredo. The client IPv4 is obfuscated inside; refused outright.
    ("2001::/32", NON_PUBLIC),
    # RFC 7723: Port Control Protocol anycast, globally reachable.
    ("2001:1::1/128", PUBLIC),
    # RFC 8155: TURN server anycast, globally reachable.
    ("2001:1::2/128", PUBLIC),
    # RFC 9665: DNS-SD service registration protocol anycast, globally reachable.
    ("2001:1::3/128", PUBLIC),
    # RFC 5180: network device benchmarking.
    ("2001:2::/48", NON_PUBLIC),
    # RFC 7450: Automatic Multicast Tunneling, globally reachable.
    ("2001:3::/32", PUBLIC),
    # RFC 7535: AS112-v6, globally reachable.
    ("2001:4:112::/48", PUBLIC),
    # RFC 4843: ORCHID, deprecated; identifiers, not locators.
    ("2001:10::/28", NON_PUBLIC),
    # RFC 7343: ORCHIDv2; identifiers, not locators.
    ("2001:20::/28", NON_PUBLIC),
    # RFC 9374: DRIP entity tags, globally reachable.
    ("2001:30::/28", PUBLIC),
    # RFC 3849: documentation.
    ("2001:db8::/32", NON_PUBLIC),
    # RFC 3056 §2: 6to4; the relay delivers to the IPv4 in bits 16..48
    # (2002:7f00:1:: is 127.0.0.1, 2002:a9fe:a9fe:: is 169.254.169.254).
    ("2002::/16", Embedded(80)),
    # RFC 9637: documentation.
    ("3fff::/20", NON_PUBLIC),
    # RFC 9602: segment routing (SRv6) SIDs.
    ("5f00::/16", NON_PUBLIC),
    # RFC 4193: unique local addresses.
    ("fc00::/7", PRIVATE),
    # RFC 4291 §2.5.6: link-local.
    ("fe80::/10", LINK_LOCAL),
    # RFC 3879: site-local, deprecated; still private to a site where it is used.
    ("fec0::/10", PRIVATE),
    # RFC 4291 §2.7: multicast.
    ("ff00::/8", MULTICAST),
)


def _flatten(ranges: Sequence[tuple[str, V]], bits: int) -> tuple[list[int], list[V]]:
    """Cut the whole address space into runs of one verdict: sorted starts and their verdicts.

    Where ranges nest, the longest prefix decides; space outside every range is public.
    """
    networks = [(ipaddress.ip_network(cidr), verdict) for cidr, verdict in ranges]
    seen: set[ipaddress.IPv4Network | ipaddress.IPv6Network] = set()
    for network, _ in networks:
        if network.max_prefixlen != bits or network in seen:
            raise ValueError(f"address table: {network} listed twice or in the wrong family")
        seen.add(network)
    bounds = {0}
    for network, _ in networks:
        bounds.add(int(network.network_address))
        bounds.add(int(network.broadcast_address) + 1)
    bounds.discard(1 << bits)
    starts: list[int] = []
    verdicts: list[V] = []
    for start in sorted(bounds):
        covering = [(n.prefixlen, verdict) for n, verdict in networks
                    if int(n.network_address) <= start <= int(n.broadcast_address)]
        verdict = max(covering, key=lambda c: c[0])[1] if covering else None
        if not verdicts or verdicts[-1] != verdict:
            starts.append(start)
            verdicts.append(verdict)
    return starts, verdicts


_V4_STARTS, _V4_VERDICTS = _flatten(IPV4_RANGES, 32)
_V6_STARTS, _V6_VERDICTS = _flatten(IPV6_RANGES, 128)


def _v4_problem(value: int) -> str | None:
    return _V4_VERDICTS[bisect_right(_V4_STARTS, value) - 1]


def address_problem(ip: IPAddress) -> str | None:
    """Why a webhook must not be sent to ``ip`` (e.g. ``'a loopback address'``); None if public."""
    value = int(ip)
    if ip.version == 4:
        return _v4_problem(value)
    verdict = _V6_VERDICTS[bisect_right(_V6_STARTS, value) - 1]
    if isinstance(verdict, Embedded):
        return _v4_problem((value >> verdict.shift) & 0xFFFF_FFFF) or verdict.otherwise
    return verdict
