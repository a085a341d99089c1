"""After failback the client's neighbour entry must follow the owner within the profile's bound.

The owner is what the data plane says: the one MAC that answers a broadcast ARP request
for the IP, probed (scapy) from a second container, the observer, because the replies
would otherwise update the client's own neighbour entry. The client is the fake client's
kernel: it learns the interim owner's MAC by talking to the
service during the freeze, keeps talking (single-attempt HTTP probes) after failback,
and must end up sending to the returned owner's MAC. Only an announcement from the
returned owner (gratuitous ARP) moves a REACHABLE entry that traffic keeps confirming.
"""

import time

import pytest

from fixtures.external_ip import frozen, node_macs, wait_for
from fixtures.probes import Prober

pytestmark = [
    pytest.mark.external_ip,
    pytest.mark.ext_failback,
    pytest.mark.dataplane,
    pytest.mark.disruptive,
    pytest.mark.xdist_group("disruptive"),
    # MetalLB only: its speakers pick the owner by a stable hash, so the IP goes back to
    # the resumed node. Cilium has no failback to test: each Service's announcer is a
    # client-go leader election (pkg/l2announcer/l2announcer.go, RunOrDie) without
    # preemption, so the interim owner keeps the Lease after the frozen agent resumes.
    pytest.mark.requires(lb_provider="metallb", l2_announcements=True),
]


class StaleNeighbour(AssertionError):
    """The client still sends to a node that no longer announces the IP."""


def test_client_follows_the_owner_after_failback(
    cluster,
    external_ip,
    external_ip_bounds,
    lb_pool,
    backends,
    lb_service,
    external_client,
    arp_observer,
    worker_nodes,
    record_property,
):
    b = backends(replicas=2)
    svc = lb_service(lb_pool(), b, local=True)
    prober = Prober()
    macs = node_macs([*worker_nodes, f"{cluster.name}-control-plane"], cluster.name)
    by_node = {n: m for m, n in macs.items()}

    def owner_node():
        r = prober.arp(svc.ip, source=arp_observer.netns, timeout=0.5, window=0.3)
        return macs.get(r.owner) if r.ok else None

    first = wait_for("first owner", owner_node, 15)
    assert first, f"no single ARP owner for {svc.ip}"
    announcer = external_ip.announcer(first)
    with frozen(announcer):
        interim = wait_for(
            "interim owner",
            lambda: n if (n := owner_node()) not in (None, first) else None,
            external_ip_bounds.failover,
        )
        assert interim, f"no failover away from {first} within {external_ip_bounds.failover:g}s"

        def learned():
            prober.http(svc.ip, 80, "/hostname", source=external_client.netns, timeout=2.0)
            return True if external_client.neighbour(svc.ip)[0] == by_node[interim] else None

        # the client talks to the service and its kernel learns the interim owner's MAC
        assert wait_for("client learns the interim owner", learned, 10), (
            f"client {external_client.address} did not learn {interim}'s MAC "
            f"{by_node[interim]} for {svc.ip}: {external_client.neighbour(svc.ip)}"
        )
    t0 = time.monotonic()
    # failback settles when exactly one node, the first, answers ARP again
    back = wait_for(
        "failback",
        lambda: True if owner_node() == first else None,
        external_ip_bounds.failback,
    )
    last = prober.arp(svc.ip, source=arp_observer.netns, timeout=0.5, window=0.3)
    assert back, (
        f"after resuming {announcer.what}, {svc.ip} did not settle on one owner "
        f"{first} within {external_ip_bounds.failback:g}s: {last}"
    )
    settled = time.monotonic() - t0

    def client_follows():
        prober.http(svc.ip, 80, "/hostname", source=external_client.netns, timeout=1.0)
        mac, _state = external_client.neighbour(svc.ip)
        return mac if mac == by_node[first] else None

    ok = wait_for("client neighbour follows", client_follows, external_ip_bounds.failback)
    took = time.monotonic() - t0
    mac, state = external_client.neighbour(svc.ip)
    if ok:
        record_property("failback_client_seconds", round(took, 2))
        print(f"client on {first}'s MAC {took:.1f}s after the resume ({settled:.1f}s to one owner)")
    if not ok:
        raise StaleNeighbour(
            f"client {external_client.address} still sends {svc.ip} to {mac} "
            f"({macs.get(mac or '', '?')}, {state}) {took:.0f}s after the "
            f"resume, {took - settled:.0f}s after {first} ({by_node[first]}) "
            f"was again the only node answering ARP: no gratuitous ARP on failback reached "
            f"the client, or it ignored one"
        )
