"""Seen red: the #3336 verdict fails on a globalnet that re-allocates, passes on one that keeps.

Submariner's globalnet cannot run here (its modules are refused by the Go proxy), so
a controller double (tests/doubles/submariner_globalnet.py), running in a thread of
this process against the session's real API server, stands in for its GlobalIngressIP
controller. The scenario's own verdict code is used, from fixtures/submariner.py: the
IngressIPWatcher across the restart window and assert_ip_kept on its history.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from fixtures.kube import (
    create_with_retry,
    delete_namespace,
    install_crds,
    make_namespace,
    short_hash,
    unique_name,
    wait_for_condition,
)
from fixtures.submariner import (
    GLOBAL_INGRESS_IP,
    IngressIPHistory,
    IngressIPWatcher,
    allocated_ip,
    assert_ip_kept,
    cluster_ip_service,
)
from tests.doubles.submariner_globalnet import GlobalnetDouble, Mode

pytestmark = [pytest.mark.seen_red("submariner#3336")]

POOL = ("242.254.1.1", "242.254.1.2", "242.254.1.3", "242.254.1.4")

# GlobalIngressIP (submariner.io/v1), written for cni-e2e from Submariner's documented API:
# namespaced, status subresource, the fields the scenario reads
GLOBAL_INGRESS_IP_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {
        "name": "globalingressips.submariner.io",
        "labels": {"app.kubernetes.io/part-of": "cni-e2e"},
    },
    "spec": {
        "group": "submariner.io",
        "scope": "Namespaced",
        "names": {
            "kind": "GlobalIngressIP",
            "plural": "globalingressips",
            "singular": "globalingressip",
            "shortNames": ["giip"],
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {
                                    "target": {
                                        "type": "string",
                                        "enum": [
                                            "ClusterIPService",
                                            "HeadlessServicePod",
                                            "HeadlessServiceEndpoints",
                                        ],
                                    },
                                    "serviceRef": {
                                        "type": "object",
                                        "properties": {"name": {"type": "string"}},
                                    },
                                    "podRef": {
                                        "type": "object",
                                        "properties": {"name": {"type": "string"}},
                                    },
                                },
                            },
                            "status": {
                                "type": "object",
                                "properties": {
                                    "allocatedIP": {"type": "string"},
                                    "conditions": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "x-kubernetes-preserve-unknown-fields": True,
                                        },
                                    },
                                },
                            },
                        },
                    }
                },
            }
        ],
    },
}


@pytest.fixture(scope="module")
def ns(control_plane, k8s) -> Iterator[str]:
    """The GlobalIngressIP CRD (left installed: xdist workers share it) and one namespace."""
    install_crds(k8s, [GLOBAL_INGRESS_IP_CRD])
    name = unique_name("seen-red-3336")
    make_namespace(k8s, name, labels={"cni-e2e/test": short_hash(__name__)})
    yield name
    delete_namespace(k8s, name)


@pytest.fixture
def globalnet(request, control_plane, ns) -> Iterator[GlobalnetDouble]:
    """A running globalnet double in the mode the test names (indirect parametrize)."""
    double = GlobalnetDouble(control_plane.kubeconfig, ns, POOL, mode=request.param)
    double.start()
    yield double
    double.close()


def export(k8s, ns: str, service: str) -> str:
    """What globalnet's ServiceExport handling does first: a ClusterIP Service and its GIIP."""
    create_with_retry(k8s, cluster_ip_service(service), namespace=ns)
    create_with_retry(
        k8s,
        {
            "apiVersion": GLOBAL_INGRESS_IP.api_version,
            "kind": GLOBAL_INGRESS_IP.kind,
            "metadata": {"name": service},
            "spec": {"target": "ClusterIPService", "serviceRef": {"name": service}},
        },
        namespace=ns,
    )
    giip = wait_for_condition(
        k8s,
        GLOBAL_INGRESS_IP,
        service,
        lambda obj: allocated_ip(obj) is not None,
        ns,
        timeout=30,
        description="Allocated=True with an allocatedIP",
    )
    ip = allocated_ip(giip)
    assert ip, giip
    return ip


def restart_with_a_transient_error(k8s, ns: str, globalnet: GlobalnetDouble, service: str):
    """The scenario's restart window, watched by its own watcher, with the fault injected."""
    before = export(k8s, ns, service)
    with IngressIPWatcher(k8s, ns, service) as watcher:
        globalnet.inject_transient_read_errors(service)
        watcher.mark(f"globalnet double ({globalnet.mode.value}) restarting, one read fails")
        globalnet.restart()  # returns once its start-up pass is done
        assert globalnet.injected == [service], "the start-up pass never met the fault"
        watcher.mark("globalnet double restarted")
        watcher.wait_for(
            lambda h: h.settled_ip is not None, timeout=30, description="settled on an IP"
        )
    return before, watcher.history


@pytest.mark.parametrize("globalnet", [Mode.BUGGY], indirect=True, ids=["buggy"])
def test_the_verdict_fails_naming_both_ips_when_a_transient_error_reallocates(k8s, ns, globalnet):
    before, history = restart_with_a_transient_error(k8s, ns, globalnet, "web-buggy")
    after = history.settled_ip
    assert after is not None and after != before, f"the double kept the IP:\n{history}"

    with pytest.raises(AssertionError) as failed:
        assert_ip_kept(history, before)

    message = str(failed.value)
    assert f"{before} was released (allocatedIP empty)" in message
    assert f"allocatedIP changed {before} -> {after}" in message
    assert f"externalIPs changed ['{before}'] -> ['{after}']" in message
    assert "Submariner #3336" in message
    assert str(history) in message, "the failure does not carry the whole history"


@pytest.mark.parametrize("globalnet", [Mode.FIXED], indirect=True, ids=["fixed"])
def test_the_verdict_passes_when_the_ip_is_kept_through_a_transient_error(k8s, ns, globalnet):
    before, history = restart_with_a_transient_error(k8s, ns, globalnet, "web-fixed")
    assert_ip_kept(history, before)
    assert_history_covers_the_restart(history, before)


def assert_history_covers_the_restart(history: IngressIPHistory, before: str) -> None:
    """The pass is not vacuous: the watch saw the IP before the restart and after it."""
    notes = [s.seq for s in history.states if s.kind == "note"]
    first, last = history.ingress_ips[0], history.ingress_ips[-1]
    assert first.event == "LISTED" and first.allocated_ip == before and first.seq < notes[0]
    assert history.services[0].external_ips == (before,)
    assert last.event == "FINAL" and last.seq > notes[-1] and last.allocated_ip == before
