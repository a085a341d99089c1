"""Antrea ServiceExternalIP: allocation from the annotated pool, and reachability under DSR.

#6992: with proxyAll, no kube-proxy and DSR as the default load-balancer mode,
a backend on another node answers the client straight away and had no route
back, so testExternalIPAccess failed. The harness's fake external client lives
on the node that owns the external IP (as in Antrea's test), and in DSR mode
every other node gets `client via owner` (fixtures.routes.dsr_return_routes, the
fix of PR #6994), removed at teardown.
"""

import pytest
from kubernetes import client as kclient
from tenacity import (
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    stop_after_attempt,
    stop_after_delay,
    wait_fixed,
)

from fixtures.antrea import external_ip_pool, in_ranges, load_balancer_service
from fixtures.kube import SERVICE, Resource, register, unique_name, wait_for_condition
from fixtures.netns import external_client, has_netns_privileges, kind_node_netns, link_mac
from fixtures.probes import Outcome, parse_clientip
from fixtures.render import node_names
from fixtures.routes import NodeEndpoint, dsr_return_routes, harness_routes
from fixtures.verdicts import assert_every_backend_answers, probe_every_backend
from fixtures.workloads import agnhost_deployment, exec_on_node

DEPLOYMENT = register(Resource("apps/v1", "Deployment", "deployments", namespaced=True))
PORT = 8080

pytestmark = [
    pytest.mark.antrea,
    pytest.mark.service_external_ip,
    pytest.mark.requires(cni="antrea", feature_gates=["ServiceExternalIP"]),
]


def ingress_ip(obj):
    ingress = (((obj or {}).get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    return ingress[0].get("ip") if ingress else None


@pytest.mark.controlplane
def test_load_balancer_service_gets_its_ip_from_the_annotated_pool(
    k8s, objects, namespace, ip_range
):
    pool = objects.create(external_ip_pool(unique_name("svc-pool"), [ip_range]))
    pool_name = pool["metadata"]["name"]
    svc = objects.create(load_balancer_service("lb", pool_name, selector={"app": "none"}))
    name = svc["metadata"]["name"]
    obj = wait_for_condition(
        k8s, SERVICE, name, ingress_ip, namespace, timeout=60, description="ingress IP"
    )
    ip = ingress_ip(obj)
    assert in_ranges(ip, [ip_range]), f"{name} got {ip}, not from pool {pool_name} ({ip_range})"


def _node_endpoints(k8s, names):
    nodes = {n.metadata.name: n for n in kclient.CoreV1Api(k8s).list_node().items}
    endpoints = []
    for name in names:
        addrs = tuple(a.address for a in nodes[name].status.addresses if a.type == "InternalIP")
        endpoints.append(NodeEndpoint(name, kind_node_netns(name), addrs))
    return endpoints


def _owner_of(prober, ip, endpoints):
    """Which node answers ARP/NDP for the external IP, seen from the kind network.

    A node does not answer its own ARP request, so when the first node hears nobody it
    may be the owner itself: a second node then asks, and must hear the first one.
    """
    macs = {link_mac(e.netns, "eth0"): e for e in endpoints}
    for asking in endpoints[:2]:
        result = prober.owner(ip, source=asking.netns, count=3)
        assert not result.split_brain, f"split brain for {ip}: {result}"
        if result.ok:
            owner = macs.get(result.owner)
            assert owner is not None, f"{ip} is answered by {result.owner}, no node's eth0"
            return owner
    raise AssertionError(f"nobody answers ARP/NDP for {ip}, asked from two nodes: {result}")


@pytest.mark.dataplane
@pytest.mark.dsr
@pytest.mark.needs_root
@pytest.mark.requires(lb_mode="dsr", data_plane=True)
def test_external_ip_is_reachable_from_an_external_client_in_dsr_mode(
    k8s, cluster, objects, namespace, ip_range, prober
):
    if not has_netns_privileges():
        pytest.skip("needs root (CAP_NET_ADMIN, CAP_NET_RAW) to enter the kind nodes' netns")
    workers = [n for n in node_names_of(cluster) if "-worker" in n]
    objects.create(agnhost_deployment("backend", replicas=2, port=PORT, node_names=workers))
    wait_for_condition(
        k8s,
        DEPLOYMENT,
        "backend",
        lambda o: ((o or {}).get("status") or {}).get("availableReplicas") == 2,
        namespace,
        timeout=180,
        description="2 available replicas",
    )
    pool = objects.create(external_ip_pool(unique_name("dsr-pool"), [ip_range], nodes=workers))
    svc = objects.create(
        load_balancer_service(
            "backend", pool["metadata"]["name"], selector={"app": "backend"}, port=PORT
        )
    )
    obj = wait_for_condition(
        k8s, SERVICE, svc["metadata"]["name"], ingress_ip, namespace, timeout=60
    )
    ext_ip = ingress_ip(obj)
    endpoints = _node_endpoints(k8s, node_names_of(cluster))
    owner = _owner_of(prober, ext_ip, endpoints)
    with external_client(owner.netns) as ext:
        # the owner holds the external IP itself, so the client's traffic is local to it
        with dsr_return_routes(
            endpoints, owner=owner.name, client=ext.address, lb_mode="dsr"
        ) as routes:
            assert set(routes) == {e.name for e in endpoints} - {owner.name}
            # single attempts, each a fresh connection: a failed one is never retried away
            backends = {
                p.metadata.name
                for p in kclient.CoreV1Api(k8s)
                .list_namespaced_pod(namespace, label_selector="app=backend")
                .items
            }
            coverage = probe_every_backend(
                lambda: prober.http(ext_ip, PORT, "/hostname", source=ext.netns, count=1),
                ext_ip,
                backends,
                attempts=6 * len(backends),
            )
            assert_every_backend_answers(coverage)
            clientip = prober.http(ext_ip, PORT, "/clientip", source=ext.netns, count=1)
            assert clientip.outcome is Outcome.REACHABLE, str(clientip)
            ip, _port = parse_clientip(clientip.body or "")
            assert ip == ext.address, f"DSR must preserve the client IP, the backend saw {ip}"
        left = {e.name: harness_routes(e.netns) for e in endpoints}
        assert not any(left.values()), f"DSR return routes left behind: {left}"


def node_names_of(cluster):
    from fixtures.profiles import load_profile

    return node_names(load_profile(cluster.profile), cluster.name)


def _owner_within(prober, ip, endpoints, accept, seconds):
    """Probe ARP/NDP ownership until `accept(owner)` holds; bounded in time and count."""
    return Retrying(
        stop=stop_after_delay(seconds) | stop_after_attempt(int(seconds)),
        wait=wait_fixed(1),
        retry=retry_if_exception_type(AssertionError) | retry_if_result(lambda o: not accept(o)),
        retry_error_callback=lambda state: None,
    )(_owner_of, prober, ip, endpoints)


@pytest.mark.dataplane
@pytest.mark.disruptive
@pytest.mark.node_failure
@pytest.mark.needs_root
@pytest.mark.xdist_group("antrea-agent-freeze")
@pytest.mark.requires(data_plane=True, nodes=3)
def test_external_ip_moves_off_a_frozen_node_and_comes_back(
    k8s, cluster, objects, namespace, ip_range, prober
):
    """Antrea's testServiceNodeFailure (the subtest of #6783), answered by ARP/NDP ownership."""
    if not has_netns_privileges():
        pytest.skip("needs root (CAP_NET_ADMIN, CAP_NET_RAW) to enter the kind nodes' netns")
    workers = [n for n in node_names_of(cluster) if "-worker" in n][:2]
    pool = objects.create(external_ip_pool(unique_name("failover"), [ip_range], nodes=workers))
    svc = objects.create(
        load_balancer_service("failover", pool["metadata"]["name"], selector={"app": "none"})
    )
    obj = wait_for_condition(
        k8s, SERVICE, svc["metadata"]["name"], ingress_ip, namespace, timeout=60
    )
    ext_ip = ingress_ip(obj)
    endpoints = _node_endpoints(k8s, node_names_of(cluster))
    first = _owner_of(prober, ext_ip, endpoints)
    exec_on_node(first.name, ["pkill", "-STOP", "antrea-agent"])
    try:
        moved = _owner_within(prober, ext_ip, endpoints, lambda o: o.name != first.name, 15)
    finally:
        exec_on_node(first.name, ["pkill", "-CONT", "antrea-agent"])
    assert moved is not None, (
        f"{ext_ip} did not move off frozen node {first.name} to one new owner within 15 s"
    )
    assert moved.name in workers, f"{ext_ip} moved to {moved.name}, outside the pool's nodes"
    back = _owner_within(prober, ext_ip, endpoints, lambda o: o.name == first.name, 30)
    assert back is not None, f"{ext_ip} did not return to {first.name} after its agent resumed"
