"""ObjectTracker against the real API server: what a test made is gone afterwards."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import config as kconfig
from kubernetes.client.exceptions import ApiException
from urllib3 import HTTPResponse
from urllib3.exceptions import ProtocolError

from fixtures.kube import CONFIG_MAP, NAMESPACE, create_id_of, get_object, request, unique_name
from fixtures.objects import ObjectTracker
from fixtures.retry import api_status

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


# --- a create whose response is lost ---------------------------------------------------------


class LosesCreateResponses:
    """Stand-in for a network that fails between the client and the API server, at the
    client's transport boundary (the urllib3 pool manager the kubernetes client sends
    through): the next `count` POSTs reach the real API server, which acts on them, and
    their replies are dropped (a connection reset, or a 503 from a proxy in between);
    with deliver=False the POST never reaches the server. Then `then` (a status) answers
    the following POSTs, if set; everything else passes through untouched."""

    def __init__(self, real: Any, *, fault: str, count: int, deliver: bool, then: int | None):
        self.real = real
        self.fault = fault
        self.left = count
        self.deliver = deliver
        self.then = then
        self.dropped: list[int] = []  # statuses of the real replies that were dropped

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        if method != "POST":
            return self.real.request(method, url, *args, **kwargs)
        if self.left > 0:
            self.left -= 1
            if self.deliver:
                reply = self.real.request(method, url, *args, **kwargs)
                reply.read()
                reply.release_conn()
                self.dropped.append(reply.status)
            if self.fault == "reset":
                raise ProtocolError(
                    "Connection aborted.", ConnectionResetError(104, "Connection reset by peer")
                )
            return _status_reply(503, "ServiceUnavailable", "upstream connect error")
        if self.then is not None:
            return _status_reply(self.then, "Forbidden", "stand-in: refused after the loss")
        return self.real.request(method, url, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def _status_reply(code: int, reason: str, message: str) -> HTTPResponse:
    status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
              "reason": reason, "message": message}  # fmt: skip
    return HTTPResponse(
        body=io.BytesIO(json.dumps(status).encode()),
        status=code,
        reason=reason,
        headers={"Content-Type": "application/json"},
        preload_content=False,
    )


@contextlib.contextmanager
def lose_create_responses(
    client: Any, *, fault: str = "reset", count: int = 1, deliver: bool = True,
    then: int | None = None,
) -> Iterator[LosesCreateResponses]:  # fmt: skip
    real = client.rest_client.pool_manager
    lossy = LosesCreateResponses(real, fault=fault, count=count, deliver=deliver, then=then)
    client.rest_client.pool_manager = lossy
    try:
        yield lossy
    finally:
        client.rest_client.pool_manager = real


def config_map(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "v"}}


@pytest.mark.parametrize("fault", ["reset", "503"])
def test_a_retried_create_whose_first_reply_was_lost_succeeds_and_is_tracked_and_cleaned(
    k8s, fault, caplog
):
    caplog.set_level(logging.INFO, logger="cni_e2e.kube")
    name = unique_name("lost-reply")
    tracker = ObjectTracker(k8s, namespace="default")
    with lose_create_responses(k8s, fault=fault) as lossy:
        made = tracker.create(config_map(name))
    assert lossy.dropped == [201], "the first attempt must have created the object"
    stored = get_object(k8s, CONFIG_MAP, name, "default")
    assert made["metadata"]["uid"] == stored["metadata"]["uid"]
    assert create_id_of(stored) is not None and create_id_of(made) == create_id_of(stored)
    assert "met the object an earlier attempt created" in caplog.text
    assert [str(r) for r in tracker.refs] == [f"ConfigMap/default/{name}"]
    assert tracker.cleanup() == []
    assert get_object(k8s, CONFIG_MAP, name, "default") is None


def test_an_object_made_by_a_create_that_then_failed_is_tracked_and_cleaned(k8s):
    name = unique_name("lost-then-refused")
    tracker = ObjectTracker(k8s, namespace="default")
    with lose_create_responses(k8s, then=403) as lossy, pytest.raises(ApiException) as raised:
        tracker.create(config_map(name))
    assert raised.value.status == 403 and lossy.dropped == [201]
    assert [str(r) for r in tracker.refs] == [f"ConfigMap/default/{name}"]
    assert tracker.cleanup() == []
    assert get_object(k8s, CONFIG_MAP, name, "default") is None


@pytest.mark.parametrize("first_attempt", ["answered", "lost-before-the-server"])
def test_a_namesake_made_by_someone_else_still_fails_with_already_exists_naming_it(
    k8s, first_attempt
):
    name = unique_name("foreign")
    request(k8s, "POST", CONFIG_MAP.path("default"), body=config_map(name))  # not ours
    tracker = ObjectTracker(k8s, namespace="default")
    try:
        count = 1 if first_attempt != "answered" else 0
        with lose_create_responses(k8s, count=count, deliver=False) as lossy:
            with pytest.raises(ApiException) as raised:
                tracker.create(config_map(name))
        assert lossy.left == 0 and lossy.dropped == []
        status = api_status(raised.value)
        assert (status.code, status.reason) == (409, "AlreadyExists")
        assert f'configmaps "{name}" already exists' in status.message
        assert tracker.refs == [], "someone else's object must never be cleaned up as ours"
        assert create_id_of(get_object(k8s, CONFIG_MAP, name, "default")) is None
    finally:
        request(k8s, "DELETE", CONFIG_MAP.path("default", name))
