"""Antrea's ExternalIPPool admission rules, as plain functions over plain dicts.

Mirrors antrea-controller's externalippool validator (Antrea v2.5 and later):
each range is normalised to [start, end], checked against the subnet, against the
other ranges of the same pool and against every range of every other pool the
caller's cache holds. Messages are Antrea's, byte for byte:

    range [198.18.30.0/24] overlaps with range [198.18.0.0/16] of ExternalIPPool qux
    range [198.19.20.10-198.19.20.20] overlaps with range [198.19.20.0/24] of ExternalIPPool a
    existing IPRanges [198.19.20.0/24] cannot be updated or deleted

Antrea walks its lister in map order, so with several overlaps it may name any
one of them; here pools are visited by name so the answer is deterministic.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

IPRange = Mapping[str, Any]  # {"cidr": ...} or {"start": ..., "end": ...}


class InvalidRange(ValueError):
    """A range or subnetInfo Antrea would reject; str() is Antrea's message."""


@dataclass(frozen=True)
class NormalizedRange:
    """One range as an inclusive [start, end] pair plus how Antrea names it in messages."""

    start: tuple[int, int]  # (bit length, value): netip.Addr.Compare orders IPv4 before IPv6
    end: tuple[int, int]
    origin: str

    def overlaps(self, other: NormalizedRange) -> bool:
        return self.start <= other.end and self.end >= other.start


def _addr_key(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[int, int]:
    return (addr.max_prefixlen, int(addr))


def _parse_addr(text: str, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise InvalidRange(f"invalid {what} ip address {text}") from None


def normalize_range(ip_range: IPRange, context: str = "") -> NormalizedRange:
    """Antrea's normalizeRange: CIDR or start-end to [start, end]; context names the pool."""
    cidr = ip_range.get("cidr") or ""
    if cidr:
        try:
            if "/" not in cidr:
                raise ValueError(cidr)
            net = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise InvalidRange(f"invalid cidr {cidr}") from None
        start, end = net.network_address, net.broadcast_address
        origin = f"range [{cidr}]"
    else:
        start_s, end_s = ip_range.get("start", ""), ip_range.get("end", "")
        start = _parse_addr(start_s, "start")
        end = _parse_addr(end_s, "end")
        if start.version != end.version:
            raise InvalidRange(
                f"range start {start_s} and range end {end_s} should belong to same family"
            )
        if start > end:
            raise InvalidRange(
                f"range start {start_s} should not be greater than range end {end_s}"
            )
        origin = f"range [{start_s}-{end_s}]"
    if context:
        origin = f"{origin} of {context}"
    return NormalizedRange(_addr_key(start), _addr_key(end), origin)


def validate_ranges_and_subnet(
    ip_ranges: Sequence[IPRange], subnet_info: Mapping[str, Any] | None
) -> list[NormalizedRange]:
    """Antrea's ValidateIPRangesAndSubnetInfo: subnet containment and overlaps within one pool."""
    subnet = None
    gateway, prefix = "", 0
    if subnet_info is not None:
        gateway = subnet_info.get("gateway", "")
        prefix = int(subnet_info.get("prefixLength", 0))
        try:
            gw = ipaddress.ip_address(gateway)
        except ValueError:
            raise InvalidRange(f"invalid gateway address {gateway}") from None
        if prefix <= 0 or prefix >= gw.max_prefixlen:
            raise InvalidRange(f"invalid prefixLength {prefix}")
        subnet = ipaddress.ip_network(f"{gateway}/{prefix}", strict=False)
    current: list[NormalizedRange] = []
    for ip_range in ip_ranges:
        cur = normalize_range(ip_range)
        if subnet is not None:
            lo, hi = _addr_key(subnet.network_address), _addr_key(subnet.broadcast_address)
            if not (lo <= cur.start <= hi and lo <= cur.end <= hi):
                raise InvalidRange(
                    f"{cur.origin} must be a strict subset of the subnet {gateway}/{prefix}"
                )
        for other in current:
            if cur.overlaps(other):
                raise InvalidRange(f"{cur.origin} overlaps with {other.origin}")
        current.append(cur)
    return current


def range_set(ip_ranges: Sequence[IPRange]) -> set[str]:
    """Antrea's GetIPRangeSet: "cidr" or "start-end" strings."""
    return {r.get("cidr") or f"{r.get('start', '')}-{r.get('end', '')}" for r in ip_ranges}


def go_string_list(items: Sequence[str]) -> str:
    """How Go's %v prints a []string: [a b c]."""
    return "[" + " ".join(items) + "]"


def validate_external_ip_pool(
    operation: str,
    new: Mapping[str, Any] | None,
    old: Mapping[str, Any] | None,
    existing: Mapping[str, Sequence[IPRange]],
) -> str | None:
    """None to admit, else Antrea's denial message. existing maps pool name -> spec.ipRanges."""
    if operation not in ("CREATE", "UPDATE") or new is None:
        return None  # Antrea always admits DELETE (and is not registered for it)
    name = new.get("metadata", {}).get("name", "")
    spec = new.get("spec", {})
    try:
        current = validate_ranges_and_subnet(spec.get("ipRanges") or [], spec.get("subnetInfo"))
        others = [
            normalize_range(r, f"ExternalIPPool {pool}")
            for pool in sorted(existing)
            if pool != name
            for r in existing[pool]
        ]
    except InvalidRange as exc:
        return str(exc)
    for cur in current:
        for other in others:
            if cur.overlaps(other):
                return f"{cur.origin} overlaps with {other.origin}"
    if operation == "UPDATE" and old is not None:
        deleted = range_set(old.get("spec", {}).get("ipRanges") or []) - range_set(
            spec.get("ipRanges") or []
        )
        if deleted:
            listed = go_string_list(sorted(deleted))
            return f"existing IPRanges {listed} cannot be updated or deleted"
    return None
