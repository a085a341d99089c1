"""Support for the harness tests that run real kind clusters on this machine.

They need a Docker engine (scripts/install-docker), kind and kubectl
(scripts/install-control-plane) and the offline node image
(scripts/build-node-image). Where any is missing they skip with the reason, except
when CNI_E2E_REQUIRE_KIND=1 (set by .ci/run): then a missing piece fails the test,
so CI can never go green on skips.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from fixtures.lifecycle import SessionCluster
from fixtures.offline_images import flannel_image, offline_node_image
from fixtures.providers.kind import KindProvider
from fixtures.real_kind import real_kind_slot, testnet_cluster

REPO = Path(__file__).resolve().parent.parent
REQUIRE_ENV = "CNI_E2E_REQUIRE_KIND"
PROFILE = "kind-flannel"
# what every real-kind pytester run passes: offline image, test addresses only
BASE_ARGS = (
    "--provider",
    "kind",
    "--profile",
    PROFILE,
    "--address-plan",
    "testnet",
    "--kind-image",
    "offline",
    "-p",
    "no:cacheprovider",
)


def require_kind() -> KindProvider:
    """A usable kind provider with the offline images present, or skip/fail with why."""
    provider = KindProvider()
    why = provider.missing()
    if why is None:
        for image in (offline_node_image(), flannel_image()):
            if not provider.image_present(image):
                why = f"image {image} is missing: run scripts/build-node-image"
                break
    if why is not None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but real kind cannot run: {why}")
        pytest.skip(f"real kind clusters cannot run here: {why}")
    return provider


@contextmanager
def kind_slot() -> Iterator[None]:
    """Hold the machine's real-kind slot for the block (fixtures/real_kind.py)."""
    with real_kind_slot():
        yield


def unique_cluster_name(what: str) -> str:
    return f"cni-e2e-st-{what}-{secrets.token_hex(2)}"


def docker(*args: str, check: bool = True) -> str:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


@contextmanager
def node_events(cluster: str) -> Iterator[list[tuple[str, str]]]:
    """(action, container) for node containers of `cluster` created/destroyed meanwhile.

    Streams `docker events` for the whole block: the daemon keeps only its last 1000
    events, and a cluster create with its many `docker exec` calls produces more.
    """
    events: list[tuple[str, str]] = []
    proc = subprocess.Popen(
        [
            "docker",
            "events",
            "--filter",
            "type=container",
            "--filter",
            "event=create",
            "--filter",
            "event=destroy",
            "--filter",
            f"label=io.x-k8s.kind.cluster={cluster}",
            "--format",
            "{{.Action}} {{.Actor.Attributes.name}}",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)  # let the stream attach before the block starts (no condition to wait on)
    try:
        yield events
    finally:
        time.sleep(1.0)  # the daemon delivers events asynchronously
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
        for line in out.splitlines():
            action, _, name = line.partition(" ")
            events.append((action, name))


@dataclass(frozen=True)
class HostState:
    """What a run could leave behind on the host, by name."""

    containers: frozenset[str]
    networks: frozenset[str]
    clusters: frozenset[str]
    netns: frozenset[str]

    @classmethod
    def now(cls) -> HostState:
        kind = shutil.which("kind")
        clusters = (
            subprocess.run(
                [kind, "get", "clusters"], capture_output=True, text=True, check=False
            ).stdout.split()
            if kind
            else []
        )
        netns = subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, check=False
        ).stdout
        return cls(
            containers=frozenset(docker("ps", "-a", "--format", "{{.Names}}").split()),
            networks=frozenset(docker("network", "ls", "--format", "{{.Name}}").split()),
            clusters=frozenset(clusters),
            netns=frozenset(line.split()[0] for line in netns.splitlines() if line.strip()),
        )

    def mine(self, prefix: str) -> HostState:
        def f(names: frozenset[str]) -> frozenset[str]:
            return frozenset(n for n in names if n.startswith(prefix))

        return HostState(f(self.containers), f(self.networks), f(self.clusters), f(self.netns))

    def empty(self) -> bool:
        return not (self.containers or self.networks or self.clusters or self.netns)


def bridge_of(network: str) -> str:
    return "br-" + docker("network", "inspect", "-f", "{{.Id}}", network).strip()[:12]


@dataclass
class PacketCounts:
    outside: int = 0  # from the cluster's bridge to any address outside 198.18.0.0/15
    inside: int = 0  # positive control: to addresses inside it (node to node, pods)


@contextmanager
def count_packets(bridge: str) -> Iterator[PacketCounts]:
    """Count (never drop) IPv4 packets from `bridge`, by destination; rules removed after.

    Rules without a target only count. FORWARD sees bridged and routed traffic
    (Docker turns on br_netfilter), INPUT what is addressed to this host itself.
    """
    tag = f"cni-e2e-leakcheck-{secrets.token_hex(3)}"
    rules = [
        ("FORWARD", ["!", "-d", "198.18.0.0/15"], "outside"),
        ("INPUT", ["!", "-d", "198.18.0.0/15"], "outside"),
        ("FORWARD", ["-d", "198.18.0.0/15"], "inside"),
    ]
    added: list[list[str]] = []
    counts = PacketCounts()
    try:
        for chain, match, kind in rules:
            spec = [chain, "-i", bridge, *match, "-m", "comment", "--comment", f"{tag}-{kind}"]
            subprocess.run(["iptables", "-I", *spec], check=True, capture_output=True)
            added.append(spec)
        yield counts
    finally:
        listing = subprocess.run(
            ["iptables-save", "-c"], capture_output=True, text=True, check=False
        ).stdout
        for line in listing.splitlines():
            m = re.match(r"\[(\d+):\d+\] .*--comment \"?(" + tag + r"-(\w+))\"?", line)
            if m:
                setattr(counts, m.group(3), getattr(counts, m.group(3)) + int(m.group(1)))
        for spec in added:
            subprocess.run(["iptables", "-D", *spec], check=False, capture_output=True)


def wait_until(predicate, timeout: float, what: str, interval: float = 1.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@contextmanager
def provisioned_cluster(profile_name: str, what: str, workdir: Path) -> Iterator[SessionCluster]:
    """A testnet cluster of `profile_name` made through the library (as scripts/e2e would),
    holding the machine's kind slot while it lives; deleted after, also when provisioning
    fails part-way, and checked to leave nothing behind."""
    require_kind()
    name = unique_cluster_name(what)
    with testnet_cluster(profile_name, base=name, workdir=workdir) as session:
        yield session
    left = HostState.now().mine(name)
    assert left.empty(), f"cluster {name} left things behind: {left}"
