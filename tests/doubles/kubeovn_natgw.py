"""NatGatewayDouble: kube-ovn-controller's IptablesEIP/IptablesFIPRule handling, buggy or fixed.

A stand-in: Kube-OVN cannot be built or run here (its Go modules are refused by the Go
proxy, and this kernel has no openvswitch), so this double runs in-process (threads)
against the real API server of scripts/test. It watches real IptablesEIP and
IptablesFIPRule objects (kubeovn.io/v1, installed from `crds()`) and writes their status
the way kube-ovn-controller does in pkg/controller/vpc_nat_gw_eip.go and
pkg/controller/vpc_nat_gw_nat.go (kubeovn/kube-ovn). The gateway pod
`vpc-nat-gw-<gw>-0` is not a Pod: its data plane (the addresses on net1 and the
EXCLUSIVE_DNAT/SNAT rules of its nat table) is plain in-memory state that the double
"configures", read through `gateway_state()` as the scenario reads a real pod.

Behaviour reproduced, Kube-OVN issue #5114 (v1.13.4):
- an EIP or FIP of this gateway that is created gets configured on the pod, then ready;
- `restart_gateway()` replaces the pod (new uid, new creationTimestamp, empty data
  plane), patches every EIP and FIP of the gateway `ready=false, redo=<pod timestamp>`
  and re-applies those still waiting once the pod has initialised (`init_delay` s);
- deleting a FIP removes its rules and queues an EIP reset. With `fixed=False` (v1.13.4)
  the reset forces `ready=true` without configuring anything, so an EIP still waiting
  for the new pod is skipped by the re-application and never reaches net1. With
  `fixed=True` the reset first configures the EIP on the current pod, then marks it ready.

API
---
    install_crds(client, crds())
    with NatGatewayDouble(client, "gw1", fixed=False, init_delay=2.0) as gw:
        ...create IptablesEIP (spec.natGwDp="gw1") and IptablesFIPRule objects...
        gw.gateway_state()      # fixtures.kubeovn.GatewayState of the current pod
        gw.restart_gateway()    # what `kubectl delete pod vpc-nat-gw-gw1-0` sets off
    # stop() deletes the EIPs and FIPs of the gateway and ends the threads
Attributes: actions (what the double did, oldest first), errors (API failures it hit).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import urllib3.exceptions
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from fixtures.kube import Resource, delete_and_wait, request, watch_events
from fixtures.kubeovn import EIP, FIP, GatewayState, eip_address, gateway_pod

log = logging.getLogger("cni_e2e.doubles.kubeovn")

Obj = dict[str, Any]


# --- the two CRDs, as small as the scenario needs -----------------------------------------


def _crd(kind: str, plural: str, short: str, spec: Obj, status: Obj) -> Obj:
    def obj(props: Obj) -> Obj:
        return {"type": "object", "properties": props}

    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.kubeovn.io"},
        "spec": {
            "group": "kubeovn.io",
            "scope": "Cluster",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": plural.rstrip("s"),
                "shortNames": [short],
            },
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {"openAPIV3Schema": obj({"spec": obj(spec), "status": obj(status)})},
                }
            ],
        },
    }


def crds() -> list[Obj]:
    """Minimal IptablesEIP and IptablesFIPRule CRDs (fields of Kube-OVN's kubeovn.io/v1 API)."""
    s: Obj = {"type": "string"}
    b: Obj = {"type": "boolean"}
    conditions: Obj = {
        "type": "array",
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
    }
    eip = _crd(
        "IptablesEIP",
        "iptables-eips",
        "eip",
        {k: s for k in ("v4ip", "v6ip", "macAddress", "natGwDp", "qosPolicy", "externalSubnet")},
        {"ready": b, "ip": s, "redo": s, "nat": s, "qosPolicy": s, "conditions": conditions},
    )
    fip = _crd(
        "IptablesFIPRule",
        "iptables-fip-rules",
        "fip",
        {"eip": s, "internalIp": s},
        {"ready": b, "v4ip": s, "natGwDp": s, "redo": s, "internalIp": s},
    )
    return [eip, fip]


# --- the gateway pod's data plane ---------------------------------------------------------


def dnat_rule(eip_ip: str, internal: str) -> str:
    return f"-A EXCLUSIVE_DNAT -d {eip_ip}/32 -j DNAT --to-destination {internal}"


def snat_rule(eip_ip: str, internal: str) -> str:
    return f"-A EXCLUSIVE_SNAT -s {internal}/32 -j SNAT --to-source {eip_ip}"


@dataclass
class GatewayPod:
    """One incarnation of vpc-nat-gw-<gw>-0: its identity and what it carries."""

    name: str
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC).replace(microsecond=0))
    net1: set[str] = field(default_factory=set)
    rules: list[str] = field(default_factory=list)

    @property
    def created(self) -> str:
        return self.created_at.strftime("%Y-%m-%dT%H:%M:%SZ")

    @property
    def redo(self) -> str:
        """What kube-ovn-controller writes into status.redo (Go layout 2006-01-02T15:04:05)."""
        return self.created_at.strftime("%Y-%m-%dT%H:%M:%S")


# --- the controller -----------------------------------------------------------------------


class NatGatewayDouble:
    """kube-ovn-controller's EIP/FIP handling for one VPC NAT gateway, #5114 on or off."""

    def __init__(
        self,
        client: ApiClient,
        gateway: str,
        *,
        fixed: bool,
        init_delay: float = 2.0,
        watch_window: float = 2.0,
    ) -> None:
        self.client = client
        self.gateway = gateway
        self.fixed = fixed
        self.init_delay = init_delay
        self.watch_window = watch_window
        self.actions: list[str] = []
        self.errors: list[str] = []
        self._pod = GatewayPod(gateway_pod(gateway))
        self._lock = threading.Lock()
        self._work: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._later: list[tuple[float, int, tuple[str, Any]]] = []
        self._seq = itertools.count()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._synced = {EIP.kind: threading.Event(), FIP.kind: threading.Event()}

    # lifecycle

    def start(self) -> NatGatewayDouble:
        for resource in (EIP, FIP):
            self._spawn(self._watch, resource)
        self._spawn(self._worker)
        for kind, synced in self._synced.items():
            if not synced.wait(timeout=30):
                self.stop()
                raise TimeoutError(f"the double's {kind} watch never listed: is the CRD there?")
        log.info("NAT gateway double %s started (fixed=%s)", self.gateway, self.fixed)
        return self

    def stop(self) -> None:
        """Delete this gateway's FIPs and EIPs, then end the threads. Idempotent."""
        if not self._stop.is_set():
            for resource in (FIP, EIP):
                for obj in self._mine(resource):
                    delete_and_wait(self.client, resource, obj["metadata"]["name"], timeout=30)
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.watch_window + 15)
        self._threads.clear()

    def __enter__(self) -> NatGatewayDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # what the scenario sees and does

    @property
    def pod_name(self) -> str:
        return self._pod.name

    def gateway_state(self) -> GatewayState:
        """The current pod's data plane, as `ip addr show dev net1` and iptables-save show it."""
        with self._lock:
            pod = self._pod
            return GatewayState(
                frozenset(pod.net1), tuple(pod.rules), pod.name, pod.uid, pod.created
            )

    def restart_gateway(self) -> str:
        """Replace the gateway pod (as its StatefulSet would); returns the new pod's uid."""
        with self._lock:
            old = self._pod
            new = GatewayPod(old.name)
            if new.created_at <= old.created_at:  # timestamps are to the second, as in the API
                new.created_at = old.created_at + timedelta(seconds=1)
            self._pod = new
        self._did(f"gateway pod replaced: {old.uid} -> {new.uid} (created {new.created})")
        self._work.put(("restarted", new.uid))
        return new.uid

    # threads

    def _spawn(self, target: Any, *args: Any) -> None:
        t = threading.Thread(target=target, args=args, daemon=True, name=f"natgw-{target.__name__}")
        t.start()
        self._threads.append(t)

    def _watch(self, resource: Resource) -> None:
        rv: str | None = None
        while not self._stop.is_set():
            try:
                if rv is None:
                    listed = request(self.client, "GET", resource.path())
                    rv = str(listed["metadata"]["resourceVersion"])
                    for item in listed.get("items") or []:
                        self._work.put((f"{resource.kind}:ADDED", item))
                    self._synced[resource.kind].set()
                for event in watch_events(
                    self.client, resource, resource_version=rv, timeout=self.watch_window
                ):
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        rv = None
                        break
                    rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
                    if kind in ("ADDED", "DELETED"):
                        self._work.put((f"{resource.kind}:{kind}", obj))
                    if self._stop.is_set():
                        return
            except (ApiException, OSError, ValueError, urllib3.exceptions.HTTPError) as exc:
                log.debug("double: watch of %s interrupted (%s)", resource.plural, exc)
                rv = None
                self._stop.wait(0.5)

    def _worker(self) -> None:
        handlers: dict[str, Callable[[Any], None]] = {
            f"{EIP.kind}:ADDED": self._eip_added,
            f"{FIP.kind}:ADDED": self._fip_added,
            f"{FIP.kind}:DELETED": self._fip_deleted,
            "restarted": self._restarted,
            "reapply": self._reapply,
            "eip-reset": self._eip_reset,
            "fip-retry": self._fip_retry,
        }
        while not self._stop.is_set():
            now = time.monotonic()
            while self._later and self._later[0][0] <= now:
                self._work.put(heapq.heappop(self._later)[2])
            wait = min(0.2, self._later[0][0] - now) if self._later else 0.2
            try:
                what, arg = self._work.get(timeout=max(0.01, wait))
            except queue.Empty:
                continue
            handler = handlers.get(what)
            if handler is None:  # e.g. an EIP deleted: nothing this double models
                continue
            try:
                handler(arg)
            except ApiException as exc:
                if exc.status != 404:  # an object deleted meanwhile is not an error
                    self.errors.append(f"{what}: {exc.status} {exc.reason}")
                    log.warning("double: %s failed: %s %s", what, exc.status, exc.reason)

    def _after(self, delay: float, item: tuple[str, Any]) -> None:
        heapq.heappush(self._later, (time.monotonic() + delay, next(self._seq), item))

    # handlers (one worker thread runs them, in order, like a controller's work queues)

    def _eip_added(self, obj: Obj) -> None:
        if obj["spec"].get("natGwDp") != self.gateway or (obj.get("status") or {}).get("ready"):
            return
        ip = eip_address(obj)
        self._configure_eip(obj["metadata"]["name"], ip)
        self._patch_status(EIP, obj["metadata"]["name"], {"ready": True, "ip": ip})

    def _fip_added(self, obj: Obj) -> None:
        self._fip_retry(obj["metadata"]["name"])

    def _fip_retry(self, name: str) -> None:
        fip = self._get(FIP, name)
        if fip is None or (fip.get("status") or {}).get("ready"):
            return
        eip = self._get(EIP, fip["spec"].get("eip", ""))
        if eip is None or eip["spec"].get("natGwDp") != self.gateway:
            return
        if not (eip.get("status") or {}).get("ready"):
            self._after(0.1, ("fip-retry", name))  # its EIP is not there yet
            return
        self._configure_fip(eip, fip)

    def _fip_deleted(self, obj: Obj) -> None:
        eip_name = obj["spec"].get("eip", "")
        eip = self._get(EIP, eip_name)
        if eip is None or eip["spec"].get("natGwDp") != self.gateway:
            return
        ip, internal = eip_address(eip), obj["spec"].get("internalIp", "")
        with self._lock:
            for rule in (dnat_rule(ip, internal), snat_rule(ip, internal)):
                if rule in self._pod.rules:
                    self._pod.rules.remove(rule)
        self._did(f"FIP {obj['metadata']['name']} deleted: rules removed, reset of {eip_name}")
        self._work.put(("eip-reset", eip_name))  # what enqueueDelIptablesFip leads to

    def _eip_reset(self, name: str) -> None:
        eip = self._get(EIP, name)
        if eip is None:
            return
        if self.fixed:
            with self._lock:
                missing = eip_address(eip) not in self._pod.net1
            if missing:
                self._configure_eip(name, eip_address(eip))
        else:
            self._did(f"reset {name}: ready=true without configuring it (#5114)")
        self._patch_status(EIP, name, {"ready": True, "nat": ""})

    def _restarted(self, uid: str) -> None:
        with self._lock:
            pod = self._pod
        if pod.uid != uid:
            return
        eips = self._mine(EIP)
        for eip in eips:
            self._patch_status(EIP, eip["metadata"]["name"], {"ready": False, "redo": pod.redo})
        for fip in self._fips_of(eips):
            self._patch_status(FIP, fip["metadata"]["name"], {"ready": False, "redo": pod.redo})
        self._did(f"all EIPs/FIPs of {self.gateway} marked ready=false redo={pod.redo}")
        self._after(self.init_delay, ("reapply", uid))

    def _reapply(self, uid: str) -> None:
        with self._lock:
            pod = self._pod
        if pod.uid != uid:
            return
        eips = self._mine(EIP)
        for eip in eips:
            status = eip.get("status") or {}
            if status.get("ready") or status.get("redo") != pod.redo:
                continue  # only what still waits for this pod is re-applied
            self._configure_eip(eip["metadata"]["name"], eip_address(eip))
            self._patch_status(EIP, eip["metadata"]["name"], {"ready": True})
        for fip in self._fips_of(self._mine(EIP)):
            if not (fip.get("status") or {}).get("ready"):
                owner = self._get(EIP, fip["spec"].get("eip", ""))
                if owner is not None:
                    self._configure_fip(owner, fip)
        self._did(f"pod {uid} initialised: waiting EIPs/FIPs re-applied")

    # the data plane and the API

    def _configure_eip(self, name: str, ip: str) -> None:
        with self._lock:
            self._pod.net1.add(ip)
            uid = self._pod.uid
        self._did(f"EIP {name} ({ip}) configured on net1 of {uid}")

    def _configure_fip(self, eip: Obj, fip: Obj) -> None:
        ip, internal = eip_address(eip), fip["spec"].get("internalIp", "")
        with self._lock:
            for rule in (dnat_rule(ip, internal), snat_rule(ip, internal)):
                if rule not in self._pod.rules:
                    self._pod.rules.append(rule)
        name = fip["metadata"]["name"]
        self._did(f"FIP {name} ({ip} <-> {internal}) configured")
        self._patch_status(
            FIP,
            name,
            {"ready": True, "v4ip": ip, "natGwDp": self.gateway, "internalIp": internal},
        )
        self._patch_status(EIP, eip["metadata"]["name"], {"nat": "fip"})

    def _patch_status(self, resource: Resource, name: str, status: Obj) -> None:
        request(
            self.client,
            "PATCH",
            resource.path(None, name) + "/status",
            body={"status": status},
            content_type="application/merge-patch+json",
        )

    def _get(self, resource: Resource, name: str) -> Obj | None:
        try:
            return request(self.client, "GET", resource.path(None, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _mine(self, resource: Resource) -> list[Obj]:
        items = list(request(self.client, "GET", resource.path()).get("items") or [])
        if resource is FIP:
            return list(self._fips_of(self._mine(EIP), items))
        return [o for o in items if (o.get("spec") or {}).get("natGwDp") == self.gateway]

    def _fips_of(self, eips: list[Obj], fips: list[Obj] | None = None) -> Iterator[Obj]:
        names = {e["metadata"]["name"] for e in eips}
        if fips is None:
            fips = list(request(self.client, "GET", FIP.path()).get("items") or [])
        return (f for f in fips if (f.get("spec") or {}).get("eip") in names)

    def _did(self, what: str) -> None:
        log.info("double %s: %s", self.gateway, what)
        self.actions.append(what)
