"""The labs' admission machinery: validating webhooks on 127.0.0.1 that a real API server calls.

One AdmissionServer serves one or more webhooks over TLS (a CA made per instance, IP SAN
127.0.0.1), registers them in one ValidatingWebhookConfiguration with URL clientConfigs
and an objectSelector on the instance's labels (so several instances share a cluster,
e.g. xdist workers, without seeing each other's objects), and returns from start() only
once the API server is really calling it. The stale-cache lab (webhook.py) and the bug
doubles in tests/doubles use it; each supplies the decision, this module does the rest.

    server = AdmissionServer(client, "crdvalidator.antrea.io-1a2b", labels, [
        WebhookRoute("egressvalidator.antrea.io", "/validate/egress", "crd.antrea.io",
                     "v1beta1", "egresses", decide, probe=lambda name: {...manifest...}),
    ])
    server.start() ... server.stop()

`decide(request)` gets the AdmissionReview's `request` and returns None to allow or a
message to deny with (the API server wraps it as Antrea's webhooks are wrapped:
`admission webhook "<name>" denied the request: <message>`).
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import ssl
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from .certs import ServingCert, make_serving_cert

log = logging.getLogger("cni_e2e.stalecache")

BIND_HOST = "127.0.0.1"
PROBE_ANNOTATION = "cni-e2e.io/webhook-probe"

Decide = Callable[[Mapping[str, Any]], str | None]


def denied(webhook: str, message: str) -> str:
    """What a client sees when `webhook` denies: the API server's wrapping of its message."""
    return f'admission webhook "{webhook}" denied the request: {message}'


def api_error_message(exc: Any) -> str:
    """The Status message inside a kubernetes ApiException (falls back to its reason)."""
    try:
        return str(json.loads(exc.body)["message"])
    except (TypeError, ValueError, KeyError):
        return str(getattr(exc, "reason", exc))


@dataclass(frozen=True)
class WebhookRoute:
    """One validating webhook: its name, URL path, the resource it validates, its decision."""

    name: str
    path: str
    group: str
    version: str
    plural: str
    decide: Decide
    # probe(name) -> a manifest of this resource, carrying the server's labels; created
    # with dryRun to learn when the API server has loaded the configuration
    probe: Callable[[str], dict[str, Any]]
    operations: tuple[str, ...] = ("CREATE", "UPDATE")
    scope: str = "Cluster"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        route = self.server.admission.routes.get(self.path.split("?")[0])
        if route is None:
            self.send_error(404)
            return
        length = int(self.headers.get("Content-Length") or 0)
        try:
            review = json.loads(self.rfile.read(length))
            response = self.server.admission.answer(route, review["request"])
        except (ValueError, KeyError) as exc:
            self.send_error(400, f"not an AdmissionReview: {exc}")
            return
        body = json.dumps(
            {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("webhook %s: " + format, self.server.admission.config_name, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    admission: AdmissionServer


class AdmissionServer:
    """Validating webhooks on 127.0.0.1 for the objects labelled `labels`; start() ... stop()."""

    def __init__(
        self,
        client: Any,
        config_name: str,
        labels: Mapping[str, str],
        routes: Sequence[WebhookRoute],
        *,
        timeout_seconds: int = 5,
    ) -> None:
        if not routes:
            raise ValueError(f"AdmissionServer {config_name}: give it at least one WebhookRoute")
        self.client = client
        self.config_name = config_name
        self.labels = dict(labels)
        self.routes = {r.path: r for r in routes}
        self.timeout_seconds = timeout_seconds
        self.url = ""  # https://127.0.0.1:<port>
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._cert: ServingCert | None = None
        self._registered = False

    @property
    def ca_pem(self) -> bytes:
        assert self._cert is not None, "start() first"
        return self._cert.ca_pem

    def url_of(self, route: WebhookRoute) -> str:
        return f"{self.url}{route.path}"

    def start(self) -> AdmissionServer:
        try:
            self._serve()
            self._register()
            for route in self.routes.values():
                self._wait_until_called(route)
        except BaseException:
            self.stop()
            raise
        return self

    def answer(self, route: WebhookRoute, request: Mapping[str, Any]) -> dict[str, Any]:
        """The AdmissionResponse for one request: the probe's denial, or the route's decision."""
        obj = request.get("object") or {}
        annotations = (obj.get("metadata") or {}).get("annotations") or {}
        if annotations.get(PROBE_ANNOTATION):
            message: str | None = self._probe_message(route)
        else:
            message = route.decide(request)
        response: dict[str, Any] = {"uid": request["uid"], "allowed": message is None}
        if message is not None:
            response["status"] = {"message": message}
        return response

    def _serve(self) -> None:
        self._cert = make_serving_cert(BIND_HOST)
        self._tmp = tempfile.TemporaryDirectory(prefix="cni-e2e-webhook-")
        chain, key = Path(self._tmp.name) / "tls.crt", Path(self._tmp.name) / "tls.key"
        chain.write_bytes(self._cert.cert_pem)
        key.touch(mode=0o600)
        key.write_bytes(self._cert.key_pem)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(chain, key)
        server = _Server((BIND_HOST, 0), _Handler)
        server.admission = self
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        self._server = server
        self.url = f"https://{BIND_HOST}:{server.server_address[1]}"
        self._thread = threading.Thread(
            target=server.serve_forever, name=f"webhook-{self.config_name}", daemon=True
        )
        self._thread.start()

    def _register(self) -> None:
        from kubernetes import client as k8s

        assert self._cert is not None
        ca_bundle = base64.b64encode(self._cert.ca_pem).decode()
        body = {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": self.config_name, "labels": dict(self.labels)},
            "webhooks": [
                {
                    "name": route.name,
                    "clientConfig": {"url": self.url_of(route), "caBundle": ca_bundle},
                    "rules": [
                        {
                            "operations": list(route.operations),
                            "apiGroups": [route.group],
                            "apiVersions": [route.version],
                            "resources": [route.plural],
                            "scope": route.scope,
                        }
                    ],
                    "objectSelector": {"matchLabels": dict(self.labels)},
                    "admissionReviewVersions": ["v1"],
                    "sideEffects": "None",
                    "failurePolicy": "Fail",
                    "timeoutSeconds": self.timeout_seconds,
                }
                for route in self.routes.values()
            ],
        }
        k8s.AdmissionregistrationV1Api(self.client).create_validating_webhook_configuration(body)
        self._registered = True

    def _probe_message(self, route: WebhookRoute) -> str:
        return f"webhook {route.name} of {self.config_name} is serving"

    def _wait_until_called(self, route: WebhookRoute, timeout: float = 30.0) -> None:
        """The API server loads webhook configurations asynchronously: probe with a dry run."""
        from kubernetes import client as k8s
        from kubernetes.client import ApiException

        probe = route.probe(f"probe-{secrets.token_hex(4)}")  # a dry run: never stored
        probe.setdefault("metadata", {}).setdefault("annotations", {})[PROBE_ANNOTATION] = "true"
        api = k8s.CustomObjectsApi(self.client)

        class _NotYet(Exception):
            pass

        def attempt() -> None:
            try:
                if route.scope == "Cluster":
                    api.create_cluster_custom_object(
                        route.group, route.version, route.plural, probe, dry_run="All"
                    )
                else:
                    api.create_namespaced_custom_object(
                        route.group,
                        route.version,
                        probe["metadata"]["namespace"],
                        route.plural,
                        probe,
                        dry_run="All",
                    )
            except ApiException as exc:
                if self._probe_message(route) in api_error_message(exc):
                    return
                raise
            raise _NotYet(f"webhook {route.name} of {self.config_name} not called yet")

        Retrying(
            stop=stop_after_delay(timeout),
            wait=wait_exponential(multiplier=0.05, max=1),
            retry=retry_if_exception_type(_NotYet),
            reraise=True,
        )(attempt)

    def stop(self) -> None:
        """Deregister and stop serving. Idempotent."""
        from kubernetes import client as k8s
        from kubernetes.client import ApiException

        if self._registered:
            try:
                k8s.AdmissionregistrationV1Api(self.client).delete_validating_webhook_configuration(
                    self.config_name
                )
            except ApiException as exc:
                if exc.status != 404:
                    log.warning("removing webhook %s: %s", self.config_name, exc.reason)
            self._registered = False
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def ensure_crd(api_client: Any, path: Path, timeout: float = 60.0) -> None:
    """Create the CRD in `path` unless it exists, then wait until it is Established."""
    from kubernetes import client as k8s
    from kubernetes.client import ApiException

    manifest = yaml.safe_load(path.read_text())
    api = k8s.ApiextensionsV1Api(api_client)
    try:
        api.create_custom_resource_definition(manifest)
        log.info("installed CRD %s", manifest["metadata"]["name"])
    except ApiException as exc:
        if exc.status != 409:
            raise

    class _NotEstablished(Exception):
        pass

    def established() -> None:
        crd = api.read_custom_resource_definition(manifest["metadata"]["name"])
        for cond in (crd.status.conditions or []) if crd.status else []:
            if cond.type == "Established" and cond.status == "True":
                return
        raise _NotEstablished(f"CRD {manifest['metadata']['name']} not Established yet")

    Retrying(
        stop=stop_after_delay(timeout),
        wait=wait_exponential(multiplier=0.05, max=1),
        retry=retry_if_exception_type(_NotEstablished),
        reraise=True,
    )(established)
