"""Exactly one node answers ARP for an external IP, and it is the node the provider reports."""

import pytest

from fixtures.external_ip import ADAPTED_PROVIDERS, node_macs, wait_for
from fixtures.probes import Prober

pytestmark = [
    pytest.mark.external_ip,
    pytest.mark.ext_one_owner,
    pytest.mark.dataplane,
    pytest.mark.requires(lb_provider=ADAPTED_PROVIDERS, l2_announcements=True),
]


def assert_one_owner(prober, external_client, ip, macs, reported, timeout=10.0):
    """Bounded: the ARP owner must settle on one MAC, the reported node's, within timeout."""

    def owner():
        r = prober.arp(ip, source=external_client.netns, timeout=1.0, window=0.3)
        return r if r.ok and macs.get(r.owner) == reported else None

    got = wait_for(f"ARP owner of {ip}", owner, timeout)
    if got is None:
        r = prober.arp(ip, source=external_client.netns, timeout=1.0, window=0.3)
        who = [f"{m} ({macs.get(m, 'not a node')})" for m in r.macs]
        if r.split_brain:
            pytest.fail(
                f"SPLIT BRAIN for {ip}: {len(r.macs)} MACs answer ARP: {who}; "
                f"the provider reports {reported}"
            )
        pytest.fail(
            f"ARP for {ip} answered by {who or 'nobody'} ({r}); the provider reports {reported}"
        )
    return got


def test_exactly_one_node_answers_arp_and_it_is_the_reported_owner(
    cluster, external_ip, lb_pool, backends, lb_service, external_client, worker_nodes
):
    svc = lb_service(lb_pool(), backends())
    owner = external_ip.owner(svc.namespace, svc.name, timeout=30)
    macs = node_macs([*worker_nodes, f"{cluster.name}-control-plane"], cluster.name)
    assert_one_owner(Prober(), external_client, svc.ip, macs, owner.node)
