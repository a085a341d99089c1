"""Providers that admit an overlapping pool must flag it in its status, in their own words."""

import ipaddress
from datetime import UTC, datetime, timedelta

import pytest

from fixtures.external_ip import wait_for

pytestmark = [
    pytest.mark.external_ip,
    pytest.mark.ext_pool_validation,
    pytest.mark.controlplane,
    pytest.mark.requires(lb_provider="cilium"),
]


def _span(cidr):
    """A range as LB-IPAM prints it (operator/pkg/lbipam/lbrange.go ipNetStr)."""
    net = ipaddress.ip_network(cidr)
    return f"{net.network_address} - {net.broadcast_address}"


def test_overlapping_pool_is_flagged_as_conflicting_with_lbipams_message(
    external_ip, lb_pool, ip_range
):
    """Cilium admits the pool, then disables the newer one: condition cilium.io/PoolConflict.

    LB-IPAM calls the pool with the later creationTimestamp the newer one, and those have
    one-second resolution: of two pools made within one second either may be flagged. The
    overlap is therefore created once the live pool is at least a second old (a bounded
    wait on the clock), so LB-IPAM's own rule says which pool it must flag.
    """
    live = lb_pool()
    name = f"{live.name}-overlap"
    made = external_ip.custom.get_cluster_custom_object(
        external_ip.GROUP, external_ip.POOL_VERSION, "ciliumloadbalancerippools", live.name
    )["metadata"]["creationTimestamp"]
    older = datetime.fromisoformat(made.replace("Z", "+00:00")) + timedelta(seconds=1.1)
    assert wait_for("live pool a second old", lambda: datetime.now(UTC) >= older or None, 3)
    squat = f"{ip_range.first_host}/32"
    pool = external_ip.create_pool_only(name, [squat])
    try:
        said = external_ip.pool_conflict(name, timeout=30)
    finally:
        external_ip.delete_pool(pool)
    want = (
        f"Pool conflicts since range '{_span(squat)}' overlaps range '{_span(ip_range.cidr)}' "
        f"from IP Pool '{live.name}'"
    )
    assert said == want, f"expected LB-IPAM's conflict {want!r} on pool {name}, got {said!r}"
