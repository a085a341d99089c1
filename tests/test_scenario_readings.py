"""The readings e2e scenarios rely on, checked on realistic tool output (no cluster needed)."""

import base64
import hashlib

from fixtures.antrea import condition, egress, external_ip_pool, in_ranges, load_balancer_service
from fixtures.kubeovn import GatewayState, is_ready
from fixtures.ranges import IPRange
from fixtures.submariner import allocated_ip, internal_service_name

NAT_RULES = (
    "*nat",
    ":EXCLUSIVE_DNAT - [0:0]",
    "-A EXCLUSIVE_DNAT -d 198.51.100.10/32 -j DNAT --to-destination 192.0.2.20",
    "-A EXCLUSIVE_SNAT -s 192.0.2.20/32 -j SNAT --to-source 198.51.100.10",
    "-A EXCLUSIVE_DNAT -d 198.51.100.11/32 -j DNAT --to-destination 192.0.2.21",
    "COMMIT",
)


def test_gateway_state_needs_both_fip_rules():
    state = GatewayState(frozenset({"198.51.100.10", "198.51.100.11"}), NAT_RULES)
    assert state.has_eip("198.51.100.10")
    assert not state.has_eip("198.51.100.12")
    assert state.has_fip("198.51.100.10", "192.0.2.20")
    # DNAT alone is not a configured FIP
    assert not state.has_fip("198.51.100.11", "192.0.2.21")
    # a prefix of another address does not count
    assert not state.has_fip("198.51.100.1", "192.0.2.2")


def test_eip_ready_needs_the_flag_and_an_address():
    assert is_ready({"status": {"ready": True, "ip": "198.51.100.10"}})
    assert not is_ready({"status": {"ready": True}})
    assert not is_ready({"status": {"ready": False, "ip": "198.51.100.10"}})
    assert not is_ready(None)


def test_internal_service_name_is_submariners_hash_of_the_service_name():
    name = internal_service_name("nginx")
    digest = base64.b32encode(hashlib.sha256(b"nginx").digest()).decode()[:32].lower()
    assert name == "submariner-" + digest
    assert len(name) == len("submariner-") + 32 and name == name.lower()
    assert internal_service_name("nginx") != internal_service_name("nginx2")


def test_allocated_ip_only_counts_once_allocated():
    giip = {
        "status": {
            "allocatedIP": "242.254.1.5",
            "conditions": [{"type": "Allocated", "status": "True", "reason": "Success"}],
        }
    }
    assert allocated_ip(giip) == "242.254.1.5"
    pending = {
        "status": {
            "allocatedIP": "242.254.1.5",
            "conditions": [{"type": "Allocated", "status": "False"}],
        }
    }
    assert allocated_ip(pending) is None


def _range(cidr):
    import ipaddress

    return IPRange(ipaddress.ip_network(cidr), ipaddress.ip_network("169.254.100.0/24"))


def test_antrea_manifests_carry_the_fields_antrea_reads():
    r = _range("169.254.100.16/28")
    pool = external_ip_pool("p", [r], nodes=["n1", "n2"], start_end=True)
    assert pool["apiVersion"] == "crd.antrea.io/v1beta1"
    assert pool["spec"]["ipRanges"] == [{"start": "169.254.100.17", "end": "169.254.100.30"}]
    expr = pool["spec"]["nodeSelector"]["matchExpressions"][0]
    assert expr == {"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1", "n2"]}
    eg = egress("e", namespace_labels={"a": "b"}, pool="p", egress_ip="169.254.100.17")
    assert eg["spec"]["externalIPPool"] == "p" and eg["spec"]["egressIP"] == "169.254.100.17"
    svc = load_balancer_service("s", "p", selector={"app": "x"}, mode="dsr")
    assert svc["metadata"]["annotations"] == {
        "service.antrea.io/external-ip-pool": "p",
        "service.antrea.io/load-balancer-mode": "dsr",
    }
    assert in_ranges("169.254.100.20", [r]) and not in_ranges("169.254.100.40", [r])
    assert condition(
        {"status": {"conditions": [{"type": "IPAllocated", "status": "False"}]}}, "IPAllocated"
    ) == {"type": "IPAllocated", "status": "False"}
