"""An informer-style cache of ExternalIPPools whose watch events become visible `lag` s late.

Antrea's webhook decides from its informer cache, not from etcd, so a pool deleted a
moment ago can still be "there" (upstream #6783). PoolCache reproduces that: a thread
lists and watches the pools, and every watch event is held back for `lag` seconds
before view() shows it. `lag` can be changed at any time and applies to events still
held back. resync() replaces the state with a fresh list, as an informer's relist
does; the webhook calls it before each decision when lag is 0, which makes "no lag"
mean "fully caught up" rather than "a few milliseconds behind".
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("cni_e2e.stalecache")

GROUP, VERSION, PLURAL = "crd.antrea.io", "v1beta1", "externalippools"

PoolView = Mapping[str, Sequence[Mapping[str, Any]]]  # pool name -> spec.ipRanges


@dataclass(frozen=True)
class _Event:
    arrived: float
    kind: str  # ADDED | MODIFIED | DELETED
    name: str
    rv: int
    ip_ranges: tuple[Mapping[str, Any], ...]


def _rv(obj: Mapping[str, Any]) -> int:
    return int(obj.get("metadata", {}).get("resourceVersion") or 0)


def _ranges(obj: Mapping[str, Any]) -> tuple[Mapping[str, Any], ...]:
    return tuple(obj.get("spec", {}).get("ipRanges") or ())


class PoolCache:
    """ExternalIPPools selected by `label_selector`, as a lagging informer sees them."""

    def __init__(self, api_client: Any, label_selector: str, lag: float = 0.0) -> None:
        from kubernetes import client as k8s

        self._api = k8s.CustomObjectsApi(api_client)
        self.label_selector = label_selector
        self._lag = float(lag)
        self._cond = threading.Condition()
        self._state: dict[str, tuple[int, tuple[Mapping[str, Any], ...]]] = {}
        self._floor_rv = 0  # events at or below this were already covered by a list
        self._pending: deque[_Event] = deque()
        self._stopping = threading.Event()
        self._watch: Any = None
        self._list_rv = ""
        self._thread: threading.Thread | None = None

    # --- lag and views ---------------------------------------------------------------------

    @property
    def lag(self) -> float:
        return self._lag

    @lag.setter
    def lag(self, seconds: float) -> None:
        with self._cond:
            self._lag = float(seconds)
            self._cond.notify_all()

    def _fold_due(self, now: float) -> float | None:
        """Apply held-back events that are due; return seconds until the next one, if any."""
        while self._pending:
            ev = self._pending[0]
            due = ev.arrived + self._lag
            if due > now:
                return due - now
            self._pending.popleft()
            if ev.rv and ev.rv <= self._floor_rv:
                continue
            if ev.kind == "DELETED":
                self._state.pop(ev.name, None)
            else:
                self._state[ev.name] = (ev.rv, ev.ip_ranges)
        return None

    def view(self) -> dict[str, tuple[Mapping[str, Any], ...]]:
        """What a lister would return now: pool name -> ipRanges."""
        with self._cond:
            self._fold_due(time.monotonic())
            return {name: ranges for name, (_, ranges) in self._state.items()}

    def wait_until(
        self, predicate: Callable[[PoolView], bool], timeout: float = 10.0
    ) -> dict[str, tuple[Mapping[str, Any], ...]]:
        """Block until predicate(view) holds (e.g. a pool became visible); TimeoutError if not."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                now = time.monotonic()
                next_due = self._fold_due(now)
                view = {name: ranges for name, (_, ranges) in self._state.items()}
                if predicate(view):
                    return view
                if now >= deadline:
                    raise TimeoutError(
                        f"pool cache ({self.label_selector}, lag {self._lag}s) did not reach the "
                        f"expected state within {timeout}s; it holds {sorted(view)}"
                    )
                wait = deadline - now if next_due is None else min(next_due, deadline - now)
                self._cond.wait(wait)

    # --- list and watch --------------------------------------------------------------------

    def resync(self) -> None:
        """Replace the state with a quorum list (what an informer's relist does)."""
        listed = self._api.list_cluster_custom_object(
            GROUP, VERSION, PLURAL, label_selector=self.label_selector
        )
        with self._cond:
            self._state = {
                item["metadata"]["name"]: (_rv(item), _ranges(item)) for item in listed["items"]
            }
            self._floor_rv = max(self._floor_rv, _rv(listed))
            self._cond.notify_all()
            self._list_rv = listed["metadata"]["resourceVersion"]

    def start(self) -> None:
        """List once (the informer's initial sync), then follow the watch on a thread."""
        self.resync()
        self._thread = threading.Thread(
            target=self._run, name=f"pool-cache[{self.label_selector}]", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        from kubernetes import watch
        from kubernetes.client import ApiException
        from urllib3.exceptions import HTTPError

        resource_version = self._list_rv
        while not self._stopping.is_set():
            self._watch = watch.Watch()
            try:
                for event in self._watch.stream(
                    self._api.list_cluster_custom_object,
                    GROUP,
                    VERSION,
                    PLURAL,
                    label_selector=self.label_selector,
                    resource_version=resource_version,
                ):
                    obj = event["object"]
                    if event["type"] not in ("ADDED", "MODIFIED", "DELETED"):
                        continue
                    with self._cond:
                        self._pending.append(
                            _Event(
                                time.monotonic(),
                                event["type"],
                                obj["metadata"]["name"],
                                _rv(obj),
                                _ranges(obj),
                            )
                        )
                        self._cond.notify_all()
                    if self._stopping.is_set():
                        break
                resource_version = self._watch.resource_version or resource_version
            except (ApiException, HTTPError, OSError, ValueError) as exc:
                if self._stopping.is_set():
                    break
                log.info("pool cache watch ended (%s); relisting", exc)
                self._stopping.wait(0.2)  # do not spin if the API server is going away
                try:
                    self.resync()
                    resource_version = self._list_rv
                except (ApiException, HTTPError, OSError) as relist_exc:
                    log.info("pool cache relist failed: %s", relist_exc)

    def stop(self) -> None:
        self._stopping.set()
        if self._watch is not None:
            self._watch.stop()
        if self._thread is not None:
            self._thread.join(timeout=10)
