"""DSR return path: a backend on another node reaches a client behind the owner only via routes.

The setting of upstream Antrea #6992 (no kube-proxy, DSR), on Cilium. The fake external
client hangs off the node that announces the external IP (a netns with a veth into that
node, as in Antrea's test) and its address, from the kind network's own test range, is
routed by that node alone. In DSR mode the backend on another node answers the client
directly: with no route back it takes the client for on-link on eth0, nobody answers its
ARP, and the reply is lost there (it never leaves the cluster). Once the harness installs
`client via owner` on every other node (fixtures.routes, Antrea's fix #6994) the backend
answers; after the test the routes are gone.
"""

import pytest
from kubernetes import client as kclient

from fixtures import cilium
from fixtures.external_ip import wait_for
from fixtures.kube import unique_name
from fixtures.netns import external_client, has_netns_privileges, kind_node_netns
from fixtures.probes import Prober, parse_clientip
from fixtures.routes import NodeEndpoint, close_route_sets, harness_routes

pytestmark = [
    pytest.mark.external_ip,
    pytest.mark.ext_dsr_return,
    pytest.mark.dsr,
    pytest.mark.dataplane,
    pytest.mark.needs_root,
    pytest.mark.requires(lb_provider="cilium", lb_mode="dsr", kube_proxy_replacement=True),
]

PROBES = 5  # single-attempt probes per phase; each bounded by its timeout


def node_endpoints(k8s, names):
    nodes = {n.metadata.name: n for n in kclient.CoreV1Api(k8s).list_node().items}
    return [
        NodeEndpoint(
            name,
            kind_node_netns(name),
            tuple(a.address for a in nodes[name].status.addresses if a.type == "InternalIP"),
        )
        for name in names
    ]


def probes(prober, ip, client, path="/hostname"):
    return [
        prober.http(ip, 80, path, source=client.netns, count=1, timeout=2.0) for _ in range(PROBES)
    ]


def test_remote_backend_answers_a_client_behind_the_owner_only_with_dsr_return_routes(
    cluster,
    k8s,
    external_ip,
    ip_range,
    ip_range_factory,
    backends,
    lb_service,
    worker_nodes,
    dsr_return_routes,
    capabilities,
):
    if not has_netns_privileges():
        pytest.skip("needs root (CAP_NET_ADMIN, CAP_NET_RAW) for the client netns and routes")
    owner, remote = worker_nodes[:2]
    pool = external_ip.make_pool(unique_name("dsr"), [ip_range.cidr], announce_from=[owner])
    try:
        b = backends(replicas=1, nodes=[remote])
        (backend,) = b.pods
        svc = lb_service(pool, b)
        reported = external_ip.owner(svc.namespace, svc.name, timeout=30)
        assert reported.node == owner, f"{svc.ip} is announced by {reported.node}, not {owner}"
        nodes = [*worker_nodes, f"{cluster.name}-control-plane"]
        endpoints = node_endpoints(k8s, nodes)
        others = sorted(set(nodes) - {owner})
        # the client's own network: a /30 of the kind network's test range, behind the owner
        net = ip_range_factory(prefix=30).network
        client_cidr, host_cidr = (f"{net.network_address + i}/30" for i in (1, 2))
        prober = Prober()
        with external_client(
            kind_node_netns(owner), client_cidr=client_cidr, host_cidr=host_cidr
        ) as ext:
            # the owner's datapath must see the client's traffic: a gate, not a retry
            attached = wait_for(
                f"cilium on {owner} attached to {ext.host_ifname}",
                lambda: (
                    ext.host_ifname in cilium.datapath_devices(cluster.kubeconfig, owner) or None
                ),
                60,
            )
            assert attached, (
                f"cilium on {owner} never ran its datapath on the client's veth "
                f"{ext.host_ifname}: {cilium.datapath_devices(cluster.kubeconfig, owner)}"
            )
            before = probes(prober, svc.ip, ext)
            assert not any(r.ok for r in before), (
                f"backend {backend} on {remote} answered client {ext.address} behind {owner} "
                f"before any return route was in: the scenario cannot tell a fix from none "
                f"({[str(r) for r in before]})"
            )
            sets = dsr_return_routes(
                endpoints, owner=owner, client=ext.address, lb_mode=capabilities.lb_mode
            )
            after = probes(prober, svc.ip, ext)
            failed = [str(r) for r in after if not (r.ok and r.body.strip() == backend)]
            if failed:
                in_kernel = {e.name: [str(r) for r in harness_routes(e.netns)] for e in endpoints}
                missing = [n for n in others if not in_kernel.get(n)]
                pytest.fail(
                    f"backend {backend} on {remote} did not answer client {ext.address} behind "
                    f"owner {owner} in {len(failed)} of {PROBES} single-attempt probes of "
                    f"{svc.ip}; DSR return routes in the kernel: {in_kernel}"
                    + (f"; no return route for {ext.address} on {missing}" if missing else "")
                    + f": {failed[:3]}"
                )
            clientip = prober.http(svc.ip, 80, "/clientip", source=ext.netns, count=1)
            seen, _port = parse_clientip(clientip.body or "")
            assert seen == ext.address, f"DSR must keep the client IP; backend saw {seen}"
            assert set(sets) == set(others), f"return routes on {sorted(sets)}, want {others}"
            close_route_sets(sets.values())
        left = {e.name: harness_routes(e.netns) for e in endpoints}
        assert not any(left.values()), f"DSR return routes left behind: {left}"
    finally:
        external_ip.delete_pool(pool)
