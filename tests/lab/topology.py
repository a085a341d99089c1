"""Topology builder: a kind docker network in miniature, made only of namespaces it creates.

    client ns (203.0.113.10) --veth-- router ns --+
                                  198.51.100.1     |   bridge br0, inside a namespace of
                                                   +-- its own (the "kind network",
    node ns n1 .. nN (198.51.100.11 ..) -----------+   198.51.100.0/24, 2001:db8:51::/64)

Only the node named by `client_route_via` (n1 by default) has a route to the client's
subnet, through the router. That is how upstream Antrea's fake external network looks
from the cluster: the client hangs off one node, and the other nodes have no way back
(#6992). Nodes forward, like kind nodes, and have no default route.

An external IP (198.51.100.200 / 2001:db8:51::200) can be given to any node's eth0, which
then answers ARP/NDP for it. `enable_dsr` builds the DSR path: the load-balancing node owns
the external IP, and a policy rule forwards traffic for it, unchanged, to a backend node
that holds the IP on lo (arp_ignore=1, so it never answers ARP for it). The rule matches
TCP only, because the kernel answers ARP only for addresses its route lookup calls local.
The backend replies straight to the client, so without a route back the reply is lost.

`drop_tcp` makes the router silently drop TCP to one port coming from the client, and
`reject_tcp` makes it answer ICMP "administratively prohibited" instead. Both are
policy-routing rules (blackhole: discarded without ICMP; prohibit: refused with ICMP),
so no iptables or nftables is needed.

Nothing in the root namespace is touched. Everything is removed at close, also after a
failure half-way through building: links are deleted first (no veth can outlive the
lab), then the namespaces.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from fixtures import netns as nsx
from fixtures.netns import ExternalClient, Netns
from fixtures.routes import NodeEndpoint
from tests.lab.servers import LabServer, start_http_server

log = logging.getLogger(__name__)

SEGMENT = ipaddress.ip_network("198.51.100.0/24")
SEGMENT6 = ipaddress.ip_network("2001:db8:51::/64")
ROUTER_IP = "198.51.100.1"
ROUTER_IP6 = "2001:db8:51::1"
CLIENT_NET = "203.0.113.0/24"
CLIENT_IP = "203.0.113.10"
CLIENT_GATEWAY = "203.0.113.1"
EXTERNAL_IP = "198.51.100.200"
EXTERNAL_IP6 = "2001:db8:51::200"
DSR_TABLE = 100
DSR_RULE_PRIORITY = 10
LOCAL_RULE_PRIORITY = 100  # the lookup-local rule, moved from 0 to make room for DSR_RULE
DROP_RULE_PRIORITY = 50
MAX_NODES = 40


@dataclass(frozen=True)
class LabHost:
    """A namespace on the lab's bridge: its name, eth0 MAC and addresses."""

    name: str
    netns: Netns
    mac: str
    ipv4: str
    ipv6: str
    ifname: str = "eth0"


def node_mac(index: int) -> str:
    return f"02:00:5e:00:00:{index:02x}"


class Lab:
    """Handles to a built lab; use `build_lab()`, which also tears it down."""

    def __init__(self, client_route_via: str) -> None:
        self.client_route_via = client_route_via
        self.namespaces: list[Netns] = []
        self.bridge: Netns | None = None
        self.router: LabHost | None = None
        self.client: ExternalClient | None = None
        self.nodes: dict[str, LabHost] = {}
        self.servers: list[LabServer] = []
        self._closed = False

    # -- building -------------------------------------------------------------------

    def _netns(self, role: str) -> Netns:
        ns = nsx.create_netns(nsx.unique_netns_name(role))
        self.namespaces.append(ns)
        for key in ("all", "default"):
            nsx.set_sysctl(ns, f"net.ipv4.conf.{key}.rp_filter", 0)
            nsx.set_sysctl(ns, f"net.ipv4.conf.{key}.send_redirects", 0)
        return ns

    def _host(self, role: str, index: int, ipv4: str, ipv6: str) -> LabHost:
        assert self.bridge is not None
        ns = self._netns(role)
        mac = node_mac(index)
        port = f"p{index}"
        nsx.add_veth(self.bridge, port, ns, "eth0", peer_mac=mac)
        nsx.attach_to_bridge(self.bridge, port, "br0")
        nsx.add_address(ns, "eth0", f"{ipv4}/{SEGMENT.prefixlen}")
        nsx.add_address(ns, "eth0", f"{ipv6}/{SEGMENT6.prefixlen}")
        nsx.set_sysctl(ns, "net.ipv4.ip_forward", 1)
        return LabHost(role, ns, mac, ipv4, ipv6)

    def _build(self, nodes: int) -> None:
        if not 1 <= nodes <= MAX_NODES:
            raise ValueError(f"a lab has 1..{MAX_NODES} nodes, got {nodes}")
        self.bridge = self._netns("net")
        nsx.add_bridge(self.bridge, "br0")
        self.router = self._host("rt", 1, ROUTER_IP, ROUTER_IP6)
        for i in range(1, nodes + 1):
            name = f"n{i}"
            self.nodes[name] = self._host(
                name, 10 + i, str(SEGMENT[10 + i]), str(SEGMENT6[0x10 + i])
            )
        if self.client_route_via not in self.nodes:
            raise ValueError(f"client_route_via {self.client_route_via!r} is not a lab node")
        self.client = nsx.create_external_client(
            self.router.netns,
            client_cidr=f"{CLIENT_IP}/24",
            host_cidr=f"{CLIENT_GATEWAY}/24",
            role="cl",
            host_ifname="toclient",
        )
        self.namespaces.append(self.client.netns)
        with self.nodes[self.client_route_via].netns.iproute() as ipr:
            ipr.route("add", dst=CLIENT_NET, gateway=ROUTER_IP)
        log.info("lab up: %s", ", ".join(ns.label for ns in self.namespaces))

    # -- handles --------------------------------------------------------------------

    def node(self, name: str) -> LabHost:
        try:
            return self.nodes[name]
        except KeyError:
            raise KeyError(f"no lab node {name!r}; nodes are {sorted(self.nodes)}") from None

    def node_endpoints(self) -> list[NodeEndpoint]:
        """The nodes as fixtures.routes sees them (for dsr_return_routes)."""
        return [NodeEndpoint(h.name, h.netns, (h.ipv4, h.ipv6)) for h in self.nodes.values()]

    def owner_of(self, mac: str) -> str | None:
        """The node whose eth0 has this MAC."""
        return next((h.name for h in self.nodes.values() if h.mac == mac), None)

    # -- changes a test makes -------------------------------------------------------

    def assign_ip(self, node: str, ip: str = EXTERNAL_IP) -> None:
        """Give `node` the (external) IP on eth0, so it answers ARP/NDP for it."""
        prefix = 128 if ":" in ip else 32
        nsx.add_address(self.node(node).netns, "eth0", f"{ip}/{prefix}")

    def release_ip(self, node: str, ip: str = EXTERNAL_IP) -> None:
        prefix = 128 if ":" in ip else 32
        nsx.delete_address(self.node(node).netns, "eth0", f"{ip}/{prefix}")

    def move_ip(self, src: str, dst: str, ip: str = EXTERNAL_IP) -> None:
        self.release_ip(src, ip)
        self.assign_ip(dst, ip)

    def drop_tcp(self, port: int) -> None:
        """The router silently drops TCP to `port` arriving from the client side."""
        assert self.router is not None and self.client is not None
        with self.router.netns.iproute() as ipr:
            ipr.rule(
                "add",
                priority=DROP_RULE_PRIORITY,
                iifname=self.client.host_ifname,
                ip_proto=6,
                dport_range=f"{port}:{port}",
                action="FR_ACT_BLACKHOLE",
            )

    def reject_tcp(self, port: int) -> None:
        """The router refuses TCP to `port` from the client with ICMP "prohibited" (a REJECT)."""
        assert self.router is not None and self.client is not None
        with self.router.netns.iproute() as ipr:
            ipr.rule(
                "add",
                priority=DROP_RULE_PRIORITY + 1,
                iifname=self.client.host_ifname,
                ip_proto=6,
                dport_range=f"{port}:{port}",
                action="FR_ACT_PROHIBIT",
            )

    def drop_tcp_at(self, node: str, port: int) -> None:
        """`node` silently drops TCP to `port` addressed to it (a blackhole policy rule,
        ahead of the lookup-local rule, which moves from 0 to LOCAL_RULE_PRIORITY)."""
        with self.node(node).netns.iproute() as ipr:
            ipr.rule("add", priority=LOCAL_RULE_PRIORITY, table=255)
            ipr.rule("del", priority=0, table=255)
            ipr.rule(
                "add",
                priority=DROP_RULE_PRIORITY,
                ip_proto=6,
                dport_range=f"{port}:{port}",
                action="FR_ACT_BLACKHOLE",
            )

    def unreachable_from(self, node: str, ip: str) -> None:
        """`node` gets an `unreachable` route to `ip`: its sends fail with "no route to host"."""
        prefix = 128 if ":" in ip else 32
        with self.node(node).netns.iproute() as ipr:
            ipr.route("add", dst=f"{ip}/{prefix}", type="unreachable")

    def enable_dsr(self, lb: str, backend: str, ip: str = EXTERNAL_IP) -> None:
        """LB node owns `ip` and forwards it unchanged to `backend`, which has it on lo."""
        lb_host, be_host = self.node(lb), self.node(backend)
        self.assign_ip(lb, ip)
        for key in ("all", "eth0"):
            nsx.set_sysctl(be_host.netns, f"net.ipv4.conf.{key}.arp_ignore", 1)
            nsx.set_sysctl(be_host.netns, f"net.ipv4.conf.{key}.arp_announce", 2)
        nsx.add_address(be_host.netns, "lo", f"{ip}/32")
        with lb_host.netns.iproute() as ipr:
            ipr.rule("add", priority=LOCAL_RULE_PRIORITY, table=255)
            ipr.rule("del", priority=0, table=255)
            # TCP only: ARP's own route lookup (no protocol) must still find ip local
            ipr.rule(
                "add",
                priority=DSR_RULE_PRIORITY,
                iifname="eth0",
                dst=ip,
                dst_len=32,
                ip_proto=6,
                table=DSR_TABLE,
            )
            ipr.route("add", dst=f"{ip}/32", gateway=be_host.ipv4, table=DSR_TABLE)
        log.info("DSR: %s owns %s and forwards it to %s", lb, ip, backend)

    def serve_http(self, node: str, port: int = 8080, host: str = "0.0.0.0") -> LabServer:
        """An agnhost-like HTTP server in `node`; stopped at teardown."""
        server = start_http_server(self.node(node).netns, host, port, hostname=node)
        self.servers.append(server)
        return server

    # -- teardown -------------------------------------------------------------------

    def close(self) -> None:
        """Stop servers, delete all links, then all namespaces; try all, raise the first error."""
        if self._closed:
            return
        self._closed = True
        errors: list[BaseException] = []
        for server in self.servers:
            try:
                server.stop()
            except Exception as exc:  # keep tearing down; re-raised below
                errors.append(exc)
        for ns in reversed(self.namespaces):
            try:
                nsx.delete_netns(ns)
            except Exception as exc:  # keep tearing down; re-raised below
                errors.append(exc)
        if errors:
            raise errors[0]


@contextmanager
def build_lab(nodes: int = 3, *, client_route_via: str = "n1") -> Iterator[Lab]:
    """Build the lab for the block and remove all of it afterwards, also on errors."""
    lab = Lab(client_route_via)
    try:
        lab._build(nodes)
        yield lab
    finally:
        lab.close()
