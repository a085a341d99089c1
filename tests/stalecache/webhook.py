"""StaleCacheWebhook: Antrea's ExternalIPPool validating webhook, with a cache that can lag.

A real kube-apiserver calls it over TLS (a CA made per instance, IP SAN 127.0.0.1)
through a ValidatingWebhookConfiguration with a URL clientConfig on 127.0.0.1 (the
labs' admission machinery, tests/stalecache/admission.py), and it answers with
Antrea's rules and messages (tests/stalecache/validator.py) computed from an
informer-style cache (tests/stalecache/cache.py). With `lag` > 0 the cache shows
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

import logging
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import admission
from .admission import AdmissionServer, WebhookRoute, api_error_message
from .cache import GROUP, PLURAL, VERSION, PoolCache
from .validator import validate_external_ip_pool

log = logging.getLogger("cni_e2e.stalecache")

CRD_PATH = Path(__file__).resolve().parents[2] / "fixtures" / "crds" / "antrea-externalippool.yaml"
CRD_NAME = "externalippools.crd.antrea.io"
WEBHOOK_NAME = "externalippoolvalidator.antrea.io"
CONFIG_NAME = "crdvalidator.antrea.io"
WEBHOOK_PATH = "/validate/externalippool"
LAB_LABEL = "cni-e2e.io/stale-cache-lab"

__all__ = [
    "StaleCacheWebhook",
    "api_error_message",
    "denied",
    "ensure_crd",
    "overlap_message",
]


def denied(message: str) -> str:
    """The message a client sees when the webhook denies: the API server's wrapping of ours."""
    return admission.denied(WEBHOOK_NAME, message)


def overlap_message(new_range: str, existing_range: str, pool: str) -> str:
    """Antrea's overlap denial; ranges as "198.19.0.0/24" or "198.19.0.1-198.19.0.9"."""
    return f"range [{new_range}] overlaps with range [{existing_range}] of ExternalIPPool {pool}"


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
        self._admission: AdmissionServer | None = None
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
        assert self._admission is not None, "start() first"
        return self._admission.ca_pem

    # --- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> StaleCacheWebhook:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> StaleCacheWebhook:
        from kubernetes import config as kconfig

        self._client = kconfig.new_client_from_config(str(self.kubeconfig))
        try:
            ensure_crd(self._client)
            self.cache = PoolCache(self._client, f"{LAB_LABEL}={self.lab_id}", self._lag)
            self.cache.start()
            route = WebhookRoute(
                WEBHOOK_NAME,
                WEBHOOK_PATH,
                GROUP,
                VERSION,
                PLURAL,
                self._decide,
                probe=lambda name: self.pool_manifest(name, [{"cidr": "192.0.2.0/32"}]),
            )
            self._admission = AdmissionServer(
                self._client,
                self.config_name,
                self.labels,
                [route],
                timeout_seconds=self.timeout_seconds,
            )
            self._admission.start()
        except BaseException:
            self.stop()
            raise
        self.url = self._admission.url_of(route)
        log.info("stale-cache webhook %s serving %s (lag %.1fs)", self.lab_id, self.url, self._lag)
        return self

    def stop(self) -> None:
        from kubernetes.client import ApiException

        if self._admission is not None:
            self._admission.stop()
            self._admission = None
        if self._client is not None:
            try:
                self.custom_api().delete_collection_cluster_custom_object(
                    GROUP, VERSION, PLURAL, label_selector=f"{LAB_LABEL}={self.lab_id}"
                )
            except ApiException as exc:
                log.warning("removing pools of lab %s: %s", self.lab_id, exc.reason)
        if self.cache is not None:
            self.cache.stop()
            self.cache = None
        if self._client is not None:
            self._client.close()
            self._client = None

    # --- admission ---------------------------------------------------------------------------

    def _decide(self, request: Mapping[str, Any]) -> str | None:
        obj = request.get("object") or {}
        name = (obj.get("metadata") or {}).get("name") or request.get("name", "")
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
        return message

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
    """Create the ExternalIPPool CRD (or the one in `path`) unless it exists; wait Established."""
    admission.ensure_crd(api_client, path, timeout)
