"""Kube-OVN #5114: an IptablesEIP marked ready that the VPC NAT gateway never configured.

Invariant: ready => configured (the EIP is on net1 of the gateway pod, and each
FIP has its EXCLUSIVE_DNAT/SNAT rules). After a gateway pod restart every EIP and
FIP is re-applied; in v1.13.4 deleting a FIP at that moment queued an EIP reset
that forced ready=true on an EIP still waiting for re-application. These restart
the gateway, so they run serialised on one worker.
"""

import pytest
from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

from fixtures.kube import POD, delete_and_wait, unique_name, wait_for_condition
from fixtures.kubeovn import (
    EIP,
    FIP,
    eip,
    fip,
    gateway_pod,
    is_ready,
    nat_gateway,
    read_gateway,
    vpc,
    vpc_subnet,
)
from fixtures.workloads import AGNHOST_IMAGE, kubectl

pytestmark = [
    pytest.mark.kubeovn,
    pytest.mark.vpc_nat_gw,
    pytest.mark.dataplane,
    pytest.mark.disruptive,
    pytest.mark.xdist_group("kubeovn-vpc-nat-gw"),
    pytest.mark.requires(cni="kube-ovn", addons=["vpc-nat-gateway"]),
]

VPC_CIDR, VPC_GW, LAN_IP = "10.0.1.0/24", "10.0.1.1", "10.0.1.254"
SETTLE = 60.0  # seconds a ready EIP may take to show up on net1 before it counts as missing


@pytest.fixture
def gateway(k8s, objects, namespace):
    """A VPC with a subnet bound to the test namespace and a NAT gateway, ready to use."""
    name = unique_name("vpc", 4)
    objects.create(vpc(name, LAN_IP))
    objects.create(vpc_subnet(f"{name}-net", name, VPC_CIDR, VPC_GW, [namespace]))
    objects.create(nat_gateway(name, name, f"{name}-net", LAN_IP))
    wait_for_condition(
        k8s,
        POD,
        gateway_pod(name),
        lambda o: any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in ((o or {}).get("status") or {}).get("conditions") or []
        ),
        "kube-system",
        timeout=300,
        description="NAT gateway pod Ready",
    )
    return name


def _pod_ip(k8s, objects, namespace, name):
    objects.create(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "containers": [
                    {
                        "name": "agnhost",
                        "image": AGNHOST_IMAGE,
                        "args": ["netexec", "--http-port=8080"],
                    }
                ],
                "terminationGracePeriodSeconds": 1,
            },
        }
    )
    pod = wait_for_condition(
        k8s,
        POD,
        name,
        lambda o: bool(((o or {}).get("status") or {}).get("podIP")),
        namespace,
        timeout=180,
        description="pod IP",
    )
    return pod["status"]["podIP"]


def _eip_with_fip(k8s, objects, namespace, gw, ip_range, index):
    ip = str(ip_range.host(index))
    e = objects.create(eip(unique_name(f"eip{index}", 4), gw, v4ip=ip))["metadata"]["name"]
    internal = _pod_ip(k8s, objects, namespace, f"backend{index}")
    f = objects.create(fip(unique_name(f"fip{index}", 4), e, internal))["metadata"]["name"]
    wait_for_condition(k8s, EIP, e, is_ready, timeout=120, description="EIP ready")
    return e, f, ip, internal


def _assert_ready_means_configured(k8s, cluster, gw, eips):
    """Every ready EIP shows up on net1 within SETTLE seconds; else name it (Kube-OVN #5114)."""

    def missing():
        state = read_gateway(cluster.kubeconfig, gw)
        return [(name, ip) for name, ip in eips if not state.has_eip(ip)]

    left = Retrying(
        stop=stop_after_delay(SETTLE),
        wait=wait_fixed(3),
        retry=retry_if_result(bool),
        retry_error_callback=lambda rs: rs.outcome.result(),
    )(missing)
    assert not left, (
        f"IptablesEIP(s) ready=true but absent from net1 of {gateway_pod(gw)} after {SETTLE:.0f}s: "
        + ", ".join(f"{n} ({ip})" for n, ip in left)
        + " (Kube-OVN #5114: ready must mean configured)"
    )


@pytest.mark.ip_range(prefix=28, family=4)
def test_a_ready_eip_and_its_fip_are_configured_on_the_gateway(
    k8s, cluster, objects, namespace, gateway, ip_range
):
    e, _f, ip, internal = _eip_with_fip(k8s, objects, namespace, gateway, ip_range, 0)
    state = read_gateway(cluster.kubeconfig, gateway)
    assert state.has_eip(ip), (
        f"{e} is ready but {ip} is not on net1: {sorted(state.net1_addresses)}"
    )
    assert state.has_fip(ip, internal), f"no EXCLUSIVE_DNAT/SNAT rules for {ip} <-> {internal}"


@pytest.mark.ip_range(prefix=28, family=4)
def test_deleting_a_fip_while_the_gateway_restarts_leaves_no_unconfigured_ready_eip(
    k8s, cluster, objects, namespace, gateway, ip_range
):
    first = _eip_with_fip(k8s, objects, namespace, gateway, ip_range, 0)
    second = _eip_with_fip(k8s, objects, namespace, gateway, ip_range, 1)
    result = kubectl(
        cluster.kubeconfig,
        "-n",
        "kube-system",
        "delete",
        "pod",
        gateway_pod(gateway),
        "--wait=false",
    )
    assert result.returncode == 0, result.stderr
    # the trigger of #5114: a FIP deleted while its gateway re-applies everything
    delete_and_wait(k8s, FIP, first[1], timeout=120)
    for name, *_ in (first, second):
        wait_for_condition(k8s, EIP, name, is_ready, timeout=300, description="EIP ready again")
    _assert_ready_means_configured(
        k8s, cluster, gateway, [(first[0], first[2]), (second[0], second[2])]
    )
    state = read_gateway(cluster.kubeconfig, gateway)
    assert state.has_fip(second[2], second[3]), "the surviving FIP was not re-applied"
