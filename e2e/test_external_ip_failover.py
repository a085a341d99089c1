"""Freezing the owner's announcer moves ownership within the profile's bound; one owner after."""

import time

import pytest

from fixtures.external_ip import ADAPTED_PROVIDERS, frozen, node_macs, wait_for
from fixtures.probes import Prober

pytestmark = [
    pytest.mark.external_ip,
    pytest.mark.ext_failover,
    pytest.mark.dataplane,
    pytest.mark.disruptive,
    pytest.mark.xdist_group("disruptive"),
    pytest.mark.requires(lb_provider=ADAPTED_PROVIDERS, l2_announcements=True),
]


def arp_owner_node(prober, client, ip, macs):
    r = prober.arp(ip, source=client.netns, timeout=0.5, window=0.3)
    if r.split_brain:
        return ("SPLIT", r)
    return (macs.get(r.owner) if r.ok else None, r)


def test_frozen_announcer_moves_ownership_and_traffic_resumes(
    cluster,
    external_ip,
    external_ip_bounds,
    lb_pool,
    backends,
    lb_service,
    external_client,
    worker_nodes,
    record_property,
):
    b = backends(replicas=2)
    svc = lb_service(lb_pool(), b)
    prober = Prober()
    macs = node_macs([*worker_nodes, f"{cluster.name}-control-plane"], cluster.name)
    first = wait_for(
        "first owner", lambda: arp_owner_node(prober, external_client, svc.ip, macs)[0], 15
    )
    assert first and first != "SPLIT", f"no single ARP owner for {svc.ip} before the fault"
    announcer = external_ip.announcer(first)
    bound = external_ip_bounds.failover
    with frozen(announcer):
        t0 = time.monotonic()

        def moved():
            node, _ = arp_owner_node(prober, external_client, svc.ip, macs)
            return node if node not in (None, first, "SPLIT") else None

        new = wait_for("ownership moved", moved, bound)
        took = time.monotonic() - t0
        node, last = arp_owner_node(prober, external_client, svc.ip, macs)
        assert new is not None, (
            f"{announcer.what} frozen, but ownership of {svc.ip} did not move within the "
            f"profile's {bound:g}s (last ARP: {last})"
        )
        record_property("failover_seconds", round(took, 2))
        print(f"failover {first} -> {new} in {took:.1f}s")

        def answered():
            x = prober.http(svc.ip, 80, "/hostname", source=external_client.netns, timeout=2.0)
            return x if x.ok else None

        r = wait_for("traffic resumes", answered, bound)
        assert r is not None, f"traffic to {svc.ip} did not resume after failover to {new}"

    # resumed: ownership settles on exactly one node again (bounded)
    def single_owner():
        node = arp_owner_node(prober, external_client, svc.ip, macs)[0]
        return node if node not in (None, "SPLIT") else None

    settled = wait_for("one owner after resume", single_owner, external_ip_bounds.failback)
    _, last = arp_owner_node(prober, external_client, svc.ip, macs)
    assert settled is not None and not last.split_brain, (
        f"after resuming {announcer.what} there is not exactly one owner of {svc.ip}: {last}"
    )
