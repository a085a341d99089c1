"""Kube-OVN #5114: an IptablesEIP marked ready that the VPC NAT gateway never configured.

Invariant: ready => configured (the EIP is on net1 of the gateway pod, and each
FIP has its EXCLUSIVE_DNAT/SNAT rules). After a gateway pod restart every EIP and
FIP is re-applied; in v1.13.4 deleting a FIP at that moment queued an EIP reset
that forced ready=true on an EIP still waiting for re-application. These restart
the gateway, so they run serialised on one worker.
"""

import pytest

from fixtures.kube import POD, delete_and_wait, unique_name, wait_for_condition
from fixtures.kubeovn import (
    EIP,
    FIP,
    check_until_settled,
    cluster_observer,
    eip,
    fip,
    gateway_pod,
    is_ready,
    nat_gateway,
    vpc,
    vpc_subnet,
    wait_for_race_window,
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
SETTLE = 180.0  # seconds the gateway may take to re-apply everything after a restart
RESTART = 300.0  # seconds for the new gateway pod to come up and the EIPs to be marked for it
TICK = 2.0  # the gateway's data plane sends no events: re-read it at least this often
SETTLE_AFTER = 3  # clean observations in a row that count as settled


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
    assert pod is not None  # the condition needs an object
    return pod["status"]["podIP"]


def _eip_with_fip(k8s, objects, namespace, gw, ip_range, index):
    ip = str(ip_range.host(index))
    e = objects.create(eip(unique_name(f"eip{index}", 4), gw, v4ip=ip))["metadata"]["name"]
    internal = _pod_ip(k8s, objects, namespace, f"backend{index}")
    f = objects.create(fip(unique_name(f"fip{index}", 4), e, internal))["metadata"]["name"]
    wait_for_condition(k8s, EIP, e, is_ready, timeout=120, description="EIP ready")
    wait_for_condition(k8s, FIP, f, is_ready, timeout=120, description="FIP ready")
    return e, f, ip, internal


@pytest.mark.ip_range(prefix=28, family=4)
def test_a_ready_eip_and_its_fip_are_configured_on_the_gateway(
    k8s, cluster, objects, namespace, gateway, ip_range
):
    e, _f, ip, internal = _eip_with_fip(k8s, objects, namespace, gateway, ip_range, 0)
    with cluster_observer(k8s, cluster.kubeconfig, gateway, tick=TICK) as observe:
        settled = check_until_settled(observe, settle_after=SETTLE_AFTER, timeout=SETTLE)
    state = settled.last.gateway
    assert state.has_eip(ip), f"{e} is ready but {ip} is not on net1 of {state.who}"
    assert state.has_fip(ip, internal), f"no EXCLUSIVE_DNAT/SNAT rules for {ip} <-> {internal}"


@pytest.mark.ip_range(prefix=28, family=4)
def test_deleting_a_fip_while_the_gateway_restarts_leaves_no_unconfigured_ready_eip(
    k8s, cluster, objects, namespace, gateway, ip_range
):
    first = _eip_with_fip(k8s, objects, namespace, gateway, ip_range, 0)
    second = _eip_with_fip(k8s, objects, namespace, gateway, ip_range, 1)
    pod = gateway_pod(gateway)
    with cluster_observer(k8s, cluster.kubeconfig, gateway, tick=TICK) as observe:
        before = check_until_settled(observe, settle_after=1, timeout=SETTLE).last.gateway
        result = kubectl(
            cluster.kubeconfig, "-n", "kube-system", "delete", "pod", pod, "--wait=false"
        )
        assert result.returncode == 0, f"kubectl delete pod {pod}: {result.stderr.strip()}"
        # the window #5114 needs: every EIP ready=false with redo=<new pod>, not yet on its net1
        window = wait_for_race_window(observe, replaced_uid=before.pod_uid, timeout=RESTART)
        assert window.pod_uid != before.pod_uid
        # the trigger: a FIP deleted while its EIP waits for the new gateway pod
        delete_and_wait(k8s, FIP, first[1], timeout=120)
        settled = check_until_settled(observe, settle_after=SETTLE_AFTER, timeout=SETTLE)
    state = settled.last.gateway
    assert state.pod_uid == window.pod_uid, f"the gateway pod changed again: {state.who}"
    assert state.has_eip(first[2]) and state.has_eip(second[2]), sorted(state.net1_addresses)
    assert state.has_fip(second[2], second[3]), "the surviving FIP was not re-applied"
    assert not state.has_fip(first[2], first[3]), "the deleted FIP's rules are still there"
