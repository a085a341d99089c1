"""Diagnostics of failed tests: artifacts, the report section, and no credential anywhere.

The end-to-end test runs a deliberately failing inner pytest session (pytester)
against the offline control plane's real kube-apiserver, reusing the outer
session's cluster through --kubeconfig. The kind export test replaces `kind`
with a small script at the process boundary (no Docker engine here).
"""

from __future__ import annotations

import base64
import os
import re
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from fixtures.diagnostics import (
    ClusterTarget,
    EventScope,
    ObjectRef,
    Tools,
    TouchedObjects,
    artifact_dirname,
    collect_failure,
    export_kind_logs,
    label_for_test,
)
from fixtures.lifecycle import SessionCluster
from fixtures.plugins.diagnostics import cluster_targets
from fixtures.redact import REDACTED, Redactor, kubeconfig_secrets

REPO = Path(__file__).resolve().parent.parent
pytest_plugins = ["pytester"]

# not a real key: base64 text shaped like one, for the redaction tests
FAKE_KEY_PEM = """-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIBHsVbGnxWqk0yY1M8qg7eB2g5Zp0o5c3kq0Fv2PbZ9ZoAoGCCqGSM49
AwEHoUQDQgAEr2mYxPgkW1eEwAqWqvRk1z7ioIvUtkq0kqDLy8fWZ9Hqk0A9x5Gp
Rk3a7m9Qe0uJ2xgVq4wQ1pM3mZ8x7Yk2pA==
-----END EC PRIVATE KEY-----
"""
FAKE_TOKEN = "kLq3vX9pT2mN8wR4yZ6bC1dF5gH7jK0s"


def _kubeconfig(tmp_path: Path, *, key_as_file: bool) -> Path:
    user: dict[str, str] = {"token": FAKE_TOKEN}
    if key_as_file:
        (tmp_path / "admin.key").write_text(FAKE_KEY_PEM)
        user["client-key"] = "admin.key"
    else:
        user["client-key-data"] = base64.b64encode(FAKE_KEY_PEM.encode()).decode()
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize("key_as_file", [False, True], ids=["key-data", "key-file"])
def test_redactor_removes_every_form_of_the_kubeconfig_credentials(tmp_path, key_as_file):
    redactor = Redactor.from_kubeconfigs([_kubeconfig(tmp_path, key_as_file=key_as_file)])
    key_b64 = base64.b64encode(FAKE_KEY_PEM.encode()).decode()
    key_line = FAKE_KEY_PEM.splitlines()[2]
    text = (
        f"client-key-data: {key_b64}\n"
        f"a log line quoting one key line {key_line} mid-sentence\n"
        f"env TOKEN={FAKE_TOKEN}\n{FAKE_KEY_PEM}"
    )
    clean = redactor.scrub(text)
    for leaked in (key_b64, key_line, FAKE_TOKEN, FAKE_KEY_PEM.splitlines()[1]):
        assert leaked not in clean
    assert "mid-sentence" in clean and REDACTED in clean


def test_redactor_scrubs_generic_credential_patterns_and_keeps_ordinary_text():
    redactor = Redactor()
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2EifQ.c2lnbmF0dXJlLXBhcnQ"
    text = "\n".join(
        [
            "Authorization: Bearer abcdefghijklmnop0123",
            f"serviceaccount token {jwt}",
            'token: "s.Zm9vYmFyYmF6cXV4"',
            "password=hunter2hunter2",
            "kubeadm join 203.0.113.2:6443 --token abcdef.0123456789abcdef",
            "automountServiceAccountToken: true",
            "event antrea-agent-x2k9q.17f2a3b4c5d6e7f8 Warning BackOff",
        ]
    )
    clean = redactor.scrub(text)
    for leaked in (
        "abcdefghijklmnop0123",
        jwt,
        "Zm9vYmFyYmF6cXV4",
        "hunter2hunter2",
        "abcdef.0123456789abcdef",
    ):
        assert leaked not in clean
    assert "automountServiceAccountToken: true" in clean
    assert "antrea-agent-x2k9q.17f2a3b4c5d6e7f8 Warning BackOff" in clean


def test_kubeconfig_secrets_finds_key_files_relative_to_the_kubeconfig(tmp_path):
    secrets = kubeconfig_secrets(_kubeconfig(tmp_path, key_as_file=True))
    assert FAKE_TOKEN in secrets
    assert FAKE_KEY_PEM.splitlines()[1] in secrets


def test_a_secret_object_keeps_its_keys_and_sizes_never_its_values():
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "s",
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{data}"},
            "managedFields": [{"manager": "kubectl"}],
        },
        "data": {"password": base64.b64encode(b"open-sesame").decode()},
    }
    outline = Redactor().scrub_object(secret)
    assert outline["data"] == {"password": f"{REDACTED} (16 characters)"}
    assert "open-sesame" not in str(outline) and secret["data"]["password"] not in str(outline)
    assert "last-applied-configuration" not in str(outline)
    assert "managedFields" not in outline["metadata"]
    assert secret["data"]["password"] != outline["data"]["password"], "the input was changed"


def test_any_object_has_credentials_scrubbed_from_its_strings_and_the_rest_kept():
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "kubeconfig-copy", "managedFields": [{"manager": "x"}]},
        "data": {"kubeconfig": f"users:\n- user:\n    token: {FAKE_TOKEN}\n", "plain": "hello"},
    }
    clean = Redactor().scrub_object(config_map)
    assert FAKE_TOKEN not in str(clean) and REDACTED in clean["data"]["kubeconfig"]
    assert clean["data"]["plain"] == "hello" and "managedFields" not in clean["metadata"]


def test_artifact_dirname_is_path_safe_and_bounded():
    name = artifact_dirname("e2e/test_egress.py::test_pool[198.19.0.0/24-a b]")
    assert "/" not in name and " " not in name and name.startswith("e2e__test_egress.py__")
    long_id = "e2e/t.py::test_x[" + "y" * 300 + "]"
    assert len(artifact_dirname(long_id)) <= 140
    assert artifact_dirname(long_id) != artifact_dirname(long_id + "z")


def test_touched_objects_records_manifests_and_rejects_incomplete_ones():
    touched = TouchedObjects()
    ref = touched.add_object(
        {"apiVersion": "crd.antrea.io/v1beta1", "kind": "Egress", "metadata": {"name": "eg"}}
    )
    assert ref == ObjectRef("crd.antrea.io/v1beta1", "Egress", "eg")
    assert list(touched.refs("c1", first=True)) == [ref]
    assert list(touched.refs("c2", first=False)) == []
    with pytest.raises(ValueError, match="metadata.name"):
        touched.add_object({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}})


def _fake_kind(tmp_path: Path, exit_code: int) -> Path:
    """Stands in for `kind` (no Docker engine here): writes a log quoting a join token."""
    script = tmp_path / "kind"
    script.write_text(
        "#!/bin/sh\n"
        '[ "$1 $2" = "export logs" ] || exit 2\n'
        'mkdir -p "$3/node"\n'
        'echo "kubeadm join --token abcdef.0123456789abcdef and token: sekrit-token-1234" '
        '> "$3/node/kubelet.log"\n'
        'printf "binary\\000blob" > "$3/node/journal.bin"\n'
        f"exit {exit_code}\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_kind_export_logs_runs_once_per_cluster_and_scrubs_the_logs(tmp_path):
    kind = _fake_kind(tmp_path, 0)
    dest = tmp_path / "kind-logs"
    errors = export_kind_logs(["c1", "c2"], dest, Redactor(), kind=str(kind))
    assert errors == []
    for cluster in ("c1", "c2"):
        log = (dest / cluster / "node" / "kubelet.log").read_text()
        assert "0123456789abcdef" not in log and "sekrit-token-1234" not in log
        assert "kubeadm join" in log


def test_kind_export_logs_failure_is_recorded_not_raised(tmp_path):
    dest = tmp_path / "kind-logs"
    errors = export_kind_logs(["c1"], dest, Redactor(), kind=str(_fake_kind(tmp_path, 1)))
    assert len(errors) == 1 and "exited 1" in errors[0]
    assert "exited 1" in (dest / "errors.txt").read_text()


def test_collection_that_cannot_reach_the_cluster_is_recorded_not_raised(tmp_path):
    target = ClusterTarget("gone", tmp_path / "no-such-kubeconfig", "kind", "antrea")
    report = collect_failure(
        tmp_path / "out", [target], "e2e/t.py::test_x", TouchedObjects(), Redactor(), Tools()
    )
    assert report.errors and "[gone] API client" in report.errors[0]
    assert "[gone] API client" in (tmp_path / "out" / "errors.txt").read_text()
    assert "1 failed" in report.section() and "error: [gone] API client" in report.section()


# --- end to end on the offline control plane ------------------------------------------------


def test_collection_on_the_kwok_provider_says_what_it_skipped_and_why(
    control_plane: SessionCluster, tmp_path
):
    touched = TouchedObjects()
    touched.add("v1", "ConfigMap", "never-created", namespace="default")
    report = collect_failure(
        tmp_path / "out",
        cluster_targets(control_plane),
        "tests/t.py::test_y",
        touched,
        Redactor.from_kubeconfigs([control_plane.kubeconfig]),
    )
    assert report.errors == []
    skipped = (tmp_path / "out" / "skipped.txt").read_text()
    if control_plane.provider == "kwok":
        assert "nodes are simulated" in skipped and "no CNI runs on this cluster" in skipped
    assert "no namespace labelled cni-e2e/test=" in skipped
    assert "ConfigMap/default/never-created: not found" in report.highlights


def test_event_scope_keeps_the_named_objects_and_the_pods_of_their_controllers_only():
    scope = EventScope(
        frozenset({("Pod", "antrea-controller-7d9f8b6c5-x2k4z"), ("DaemonSet", "antrea-agent")}),
        frozenset({("DaemonSet", "antrea-agent"), ("StatefulSet", "ovn-central")}),
    )
    assert scope.keeps("Pod", "antrea-controller-7d9f8b6c5-x2k4z")
    assert scope.keeps("DaemonSet", "antrea-agent")
    assert scope.keeps("Pod", "antrea-agent-q8z2m")  # also one that is gone by now
    assert scope.keeps("Pod", "ovn-central-0")
    assert not scope.keeps("Pod", "antrea-agent-extra-q8z2m")  # another DaemonSet's pod
    assert not scope.keeps("Pod", "coredns-5d78c9869d-abcde")
    assert not scope.keeps("Lease", "kube-scheduler")
    assert not scope.keeps("Deployment", "antrea-agent")  # same name, other kind
    assert not scope.keeps(None, None)
    assert EventScope(everything=True).keeps("Lease", "kube-scheduler")


@pytest.mark.needs_control_plane
def test_failure_report_keeps_cni_and_touched_object_events_and_leaves_other_kube_system_events_out(
    control_plane: SessionCluster, tmp_path
):
    """On the real API server: a CNI pod, a touched ConfigMap in kube-system and a touched
    cluster-scoped object each get an event, and so do a pod and a Lease of other components."""
    from kubernetes import client as k8s
    from kubernetes import config as kconfig

    tag = uuid.uuid4().hex[:5]
    agent, touched_cm, other_ns = f"antrea-agent-{tag}", f"diag-touched-{tag}", f"diag-scope-{tag}"
    api = kconfig.new_client_from_config(str(control_plane.kubeconfig))
    v1 = k8s.CoreV1Api(api)
    made_events: list[tuple[str, str]] = []

    def event(namespace: str, name: str, reason: str, involved: dict, type_: str = "Warning"):
        v1.create_namespaced_event(
            namespace,
            {
                "metadata": {"name": f"{name}.{tag}"},
                "type": type_,
                "reason": reason,
                "message": f"{reason} {tag}",
                "involvedObject": involved,
            },
        )
        made_events.append((namespace, f"{name}.{tag}"))

    try:
        v1.create_namespaced_pod(
            "kube-system",
            {
                "metadata": {
                    "name": agent,
                    "labels": {"app": "antrea", "component": "antrea-agent"},
                },
                "spec": {"containers": [{"name": "c", "image": "localhost/cni-e2e/none:0"}]},
            },
        )
        v1.create_namespaced_config_map("kube-system", {"metadata": {"name": touched_cm}})
        v1.create_namespace({"metadata": {"name": other_ns}})
        event(
            "kube-system",
            "agent",
            "AgentBackOff",
            {"kind": "Pod", "name": agent, "namespace": "kube-system"},
        )
        event(
            "kube-system",
            "cm",
            "TouchedConfigMap",
            {"kind": "ConfigMap", "name": touched_cm, "namespace": "kube-system"},
            "Normal",
        )
        event(
            "default", "ns", "TouchedNamespace", {"kind": "Namespace", "name": other_ns}, "Normal"
        )
        event(
            "kube-system",
            "dns",
            "UnrelatedDNS",
            {"kind": "Pod", "name": f"coredns-{tag}-x2k4z", "namespace": "kube-system"},
        )
        event(
            "kube-system",
            "lease",
            "UnrelatedLease",
            {"kind": "Lease", "name": "kube-scheduler", "namespace": "kube-system"},
        )

        touched = TouchedObjects()
        touched.add("v1", "ConfigMap", touched_cm, namespace="kube-system")
        touched.add("v1", "Namespace", other_ns)
        target = ClusterTarget("c", control_plane.kubeconfig, control_plane.provider, "antrea")
        report = collect_failure(
            tmp_path / "out", [target], "tests/t.py::test_scope", touched, Redactor(), Tools()
        )
    finally:
        for namespace, name in made_events:
            v1.delete_namespaced_event(name, namespace)
        v1.delete_namespaced_pod(agent, "kube-system", grace_period_seconds=0)
        v1.delete_namespaced_config_map(touched_cm, "kube-system")
        v1.delete_namespace(other_ns)
        api.close()

    kube_system = (tmp_path / "out" / "c" / "events" / "kube-system.txt").read_text()
    assert f"AgentBackOff {tag}" in kube_system, kube_system
    left_out = re.search(r"(\d+) other event\(s\) there left out", kube_system)
    assert left_out and int(left_out.group(1)) >= 2, kube_system
    objects = (tmp_path / "out" / "c" / "events" / "touched-objects.txt").read_text()
    assert f"TouchedConfigMap {tag}" in objects and f"TouchedNamespace {tag}" in objects, objects
    everything = "\n".join(
        p.read_text() for p in (tmp_path / "out").rglob("*") if p.is_file()
    ) + "\n".join(report.highlights)
    for unrelated in ("UnrelatedDNS", "UnrelatedLease"):
        assert unrelated not in everything, f"{unrelated}: an unrelated event reached the report"
    assert any(f"AgentBackOff pod/{agent}" in h for h in report.highlights), report.highlights


INNER_CONFTEST = """
import os
import pytest
from kubernetes import client as k8s, config as kconfig

pytest_plugins = ["fixtures.plugins"]


@pytest.fixture
def scratch_namespace(request, cluster):
    # labelled for the test, as the harness's namespace fixture does; removed at teardown,
    # i.e. after diagnostics were collected
    from fixtures.diagnostics import TEST_LABEL, label_for_test

    api = kconfig.new_client_from_config(str(cluster.kubeconfig))
    v1 = k8s.CoreV1Api(api)
    name = "diag-" + os.urandom(4).hex()
    label = {TEST_LABEL: label_for_test(request.node.nodeid)}
    v1.create_namespace({"metadata": {"name": name, "labels": label}})
    yield api, name
    v1.delete_namespace(name)
    custom = k8s.CustomObjectsApi(api)
    group, plural = os.environ["DIAG_CRD_GROUP"], os.environ["DIAG_CRD_PLURAL"]
    try:
        custom.delete_cluster_custom_object(group, "v1", plural, name)
    except k8s.ApiException:
        pass
    api.close()
"""

INNER_TESTS = """
import os
from kubernetes import client as k8s

LEAK = os.environ["DIAG_LEAK"]  # a real credential of the kubeconfig, planted on purpose


def test_deliberately_failing(scratch_namespace, touched_objects):
    api, ns = scratch_namespace
    v1 = k8s.CoreV1Api(api)
    v1.create_namespaced_config_map(
        ns, {"metadata": {"name": "leaky"}, "data": {"copied-credential": LEAK, "note": "plain"}}
    )
    touched_objects.add("v1", "ConfigMap", "leaky", namespace=ns)
    v1.create_namespaced_secret(
        ns, {"metadata": {"name": "creds"}, "stringData": {"password": "s3cr3t-never-dumped"}}
    )
    touched_objects.add("v1", "Secret", "creds", namespace=ns)
    v1.create_namespaced_event(ns, {
        "metadata": {"name": "leaky.diag"},
        "type": "Warning",
        "reason": "DeliberateFailure",
        "message": "planted credential " + LEAK,
        "involvedObject": {"kind": "ConfigMap", "name": "leaky", "namespace": ns},
    })
    group, plural = os.environ["DIAG_CRD_GROUP"], os.environ["DIAG_CRD_PLURAL"]
    widget = {
        "apiVersion": f"{group}/v1",
        "kind": "Widget",
        "metadata": {"name": ns},
        "spec": {"size": 3},
        "status": {"conditions": [
            {"type": "Ready", "status": "False", "reason": "Deliberate", "message": "never ready"}
        ]},
    }
    k8s.CustomObjectsApi(api).create_cluster_custom_object(group, "v1", plural, widget)
    touched_objects.add_object(widget)
    touched_objects.add(f"{group}/v1", "Widget", "gone-already")
    assert False, "deliberate failure to exercise diagnostics"


def test_passing(scratch_namespace):
    pass


def test_failing_without_a_cluster():
    assert 1 == 2
"""


def _credentials(kubeconfig: Path) -> list[str]:
    """The kubeconfig's credential strings, read independently of fixtures.diagnostics."""
    doc = yaml.safe_load(kubeconfig.read_text())
    found: list[str] = []
    for entry in doc.get("users") or []:
        user = entry.get("user") or {}
        for key in ("client-key-data", "client-certificate-data", "token", "password"):
            if user.get(key):
                found.append(user[key])
                if key.endswith("-data"):
                    pem = base64.b64decode(user[key]).decode()
                    found += [ln for ln in pem.splitlines() if len(ln) >= 40]
        for key in ("client-key", "client-certificate"):
            if user.get(key):
                path = Path(user[key])
                pem = (path if path.is_absolute() else kubeconfig.parent / path).read_text()
                found += [ln for ln in pem.splitlines() if len(ln) >= 40]
    return found


@pytest.fixture
def widget_crd(control_plane: SessionCluster) -> Iterator[tuple[str, str]]:
    """A cluster-scoped CRD of its own (unique group) so parallel runs never collide."""
    from kubernetes import client as k8s
    from kubernetes import config as kconfig
    from kubernetes import watch

    group = f"d{uuid.uuid4().hex[:10]}.diag.cni-e2e.test"
    plural = "widgets"
    api = kconfig.new_client_from_config(str(control_plane.kubeconfig))
    ext = k8s.ApiextensionsV1Api(api)
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Cluster",
            "names": {"plural": plural, "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }
    ext.create_custom_resource_definition(crd)
    try:
        w = watch.Watch()
        for event in w.stream(
            ext.list_custom_resource_definition,
            field_selector=f"metadata.name={plural}.{group}",
            timeout_seconds=30,
        ):
            conds = event["object"].status.conditions or []
            if any(c.type == "Established" and c.status == "True" for c in conds):
                w.stop()
        yield group, plural
    finally:
        ext.delete_custom_resource_definition(f"{plural}.{group}")
        api.close()


def test_failed_test_gets_artifacts_and_report_section_without_credentials(
    pytester: pytest.Pytester, control_plane: SessionCluster, widget_crd, monkeypatch, tmp_path
):
    credentials = _credentials(control_plane.kubeconfig)
    assert credentials, f"{control_plane.kubeconfig} holds no credential: nothing to prove"
    group, plural = widget_crd
    leak = max(credentials, key=len)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("DIAG_LEAK", leak)
    monkeypatch.setenv("DIAG_CRD_GROUP", group)
    monkeypatch.setenv("DIAG_CRD_PLURAL", plural)
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(test_inner=INNER_TESTS)
    artifacts = tmp_path / "artifacts"
    result = pytester.runpytest_subprocess(
        # option=value: a plugin's option value could otherwise be taken for a path
        "-p",
        "no:cacheprovider",
        "-p",
        "fixtures.plugins.diagnostics",
        "-n",
        "2",
        f"--kubeconfig={control_plane.kubeconfig}",
        "--cluster-name=diag",
        f"--artifacts-dir={artifacts}",
        f"--junitxml={tmp_path / 'junit.xml'}",
        timeout=180,
    )
    output = result.stdout.str() + result.stderr.str()
    result.assert_outcomes(failed=2, passed=1)

    failing = artifacts / artifact_dirname("test_inner.py::test_deliberately_failing")
    assert sorted(p.name for p in artifacts.iterdir()) == [failing.name], (
        "only the failed test that used the cluster gets artifacts"
    )
    files = {p.relative_to(failing).as_posix(): p for p in failing.rglob("*") if p.is_file()}
    cluster = "diag"  # the inner session's name for the reused cluster (--cluster-name)
    assert any(f.startswith(f"{cluster}/events/diag-") for f in files), sorted(files)
    events = next(p for f, p in files.items() if f.startswith(f"{cluster}/events/diag-"))
    assert "DeliberateFailure" in events.read_text()
    resources = {
        f.rsplit("/", 1)[1].split("_")[0]: p
        for f, p in files.items()
        if "/resources/" in f and "gone-already" not in f
    }
    assert {"ConfigMap", "Secret", "Widget"} <= set(resources), sorted(files)
    assert "Ready" in resources["Widget"].read_text()
    assert "plain" in resources["ConfigMap"].read_text()
    secret_yaml = resources["Secret"].read_text()
    assert "password" in secret_yaml and "s3cr3t-never-dumped" not in secret_yaml
    assert "czNjcjN0LW5ldmVyLWR1bXBlZA" not in secret_yaml  # nor its base64
    assert "gone-already" in (failing / "summary.txt").read_text()
    assert "kwok fakes" in (failing / "skipped.txt").read_text()  # node commands: why skipped

    section = output.split("cni-e2e diagnostics", 1)[1]
    assert f"artifacts: {failing}" in section
    assert "DeliberateFailure" in section and "Ready=False Deliberate" in section
    assert f"artifacts: {artifacts}" in output  # terminal summary
    assert str(failing) in (tmp_path / "junit.xml").read_text()  # JUnit property

    for cred in credentials:
        assert cred not in output, "a kubeconfig credential reached pytest's output"
        for name, path in files.items():
            assert cred not in path.read_text(errors="replace"), f"credential in {name}"
    assert REDACTED in resources["ConfigMap"].read_text(), "the planted credential was scrubbed"


NAMED_INNER = """
def test_fails_on_the_cluster(cluster, k8s):
    assert False, "deliberate failure: diagnostics must be collected"
"""


def test_a_kubeconfig_cluster_is_named_after_its_kubeconfig_cluster_in_summary_and_artifacts(
    pytester: pytest.Pytester, control_plane: SessionCluster, monkeypatch, tmp_path
):
    doc = yaml.safe_load(control_plane.kubeconfig.read_text())
    context = next(c for c in doc["contexts"] if c["name"] == doc["current-context"])
    name = context["context"]["cluster"].removeprefix("kind-")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    pytester.makeconftest('pytest_plugins = ["fixtures.plugins"]\n')
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(test_named=NAMED_INNER)
    artifacts = tmp_path / "artifacts"
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "-n",
        "2",
        f"--kubeconfig={control_plane.kubeconfig}",  # and no --cluster-name
        f"--artifacts-dir={artifacts}",
        timeout=120,
    )
    result.assert_outcomes(failed=1)
    output = result.stdout.str() + result.stderr.str()
    assert f"cni-e2e: profile antrea-encap on external: {name}" in output
    assert f"cluster: {name}  kubeconfig: {control_plane.kubeconfig}" in output
    failed = artifacts / artifact_dirname("test_named.py::test_fails_on_the_cluster")
    assert (failed / name).is_dir(), sorted(p.name for p in failed.iterdir())
    assert f"clusters: {name}" in (failed / "summary.txt").read_text()
    # pytest-kind's default --cluster-name names nothing (the kubeconfig's path may hold
    # .pytest-kind/, the harness's work directory)
    assert "cluster: pytest-kind" not in output and "external: pytest-kind" not in output
    assert "pytest-kind" not in {p.name for p in artifacts.rglob("*")}


def test_label_for_test_is_a_valid_label_value_unique_per_test():
    value = label_for_test("e2e/test_x.py::test_y[a]")
    assert len(value) == 16 and value.isalnum() and value == value.lower()
    assert value != label_for_test("e2e/test_x.py::test_y[b]")
    assert os.sep not in artifact_dirname("e2e/test_x.py::test_y[a]")
