"""The session-cluster lifecycle on real kind clusters (pytester sessions, nothing recorded).

Each test runs whole pytest sessions of a small e2e suite against real kind clusters
built from the offline node image (profile kind-flannel, testnet address plan), and
checks from the outside what a CNI engineer would check: Docker's own event log for
creates and deletes, `kind get clusters`, `docker network ls`, iptables counters.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from fixtures.addressing import kind_network_candidates
from fixtures.engine import ensure_test_image
from fixtures.providers import NetworkPlan
from tests.kind_support import (
    BASE_ARGS,
    PROFILE,
    REPO,
    HostState,
    bridge_of,
    count_packets,
    docker,
    kind_slot,
    node_events,
    provisioned_cluster,
    require_kind,
    unique_cluster_name,
)

pytest_plugins = ["pytester"]
pytestmark = [pytest.mark.kind, pytest.mark.xdist_group("real-kind")]

INNER = r"""
import ipaddress, json, os, subprocess
import pytest
from fixtures.addressing import in_testnet
from fixtures.workloads import kubectl

def record(cluster, what, value):
    with open(os.environ["CNI_E2E_SEEN"], "a") as f:
        f.write(json.dumps({"what": what, "value": value,
                            "worker": os.environ.get("PYTEST_XDIST_WORKER", "main")}) + "\n")

@pytest.mark.parametrize("i", range(4))
def test_sees_the_session_cluster(cluster, i):
    out = kubectl(cluster.kubeconfig, "get", "ns", "kube-system", "-o", "jsonpath={.metadata.uid}")
    assert out.returncode == 0, out.stderr
    record(cluster, "cluster", [cluster.name, out.stdout])

@pytest.mark.skipif(not os.environ.get("CNI_E2E_TEST_IMAGE"), reason="no side-loaded image")
def test_side_loaded_image_runs_without_a_pull(cluster):
    image = os.environ["CNI_E2E_TEST_IMAGE"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "side-loaded"},
           "spec": {"restartPolicy": "Never", "containers": [{
               "name": "c", "image": image, "imagePullPolicy": "Never",
               "command": ["/bin/sh", "-c", "echo ran-from-side-loaded-image"]}]}}
    created = kubectl(cluster.kubeconfig, "apply", "-f", "-", input=json.dumps(pod))
    assert created.returncode == 0, created.stderr
    done = kubectl(cluster.kubeconfig, "wait", "--for=jsonpath={.status.phase}=Succeeded",
                   "pod/side-loaded", "--timeout=120s", timeout=150)
    assert done.returncode == 0, kubectl(cluster.kubeconfig, "describe", "pod/side-loaded").stdout
    logs = kubectl(cluster.kubeconfig, "logs", "side-loaded")
    assert logs.stdout.strip() == "ran-from-side-loaded-image"
    record(cluster, "side-loaded", logs.stdout.strip())

def addresses_of(kind, item):
    status, spec = item.get("status", {}), item.get("spec", {})
    if kind == "nodes":
        return [a["address"] for a in status.get("addresses", []) if a["type"] == "InternalIP"]
    if kind == "pods":
        return [p["ip"] for p in status.get("podIPs", [])] + [status.get("hostIP", "")]
    if kind == "services":
        ips = spec.get("clusterIPs", []) + spec.get("externalIPs", [])
        ips += [i.get("ip", "") for i in status.get("loadBalancer", {}).get("ingress", [])]
        return [i for i in ips if i != "None"]
    return [a for e in item.get("endpoints") or [] for a in e.get("addresses", [])]

def test_every_address_is_in_the_plan(cluster):
    seen = {}
    for kind in ("nodes", "pods", "services", "endpointslices"):
        out = kubectl(cluster.kubeconfig, "get", kind, "-A", "-o", "json")
        assert out.returncode == 0, out.stderr
        for item in json.loads(out.stdout)["items"]:
            found = [a for a in addresses_of(kind, item) if a]
            if found:
                seen[f"{kind}/{item['metadata']['name']}"] = found
    outside = {k: v for k, v in seen.items() if not all(in_testnet(a) for a in v)}
    assert seen and not outside, f"addresses outside the plan: {outside}"
    record(cluster, "addresses", len(seen))

def test_dns_resolves_service_names_inside_the_cluster(cluster):
    out = kubectl(cluster.kubeconfig, "-n", "kube-system", "get", "svc", "kube-dns",
                  "-o", "jsonpath={.spec.clusterIP}")
    assert in_testnet(out.stdout.strip())

@pytest.mark.skipif(not os.environ.get("CNI_E2E_FAIL_ON_PURPOSE"), reason="not asked to fail")
def test_fails_on_purpose_for_diagnostics(cluster, k8s):
    from fixtures.redact import kubeconfig_secrets

    record(cluster, "secrets", sorted(kubeconfig_secrets(cluster.kubeconfig)))
    assert False, "deliberate failure: diagnostics must be collected"
"""


@pytest.fixture
def suite(pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    require_kind()
    with kind_slot():
        yield _suite(pytester, tmp_path, monkeypatch)


def _suite(pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pytester.makeconftest('pytest_plugins = ["fixtures.plugins"]\n')
    pytester.makeini("[pytest]\n")
    (pytester.path / "e2e").mkdir()
    (pytester.path / "e2e" / "test_real.py").write_text(INNER)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("CNI_E2E_SEEN", str(tmp_path / "seen.jsonl"))
    monkeypatch.delenv("CNI_E2E_TEST_IMAGE", raising=False)
    monkeypatch.delenv("CNI_E2E_FAIL_ON_PURPOSE", raising=False)

    class Suite:
        path = pytester.path
        seen = tmp_path / "seen.jsonl"

        def run(self, *args: str) -> pytest.RunResult:
            return pytester.runpytest_subprocess(*BASE_ARGS, *args, "e2e", timeout=1500)

        def records(self, what: str) -> list[dict]:
            if not self.seen.exists():
                return []
            rows = [json.loads(line) for line in self.seen.read_text().splitlines()]
            return [r for r in rows if r["what"] == what]

    return Suite()


def test_three_workers_share_one_cluster_created_once_and_deleted_once_with_no_packet_out(
    suite, monkeypatch
):
    """pytest -n 3: one create, one delete (Docker's events), same cluster everywhere,
    a side-loaded image runs with imagePullPolicy Never, every address in the plan,
    diagnostics from the real nodes, and 0 packets from the kind bridge to outside
    198.18.0.0/15 during the whole session (a counting rule on that bridge)."""
    provider = require_kind()
    name = unique_cluster_name("n3")
    image = ensure_test_image()
    monkeypatch.setenv("CNI_E2E_TEST_IMAGE", image)
    monkeypatch.setenv("CNI_E2E_FAIL_ON_PURPOSE", "1")
    # the cluster's own network, made first so its bridge can be watched from the start;
    # the harness uses a network of that name and removes it with the cluster
    plan = NetworkPlan(name, kind_network_candidates("ipv4").v4)
    provider.create_network(name, plan)
    bridge = bridge_of(name)
    artifacts = suite.path / "artifacts"
    with node_events(name) as events, count_packets(bridge) as packets:
        result = suite.run(
            "-n",
            "3",
            "--cluster-name",
            name,
            "--load-image",
            image,
            "--artifacts-dir",
            str(artifacts),
        )
    out = result.stdout.str()
    result.assert_outcomes(passed=7, failed=1)
    creates = sorted(n for a, n in events if a == "create")
    destroys = sorted(n for a, n in events if a == "destroy")
    nodes = [f"{name}-control-plane", f"{name}-worker", f"{name}-worker2"]
    assert creates == nodes, f"node containers created: {creates}\n{out[-3000:]}"
    assert destroys == nodes, f"node containers destroyed: {destroys}"
    seen = suite.records("cluster")
    assert len(seen) == 4 and len({tuple(r["value"]) for r in seen}) == 1, seen
    assert len({r["worker"] for r in seen}) >= 2, f"tests ran on one worker only: {seen}"
    assert suite.records("side-loaded")[0]["value"] == "ran-from-side-loaded-image"
    # diagnostics of the deliberate failure came from the real node containers
    node_files = list(artifacts.rglob(f"nodes/{name}-worker/ip-route.txt"))
    listing = sorted(str(p) for p in artifacts.rglob("*"))[:40]
    assert node_files, f"no per-node diagnostics under {artifacts}: {listing}"
    assert "198.19.2" in node_files[0].read_text()  # the node's own testnet network
    assert any(p.name == "kubelet.log" for p in artifacts.rglob("*")), "no kind export logs"
    # no credential of the real kubeconfig in any artifact or in the output
    (secrets,) = [r["value"] for r in suite.records("secrets")]
    assert secrets, "the kubeconfig had no client credentials to look for"
    leaked = [
        str(p)
        for p in artifacts.rglob("*")
        if p.is_file() and any(x in p.read_text(errors="replace") for x in secrets)
    ]
    assert not leaked, f"kubeconfig credentials in artifacts: {leaked}"
    assert not any(x in out for x in secrets), "kubeconfig credentials in the output"
    assert packets.inside > 0, "the counter saw no cluster traffic at all: it is not counting"
    assert packets.outside == 0, f"{packets.outside} packets left for outside the test ranges"
    assert HostState.now().mine(name).empty(), HostState.now().mine(name)
    assert f"cluster: {name}  deleted at the end of the session" in out
    assert not (suite.path / ".pytest-kind" / name).exists(), "kubeconfig of a deleted cluster"


@pytest.fixture(scope="module")
def existing_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A cluster made through the library (as scripts/cluster would), deleted at the end."""
    with provisioned_cluster(PROFILE, "reuse", tmp_path_factory.mktemp("existing")) as session:
        yield session


def test_an_existing_cluster_is_reused_and_left_in_place(suite, existing_cluster):
    name = existing_cluster.name
    with node_events(name) as events:
        result = suite.run("-n", "2", "--cluster-name", name)
    result.assert_outcomes(passed=6, skipped=2)
    assert events == [], f"reuse created or destroyed node containers: {events}"
    assert "reusing the existing cluster" in result.stdout.str()
    assert name in HostState.now().clusters
    seen = {tuple(r["value"])[0] for r in suite.records("cluster")}
    assert seen == {name}


def test_keep_cluster_and_kubeconfig_runs_never_delete(suite, existing_cluster):
    name = existing_cluster.name
    with node_events(name) as events:
        kept = suite.run("--cluster-name", name, "--keep-cluster")
        external = suite.run(
            "--kubeconfig", str(existing_cluster.kubeconfig), "--cluster-name", name
        )
    kept.assert_outcomes(passed=6, skipped=2)
    external.assert_outcomes(passed=6, skipped=2)
    assert events == []
    assert name in HostState.now().clusters
    assert "--keep-cluster: keeping" in kept.stdout.str()


def test_a_failing_gate_names_itself_shows_the_object_and_leaves_nothing(suite):
    name = unique_cluster_name("gate")
    before = HostState.now().mine(name)
    result = suite.run("--cluster-name", name, "--gate-timeout", "1")
    out = result.stdout.str() + result.stderr.str()
    assert result.ret != 0
    gate = re.search(rf"readiness gate '([^']+)' failed for cluster {name} within 1s", out)
    assert gate, out[-3000:]
    # the object that did not get ready is shown, whichever gate it was
    shown = r"--- (?:-n \S+ )?get \S+ -o yaml ---\n(apiVersion|items|kind)"
    assert re.search(shown, out), out[-3000:]
    assert before.empty() and HostState.now().mine(name).empty(), HostState.now().mine(name)


def test_a_failed_create_is_one_clear_error_and_leaves_nothing(suite):
    name = unique_cluster_name("bad")
    result = suite.run("--cluster-name", name, "--kind-image", "localhost/cni-e2e/absent:1")
    out = result.stdout.str() + result.stderr.str()
    assert result.ret != 0
    assert "kind could not create cluster" in out, out[-3000:]
    assert HostState.now().mine(name).empty(), HostState.now().mine(name)


def test_provider_kind_without_an_engine_fails_the_run_with_one_reason(suite, monkeypatch):
    """A real docker CLI pointed at a socket where no engine listens."""
    require_kind()
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    result = suite.run("--cluster-name", unique_cluster_name("noengine"))
    out = result.stdout.str() + result.stderr.str()
    assert result.ret not in (0, 5), out[-2000:]
    assert "--provider kind: no Docker engine" in out, out[-2000:]
    assert os.environ.get("DOCKER_HOST")


@pytest.mark.needs_root
def test_data_plane_helpers_work_on_real_nodes(existing_cluster):
    """Enter a node's netns by its container PID, hang a fake external client off a worker,
    route the control plane's replies back through that worker with a harness RouteSet,
    and reach the API server port from the client; routes and client are gone after."""
    from fixtures.netns import external_client, kind_node_netns
    from fixtures.probes import Outcome, Prober
    from fixtures.routes import RouteSet, harness_routes

    name = existing_cluster.name
    cp, worker = f"{name}-control-plane", f"{name}-worker"

    def node_ip(node: str) -> str:
        fmt = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
        return docker("inspect", "-f", fmt, node).strip()

    cp_ip, worker_ip = node_ip(cp), node_ip(worker)
    worker_ns, cp_ns = kind_node_netns(worker), kind_node_netns(cp)
    with worker_ns.iproute() as ipr:
        addresses = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=2)}
    assert worker_ip in addresses, f"{worker} netns has {addresses}, not {worker_ip}"
    # client and host side in a testnet /30 that nothing else uses
    with external_client(
        worker_ns, client_cidr="198.19.255.1/30", host_cidr="198.19.255.2/30"
    ) as client:
        with RouteSet(cp_ns) as routes:
            routes.replace(f"{client.address}/32", gateway=worker_ip)
            assert [str(r.dst) for r in harness_routes(cp_ns)] == [f"{client.address}/32"]
            result = Prober(timeout=2.0, count=3).tcp(cp_ip, 6443, source=client.netns)
            assert result.outcome is Outcome.REACHABLE, result
        assert harness_routes(cp_ns) == []
        host_ifname = client.host_ifname
    with worker_ns.iproute() as ipr:
        links = {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
    assert host_ifname not in links
