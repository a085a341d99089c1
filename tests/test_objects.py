"""ObjectTracker against the real API server: what a test made is gone afterwards."""

import pytest
from kubernetes import config as kconfig

from fixtures.kube import CONFIG_MAP, NAMESPACE, get_object, unique_name
from fixtures.objects import ObjectTracker

pytestmark = pytest.mark.needs_control_plane


@pytest.fixture
def k8s(control_plane):
    client = kconfig.new_client_from_config(str(control_plane.kubeconfig))
    yield client
    client.close()


def test_cleanup_deletes_everything_in_reverse_and_reports_each_object(k8s):
    seen = []
    tracker = ObjectTracker(k8s, on_track=seen.append)
    ns = unique_name("tracker")
    tracker.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    tracker.namespace = ns
    tracker.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"},
                   "data": {"k": "v"}})  # fmt: skip
    tracker.track(CONFIG_MAP, "not-made-here", ns)
    assert [str(r) for r in tracker.refs] == [
        f"Namespace/{ns}", f"ConfigMap/{ns}/a", f"ConfigMap/{ns}/not-made-here"]  # fmt: skip
    assert [(o["kind"], o["metadata"]["name"]) for o in seen] == [
        ("Namespace", ns), ("ConfigMap", "a"), ("ConfigMap", "not-made-here")]  # fmt: skip
    assert get_object(k8s, CONFIG_MAP, "a", ns)["data"] == {"k": "v"}
    assert tracker.cleanup() == []
    assert get_object(k8s, CONFIG_MAP, "a", ns) is None
    assert get_object(k8s, NAMESPACE, ns) is None
    assert tracker.refs == []


def test_cleanup_goes_on_past_a_failure_and_names_it(k8s):
    tracker = ObjectTracker(k8s, namespace="default")
    name = unique_name("tracked")
    tracker.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}})
    tracker.track(NAMESPACE, "kube-system")  # deleting it is refused: a failure to report
    failures = tracker.cleanup(timeout=10)
    assert len(failures) == 1 and failures[0].startswith("Namespace/kube-system:")
    assert get_object(k8s, CONFIG_MAP, name, "default") is None
