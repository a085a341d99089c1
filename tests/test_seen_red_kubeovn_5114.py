"""Seen red: the #5114 check fails on a buggy NAT gateway controller and passes on a fixed one.

Kube-OVN cannot be built or run here (its Go modules are refused by the Go proxy and this
kernel has no openvswitch), so kube-ovn-controller is replaced at the process boundary by
tests/doubles/kubeovn_natgw.py: a controller double in a thread, against the real API
server of scripts/test, with the gateway pod's data plane kept in memory. The scenario's
own library code (fixtures.kubeovn.wait_for_race_window and check_until_settled) drives
and judges it, exactly as e2e/test_kubeovn_eip_ready_means_configured.py does on a cluster.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from fixtures.kube import (
    create_with_retry,
    delete_and_wait,
    install_crds,
    unique_name,
    wait_for_condition,
)
from fixtures.kubeovn import (
    EIP,
    FIP,
    GatewayObserver,
    GatewayState,
    NatSnapshot,
    NotSettled,
    RaceWindowMissed,
    Settled,
    check_until_settled,
    eip,
    fip,
    is_ready,
    ready_implies_configured,
    wait_for_race_window,
)
from tests.doubles.kubeovn_natgw import NatGatewayDouble, crds

INIT_DELAY = 2.0  # how long the double's new gateway pod takes to initialise
SETTLE = 8.0  # seconds the check may take to settle; the fixed double needs about INIT_DELAY


@pytest.fixture(scope="module")
def nat_crds(control_plane, k8s) -> None:
    install_crds(k8s, crds(), timeout=30)


@pytest.fixture
def double(request, k8s, nat_crds) -> Iterator[NatGatewayDouble]:
    with NatGatewayDouble(
        k8s, unique_name("gw", 5), fixed=request.param, init_delay=INIT_DELAY
    ) as gw:
        yield gw
    assert not gw.errors, f"the double hit API errors: {gw.errors}"


@dataclass(frozen=True)
class Pair:
    eip: str
    fip: str
    ip: str
    internal: str


def make_pair(k8s, gw: NatGatewayDouble, index: int) -> Pair:
    ip, internal = f"198.51.100.{10 + index}", f"198.18.1.{10 + index}"
    e = unique_name(f"eip{index}", 5)
    f = unique_name(f"fip{index}", 5)
    create_with_retry(k8s, eip(e, gw.gateway, v4ip=ip))
    create_with_retry(k8s, fip(f, e, internal))
    for resource, name in ((EIP, e), (FIP, f)):
        wait_for_condition(k8s, resource, name, is_ready, timeout=20, description="ready")
    return Pair(e, f, ip, internal)


def restart_then_delete_a_fip_in_the_window(
    k8s, gw: NatGatewayDouble
) -> tuple[Pair, Pair, Settled]:
    """The e2e scenario's steps, with the double's restart in place of `kubectl delete pod`."""
    first, second = make_pair(k8s, gw, 0), make_pair(k8s, gw, 1)
    with GatewayObserver(k8s, gw.gateway, gw.gateway_state, tick=0.2) as observe:
        before = gw.gateway_state()
        assert before.has_eip(first.ip) and before.has_eip(second.ip), before
        gw.restart_gateway()
        window = wait_for_race_window(observe, replaced_uid=before.pod_uid, timeout=20)
        assert set(window.unconfigured) == {first.eip, second.eip}
        delete_and_wait(k8s, FIP, first.fip, timeout=20)
        settled = check_until_settled(observe, settle_after=3, timeout=SETTLE)
    return first, second, settled


@pytest.mark.needs_control_plane
@pytest.mark.seen_red("kube-ovn#5114")
@pytest.mark.parametrize("double", [False], indirect=True, ids=["v1.13.4"])
def test_with_the_buggy_controller_the_check_names_the_ready_but_unconfigured_eip(k8s, double):
    with pytest.raises(NotSettled) as failed:
        restart_then_delete_a_fip_in_the_window(k8s, double)

    message = str(failed.value)
    last = failed.value.last
    assert last is not None and len(last.violations) == 1, message
    (violation,) = last.violations
    new = double.gateway_state()
    assert violation.eip in message and violation.eip.startswith("eip0-"), message
    assert violation.reason == "its IP is not on net1"
    assert (violation.pod, violation.pod_uid) == (double.pod_name, new.pod_uid)
    assert f"; gateway pod {double.pod_name} (uid {new.pod_uid})" in message
    assert any("without configuring" in a for a in double.actions), double.actions


@pytest.mark.needs_control_plane
@pytest.mark.seen_red("kube-ovn#5114")
@pytest.mark.parametrize("double", [True], indirect=True, ids=["fixed"])
def test_with_the_fixed_controller_the_check_settles_with_every_eip_configured(k8s, double):
    first, second, settled = restart_then_delete_a_fip_in_the_window(k8s, double)

    state = settled.last.gateway
    assert state.pod_uid == double.gateway_state().pod_uid
    assert state.has_eip(first.ip) and state.has_eip(second.ip), state
    assert state.has_fip(second.ip, second.internal), state.nat_rules
    assert not state.has_fip(first.ip, first.internal), "the deleted FIP's rules are still there"
    assert any(o.pending for o in settled.history), "the check never saw the re-application"


# --- the verdict logic on plain data (no API server) ---------------------------------------

POD_A = GatewayState.parse(
    "vpc-nat-gw-g-0",
    "uid-a",
    "2025-03-01T10:00:07Z",
    "3: net1    inet 198.51.100.10/24 brd 198.51.100.255 scope global net1",
    "-A EXCLUSIVE_DNAT -d 198.51.100.10/32 -j DNAT --to-destination 198.18.1.10\n"
    "-A EXCLUSIVE_SNAT -s 198.18.1.10/32 -j SNAT --to-source 198.51.100.10",
)


def eip_obj(name: str, ip: str, ready: bool, redo: str = "") -> dict:
    return {
        "metadata": {"name": name},
        "spec": {"natGwDp": "g", "v4ip": ip},
        "status": {"ready": ready, "ip": ip, "redo": redo},
    }


def fip_obj(name: str, eip_name: str, internal: str, ready: bool = True) -> dict:
    return {
        "metadata": {"name": name},
        "spec": {"eip": eip_name, "internalIp": internal},
        "status": {"ready": ready, "v4ip": "198.51.100.10" if eip_name == "e0" else ""},
    }


def test_a_ready_fip_without_its_nat_rules_is_a_violation():
    eips = [eip_obj("e0", "198.51.100.10", True)]
    assert ready_implies_configured(eips, POD_A, [fip_obj("f0", "e0", "198.18.1.10")]) == []
    (v,) = ready_implies_configured(eips, POD_A, [fip_obj("f1", "e0", "198.18.1.99")])
    assert (v.fip, v.eip, v.pod_uid) == ("f1", "e0", "uid-a")
    assert "EXCLUSIVE_DNAT/SNAT" in str(v)


def test_waiting_for_the_window_fails_when_the_new_pod_configured_everything_first():
    redo = "2025-03-01T10:00:07"  # Go layout of POD_A's creationTimestamp
    snapshot = NatSnapshot((eip_obj("e0", "198.51.100.10", True, redo),), (), POD_A)
    with pytest.raises(RaceWindowMissed, match="race was not exercised"):
        wait_for_race_window(lambda: snapshot, replaced_uid="uid-old", timeout=5)


def test_the_window_is_open_while_every_eip_waits_for_the_new_pod():
    redo = "2025-03-01T10:00:07"
    eips = (
        eip_obj("e0", "198.51.100.10", False, redo),
        eip_obj("e1", "198.51.100.11", False, redo),
    )
    window = wait_for_race_window(
        lambda: NatSnapshot(eips, (), POD_A), replaced_uid="uid-old", timeout=5
    )
    assert (window.pod_uid, window.unconfigured) == ("uid-a", ("e1",))


def test_the_check_does_not_settle_while_something_still_waits():
    snapshot = NatSnapshot((eip_obj("e0", "198.51.100.10", False),), (), POD_A)
    with pytest.raises(NotSettled, match="still waiting for re-application: IptablesEIP/e0"):
        check_until_settled(lambda: snapshot, settle_after=2, timeout=0.2)
