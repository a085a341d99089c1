"""StaleCacheWebhook: Antrea's ExternalIPPool validating webhook, with a cache that can lag.

A real kube-apiserver calls it over TLS (a CA made per instance, IP SAN 127.0.0.1)
through a ValidatingWebhookConfiguration with a URL clientConfig on 127.0.0.1, and it
answers with Antrea's rules and messages (tests/stalecache/validator.py) computed from
an informer-style cache (tests/stalecache/cache.py). With `lag` > 0 the cache shows
each watch event that many seconds late, which reproduces upstream Antrea #6783:
re-creating a just-deleted pool's range is denied because the cache still has the pool.

API
---
    from tests.stalecache.webhook import StaleCacheWebhook, denied, overlap_message

    with StaleCacheWebhook(kubeconfig, lag=3.0) as hook:   # start() ... stop()
        hook.create_pool("a", [{"cidr": "198.19.90.0/30"}])   # labelled for this lab
        hook.wait_cached("a")                               # the cache has seen it
        hook.delete_pool("a")
        hook.create_pool("b", [{"cidr": "198.19.90.0/30"}])   # raises ApiException (403):
        # api_error_message(exc) == denied(overlap_message("198.19.90.0/30", "198.19.90.0/30", "a"))
        hook.wait_cached("a", present=False)                # after `lag` seconds
        hook.create_pool("b", [{"cidr": "198.19.90.0/30"}])   # now admitted
        hook.lag = 0                                        # settable at any time

StaleCacheWebhook(kubeconfig, lag=0.0, lab_id=None, timeout_seconds=5)
    kubeconfig   path of an admin kubeconfig (a fresh ApiClient is made from it).
    lag          seconds each watch event is held back. 0 means the cache relists before
                 every decision, i.e. it is fully caught up (deterministic "no stale cache").
    lab_id       scopes the instance (default: random). Its ValidatingWebhookConfiguration
                 "crdvalidator.antrea.io-<lab_id>" selects only objects labelled
                 cni-e2e.io/stale-cache-lab=<lab_id>, and its cache watches only those, so
                 several labs share one cluster (xdist workers) without seeing each other.
start()          installs the ExternalIPPool CRD if absent
                 (fixtures/crds/antrea-externalippool.yaml), serves
                 https://127.0.0.1:<port>/validate/externalippool, registers the webhook
                 and returns (self) once the API server is calling it.
stop()           deregisters, deletes this lab's pools, stops the server. Idempotent.
Attributes       url, ca_pem, labels (put them on pools; create_pool does), lag (read/write),
                 cache (PoolCache: view(), wait_until(predicate)), decisions (list of
                 Decision values, one per AdmissionReview answered, oldest first).
Helpers          pool_manifest(), create_pool(), delete_pool(), wait_cached(),
                 denied(msg) (the API server's wrapping), overlap_message(), api_error_message().
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import ssl
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from .cache import GROUP, PLURAL, VERSION, PoolCache
from .certs import ServingCert, make_serving_cert
from .validator import validate_external_ip_pool

log = logging.getLogger("cni_e2e.stalecache")

CRD_PATH = Path(__file__).resolve().parents[2] / "fixtures" / "crds" / "antrea-externalippool.yaml"
CRD_NAME = "externalippools.crd.antrea.io"
WEBHOOK_NAME = "externalippoolvalidator.antrea.io"
CONFIG_NAME = "crdvalidator.antrea.io"
WEBHOOK_PATH = "/validate/externalippool"
LAB_LABEL = "cni-e2e.io/stale-cache-lab"
PROBE_ANNOTATION = "cni-e2e.io/webhook-probe"
BIND_HOST = "127.0.0.1"


def denied(message: str) -> str:
    """The message a client sees when the webhook denies: the API server's wrapping of ours."""
    return f'admission webhook "{WEBHOOK_NAME}" denied the request: {message}'


def overlap_message(new_range: str, existing_range: str, pool: str) -> str:
    """Antrea's overlap denial; ranges as "198.19.0.0/24" or "198.19.0.1-198.19.0.9"."""
    return f"range [{new_range}] overlaps with range [{existing_range}] of ExternalIPPool {pool}"


def api_error_message(exc: Any) -> str:
    """The Status message inside a kubernetes ApiException (falls back to its reason)."""
    try:
        return str(json.loads(exc.body)["message"])
    except (TypeError, ValueError, KeyError):
        return str(getattr(exc, "reason", exc))


@dataclass(frozen=True)
class Decision:
    """One AdmissionReview answered: what was asked, what the cache held, what was said."""

    operation: str
    name: str
    allowed: bool
    message: str
    cached: tuple[str, ...]
    lag: float
    at: float  # time.monotonic()


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path.split("?")[0] != WEBHOOK_PATH:
            self.send_error(404)
            return
        length = int(self.headers.get("Content-Length") or 0)
        try:
            review = json.loads(self.rfile.read(length))
            response = self.server.webhook._review(review["request"])
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
        log.debug("webhook %s: " + format, self.server.webhook.lab_id, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    webhook: StaleCacheWebhook


class StaleCacheWebhook:
    """Antrea's ExternalIPPool webhook on 127.0.0.1, deciding from a cache `lag` seconds late."""

    def __init__(
        self,
        kubeconfig: Path | str,
        lag: float = 0.0,
        lab_id: str | None = None,
        timeout_seconds: int = 5,
    ) -> None:
        self.kubeconfig = Path(kubeconfig)
        self.lab_id = lab_id or secrets.token_hex(4)
        self.labels = {LAB_LABEL: self.lab_id}
        self.config_name = f"{CONFIG_NAME}-{self.lab_id}"
        self.timeout_seconds = timeout_seconds
        self.decisions: list[Decision] = []
        self._lag = float(lag)
        self._lock = threading.Lock()
        self._client: Any = None
        self.cache: PoolCache | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._cert: ServingCert | None = None
        self.url = ""

    # --- lag ---------------------------------------------------------------------------------

    @property
    def lag(self) -> float:
        return self._lag

    @lag.setter
    def lag(self, seconds: float) -> None:
        self._lag = float(seconds)
        if self.cache is not None:
            self.cache.lag = self._lag

    @property
    def ca_pem(self) -> bytes:
        assert self._cert is not None, "start() first"
        return self._cert.ca_pem

    # --- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> StaleCacheWebhook:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> StaleCacheWebhook:
        from kubernetes import config as kconfig

        self._client = kconfig.new_client_from_config(str(self.kubeconfig))
        ensure_crd(self._client)
        self.cache = PoolCache(self._client, f"{LAB_LABEL}={self.lab_id}", self._lag)
        self.cache.start()
        self._serve()
        self._register()
        self._wait_until_called()
        log.info("stale-cache webhook %s serving %s (lag %.1fs)", self.lab_id, self.url, self._lag)
        return self

    def _serve(self) -> None:
        self._cert = make_serving_cert(BIND_HOST)
        self._tmp = tempfile.TemporaryDirectory(prefix="stale-cache-webhook-")
        chain, key = Path(self._tmp.name) / "tls.crt", Path(self._tmp.name) / "tls.key"
        chain.write_bytes(self._cert.cert_pem)
        key.touch(mode=0o600)
        key.write_bytes(self._cert.key_pem)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(chain, key)
        server = _Server((BIND_HOST, 0), _Handler)
        server.webhook = self
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        self._server = server
        self.url = f"https://{BIND_HOST}:{server.server_address[1]}{WEBHOOK_PATH}"
        self._thread = threading.Thread(
            target=server.serve_forever, name=f"stale-cache-webhook-{self.lab_id}", daemon=True
        )
        self._thread.start()

    def _register(self) -> None:
        from kubernetes import client as k8s

        assert self._cert is not None
        body = {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": self.config_name, "labels": dict(self.labels)},
            "webhooks": [
                {
                    "name": WEBHOOK_NAME,
                    "clientConfig": {
                        "url": self.url,
                        "caBundle": base64.b64encode(self._cert.ca_pem).decode(),
                    },
                    "rules": [
                        {
                            "operations": ["CREATE", "UPDATE"],
                            "apiGroups": [GROUP],
                            "apiVersions": [VERSION],
                            "resources": [PLURAL],
                            "scope": "Cluster",
                        }
                    ],
                    "objectSelector": {"matchLabels": dict(self.labels)},
                    "admissionReviewVersions": ["v1"],
                    "sideEffects": "None",
                    "failurePolicy": "Fail",
                    "timeoutSeconds": self.timeout_seconds,
                }
            ],
        }
        k8s.AdmissionregistrationV1Api(self._client).create_validating_webhook_configuration(body)

    def _wait_until_called(self, timeout: float = 30.0) -> None:
        """The API server loads webhook configurations asynchronously: probe with a dry run."""
        from kubernetes.client import ApiException

        probe = self.pool_manifest(f"probe-{self.lab_id}", [{"cidr": "192.0.2.0/32"}])
        probe["metadata"]["annotations"] = {PROBE_ANNOTATION: "true"}
        api = self.custom_api()

        class _NotYet(Exception):
            pass

        def attempt() -> None:
            try:
                api.create_cluster_custom_object(GROUP, VERSION, PLURAL, probe, dry_run="All")
            except ApiException as exc:
                if self._probe_message() in api_error_message(exc):
                    return
                raise
            raise _NotYet(f"webhook {self.config_name} not called yet")

        Retrying(
            stop=stop_after_delay(timeout),
            wait=wait_exponential(multiplier=0.05, max=1),
            retry=retry_if_exception_type(_NotYet),
            reraise=True,
        )(attempt)

    def _probe_message(self) -> str:
        return f"stale-cache lab {self.lab_id} is serving"

    def stop(self) -> None:
        from kubernetes import client as k8s
        from kubernetes.client import ApiException

        if self._client is not None:
            try:
                k8s.AdmissionregistrationV1Api(
                    self._client
                ).delete_validating_webhook_configuration(self.config_name)
            except ApiException as exc:
                if exc.status != 404:
                    log.warning("removing webhook %s: %s", self.config_name, exc.reason)
            try:
                self.custom_api().delete_collection_cluster_custom_object(
                    GROUP, VERSION, PLURAL, label_selector=f"{LAB_LABEL}={self.lab_id}"
                )
            except ApiException as exc:
                log.warning("removing pools of lab %s: %s", self.lab_id, exc.reason)
        if self.cache is not None:
            self.cache.stop()
            self.cache = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        if self._client is not None:
            self._client.close()
            self._client = None

    # --- admission ---------------------------------------------------------------------------

    def _review(self, request: Mapping[str, Any]) -> dict[str, Any]:
        obj = request.get("object") or {}
        name = (obj.get("metadata") or {}).get("name") or request.get("name", "")
        annotations = (obj.get("metadata") or {}).get("annotations") or {}
        if annotations.get(PROBE_ANNOTATION):
            return {
                "uid": request["uid"],
                "allowed": False,
                "status": {"message": self._probe_message()},
            }
        assert self.cache is not None
        lag = self._lag
        if lag == 0:
            self.cache.resync()
        view = self.cache.view()
        message = validate_external_ip_pool(
            request.get("operation", ""), obj or None, request.get("oldObject"), view
        )
        decision = Decision(
            operation=request.get("operation", ""),
            name=name,
            allowed=message is None,
            message=message or "",
            cached=tuple(sorted(view)),
            lag=lag,
            at=time.monotonic(),
        )
        with self._lock:
            self.decisions.append(decision)
        log.info(
            "lab %s %s %s: %s (cache: %s)",
            self.lab_id,
            decision.operation,
            name,
            "allowed" if decision.allowed else f"denied: {message}",
            ", ".join(decision.cached),
        )
        response: dict[str, Any] = {"uid": request["uid"], "allowed": message is None}
        if message:
            response["status"] = {"message": message}
        return response

    # --- pools of this lab -------------------------------------------------------------------

    def custom_api(self) -> Any:
        from kubernetes import client as k8s

        assert self._client is not None, "start() first"
        return k8s.CustomObjectsApi(self._client)

    def pool_manifest(
        self,
        name: str,
        ip_ranges: Sequence[Mapping[str, Any]],
        subnet_info: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """An ExternalIPPool carrying this lab's label (so this webhook and cache see it)."""
        spec: dict[str, Any] = {"ipRanges": [dict(r) for r in ip_ranges], "nodeSelector": {}}
        if subnet_info is not None:
            spec["subnetInfo"] = dict(subnet_info)
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ExternalIPPool",
            "metadata": {"name": name, "labels": dict(self.labels)},
            "spec": spec,
        }

    def create_pool(
        self,
        name: str,
        ip_ranges: Sequence[Mapping[str, Any]],
        subnet_info: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Create a pool through the API server (and so through this webhook)."""
        return dict(
            self.custom_api().create_cluster_custom_object(
                GROUP, VERSION, PLURAL, self.pool_manifest(name, ip_ranges, subnet_info)
            )
        )

    def delete_pool(self, name: str) -> None:
        self.custom_api().delete_cluster_custom_object(GROUP, VERSION, PLURAL, name)

    def wait_cached(self, name: str, present: bool = True, timeout: float = 30.0) -> None:
        """Wait until the webhook's cache shows pool `name` (or, with present=False, no longer)."""
        assert self.cache is not None, "start() first"
        self.cache.wait_until(lambda view: (name in view) == present, timeout)


def ensure_crd(api_client: Any, path: Path = CRD_PATH, timeout: float = 60.0) -> None:
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
