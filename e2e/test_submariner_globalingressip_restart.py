"""Submariner #3336: globalnet released a GlobalIngressIP when its start-up read failed.

On controller start any error while reading a GlobalIngressIP's internal Service,
even a transient API error, released the allocated global IP and a new one was
allocated (fixed by PR #3341). Correct behaviour, checked here on the broker
cluster of the submariner-globalnet profile: a restart keeps the IP; a missing
internal Service is recreated with the same IP; a transient API failure during
start-up keeps the IP. These restart the globalnet pods, so they run serialised.

Each test watches the GlobalIngressIP and its internal Service from before the
restart until after it (fixtures.submariner.IngressIPWatcher) and judges the whole
history with assert_ip_kept, so an IP that changes and changes back, or is released
for a moment, fails too. "After the restart" is proven, never assumed: the globalnet
pods are new (no uid from before) and Ready, and a GlobalIngressIP created after
that was allocated by them. Upstream's GlobalIngressIP controller reserves the IPs
of the existing GlobalIngressIPs (the start-up pass where #3336 lived) before its
syncer allocates for new ones, so that allocation shows the start-up pass is over.
"""

import re

import pytest
from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

from fixtures.kube import (
    SERVICE,
    get_object,
    request,
    update_object,
    wait_for_condition,
)
from fixtures.submariner import (
    CLUSTER_ROLE,
    DAEMON_SET,
    EXPORTED_SERVICE_LABEL,
    GLOBAL_INGRESS_IP,
    GLOBALNET_DAEMONSET,
    GLOBALNET_POD_LABEL,
    SUBMARINER_NAMESPACE,
    IngressIPWatcher,
    PodReading,
    allocated_ip,
    assert_ip_kept,
    cluster_ip_service,
    globalnet_pods,
    internal_service_name,
    restarted,
    service_export,
)
from fixtures.workloads import ExecResult, kubectl

pytestmark = [
    pytest.mark.submariner,
    pytest.mark.globalingressip,
    pytest.mark.disruptive,
    pytest.mark.xdist_group("submariner-globalnet"),
    pytest.mark.requires(addons=["globalnet"], data_plane=True),
]

RESTART_TIMEOUT = 180.0


def _ok(result: ExecResult) -> ExecResult:
    """The kubectl result, failing the test with its stderr unless it exited 0."""
    assert result.returncode == 0, (
        f"`kubectl {' '.join(result.argv)}` exited {result.returncode}: "
        f"{(result.stderr or result.stdout).strip()[-2000:]}"
    )
    return result


def _exported_ip(k8s, objects, namespace, name):
    """Export a fresh ClusterIP Service and return the IP globalnet allocated for it."""
    objects.create(cluster_ip_service(name))
    objects.create(service_export(name))
    giip = wait_for_condition(
        k8s,
        GLOBAL_INGRESS_IP,
        name,
        allocated_ip,
        namespace,
        timeout=120,
        description="Allocated=True with an allocatedIP",
    )
    return allocated_ip(giip)


def _delete_globalnet_pods(cluster, k8s) -> tuple[PodReading, ...]:
    """Delete the globalnet pods (waiting until they are gone); returns the pods deleted."""
    before = globalnet_pods(k8s)
    assert before, f"no globalnet pods ({GLOBALNET_POD_LABEL}) in {SUBMARINER_NAMESPACE}"
    _ok(
        kubectl(
            cluster.kubeconfig,
            "-n",
            SUBMARINER_NAMESPACE,
            "delete",
            "pod",
            "-l",
            GLOBALNET_POD_LABEL,
            "--wait=true",
            timeout=120,
        )
    )
    return before


def _wait_restarted(k8s, before, watcher) -> tuple[PodReading, ...]:
    """Wait until every globalnet pod is a new one and Ready: the proof the restart happened."""
    seen: list[tuple[PodReading, ...]] = []

    def poll():
        seen.append(globalnet_pods(k8s))
        return seen[-1]

    now = Retrying(
        stop=stop_after_delay(RESTART_TIMEOUT),
        wait=wait_fixed(2),
        retry=retry_if_result(lambda pods: not restarted(before, pods)),
        retry_error_callback=lambda state: state.outcome.result(),
    )(poll)
    assert restarted(before, now), (
        f"globalnet did not restart within {RESTART_TIMEOUT:g}s: before {before}, now {now}"
    )
    watcher.mark(
        "globalnet restarted: " + ", ".join(f"{p.name} (started {p.start_time})" for p in now)
    )
    return now


def _wait_startup_pass_done(k8s, objects, namespace, watcher, ip) -> None:
    """A GlobalIngressIP created now is allocated only after the start-up pass has run."""
    probe_ip = _exported_ip(k8s, objects, namespace, "probe")
    assert probe_ip != ip, f"globalnet gave the probe the IP it had allocated to web: {ip}"
    watcher.mark(f"restarted globalnet allocated {probe_ip} to probe: start-up pass done")
    watcher.wait_for(
        lambda h: h.settled_ip is not None,
        timeout=120,
        description="GlobalIngressIP and internal Service agree on an IP",
    )


def _restart_and_judge(k8s, cluster, objects, namespace, ip, watcher) -> None:
    before = _delete_globalnet_pods(cluster, k8s)
    watcher.mark(f"deleted globalnet pods {[p.name for p in before]}")
    _wait_restarted(k8s, before, watcher)
    _wait_startup_pass_done(k8s, objects, namespace, watcher, ip)
    assert_ip_kept(watcher.stop(), ip)


def test_restart_keeps_the_allocated_ip(k8s, cluster, objects, namespace):
    ip = _exported_ip(k8s, objects, namespace, "web")
    svc = get_object(k8s, SERVICE, internal_service_name("web"), namespace)
    assert svc is not None, f"no internal Service {internal_service_name('web')} for web"
    assert svc["metadata"]["labels"].get(EXPORTED_SERVICE_LABEL) == "web"
    assert svc["spec"].get("externalIPs") == [ip]
    with IngressIPWatcher(k8s, namespace, "web") as watcher:
        _restart_and_judge(k8s, cluster, objects, namespace, ip, watcher)


def test_missing_internal_service_is_recreated_with_the_same_ip(k8s, cluster, objects, namespace):
    ip = _exported_ip(k8s, objects, namespace, "web")
    name = internal_service_name("web")
    # the internal Service carries a globalnet finalizer: drop it so the Service really goes
    _ok(
        kubectl(
            cluster.kubeconfig,
            "-n",
            namespace,
            "patch",
            "service",
            name,
            "--type=merge",
            "-p",
            '{"metadata":{"finalizers":null}}',
        )
    )
    _ok(kubectl(cluster.kubeconfig, "-n", namespace, "delete", "svc", name, "--wait=true"))
    # from here on the Service may be absent, but never carry another IP, and must come back
    with IngressIPWatcher(k8s, namespace, "web") as watcher:
        _restart_and_judge(k8s, cluster, objects, namespace, ip, watcher)


def _forbidden_service_reads(log_text: str, role_user: str) -> list[str]:
    """The log lines where the API server refused globalnet a read of Services."""
    pattern = re.compile(
        r'services(?: "[^"]+")? is forbidden: User "'
        + re.escape(role_user)
        + r'" cannot (?:get|list|watch) resource "services" in API group ""'
    )
    return [line for line in log_text.splitlines() if pattern.search(line)]


def test_transient_api_error_at_restart_keeps_the_ip(k8s, cluster, objects, namespace):
    """Injects the transient error by briefly revoking globalnet's read access to Services.

    The RBAC rule is restored after the restarted pod has run into it, so the
    error is transient from the controller's point of view; the GlobalIngressIP
    must keep its global IP throughout.
    """
    ip = _exported_ip(k8s, objects, namespace, "web")
    roles = request(k8s, "GET", CLUSTER_ROLE.path())["items"]
    role = next((r for r in roles if "globalnet" in r["metadata"]["name"]), None)
    if role is None:
        pytest.fail("no ClusterRole for globalnet found (kubectl get clusterrole | grep globalnet)")
    role_name = role["metadata"]["name"]
    rules = role["rules"]
    daemonset = get_object(k8s, DAEMON_SET, GLOBALNET_DAEMONSET, SUBMARINER_NAMESPACE)
    assert daemonset is not None, f"no DaemonSet {SUBMARINER_NAMESPACE}/{GLOBALNET_DAEMONSET}"
    account = daemonset["spec"]["template"]["spec"].get("serviceAccountName")
    assert account, f"DaemonSet {GLOBALNET_DAEMONSET} names no serviceAccountName"
    user = f"system:serviceaccount:{SUBMARINER_NAMESPACE}:{account}"

    def without_service_reads(obj):
        for rule in obj.get("rules") or []:
            if "services" in (rule.get("resources") or []):
                rule["verbs"] = [v for v in rule["verbs"] if v not in ("get", "list", "watch")]
        return obj

    with IngressIPWatcher(k8s, namespace, "web") as watcher:
        update_object(k8s, CLUSTER_ROLE, role_name, without_service_reads)
        watcher.mark(f"revoked get/list/watch of services from ClusterRole {role_name}")
        try:
            before = _delete_globalnet_pods(cluster, k8s)
            watcher.mark(f"deleted globalnet pods {[p.name for p in before]}")
            last: list[ExecResult] = []

            def forbidden_lines() -> list[str]:
                # the old pods are gone (delete --wait): every pod with the label is new
                last.append(
                    kubectl(
                        cluster.kubeconfig,
                        "-n",
                        SUBMARINER_NAMESPACE,
                        "logs",
                        "-l",
                        GLOBALNET_POD_LABEL,
                        "--tail=-1",
                        "--prefix",
                        timeout=30,
                    )
                )
                if last[-1].returncode != 0:  # a container not started yet: not yet
                    return []
                return _forbidden_service_reads(last[-1].stdout, user)

            hit = Retrying(
                stop=stop_after_delay(90),
                wait=wait_fixed(2),
                retry=retry_if_result(lambda lines: not lines),
                retry_error_callback=lambda state: state.outcome.result(),
            )(forbidden_lines)
        finally:
            update_object(k8s, CLUSTER_ROLE, role_name, lambda o: {**o, "rules": rules})
            watcher.mark(f"restored ClusterRole {role_name}")
        assert hit, (
            "the restarted globalnet never logged a Forbidden read of services, so the test "
            f"proved nothing; last `kubectl logs` exit {last[-1].returncode if last else '-'}: "
            f"{(last[-1].stderr if last else '').strip()[-1000:]}"
        )
        watcher.mark(f"globalnet met the injected error: {hit[0].strip()[:300]}")
        _wait_restarted(k8s, before, watcher)
        _wait_startup_pass_done(k8s, objects, namespace, watcher, ip)
        assert_ip_kept(watcher.stop(), ip)
