"""From an external client on the kind network every backend answers; Local keeps the client IP."""

import pytest

from fixtures.external_ip import ADAPTED_PROVIDERS, wait_for
from fixtures.probes import Prober, parse_clientip

pytestmark = [
    pytest.mark.external_ip,
    pytest.mark.ext_reachability,
    pytest.mark.dataplane,
    pytest.mark.requires(lb_provider=ADAPTED_PROVIDERS),
]

PROBES = 40  # single-attempt probes per check; bounded in count and (timeout each) in time


def announced(prober, client, ip, timeout=15.0):
    """Wait (bounded) until some node answers ARP for ip; the data-plane probes come after."""

    def owner():
        r = prober.arp(ip, source=client.netns)
        return r if r.ok else None

    got = wait_for(f"ARP owner of {ip}", owner, timeout)
    assert got is not None, f"nobody answered ARP for {ip} within {timeout:g}s"

    # readiness of the path (kube-proxy programs the ingress IP after MetalLB assigns it):
    # a gate before the measurement, not a retry inside it
    def serving():
        r = prober.http(ip, 80, "/hostname", source=client.netns, timeout=1.0)
        return r if r.ok else None

    assert wait_for(f"first answer from {ip}", serving, timeout) is not None, (
        f"{ip} is announced but no HTTP answer within {timeout:g}s"
    )


def single_attempt_hostnames(prober, client, ip, n=PROBES):
    """n probes, one attempt each: any failure is reported, never retried away."""
    seen, failures = {}, []
    for _ in range(n):
        r = prober.http(ip, 80, "/hostname", source=client.netns, count=1, timeout=2.0)
        if r.ok and r.http_status == 200:
            seen[r.body.strip()] = seen.get(r.body.strip(), 0) + 1
        else:
            failures.append(str(r))
    return seen, failures


def test_cluster_policy_reaches_every_backend_with_single_attempt_probes(
    lb_pool, backends, lb_service, external_client
):
    b = backends(replicas=2)
    svc = lb_service(lb_pool(), b)
    prober = Prober()
    announced(prober, external_client, svc.ip)
    seen, failures = single_attempt_hostnames(prober, external_client, svc.ip)
    assert not failures, (
        f"{len(failures)} of {PROBES} single-attempt probes of {svc.ip} failed "
        f"(backend hostnames seen {seen}): " + "; ".join(failures[:5])
    )
    missing = set(b.pods) - set(seen)
    assert not missing, f"backends never reached through {svc.ip}: {missing} (seen {seen})"


def test_local_policy_keeps_the_client_ip_and_is_owned_by_a_node_with_an_endpoint(
    external_ip, lb_pool, backends, lb_service, external_client, worker_nodes
):
    b = backends(replicas=1, nodes=worker_nodes[:1])
    svc = lb_service(lb_pool(), b, local=True)
    prober = Prober()
    announced(prober, external_client, svc.ip)
    owner = external_ip.owner(svc.namespace, svc.name, timeout=30)
    assert owner.node in b.nodes, (
        f"{svc.ip} (externalTrafficPolicy Local) is announced by {owner.node}, "
        f"which has no local endpoint; endpoints are on {sorted(b.nodes)}"
    )
    r = prober.http(svc.ip, 80, "/clientip", source=external_client.netns, count=1, timeout=2.0)
    assert r.ok and r.http_status == 200, f"/clientip through {svc.ip} failed: {r}"
    seen_ip, _port = parse_clientip(r.body or "")
    assert seen_ip == external_client.address, (
        f"backend saw client {seen_ip}, expected the client's own {external_client.address} "
        f"(Local policy must not SNAT): {r}"
    )
