"""A --kubeconfig cluster is checked against its profile: requires(...) skips with the mismatch.

The readings run against the offline control plane's real API server (scripts/test):
the CNI's Deployment, DaemonSet and ConfigMap are created there or not, and kwok's
simulated nodes make the DaemonSet's pods ready. The plugin-level test runs an inner
pytest session with --kubeconfig (pytester), as a user would against an existing cluster.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fixtures.kube import (
    CONFIG_MAP,
    DAEMON_SET,
    DEPLOYMENT,
    create_with_retry,
    delete_and_wait,
    delete_namespace,
    make_namespace,
    short_hash,
    unique_name,
    update_object,
    wait_for_condition,
)
from fixtures.lifecycle import SessionCluster
from fixtures.live_capabilities import (
    CniWorkloads,
    LiveCluster,
    Workload,
    explicit_gates,
    live_gaps,
    read_live_cluster,
)

REPO = Path(__file__).resolve().parent.parent
pytest_plugins = ["pytester"]

ANTREA_CONF = """\
# FeatureGates is a map of feature names to bools that enable or disable experimental features.
featureGates:
# Enable Egress (beta, on by default).
#  Egress: true
  ServiceExternalIP: true
  Multicast: false
"""


# --- the verdict on plain values ---------------------------------------------------------------


def test_explicit_gates_are_the_uncommented_ones_and_bad_yaml_is_a_note():
    assert explicit_gates(ANTREA_CONF) == ({"ServiceExternalIP": True, "Multicast": False}, None)
    assert explicit_gates("featureGates:\n#  Egress: true\n") == ({}, None)
    assert explicit_gates("clientConnection: {}\n") == ({}, None)
    gates, note = explicit_gates("featureGates: [not, a, map]\n")
    assert gates == {} and note == "featureGates is a list, not a mapping"
    gates, note = explicit_gates("featureGates: {Egress: true\n")
    assert gates == {} and note is not None and note.startswith("not YAML")


def antrea(
    controller: bool | None = True,
    replicas: int = 1,
    agent: bool | None = True,
    agent_ready: int = 2,
    config: bool | None = True,
    gates: dict[str, dict[str, bool]] | None = None,
) -> LiveCluster:
    return LiveCluster(
        "antrea",
        Workload("Deployment", "kube-system", "antrea-controller", controller, replicas, replicas),
        Workload("DaemonSet", "kube-system", "antrea-agent", agent, 2, agent_ready),
        "kube-system/antrea-config",
        config,
        gates or {},
    )


NEEDS_EGRESS = {"cni": "antrea", "feature_gates": ["Egress"]}


def test_a_missing_controller_is_named_once_for_every_cni_requirement():
    gaps = live_gaps(antrea(controller=False), {**NEEDS_EGRESS, "encap_mode": "encap"})
    assert gaps == ["profile says cni=antrea but no antrea-controller Deployment in kube-system"]
    assert live_gaps(antrea(replicas=0), {"cni": "antrea"}) == [
        "profile says cni=antrea but the antrea-controller Deployment in kube-system is scaled to 0"
    ]
    assert live_gaps(antrea(controller=False), {"nodes": 3}) == []  # not a CNI requirement


def test_a_gate_turned_off_in_the_config_is_a_gap_and_a_gate_left_at_its_default_is_not():
    off = antrea(
        gates={"antrea-agent.conf": {"Egress": True}, "antrea-controller.conf": {"Egress": False}}
    )
    assert live_gaps(off, NEEDS_EGRESS) == [
        "profile says feature gate Egress is on but ConfigMap antrea-config in kube-system "
        "sets Egress: false in antrea-controller.conf"
    ]
    assert live_gaps(antrea(gates={"antrea-agent.conf": {}}), NEEDS_EGRESS) == []
    assert live_gaps(antrea(config=False), NEEDS_EGRESS) == [
        "profile says feature gate Egress is on but there is no ConfigMap antrea-config in "
        "kube-system to read it from"
    ]


def test_the_data_plane_needs_a_running_agent():
    want = {"data_plane": True}
    assert live_gaps(antrea(agent=False), want) == [
        "profile says the data plane runs (data_plane=True) but no antrea-agent DaemonSet in "
        "kube-system"
    ]
    assert live_gaps(antrea(agent_ready=0), want) == [
        "profile says the data plane runs (data_plane=True) but the antrea-agent DaemonSet in "
        "kube-system has 0 of 2 pods ready"
    ]
    assert live_gaps(antrea(agent_ready=1), want) == []  # partly up: the tests run and tell
    assert live_gaps(antrea(agent=False), {"cni": "antrea"}) == []  # a control-plane test


def test_what_could_not_be_read_is_never_a_gap():
    unknown = antrea(controller=None, agent=None, config=None)
    assert live_gaps(unknown, {**NEEDS_EGRESS, "data_plane": True}) == []
    flannel = LiveCluster(
        "flannel", None, Workload("DaemonSet", "kube-flannel", "kube-flannel-ds", False)
    )
    assert live_gaps(flannel, {"cni": "flannel"}) == [
        "profile says cni=flannel but no kube-flannel-ds DaemonSet in kube-flannel"
    ]


# --- readings from a real API server ------------------------------------------------------------


def deployment(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "c", "image": "localhost/cni-e2e/none:0"}]},
            },
        },
    }


def daemon_set(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "c", "image": "localhost/cni-e2e/none:0"}]},
            },
        },
    }


def config_map(name: str, conf: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": labels},
        "data": {"antrea-controller.conf": conf, "antrea-agent.conf": conf},
    }


def ready_pods(obj: dict[str, Any] | None) -> bool:
    return bool(obj) and int((obj or {}).get("status", {}).get("numberReady") or 0) >= 1


@pytest.fixture
def scratch(control_plane, k8s) -> Iterator[str]:
    name = unique_name("live-caps")
    make_namespace(k8s, name, labels={"cni-e2e/test": short_hash(__name__)})
    yield name
    delete_namespace(k8s, name)


@pytest.mark.needs_control_plane
def test_read_live_cluster_sees_what_was_created_and_nothing_else(k8s, scratch):
    where = CniWorkloads(
        (scratch, "antrea-controller"),
        (scratch, "antrea-agent"),
        (scratch, "antrea-config"),
        ("antrea-controller.conf", "antrea-agent.conf"),
    )
    empty = read_live_cluster(k8s, "antrea", where)
    assert (empty.controller and empty.controller.found, empty.agent and empty.agent.found) == (
        False,
        False,
    )
    assert empty.config_found is False and empty.notes == ()

    labels = {"app": "cni-e2e-live-check"}
    create_with_retry(k8s, deployment("antrea-controller", labels), namespace=scratch)
    create_with_retry(k8s, config_map("antrea-config", ANTREA_CONF, labels), namespace=scratch)
    create_with_retry(k8s, daemon_set("antrea-agent", labels), namespace=scratch)
    wait_for_condition(k8s, DAEMON_SET, "antrea-agent", ready_pods, scratch, timeout=60)

    live = read_live_cluster(k8s, "antrea", where)
    assert live.controller is not None
    assert (live.controller.found, live.controller.desired) == (True, 1)
    assert live.agent is not None and live.agent.found and live.agent.ready >= 1
    assert live.config_found is True
    assert live.gates == {
        "antrea-controller.conf": {"ServiceExternalIP": True, "Multicast": False},
        "antrea-agent.conf": {"ServiceExternalIP": True, "Multicast": False},
    }
    assert live_gaps(
        live, {"cni": "antrea", "feature_gates": ["Multicast"], "data_plane": True}
    ) == [
        f"profile says feature gate Multicast is on but ConfigMap antrea-config in {scratch} "
        "sets Multicast: false in antrea-controller.conf, antrea-agent.conf"
    ]


# --- the plugin: requires(...) on a --kubeconfig session ----------------------------------------

INNER_TESTS = """
import pytest


@pytest.mark.requires(cni="antrea", feature_gates=["Egress"])
def test_needs_antrea_egress():
    pass


@pytest.mark.dataplane
def test_needs_the_data_plane():
    pass


@pytest.mark.requires(nodes=1)
def test_needs_nothing_of_the_cni():
    pass
"""


@pytest.fixture
def external_session(
    pytester: pytest.Pytester, control_plane: SessionCluster, monkeypatch: pytest.MonkeyPatch
):
    """Run an inner session on this session's API server as an existing antrea-encap cluster."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    pytester.makeconftest('pytest_plugins = ["fixtures.plugins"]\n')
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(test_inner=INNER_TESTS)

    def run() -> str:
        result = pytester.runpytest_subprocess(
            "-p",
            "no:cacheprovider",
            "-n",
            "0",
            "-rs",  # the skip reasons, in full
            f"--kubeconfig={control_plane.kubeconfig}",
            "--profile=antrea-encap",
            timeout=120,
        )
        return str(result.stdout.str()) + str(result.stderr.str())

    return run


@pytest.mark.needs_control_plane
def test_requires_skips_naming_what_the_kubeconfig_cluster_lacks_and_runs_once_it_is_there(
    k8s, external_session
):
    tag = {"app": f"cni-e2e-live-check-{secrets.token_hex(3)}"}  # never app=antrea
    made: list[tuple[Any, str]] = []
    try:
        first = external_session()
        assert (
            "does not match profile antrea-encap: profile says cni=antrea but no "
            "antrea-controller Deployment in kube-system" in first
        ), first
        assert "no antrea-agent DaemonSet in kube-system" in first, first
        assert "1 passed, 2 skipped" in first, first

        create_with_retry(k8s, deployment("antrea-controller", tag), namespace="kube-system")
        made.append((DEPLOYMENT, "antrea-controller"))
        off = ANTREA_CONF.replace("#  Egress: true", "  Egress: false")
        create_with_retry(k8s, config_map("antrea-config", off, tag), namespace="kube-system")
        made.append((CONFIG_MAP, "antrea-config"))
        second = external_session()
        assert (
            "profile says feature gate Egress is on but ConfigMap antrea-config in kube-system "
            "sets Egress: false in antrea-controller.conf, antrea-agent.conf" in second
        ), second
        assert "no antrea-agent DaemonSet in kube-system" in second, second
        assert "1 passed, 2 skipped" in second, second

        update_object(
            k8s,
            CONFIG_MAP,
            "antrea-config",
            lambda cm: {**cm, "data": {k: ANTREA_CONF for k in cm["data"]}},
            "kube-system",
        )
        create_with_retry(k8s, daemon_set("antrea-agent", tag), namespace="kube-system")
        made.append((DAEMON_SET, "antrea-agent"))
        wait_for_condition(k8s, DAEMON_SET, "antrea-agent", ready_pods, "kube-system", timeout=60)
        third = external_session()
        assert "3 passed" in third, third
    finally:
        for resource, name in reversed(made):
            # foreground: its pods are gone too when this returns
            delete_and_wait(k8s, resource, name, "kube-system", propagation="Foreground")
