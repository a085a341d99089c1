"""A stand-in for submariner-globalnet's GlobalIngressIP controller, buggy (#3336) or fixed.

Submariner's modules are refused by the Go proxy here, so the real globalnet cannot
be built; this double runs in a thread of the test process against the real API
server instead, and reproduces only the behaviour Submariner #3336 is about, from
submariner-io/submariner pkg/globalnet/controllers (the ingress IP controller,
global_ingressip_controller.go): on start it lists the GlobalIngressIPs and, for each
one with an allocated IP, reads its internal Service before the syncer starts
allocating for new ones.

- BUGGY (before PR #3341): `if err != nil || !exists` -- any error on that read, even
  a transient one, releases the IP (status.allocatedIP emptied, the IP back in the
  pool) and the running controller then allocates a new one from its pool.
- FIXED (PR #3341): a transient error is retried and the IP kept; a missing internal
  Service is recreated with the same IP.

The transient error is injected in-process (`inject_transient_read_errors`): the next
reads of one internal Service raise a 503 ApiException without reaching the API server
(`injected` lists the reads that failed, so a test can prove its fault was hit).
The IP pool is in memory, hands out the free address that has waited longest, and is
rebuilt on every start from the allocated IPs it keeps, as upstream's is.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import config as kconfig
from kubernetes.client.exceptions import ApiException

from fixtures.kube import SERVICE, apply_with_retry, get_object, request, watch_events
from fixtures.retry import READ, RetryStats, describe
from fixtures.submariner import (
    EXPORTED_SERVICE_LABEL,
    GLOBAL_INGRESS_IP,
    internal_service_name,
)

log = logging.getLogger("cni_e2e.doubles.globalnet")


class Mode(enum.Enum):
    BUGGY = "buggy"  # Submariner before PR #3341
    FIXED = "fixed"  # Submariner with PR #3341


class IPPool:
    """The controller's in-memory pool: the free address that waited longest goes first."""

    def __init__(self, addresses: Sequence[str], reserved: set[str]) -> None:
        self._free = deque(a for a in addresses if a not in reserved)

    def allocate(self) -> str:
        if not self._free:
            raise RuntimeError("the double's IP pool is exhausted: give it more addresses")
        return self._free.popleft()

    def release(self, ip: str) -> None:
        self._free.append(ip)


class GlobalnetDouble:
    """GlobalIngressIP controller double for one namespace; start(), restart(), stop()."""

    def __init__(
        self,
        kubeconfig: Path,
        namespace: str,
        addresses: Sequence[str],
        *,
        mode: Mode,
        window: float = 1.0,
    ) -> None:
        self.client = kconfig.new_client_from_config(str(kubeconfig))
        self.namespace = namespace
        self.addresses = tuple(addresses)
        self.mode = mode
        self.window = window
        self.pool = IPPool(self.addresses, set())
        self._faults: dict[str, int] = {}
        self.injected: list[str] = []  # the Services whose read failed, in order
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._started = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    # -- what the test drives ---------------------------------------------------------------

    def inject_transient_read_errors(self, service: str, count: int = 1) -> None:
        """The next `count` reads of `service`'s internal Service fail with a 503."""
        with self._lock:
            self._faults[service] = self._faults.get(service, 0) + count

    def start(self, *, timeout: float = 30.0) -> None:
        """Run the controller; returns once its start-up pass over existing objects is done."""
        self._stopping.clear()
        self._started.clear()
        self.error = None
        self._thread = threading.Thread(target=self._run, name="globalnet-double", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout) or self.error is not None:
            self.stop()
            raise RuntimeError(f"globalnet double ({self.mode.value}) did not start: {self.error}")

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(self.window + 10)
            if self._thread.is_alive():
                raise RuntimeError("globalnet double did not stop within its watch window")
            self._thread = None

    def restart(self) -> None:
        """Stop and start again: the in-memory pool is rebuilt, the start-up pass runs."""
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        self.client.close()

    # -- the controller ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._start_up()
            self._started.set()
            self._sync_loop()
        except BaseException as exc:  # reported through start() and self.error
            log.exception("globalnet double (%s) failed", self.mode.value)
            self.error = exc
            self._started.set()

    def _read_internal_service(self, service: str) -> dict[str, Any] | None:
        with self._lock:
            if self._faults.get(service, 0) > 0:
                self._faults[service] -= 1
                self.injected.append(service)
                raise ApiException(status=503, reason="Service Unavailable (injected)")
        return get_object(
            self.client, SERVICE, internal_service_name(service), self.namespace, policy=_ONCE
        )

    def _start_up(self) -> None:
        """Upstream's constructor: reserve the allocated IPs of existing GlobalIngressIPs."""
        listed = request(self.client, "GET", GLOBAL_INGRESS_IP.path(self.namespace))
        giips = [g for g in listed.get("items") or [] if (g.get("status") or {}).get("allocatedIP")]
        self.pool = IPPool(self.addresses, {g["status"]["allocatedIP"] for g in giips})
        for giip in giips:
            name, ip = giip["metadata"]["name"], giip["status"]["allocatedIP"]
            if self.mode is Mode.BUGGY:
                try:
                    svc, err = self._read_internal_service(name), None
                except ApiException as exc:
                    svc, err = None, exc
                if err is not None or svc is None:  # upstream: if err != nil || !exists
                    log.info("buggy: releasing %s of %s (%s)", ip, name, err and describe(err))
                    self.pool.release(ip)
                    self._write_status(name, "", None)
                continue
            svc = _RETRY_TRANSIENT.retrying(what=f"internal Service of {name}")(
                self._read_internal_service, name
            )
            if svc is None:
                log.info("fixed: recreating the internal Service of %s with %s", name, ip)
                self._apply_internal_service(name, ip)

    def _sync_loop(self) -> None:
        """The syncer: allocate for every GlobalIngressIP without an IP, list then watch."""
        path = GLOBAL_INGRESS_IP.path(self.namespace)
        rv = ""
        while not self._stopping.is_set():
            if not rv:
                listed = request(self.client, "GET", path)
                for giip in listed.get("items") or []:
                    self._on_create(giip)
                rv = listed["metadata"]["resourceVersion"]
            for event in watch_events(
                self.client,
                GLOBAL_INGRESS_IP,
                namespace=self.namespace,
                resource_version=rv,
                timeout=self.window,
            ):
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    rv = ""  # 410 Gone or another watch error: list again
                    break
                rv = obj["metadata"]["resourceVersion"]
                if kind in ("ADDED", "MODIFIED"):
                    self._on_create(obj)
                if self._stopping.is_set():
                    break

    def _on_create(self, giip: dict[str, Any]) -> None:
        if (giip.get("status") or {}).get("allocatedIP"):
            return
        name = giip["metadata"]["name"]
        ip = self.pool.allocate()
        log.info("allocating %s for %s/%s", ip, self.namespace, name)
        self._apply_internal_service(name, ip)
        self._write_status(name, ip, "Success")

    def _apply_internal_service(self, service: str, ip: str) -> None:
        apply_with_retry(
            self.client,
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {
                    "name": internal_service_name(service),
                    "labels": {EXPORTED_SERVICE_LABEL: service},
                },
                "spec": {
                    "type": "ClusterIP",
                    "externalIPs": [ip],
                    "selector": {"app": service},
                    "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                },
            },
            namespace=self.namespace,
            field_manager="globalnet-double",
        )

    def _write_status(self, name: str, ip: str, reason: str | None) -> None:
        condition = {
            "type": "Allocated",
            "status": "True" if reason else "False",
            "reason": reason or "Released",
            "message": "Allocated global IP" if reason else "released by the start-up pass",
            "lastTransitionTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        request(
            self.client,
            "PATCH",
            GLOBAL_INGRESS_IP.path(self.namespace, name) + "/status",
            body={"status": {"allocatedIP": ip, "conditions": [condition]}},
            content_type="application/merge-patch+json",
        )


# one attempt: the double decides itself what to do with an error, as upstream's code does
_ONCE = replace(READ, name="read-once", deadline=0.0, stats=RetryStats())
# the fixed start-up pass retries transient errors (its own counter: not the session's)
_RETRY_TRANSIENT = replace(READ, name="globalnet-double", deadline=10.0, stats=RetryStats())
