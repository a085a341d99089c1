"""A stand-in for antrea-controller's Egress webhook and Egress IP allocation, buggy or fixed.

antrea-controller cannot be built here (the Go proxy refuses antrea.io modules), so this
double runs in threads of the test process against the real API server instead, and
reproduces only what Antrea #6718 ("Inconsistent validation of externalIPPool while
creation of Egress resource", antrea-io/antrea) is about:

- The egressvalidator.antrea.io webhook (antrea pkg/controller/egress/validate.go,
  `ValidateEgress`, single-stack part), served by the labs' admission machinery
  (tests/stalecache/admission.py) and called by the API server over TLS. Only when BOTH
  egressIP and externalIPPool are set (and one of them changed) is the pool checked:
  `IP <ip> is not valid`, `ExternalIPPool <name> does not exist`, `IP <ip> is not within
  the IP range`. A pool-only Egress naming a missing pool is admitted, in both modes, as
  upstream admits it. The pool is read from the API server (upstream reads its informer;
  the stale-cache lab is where a lagging cache is reproduced).
- The Egress controller (pkg/controller/egress/controller.go, `syncEgressIPs`): a
  pool-only Egress whose pool exists gets the pool's lowest free address in
  `spec.egressIP` by a merge patch, as `updateEgressIP` does (so the patch goes through
  the webhook too); a missing pool leaves it without an IP and reclaims one it had.

Modes, the only difference between them being what the controller reports:

- BUGGY: antrea-controller before PR #5282 (no Egress conditions), i.e. the silence
  #6718's reporter saw: the admitted Egress naming a missing pool gets no IP and nothing
  says why; once the pool exists the IP is allocated, and still nothing is reported.
- FIXED: `updateEgressAllocatedCondition` as upstream has it since PR #5282:
  `IPAllocated=False/AllocationError` with `Cannot allocate EgressIP from ExternalIPPool:
  ExternalIPPool <name> does not exist` while the pool is missing, then
  `IPAllocated=True/Allocated` (`EgressIP is successfully allocated`) once it is.

Allocation: a {cidr} range skips its network address and, for IPv4, its broadcast
address (what fixtures.ranges.IPRange calls usable); a {start, end} range uses every
address. The addresses in use are read from the Egresses on every pass, so there is no
in-memory allocator to rebuild. Not reproduced: the pool's status.usage, egressIPs and
externalIPPools (dual stack), bandwidth, and everything antrea-agent does
(status.egressIP, status.egressNode, IPAssigned).

Only objects carrying the double's label are validated (objectSelector) and reconciled,
so several doubles share one API server (xdist workers); `labelled(manifest)` adds it.
A pass runs on every watch event of a labelled Egress or ExternalIPPool and at least
every `resync` seconds (upstream re-queues failed syncs the same way).
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import secrets
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import config as kconfig
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from fixtures.kube import EGRESS, EXTERNAL_IP_POOL, Resource, get_object, request, watch_events
from fixtures.retry import READ, RetryStats, describe
from tests.stalecache.admission import AdmissionServer, WebhookRoute, ensure_crd

log = logging.getLogger("cni_e2e.doubles.antrea_egress")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

REPO = Path(__file__).resolve().parents[2]
CRDS = (
    REPO / "fixtures" / "crds" / "antrea-externalippool.yaml",
    REPO / "fixtures" / "crds" / "antrea-egress.yaml",
)
LAB_LABEL = "cni-e2e.io/egress-double"
WEBHOOK_NAME = "egressvalidator.antrea.io"
CONFIG_NAME = "crdvalidator.antrea.io"
IP_ALLOCATED = "IPAllocated"


class Mode(enum.Enum):
    BUGGY = "buggy"  # antrea-controller before PR #5282: no IPAllocated condition
    FIXED = "fixed"  # antrea-controller with PR #5282: IPAllocated reports the allocation


@dataclass(frozen=True)
class Decision:
    """One AdmissionReview the webhook answered."""

    operation: str
    name: str
    allowed: bool
    message: str


def _spec(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return (obj or {}).get("spec") or {}


def _addresses(ip_range: Mapping[str, Any]) -> Iterator[IPAddress]:
    """The addresses Antrea allocates from one spec.ipRanges entry, lowest first."""
    first: IPAddress
    last: IPAddress
    if ip_range.get("cidr"):
        net = ipaddress.ip_network(str(ip_range["cidr"]), strict=False)
        first = net.network_address + 1
        last = net.broadcast_address - 1 if net.version == 4 else net.broadcast_address
    else:
        first = ipaddress.ip_address(str(ip_range["start"]))
        last = ipaddress.ip_address(str(ip_range["end"]))
    addr = first
    while addr <= last:
        yield addr
        addr += 1


def pool_has_ip(pool: Mapping[str, Any], ip: str) -> bool:
    """Whether `ip` lies in one of the pool's ranges (upstream IPPoolHasIP)."""
    addr = ipaddress.ip_address(ip)
    for r in _spec(pool).get("ipRanges") or []:
        if r.get("cidr"):
            if addr in ipaddress.ip_network(str(r["cidr"]), strict=False):
                return True
        elif r.get("start") and r.get("end"):
            start, end = ipaddress.ip_address(str(r["start"])), ipaddress.ip_address(str(r["end"]))
            if addr.version == start.version and start <= addr <= end:
                return True
    return False


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class EgressDouble:
    """antrea-controller's Egress webhook and allocator for labelled objects; start() ... stop()."""

    def __init__(
        self, kubeconfig: Path | str, *, mode: Mode, resync: float = 0.5, window: float = 2.0
    ) -> None:
        self.kubeconfig = Path(kubeconfig)
        self.mode = mode
        self.resync = resync
        self.window = window  # how long one watch request lasts before it is renewed
        self.lab_id = secrets.token_hex(4)
        self.labels = {LAB_LABEL: self.lab_id}
        self.selector = f"{LAB_LABEL}={self.lab_id}"
        self.decisions: list[Decision] = []
        self.synced: Counter[str] = Counter()  # Egress name -> passes that reconciled it
        self.actions: list[str] = []
        self.errors: list[str] = []
        self.client: Any = None
        self._admission: AdmissionServer | None = None
        self._lock = threading.Lock()
        self._kick = threading.Event()
        self._stopping = threading.Event()
        self._passes = 0
        self._passed = threading.Condition(self._lock)
        self._threads: list[threading.Thread] = []

    # -- what a test drives -----------------------------------------------------------------

    def labelled(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """The manifest with this double's label, so its webhook and controller act on it."""
        out = dict(manifest)
        meta = dict(out.get("metadata") or {})
        meta["labels"] = {**(meta.get("labels") or {}), **self.labels}
        out["metadata"] = meta
        return out

    def wait_for_passes(self, count: int = 2, timeout: float = 30.0) -> None:
        """Block until `count` more reconcile passes have finished (each one saw every object)."""
        with self._passed:
            start = self._passes
            if not self._passed.wait_for(lambda: self._passes >= start + count, timeout):
                raise TimeoutError(
                    f"egress double ({self.mode.value}) finished {self._passes - start} of "
                    f"{count} reconcile passes within {timeout}s; errors: {self.errors[-3:]}"
                )

    def __enter__(self) -> EgressDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> EgressDouble:
        self.client = kconfig.new_client_from_config(str(self.kubeconfig))
        try:
            for crd in CRDS:
                ensure_crd(self.client, crd)
            route = WebhookRoute(
                WEBHOOK_NAME,
                "/validate/egress",
                "crd.antrea.io",
                "v1beta1",
                EGRESS.plural,
                self._decide,
                probe=lambda name: self.labelled(
                    {
                        "apiVersion": EGRESS.api_version,
                        "kind": EGRESS.kind,
                        "metadata": {"name": name},
                        "spec": {"appliedTo": {"podSelector": {}}},
                    }
                ),
            )
            self._admission = AdmissionServer(
                self.client, f"{CONFIG_NAME}-{self.lab_id}", self.labels, [route]
            )
            self._admission.start()
            self._stopping.clear()
            for target, name in (
                (lambda: self._watch(EGRESS), "egresses"),
                (lambda: self._watch(EXTERNAL_IP_POOL), "pools"),
                (self._reconcile_loop, "reconcile"),
            ):
                thread = threading.Thread(
                    target=target, name=f"egress-double-{name}-{self.lab_id}", daemon=True
                )
                thread.start()
                self._threads.append(thread)
            self.wait_for_passes(1)
        except BaseException:
            self.stop()
            raise
        log.info("egress double %s (%s) running", self.lab_id, self.mode.value)
        return self

    def stop(self) -> None:
        """Stop the controller, deregister the webhook, delete this double's objects."""
        self._stopping.set()
        self._kick.set()
        for thread in self._threads:
            thread.join(self.window + 10)
        self._threads = []
        if self._admission is not None:
            self._admission.stop()
            self._admission = None
        if self.client is not None:
            for resource in (EGRESS, EXTERNAL_IP_POOL):
                try:
                    request(
                        self.client,
                        "DELETE",
                        resource.path(),
                        query={"labelSelector": self.selector},
                    )
                except ApiException as exc:
                    log.warning("removing %s of double %s: %s", resource.plural, self.lab_id, exc)
            self.client.close()
            self.client = None

    # -- the webhook ------------------------------------------------------------------------

    def _decide(self, review: Mapping[str, Any]) -> str | None:
        new, old = review.get("object") or {}, review.get("oldObject") or {}
        message = self._validate(_spec(new), _spec(old))
        decision = Decision(
            str(review.get("operation", "")),
            str((new.get("metadata") or {}).get("name") or review.get("name", "")),
            message is None,
            message or "",
        )
        with self._lock:
            self.decisions.append(decision)
        return message

    def _validate(self, new: Mapping[str, Any], old: Mapping[str, Any]) -> str | None:
        ip, pool = str(new.get("egressIP") or ""), str(new.get("externalIPPool") or "")
        if ip == str(old.get("egressIP") or "") and pool == str(old.get("externalIPPool") or ""):
            return None  # neither changed
        if not ip or not pool:
            return None  # only validated when both are set: Antrea #6718
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            return f"IP {ip} is not valid"
        found = get_object(self.client, EXTERNAL_IP_POOL, pool, policy=_ONCE)
        if found is None:
            return f"ExternalIPPool {pool} does not exist"
        if not pool_has_ip(found, ip):
            return f"IP {ip} is not within the IP range"
        return None

    # -- the controller ---------------------------------------------------------------------

    def _watch(self, resource: Resource) -> None:
        """Kick a reconcile pass on every event of a labelled object (list, then watch)."""
        rv = ""
        while not self._stopping.is_set():
            try:
                if not rv:
                    listed = request(
                        self.client, "GET", resource.path(), query={"labelSelector": self.selector}
                    )
                    rv = listed["metadata"]["resourceVersion"]
                    self._kick.set()
                for event in watch_events(
                    self.client,
                    resource,
                    label_selector=self.selector,
                    resource_version=rv,
                    timeout=self.window,
                ):
                    if event.get("type") == "ERROR":
                        rv = ""  # 410 Gone or another watch error: list again
                        break
                    rv = (event.get("object") or {}).get("metadata", {}).get("resourceVersion", rv)
                    if event.get("type") != "BOOKMARK":
                        self._kick.set()
                    if self._stopping.is_set():
                        break
            except (ApiException, HTTPError, OSError) as exc:
                if self._stopping.is_set():
                    break
                self._error(f"watch {resource.plural}: {describe(exc)}")
                rv = ""
                self._stopping.wait(self.resync)

    def _reconcile_loop(self) -> None:
        while not self._stopping.is_set():
            self._kick.wait(self.resync)
            self._kick.clear()
            if self._stopping.is_set():
                break
            try:
                self._pass()
            except (ApiException, HTTPError, OSError) as exc:
                self._error(f"reconcile: {describe(exc)}")
                continue
            with self._passed:
                self._passes += 1
                self._passed.notify_all()

    def _list(self, resource: Resource) -> list[dict[str, Any]]:
        listed = request(
            self.client, "GET", resource.path(), query={"labelSelector": self.selector}
        )
        return list(listed.get("items") or [])

    def _pass(self) -> None:
        pools = {p["metadata"]["name"]: p for p in self._list(EXTERNAL_IP_POOL)}
        egresses = self._list(EGRESS)
        for egress in egresses:
            self._sync(egress, pools, egresses)

    def _sync(
        self,
        egress: dict[str, Any],
        pools: Mapping[str, Mapping[str, Any]],
        egresses: list[dict[str, Any]],
    ) -> None:
        name, spec = egress["metadata"]["name"], _spec(egress)
        with self._lock:
            self.synced[name] += 1
        pool_name, ip = str(spec.get("externalIPPool") or ""), str(spec.get("egressIP") or "")
        if not pool_name:
            return  # a static Egress: nothing to allocate, no IPAllocated (as upstream)
        pool = pools.get(pool_name)
        if pool is None:
            if ip:
                self._patch_egress_ip(egress, None)  # upstream reclaims the IP of a gone pool
            self._report(egress, f"ExternalIPPool {pool_name} does not exist")
            return
        if ip:
            error = None if pool_has_ip(pool, ip) else f"IP {ip} is not within the IP range"
            self._report(egress, error)
            return
        used = {
            str(_spec(e).get("egressIP"))
            for e in egresses
            if e is not egress and _spec(e).get("externalIPPool") == pool_name
        }
        free = next(
            (
                str(a)
                for r in _spec(pool).get("ipRanges") or []
                for a in _addresses(r)
                if str(a) not in used
            ),
            None,
        )
        if free is None:
            self._report(
                egress,
                f"error when allocating IP for Egress {name} from ExternalIPPool {pool_name}: "
                "no available IP",
            )
            return
        self._patch_egress_ip(egress, free)
        self._report(egress, None)

    def _patch_egress_ip(self, egress: dict[str, Any], ip: str | None) -> None:
        name = egress["metadata"]["name"]
        updated = request(
            self.client,
            "PATCH",
            EGRESS.path(None, name),
            body={"spec": {"egressIP": ip}},
            content_type="application/merge-patch+json",
        )
        egress.clear()
        egress.update(updated)
        self._act(f"{name}: spec.egressIP={ip}")

    def _report(self, egress: dict[str, Any], error: str | None) -> None:
        """What updateEgressAllocatedCondition does (FIXED); the BUGGY double says nothing."""
        name = egress["metadata"]["name"]
        if self.mode is Mode.BUGGY:
            if error:
                with self._lock:
                    if f"{name}: silent about: {error}" not in self.actions:
                        self.actions.append(f"{name}: silent about: {error}")
            return
        desired = {
            "type": IP_ALLOCATED,
            "status": "False" if error else "True",
            "reason": "AllocationError" if error else "Allocated",
            "message": (
                f"Cannot allocate EgressIP from ExternalIPPool: {error}"
                if error
                else "EgressIP is successfully allocated"
            ),
        }
        conditions = ((egress.get("status") or {}).get("conditions")) or []
        current = next((c for c in conditions if c.get("type") == IP_ALLOCATED), None)
        if current is not None and all(current.get(k) == v for k, v in desired.items()):
            return  # unchanged, ignoring the timestamp (upstream compareConditionIgnoringTimestamp)
        others = [c for c in conditions if c.get("type") != IP_ALLOCATED]
        request(
            self.client,
            "PATCH",
            EGRESS.path(None, name) + "/status",
            body={"status": {"conditions": [*others, {**desired, "lastTransitionTime": _now()}]}},
            content_type="application/merge-patch+json",
        )
        self._act(f"{name}: {IP_ALLOCATED}={desired['status']}/{desired['reason']}")

    def _act(self, line: str) -> None:
        log.info("egress double %s (%s): %s", self.lab_id, self.mode.value, line)
        with self._lock:
            self.actions.append(line)

    def _error(self, line: str) -> None:
        log.warning("egress double %s: %s", self.lab_id, line)
        with self._lock:
            self.errors.append(line)


# one attempt: a webhook answers within the API server's timeout, it does not retry
_ONCE = replace(READ, name="egress-double-read", deadline=0.0, stats=RetryStats())
