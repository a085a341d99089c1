"""fixtures.kube and the `namespace` fixture against a real kube-apiserver (offline control plane).

Every test that talks to the API asks for `control_plane` first, so without an
API server it skips and says how to get one (scripts/test). The API server's
namespace controller waits 5 s before it even starts deleting a namespace, so
only the tests of the `namespace` fixture use it; the others share one
namespace per module (and per xdist worker) and give their objects unique names.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from fixtures.kube import (
    CONFIG_MAP,
    CRD,
    NAMESPACE,
    SECRET,
    WaitTimeout,
    apply_with_retry,
    create_with_retry,
    delete_and_wait,
    delete_namespace,
    get_object,
    has_condition,
    install_crds,
    make_namespace,
    request,
    short_hash,
    unique_name,
    update_object,
    wait_for_condition,
    watch_events,
)

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent


def config_map(name: str, data: dict[str, str], **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, **meta},
        "data": data,
    }


@pytest.fixture(scope="module")
def ns(control_plane, k8s) -> Iterator[str]:
    """One namespace for this module's helper tests, deleted (and waited for) at the end."""
    name = unique_name("kube-helpers")
    make_namespace(k8s, name, labels={"cni-e2e/test": short_hash(__name__)})
    yield name
    delete_namespace(k8s, name)


@pytest.fixture
def name(request) -> str:
    """An object name unique to this test."""
    return unique_name(request.node.name.removeprefix("test_")[:30])


# --- without an API server --------------------------------------------------------------------


def test_a_namespaced_object_without_a_namespace_is_refused_before_any_request():
    with pytest.raises(ValueError, match="ConfigMap/c is namespaced"):
        create_with_retry(None, config_map("c", {}))  # type: ignore[arg-type]


def test_an_unknown_kind_names_itself_and_the_fix():
    widget = {"apiVersion": "example.io/v1", "kind": "Widget", "metadata": {"name": "w"}}
    with pytest.raises(ValueError, match=r"unknown kind 'Widget'.*install_crds"):
        apply_with_retry(None, widget)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "base", ["test_x[198.19.0.0/24-v4]", "TEST__Upper::case", "a" * 80, "---", "x-" * 40]
)
def test_unique_names_are_dns_labels(base):
    name = unique_name(base)
    assert len(name) <= 63
    assert name[0].isalnum() and name[-1].isalnum()
    assert set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")
    assert unique_name(base) != name


# --- create, apply, update --------------------------------------------------------------------


def test_create_with_retry_creates_and_returns_the_stored_object(control_plane, k8s, ns, name):
    made = create_with_retry(k8s, config_map(name, {"k": "v"}), namespace=ns)
    assert made["metadata"]["uid"]
    assert get_object(k8s, CONFIG_MAP, name, ns)["data"] == {"k": "v"}


def test_apply_with_retry_creates_then_updates_the_same_object(control_plane, k8s, ns, name):
    first = apply_with_retry(k8s, config_map(name, {"k": "1"}, namespace=ns))
    second = apply_with_retry(k8s, config_map(name, {"k": "2"}, namespace=ns))
    assert second["metadata"]["uid"] == first["metadata"]["uid"]
    assert get_object(k8s, CONFIG_MAP, name, ns)["data"] == {"k": "2"}


def test_apply_ignores_a_stale_resource_version_it_was_given(control_plane, k8s, ns, name):
    old = create_with_retry(k8s, config_map(name, {"k": "1"}), namespace=ns)
    update_object(k8s, CONFIG_MAP, name, lambda o: {**o, "data": {"k": "2"}}, ns)
    apply_with_retry(k8s, {**old, "data": {"k": "3"}})  # old carries resourceVersion
    assert get_object(k8s, CONFIG_MAP, name, ns)["data"] == {"k": "3"}


def test_get_object_of_a_missing_object_is_none(control_plane, k8s, ns):
    assert get_object(k8s, CONFIG_MAP, "nope", ns) is None


# --- watch and wait_for_condition -------------------------------------------------------------


def test_watch_events_start_after_the_listed_resource_version(control_plane, k8s, ns, name):
    listed = request(
        k8s, "GET", CONFIG_MAP.path(ns), query={"fieldSelector": f"metadata.name={name}"}
    )
    assert listed["items"] == []
    create_with_retry(k8s, config_map(name, {"k": "v"}), namespace=ns)
    events = watch_events(
        k8s,
        CONFIG_MAP,
        namespace=ns,
        name=name,
        resource_version=listed["metadata"]["resourceVersion"],
        timeout=10,
    )
    first = next(e for e in events if e["type"] != "BOOKMARK")
    events.close()
    assert first["type"] == "ADDED"
    assert first["object"]["metadata"]["name"] == name


def test_watch_events_with_a_label_selector_see_only_labelled_objects(control_plane, k8s, ns, name):
    listed = request(k8s, "GET", CONFIG_MAP.path(ns))
    create_with_retry(k8s, config_map(f"{name}-other", {"k": "v"}), namespace=ns)
    labelled = config_map(name, {"k": "v"}, labels={"cni-e2e/watched": "yes"})
    create_with_retry(k8s, labelled, namespace=ns)
    events = watch_events(
        k8s,
        CONFIG_MAP,
        namespace=ns,
        label_selector="cni-e2e/watched=yes",
        resource_version=listed["metadata"]["resourceVersion"],
        timeout=10,
    )
    first = next(e for e in events if e["type"] != "BOOKMARK")
    events.close()
    assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", name)


def test_wait_for_condition_returns_on_the_watched_update(control_plane, k8s, ns, name):
    create_with_retry(k8s, config_map(name, {"phase": "pending"}), namespace=ns)

    def ready(obj):
        return obj is not None and obj["data"].get("phase") == "ready"

    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(wait_for_condition, k8s, CONFIG_MAP, name, ready, ns, timeout=20)
        update_object(k8s, CONFIG_MAP, name, lambda o: {**o, "data": {"phase": "ready"}}, ns)
        seen = waiting.result(timeout=30)
    assert seen["data"] == {"phase": "ready"}
    assert seen["kind"] == "ConfigMap"


def test_wait_for_condition_sees_an_object_appear(control_plane, k8s, ns, name):
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(
            wait_for_condition,
            k8s,
            CONFIG_MAP,
            name,
            lambda o: o is not None,
            ns,
            timeout=20,
        )
        create_with_retry(k8s, config_map(name, {"k": "v"}), namespace=ns)
        assert waiting.result(timeout=30)["metadata"]["name"] == name


def test_wait_timeout_shows_the_last_observed_object(control_plane, k8s, ns, name):
    create_with_retry(k8s, config_map(name, {"phase": "pending"}), namespace=ns)
    start = time.monotonic()
    with pytest.raises(WaitTimeout) as raised:
        wait_for_condition(
            k8s,
            CONFIG_MAP,
            name,
            has_condition("Ready"),
            ns,
            timeout=1.5,
            description="condition Ready=True",
        )
    assert time.monotonic() - start < 5
    text = str(raised.value)
    assert text.startswith(f"ConfigMap/{ns}/{name}: condition Ready=True did not hold within 1.5s")
    assert "last observed:" in text
    assert "phase: pending" in text
    assert "managedFields" not in text


def test_wait_timeout_on_a_missing_object_says_so(control_plane, k8s, ns):
    with pytest.raises(WaitTimeout, match="last observed: the object does not exist"):
        wait_for_condition(k8s, CONFIG_MAP, "nope", lambda o: o is not None, ns, timeout=1)


def test_wait_timeout_never_shows_secret_data(control_plane, k8s, ns, name):
    secret_value = "hunter2-do-not-print"
    encoded = base64.b64encode(secret_value.encode()).decode()
    create_with_retry(
        k8s,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name},
            "data": {"password": encoded},
        },
        namespace=ns,
    )
    with pytest.raises(WaitTimeout) as raised:
        wait_for_condition(k8s, SECRET, name, lambda o: False, ns, timeout=1)
    text = str(raised.value)
    assert "password: '[REDACTED] (28 characters)'" in text
    assert secret_value not in text and encoded not in text


def test_wait_timeout_trims_a_long_object(control_plane, k8s, ns, name):
    data = {f"key{i:03d}": "v" for i in range(200)}
    create_with_retry(k8s, config_map(name, data), namespace=ns)
    with pytest.raises(WaitTimeout) as raised:
        wait_for_condition(k8s, CONFIG_MAP, name, lambda o: False, ns, timeout=1)
    text = str(raised.value)
    assert "more lines)" in text
    assert len(text.splitlines()) < 70


# --- delete_and_wait --------------------------------------------------------------------------


def test_delete_and_wait_returns_only_once_the_object_is_gone(control_plane, k8s, ns, name):
    create_with_retry(k8s, config_map(name, {}, finalizers=["cni-e2e.io/hold"]), namespace=ns)
    with ThreadPoolExecutor(1) as pool:
        deleting = pool.submit(delete_and_wait, k8s, CONFIG_MAP, name, ns, timeout=30)
        wait_for_condition(
            k8s,
            CONFIG_MAP,
            name,
            lambda o: bool(o and o["metadata"].get("deletionTimestamp")),
            ns,
            timeout=20,
        )
        assert not deleting.done(), "returned while the finalizer still holds the object"
        update_object(
            k8s,
            CONFIG_MAP,
            name,
            lambda o: {**o, "metadata": {**o["metadata"], "finalizers": []}},
            ns,
        )
        deleting.result(timeout=30)
    assert get_object(k8s, CONFIG_MAP, name, ns) is None


def test_delete_and_wait_of_a_missing_object_returns_at_once(control_plane, k8s, ns):
    start = time.monotonic()
    delete_and_wait(k8s, CONFIG_MAP, "never-made", ns, timeout=10)
    assert time.monotonic() - start < 2


# --- CRDs -------------------------------------------------------------------------------------


def widget_crd(suffix: str) -> dict[str, Any]:
    """A throw-away namespaced CRD whose names are unique to one test (CRDs are cluster-wide)."""
    kind = f"Widget{suffix.capitalize()}"
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets{suffix}.e2e.cni-e2e.io"},
        "spec": {
            "group": "e2e.cni-e2e.io",
            "scope": "Namespaced",
            "names": {
                "plural": f"widgets{suffix}",
                "singular": f"widget{suffix}",
                "kind": kind,
                "listKind": f"{kind}List",
            },
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {"size": {"type": "integer"}},
                                }
                            },
                        }
                    },
                }
            ],
        },
    }


def test_install_crds_waits_until_custom_objects_can_be_created(control_plane, k8s, ns):
    suffix = unique_name("w", 6).split("-")[-1]
    crd = widget_crd(suffix)
    try:
        (widget,) = install_crds(k8s, [crd], timeout=30)
        assert widget.plural == f"widgets{suffix}" and widget.namespaced
        made = create_with_retry(
            k8s,
            {
                "apiVersion": widget.api_version,
                "kind": widget.kind,
                "metadata": {"name": "w1"},
                "spec": {"size": 3},
            },
            namespace=ns,
        )
        assert made["spec"] == {"size": 3}
        # applying the same CRD again (another xdist worker doing it) is harmless
        assert install_crds(k8s, [crd], timeout=30) == [widget]
        with pytest.raises(ApiException) as invalid:
            create_with_retry(
                k8s,
                {
                    "apiVersion": widget.api_version,
                    "kind": widget.kind,
                    "metadata": {"name": "w2"},
                    "spec": {"size": "three"},
                },
                namespace=ns,
            )
        assert invalid.value.status == 422
    finally:
        delete_and_wait(k8s, CRD, crd["metadata"]["name"], timeout=30)


# --- the namespace fixture --------------------------------------------------------------------


def test_namespace_is_labelled_with_the_test_and_the_run(control_plane, k8s, namespace, request):
    meta = get_object(k8s, NAMESPACE, namespace)["metadata"]
    labels = meta["labels"]
    assert labels["cni-e2e/test"] == short_hash(request.node.nodeid)
    assert labels["cni-e2e/run"]
    assert meta["annotations"]["cni-e2e/nodeid"] == request.node.nodeid
    assert namespace.startswith("test-namespace-is-labelled-with-the-test-and-the-r")


INNER_NAMESPACE = """
import json, os
from pathlib import Path
from fixtures.kube import NAMESPACE, get_object

def test_records_its_namespace(namespace, k8s):
    meta = get_object(k8s, NAMESPACE, namespace)["metadata"]
    Path(os.environ["CNI_E2E_NS_OUT"]).write_text(json.dumps(meta))
"""


@pytest.fixture
def namespace_suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """A one-test suite that uses `namespace` against this session's API server (a subprocess)."""
    pytester.makeconftest('pytest_plugins = ["fixtures.plugins", "fixtures.plugins.kube"]\n')
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(test_inner=INNER_NAMESPACE)
    out = tmp_path / "namespace.json"
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("CNI_E2E_NS_OUT", str(out))
    return pytester, out


@pytest.mark.parametrize("keep", [False, True], ids=["deleted", "kept"])
def test_namespace_fixture_deletes_its_namespace_unless_kept(
    control_plane, k8s, namespace_suite, keep
):
    pytester, out = namespace_suite
    args = ["-p", "no:cacheprovider", "--kubeconfig", str(control_plane.kubeconfig)]
    result = pytester.runpytest_subprocess(
        *args, *(["--keep-namespaces"] if keep else []), timeout=120
    )
    result.assert_outcomes(passed=1)
    meta = json.loads(out.read_text())
    name = meta["name"]
    assert name.startswith("test-records-its-namespace-")
    assert meta["labels"]["cni-e2e/test"] == short_hash("test_inner.py::test_records_its_namespace")
    after = get_object(k8s, NAMESPACE, name)
    if keep:
        assert after is not None and not after["metadata"].get("deletionTimestamp")
        assert (
            f"kubectl get ns -l cni-e2e/run={meta['labels']['cni-e2e/run']}" in result.stdout.str()
        )
        request(k8s, "DELETE", NAMESPACE.path(name=name))  # clean up; no need to wait
    else:
        assert after is None, "the fixture returned before its namespace was gone"
