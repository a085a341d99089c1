"""Seen red: each external-IP scenario fails, naming the cause, when its fault is present.

One real metallb-l2 kind cluster (offline images, testnet addresses) is made through
the library for the module and deleted with its docker network at the end. Each test
copies the real scenario file from e2e/ into a pytester directory and runs it on that
cluster twice: with a fault (it must fail, and say why) and without (it must pass).
Faults come either from the cluster itself, changed by the outer test before the
inner run, or from the small conftest below, which wraps one fixture when
CNI_E2E_FAULT names its fault and is a no-op otherwise. Each test's docstring says
which real component is replaced or changed.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as kclient
from kubernetes import config as kconfig

from fixtures import metallb as mlb
from fixtures.addressing import apply_plan
from fixtures.lifecycle import SessionCluster
from fixtures.profiles import load_profile
from fixtures.render import HostSetup, render_install_plan
from tests.kind_support import REPO, provisioned_cluster, require_kind

pytest_plugins = ["pytester"]
pytestmark = [pytest.mark.kind, pytest.mark.xdist_group("real-kind")]

PROFILE = "metallb-l2"
FAULT_ENV = "CNI_E2E_FAULT"
INNER_TIMEOUT = 600  # seconds for one inner session against the running cluster

# The pytester directory's conftest: the harness plugin, plus one wrapper per fault.
# Without CNI_E2E_FAULT every wrapper returns the plugin's own fixture unchanged and
# requests nothing more, so the green run uses exactly the plugin's fixtures.
FAULT_CONFTEST = r'''
"""Fault injection for the seen-red runs: CNI_E2E_FAULT names one fault; unset, none."""

import os
import subprocess

import pytest
from kubernetes import client as kclient

from fixtures import metallb as mlb
from fixtures.external_ip import ExternalIPError, wait_for
from fixtures.offline_images import agnhost_image
from fixtures.probes import Prober

pytest_plugins = ["fixtures.plugins"]
FAULT = os.environ.get("CNI_E2E_FAULT", "")


@pytest.fixture
def backends(backends, request):
    """silent-backend: one more Ready pod behind the Service that never answers on 8080."""
    if FAULT != "silent-backend":
        return backends
    core = kclient.CoreV1Api(request.getfixturevalue("k8s"))
    namespace = request.getfixturevalue("namespace")

    def deploy(name="backend", *args, **kwargs):
        real = backends(name, *args, **kwargs)
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"{name}-silent", "labels": {**real.labels, "fault": "silent"}},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "agnhost",
                    "image": agnhost_image(),
                    "imagePullPolicy": "Never",
                    # serves (and is probed Ready) on 8081; the Service targets 8080
                    "args": ["netexec", "--http-port=8081"],
                    "readinessProbe": {
                        "httpGet": {"path": "/hostname", "port": 8081},
                        "periodSeconds": 2,
                    },
                }],
            },
        }
        core.create_namespaced_pod(namespace, pod)

        def ready():
            st = core.read_namespaced_pod(pod["metadata"]["name"], namespace).status
            conds = {c.type: c.status for c in st.conditions or []}
            return True if conds.get("Ready") == "True" else None

        if wait_for("silent backend Ready", ready, 120) is None:
            raise ExternalIPError(f"fault injection: {name}-silent not Ready within 120s")
        return real  # the scenario is told only about the backends that answer

    return deploy


@pytest.fixture
def lb_service(lb_service, request):
    """unadvertised: the pool's L2Advertisement removed after its IP was announced.

    stopped-controller: MetalLB's controller scaled to 0 once the first Service has its IP
    (back to 1 at teardown), so nothing it allocated is released while the test runs."""
    if FAULT == "stopped-controller":
        return _stopping_controller(lb_service, request)
    if FAULT != "unadvertised":
        return lb_service
    external_ip = request.getfixturevalue("external_ip")
    external_client = request.getfixturevalue("external_client")
    prober = Prober()

    def answered(ip):
        return prober.arp(ip, source=external_client.netns, timeout=1.0, window=0.3).ok

    def expose(pool, backends, **kwargs):
        svc = lb_service(pool, backends, **kwargs)
        external_ip.owner(svc.namespace, svc.name, timeout=30)
        if wait_for(f"{svc.ip} announced", lambda: answered(svc.ip) or None, 30) is None:
            raise ExternalIPError(f"fault injection: {svc.ip} never announced, nothing to remove")
        external_ip.unadvertise(pool)
        if wait_for(f"{svc.ip} withdrawn", lambda: (not answered(svc.ip)) or None, 30) is None:
            raise ExternalIPError(
                f"fault injection: {svc.ip} still answered ARP 30s after L2Advertisement "
                f"{pool.name} was deleted"
            )
        return svc

    return expose


@pytest.fixture
def external_client(external_client, request):
    """ignores-garp: the client drops gratuitous ARP for its test's range (arptables in
    the client container's own namespace), as clients that never accept GARP do."""
    if FAULT != "ignores-garp":
        yield external_client
        return
    cidr = request.getfixturevalue("ip_range").cidr
    argv = ["nsenter", f"--net={external_client.netns.path}", "arptables"]
    rule = ["INPUT", "-s", cidr, "-d", cidr, "-j", "DROP"]
    subprocess.run([*argv, "-A", *rule], check=True, capture_output=True, timeout=30)
    yield external_client
    counters = subprocess.run(
        [*argv, "-L", "INPUT", "-n", "-v"], capture_output=True, text=True, timeout=30
    )
    print(f"client arptables after the test: {counters.stdout.strip()}")


def _stopping_controller(lb_service, request):
    apps = kclient.AppsV1Api(request.getfixturevalue("k8s"))
    stopped = []

    def scale(replicas):
        apps.patch_namespaced_deployment_scale(
            "controller", mlb.NAMESPACE, {"spec": {"replicas": replicas}}
        )

    def expose(pool, backends, **kwargs):
        svc = lb_service(pool, backends, **kwargs)
        if not stopped:
            scale(0)
            stopped.append(True)
            gone = wait_for(
                "controller pods gone",
                lambda: True
                if not kclient.CoreV1Api(apps.api_client).list_namespaced_pod(
                    mlb.NAMESPACE, label_selector="component=controller"
                ).items
                else None,
                120,
            )
            if gone is None:
                raise ExternalIPError("fault injection: controller pods still there after 120s")
        return svc

    def restore():
        if not stopped:
            return
        scale(1)

        def available():
            d = apps.read_namespaced_deployment("controller", mlb.NAMESPACE)
            return True if (d.status.available_replicas or 0) >= 1 else None

        if wait_for("controller available again", available, 120) is None:
            raise ExternalIPError("fault injection: MetalLB controller not back within 120s")

    request.addfinalizer(restore)
    return expose


@pytest.fixture
def lb_pool(lb_pool, request):
    """one-node-advertisement: the pool announced only from the first worker.

    wrong-pool: the pool the scenario asks for is made from another test range, as a
    provider that hands out addresses from outside the Service's pool would do."""
    if FAULT == "wrong-pool":
        other = request.getfixturevalue("ip_range_factory")()

        def elsewhere(addresses=None, name=None):
            return lb_pool([other.cidr] if addresses is None else [f"{other.first_host}/32"], name)

        return elsewhere
    if FAULT != "one-node-advertisement":
        return lb_pool
    external_ip = request.getfixturevalue("external_ip")
    worker_nodes = request.getfixturevalue("worker_nodes")

    def make(*args, **kwargs):
        pool = lb_pool(*args, **kwargs)
        external_ip.unadvertise(pool)
        external_ip.custom.create_namespaced_custom_object(
            external_ip.GROUP, external_ip.VERSION, mlb.NAMESPACE, "l2advertisements",
            {
                "apiVersion": f"{external_ip.GROUP}/{external_ip.VERSION}",
                "kind": "L2Advertisement",
                "metadata": {"name": pool.name, "namespace": mlb.NAMESPACE},
                "spec": {
                    "ipAddressPools": [pool.name],
                    "nodeSelectors": [
                        {"matchLabels": {"kubernetes.io/hostname": worker_nodes[0]}}
                    ],
                },
            },
        )
        return pool

    return make
'''


def _missing_images(provider: Any, profile: Any) -> str | None:
    for image in render_install_plan(profile, None, HostSetup(offline=True)).images:
        if not provider.image_present(image):
            return f"image {image} is missing: run scripts/build-node-image --addon metallb"
    return None


@pytest.fixture(scope="module")
def mlb_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SessionCluster]:
    """One metallb-l2 cluster for the module, deleted with its network (also on failure)."""
    provider = require_kind()
    why = _missing_images(provider, apply_plan(load_profile(PROFILE), "testnet"))
    if why is not None:
        pytest.skip(f"profile {PROFILE} cannot run here: {why}")
    with provisioned_cluster(PROFILE, "mlb", tmp_path_factory.mktemp("mlb")) as session:
        yield session


@pytest.fixture
def metallb_api(mlb_cluster: SessionCluster) -> kclient.CustomObjectsApi:
    return kclient.CustomObjectsApi(
        kconfig.new_client_from_config(config_file=str(mlb_cluster.kubeconfig))
    )


class Scenario:
    """One real e2e/ scenario file, run in a pytester dir against the module's cluster."""

    def __init__(self, pytester: pytest.Pytester, cluster: SessionCluster, file: str) -> None:
        self.pytester = pytester
        self.cluster = cluster
        self.file = file
        pytester.makeconftest(FAULT_CONFTEST)
        pytester.makeini("[pytest]\n")
        (pytester.path / "e2e").mkdir(exist_ok=True)
        for f in ("conftest.py", file):
            shutil.copy(REPO / "e2e" / f, pytester.path / "e2e" / f)

    def run(self, monkeypatch: pytest.MonkeyPatch, fault: str | None, *select: str) -> Run:
        monkeypatch.setenv("PYTHONPATH", str(REPO))
        if fault is None:
            monkeypatch.delenv(FAULT_ENV, raising=False)
        else:
            monkeypatch.setenv(FAULT_ENV, fault)
        t0 = time.monotonic()
        result = self.pytester.runpytest_subprocess(
            "--provider", "kind",
            "--profile", PROFILE,
            "--address-plan", "testnet",
            "--kind-image", "offline",
            "--cluster-name", self.cluster.name,
            "-p", "no:cacheprovider",
            *select,
            f"e2e/{self.file}",
            timeout=INNER_TIMEOUT,
        )  # fmt: skip
        return Run(result, time.monotonic() - t0)


class Run:
    """An inner session's outcome and the assertion messages of its failures."""

    def __init__(self, result: pytest.RunResult, seconds: float) -> None:
        self.result = result
        self.seconds = seconds
        self.out = result.stdout.str()

    @property
    def errors(self) -> str:
        """The `E   ...` lines of every failure, joined: what a user would read first."""
        return "\n".join(
            line[1:].strip() for line in self.out.splitlines() if line.startswith("E ")
        )


@pytest.fixture
def scenario(pytester: pytest.Pytester, mlb_cluster: SessionCluster):
    def make(file: str) -> Scenario:
        return Scenario(pytester, mlb_cluster, file)

    return make


def run_red(
    sc: Scenario,
    monkeypatch: pytest.MonkeyPatch,
    fault: str | None,
    select: tuple[str, ...],
) -> Run:
    """The faulty run, its failure messages printed (seen with -s or -rP)."""
    red = sc.run(monkeypatch, fault, *select)
    label = fault or "set on the cluster by the outer test"
    print(f"--- {sc.file} with fault {label!r} ({red.seconds:.0f}s):\n{red.errors}")
    return red


@pytest.mark.seen_red("external_ip:reachability")
def test_reachability_fails_naming_the_probes_a_silent_backend_drops(scenario, monkeypatch):
    """A third Ready pod behind the Service never answers on the Service's port.

    The inner conftest adds it to the scenario's own backends: agnhost serving (and
    probed Ready) on 8081 while the Service targets 8080, a readiness probe on the wrong
    port. Nothing is mocked: kube-proxy really sends a share of the probes to it.
    """
    sc = scenario("test_external_ip_reachability.py")
    select = ("-k", "cluster_policy")
    red = run_red(sc, monkeypatch, "silent-backend", select)
    red.result.assert_outcomes(failed=1, deselected=1)
    m = re.search(r"(\d+) of 40 single-attempt probes of \S+ failed", red.errors)
    assert m and int(m.group(1)) > 0, red.out
    assert ": refused" in red.errors, red.errors
    green = sc.run(monkeypatch, None, *select)
    green.result.assert_outcomes(passed=1, deselected=1)


@pytest.mark.seen_red("external_ip:one_owner")
def test_one_owner_fails_naming_the_reported_node_nobody_answers_for(scenario, monkeypatch):
    """The pool's L2Advertisement is deleted after MetalLB announced (and reported) the IP.

    The inner conftest waits for the nodeAssigned event and an ARP answer, deletes the
    L2Advertisement through the adapter (MetalLB.unadvertise) and waits until ARP goes
    quiet: MetalLB still reports the owner node, and no node answers for the IP.
    """
    sc = scenario("test_external_ip_one_owner.py")
    red = run_red(sc, monkeypatch, "unadvertised", ())
    red.result.assert_outcomes(failed=1)
    assert re.search(
        r"ARP for \S+ answered by nobody .*the provider reports \S+-worker", red.errors
    ), red.errors
    green = sc.run(monkeypatch, None)
    green.result.assert_outcomes(passed=1)


@pytest.mark.seen_red("external_ip:failover")
def test_failover_fails_when_no_other_node_may_take_over_the_frozen_owners_ip(
    scenario, monkeypatch
):
    """The pool is advertised from the first worker only (L2Advertisement nodeSelectors).

    The inner conftest re-creates the pool's L2Advertisement with a nodeSelector for
    that worker; the scenario then really freezes that worker's speaker (SIGSTOP) and
    resumes it. A provider that cannot move the IP is what the scenario exists to catch.
    (An announcer frozen and never resumed does not fail it: the new owner is then the
    only one, which the final check accepts.)
    """
    sc = scenario("test_external_ip_failover.py")
    red = run_red(sc, monkeypatch, "one-node-advertisement", ())
    red.result.assert_outcomes(failed=1)
    assert re.search(
        r"MetalLB speaker \(pid \d+\) on \S+-worker frozen, but ownership of \S+ did not "
        r"move within the profile's 20s",
        red.errors,
    ), red.errors
    green = sc.run(monkeypatch, None)
    green.result.assert_outcomes(passed=1)


@pytest.mark.seen_red("external_ip:pool_validation")
def test_pool_validation_fails_fast_with_metallbs_overlap_message_when_a_live_pool_squats(
    scenario, monkeypatch, mlb_cluster, metallb_api
):
    """A live IPAddressPool covers the cluster's whole test range pool during the run.

    The outer test creates it on the cluster directly (no adapter, no wrapper), so each
    range the scenario takes as free overlaps a live pool. The retry policy must not
    retry that denial away: both tests fail at once with MetalLB's own words.
    """
    sc = scenario("test_external_ip_pool_validation.py")
    squat = {
        "apiVersion": "metallb.io/v1beta1",
        "kind": "IPAddressPool",
        "metadata": {"name": "seen-red-squatter", "namespace": mlb.NAMESPACE},
        "spec": {"addresses": list(mlb_cluster.range_pools), "autoAssign": False},
    }
    metallb_api.create_namespaced_custom_object(
        "metallb.io", "v1beta1", mlb.NAMESPACE, "ipaddresspools", squat
    )
    try:
        red = run_red(sc, monkeypatch, None, ())
    finally:
        metallb_api.delete_namespaced_custom_object(
            "metallb.io", "v1beta1", mlb.NAMESPACE, "ipaddresspools", "seen-red-squatter"
        )
    red.result.assert_outcomes(failed=2)
    for cidr in mlb_cluster.range_pools:
        assert f'overlaps with already defined CIDR \\"{cidr}\\"' in red.errors or (
            f'overlaps with already defined CIDR "{cidr}"' in red.errors
        ), red.errors
    assert red.seconds < 60, f"the overlap was retried instead of failing at once: {red.seconds}"
    green = sc.run(monkeypatch, None)
    green.result.assert_outcomes(passed=2)


@pytest.mark.seen_red("external_ip:allocation")
def test_allocation_fails_naming_the_address_a_provider_hands_out_from_outside_the_pool(
    scenario, monkeypatch
):
    """The pool the scenario binds its Service to is made from another test range.

    The inner conftest's lb_pool wrapper creates the IPAddressPool from a second range
    (ip_range_factory), as a provider ignoring the Service's pool would allocate; MetalLB
    itself is unchanged and really allocates.
    """
    sc = scenario("test_external_ip_allocation.py")
    select = ("-k", "own_pool")
    red = run_red(sc, monkeypatch, "wrong-pool", select)
    red.result.assert_outcomes(failed=1, deselected=1)
    assert re.search(r"got \S+, outside its pool \S+", red.errors), red.errors
    green = sc.run(monkeypatch, None, *select)
    green.result.assert_outcomes(passed=1, deselected=1)


@pytest.mark.seen_red("external_ip:allocation")
def test_allocation_fails_naming_the_ip_a_deleted_service_never_released(scenario, monkeypatch):
    """MetalLB's controller Deployment is scaled to 0 once the first Service has its IP.

    A controller that does not process the deletion keeps the address allocated: the
    scenario's second Service, on the same one-address pool, must then stay pending and
    the failure must name the address that was not released. (SIGSTOP was tried first:
    the kubelet's liveness probe restarts a frozen controller within the scenario's 30 s.)
    Scaled back to 1 at teardown.
    """
    sc = scenario("test_external_ip_allocation.py")
    select = ("-k", "own_pool")
    red = run_red(sc, monkeypatch, "stopped-controller", select)
    red.result.assert_outcomes(failed=1, deselected=1)
    assert re.search(r"\S+ was not released when \S+/lb was deleted", red.errors), red.errors
    green = sc.run(monkeypatch, None, *select)
    green.result.assert_outcomes(passed=1, deselected=1)


@pytest.mark.seen_red("external_ip:failback")
def test_failback_fails_naming_both_macs_when_the_client_ignores_gratuitous_arp(
    scenario, monkeypatch
):
    """The fake client drops every gratuitous ARP for its test's range (arptables).

    MetalLB is unchanged: its resumed speaker really takes the IP back and announces it.
    The client, like one that never accepts gratuitous ARP, keeps the interim owner's MAC
    (traffic through that node keeps the entry confirmed); the scenario must fail naming
    both MACs. Without the rule the client follows the announcement and the scenario passes.
    (The first version probed ARP ownership from the client itself and passed with the
    rule in: the probes' ARP replies updated the client's entry. Hence the observer.)
    """
    sc = scenario("test_external_ip_failback.py")
    red = run_red(sc, monkeypatch, "ignores-garp", ())
    red.result.assert_outcomes(failed=1)
    assert re.search(
        r"client \S+ still sends \S+ to [0-9a-f:]{17} \(\S+-worker2?, \w+\) \d+s after the "
        r"resume, .*\(([0-9a-f:]{17})\) was again the only node answering ARP",
        red.errors,
    ), red.errors
    assert re.search(r"-j DROP .*pcnt=[1-9]", red.out), red.out  # GARPs were sent and dropped
    green = sc.run(monkeypatch, None)
    green.result.assert_outcomes(passed=1)
