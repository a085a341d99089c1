"""Submariner #3336: globalnet released a GlobalIngressIP when its start-up read failed.

On controller start any error while reading a GlobalIngressIP's internal Service,
even a transient API error, released the allocated global IP and a new one was
allocated (fixed by PR #3341). Correct behaviour, checked here on the broker
cluster of the submariner-globalnet profile: a restart keeps the IP; a missing
internal Service is recreated with the same IP; a transient API failure during
start-up keeps the IP. These restart the globalnet pods, so they run serialised.
"""

import pytest
from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

from fixtures.kube import (
    SERVICE,
    get_object,
    update_object,
    wait_for_condition,
)
from fixtures.submariner import (
    CLUSTER_ROLE,
    EXPORTED_SERVICE_LABEL,
    GLOBAL_INGRESS_IP,
    GLOBALNET_DAEMONSET,
    GLOBALNET_POD_LABEL,
    SUBMARINER_NAMESPACE,
    allocated_ip,
    cluster_ip_service,
    internal_service_name,
    service_export,
)
from fixtures.workloads import kubectl

pytestmark = [
    pytest.mark.submariner,
    pytest.mark.globalingressip,
    pytest.mark.disruptive,
    pytest.mark.xdist_group("submariner-globalnet"),
    pytest.mark.requires(addons=["globalnet"], data_plane=True),
]


def _exported_ip(k8s, objects, namespace, name):
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


def _restart_globalnet(cluster):
    """Delete the globalnet pods and wait for the DaemonSet to be ready again."""
    _restart_pods_only(cluster)
    result = kubectl(
        cluster.kubeconfig,
        "-n",
        SUBMARINER_NAMESPACE,
        "rollout",
        "status",
        f"daemonset/{GLOBALNET_DAEMONSET}",
        "--timeout=180s",
        timeout=200,
    )
    assert result.returncode == 0, f"globalnet did not come back: {result.stderr}"


def _internal_service(k8s, namespace, name):
    svc = get_object(k8s, SERVICE, internal_service_name(name), namespace)
    if svc is not None:
        assert svc["metadata"]["labels"].get(EXPORTED_SERVICE_LABEL) == name
    return svc


def test_restart_keeps_the_allocated_ip(k8s, cluster, objects, namespace):
    ip = _exported_ip(k8s, objects, namespace, "web")
    svc = _internal_service(k8s, namespace, "web")
    assert svc is not None and svc["spec"].get("externalIPs") == [ip]
    _restart_globalnet(cluster)
    giip = wait_for_condition(k8s, GLOBAL_INGRESS_IP, "web", allocated_ip, namespace, timeout=120)
    assert allocated_ip(giip) == ip, (
        f"global IP changed across a restart: {ip} -> {allocated_ip(giip)}"
    )


def test_missing_internal_service_is_recreated_with_the_same_ip(k8s, cluster, objects, namespace):
    ip = _exported_ip(k8s, objects, namespace, "web")
    name = internal_service_name("web")
    # the internal Service carries a globalnet finalizer: drop it so the Service really goes
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
    kubectl(cluster.kubeconfig, "-n", namespace, "delete", "service", name, "--wait=true")
    _restart_globalnet(cluster)

    def recreated(obj):
        return bool(obj) and (obj.get("spec") or {}).get("externalIPs") == [ip]

    wait_for_condition(
        k8s,
        SERVICE,
        name,
        recreated,
        namespace,
        timeout=120,
        description=f"internal Service recreated with externalIPs [{ip}]",
    )
    giip = get_object(k8s, GLOBAL_INGRESS_IP, "web", namespace)
    assert allocated_ip(giip) == ip


def test_transient_api_error_at_restart_keeps_the_ip(k8s, cluster, objects, namespace):
    """Injects the transient error by briefly revoking globalnet's read access to Services.

    The RBAC rule is restored after the restarted pod has run into it, so the
    error is transient from the controller's point of view; the GlobalIngressIP
    must keep its global IP throughout.
    """
    ip = _exported_ip(k8s, objects, namespace, "web")
    roles = kubectl(cluster.kubeconfig, "get", "clusterrole", "-o", "name")
    role = next((r.split("/", 1)[1] for r in roles.stdout.split() if "globalnet" in r), None)
    if role is None:
        pytest.fail("no ClusterRole for globalnet found (kubectl get clusterrole | grep globalnet)")
    original = get_object(k8s, CLUSTER_ROLE, role)
    assert original is not None

    def without_service_reads(obj):
        for rule in obj.get("rules") or []:
            if "services" in (rule.get("resources") or []):
                rule["verbs"] = [v for v in rule["verbs"] if v not in ("get", "list", "watch")]
        return obj

    update_object(k8s, CLUSTER_ROLE, role, without_service_reads)
    try:
        _restart_pods_only(cluster)
        # let the new pod meet the Forbidden errors: poll its log, bounded in time
        saw_forbidden = Retrying(
            stop=stop_after_delay(60),
            wait=wait_fixed(2),
            retry=retry_if_result(lambda seen: not seen),
            retry_error_callback=lambda _: False,
        )(
            lambda: (
                "forbidden"
                in kubectl(
                    cluster.kubeconfig,
                    "-n",
                    SUBMARINER_NAMESPACE,
                    "logs",
                    "-l",
                    GLOBALNET_POD_LABEL,
                    "--tail=200",
                    timeout=30,
                ).stdout.lower()
            )
        )
    finally:
        rules = original["rules"]
        update_object(k8s, CLUSTER_ROLE, role, lambda o: {**o, "rules": rules})
    assert saw_forbidden, "globalnet never hit the injected error; the test proved nothing"
    giip = wait_for_condition(k8s, GLOBAL_INGRESS_IP, "web", allocated_ip, namespace, timeout=180)
    assert allocated_ip(giip) == ip, (
        f"globalnet released {ip} after a transient error at start-up and allocated "
        f"{allocated_ip(giip)} (Submariner #3336)"
    )


def _restart_pods_only(cluster):
    result = kubectl(
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
    assert result.returncode == 0, result.stderr
