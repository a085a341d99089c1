"""Nothing left behind and no run hurts another, on real kind clusters (pytester sessions).

Each inner session is a real `pytest` subprocess of a small e2e suite on a 1-node flannel
cluster (offline image, testnet plan) whose run id the test chooses (CNI_E2E_RUN_ID), so
everything it can create is found by that id: kind clusters, docker containers and
networks, network namespaces, the run's record. Signals are sent to the inner pytest
process at the moment named, found from the outside (node containers appear, the test
writes its gate file, the teardown's own progress line).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.run_identity import DOCKER_RUN_LABEL, new_run_id, runs_dir
from tests.kind_support import REPO, docker, kind_slot, require_kind, wait_until

pytestmark = [pytest.mark.kind, pytest.mark.needs_root, pytest.mark.xdist_group("real-kind")]

PROFILE_NAME = "kind-flannel-1node"
ONE_NODE = (
    (REPO / "clusters" / "kind-flannel.yaml")
    .read_text()
    .replace("nodes: {controlPlanes: 1, workers: 2}", "nodes: {controlPlanes: 1, workers: 0}")
)

INNER = r"""
import json, os, subprocess, time
from pathlib import Path
import pytest
from fixtures.netns import kind_node_netns, temporary_netns
from fixtures.routes import RouteSet
from fixtures.run_identity import current_run_id
from fixtures.workloads import kubectl

def test_holds_a_namespace_a_lease_and_a_netns_until_released(cluster, namespace, ip_range):
    gate = Path(os.environ["CNI_E2E_GATE"])
    node = kind_node_netns(cluster.name + "-control-plane")
    with temporary_netns("mid"), RouteSet(node) as routes:
        routes.replace("203.0.113.0/24", dev="eth0")  # a harness route on the node
        (gate / "in-test").write_text(cluster.name)
        deadline = time.monotonic() + 900  # the outer test signals or releases long before
        while not (gate / "go").exists():
            if time.monotonic() > deadline:
                pytest.fail("never released")
            time.sleep(0.2)
    # nothing of this live run was touched meanwhile (other runs came and went)
    ns = kubectl(cluster.kubeconfig, "get", "ns", namespace, "-o", "jsonpath={.metadata.name}")
    assert ns.returncode == 0 and ns.stdout == namespace, ns.stderr
    leases = kubectl(cluster.kubeconfig, "-n", "cni-e2e-ranges", "get", "leases", "-o", "json")
    holders = [i["spec"].get("holderIdentity", "") for i in json.loads(leases.stdout)["items"]]
    assert any(h.endswith("/" + current_run_id()) for h in holders), holders
"""


class InnerRun:
    """One inner pytest session in its own process, output streamed to a file."""

    def __init__(self, root: Path, profile: Path, *extra: str, released: bool = False) -> None:
        self.id = new_run_id()
        self.gate = root / f"gate-{self.id}"
        self.gate.mkdir()
        if released:
            (self.gate / "go").touch()
        self.cluster = f"cni-e2e-{PROFILE_NAME}-{self.id}"
        self.log = root / f"run-{self.id}.log"
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
            "CNI_E2E_RUN_ID": self.id,
            "CNI_E2E_GATE": str(self.gate),
        }
        argv = [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "--provider",
            "kind",
            "--profile",
            str(profile),
            "--address-plan",
            "testnet",
            "--kind-image",
            "offline",
            "--gate-timeout",
            "900",
            *extra,
            "e2e",
        ]
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                argv, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT
            )

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, what: str, predicate, timeout: float = 900) -> None:  # noqa: ANN001
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"run {self.id} ended (exit {self.proc.returncode}) before {what}:\n"
                    + self.output[-4000:]
                )
            return bool(predicate())

        wait_until(ready, timeout, f"run {self.id}: {what}", interval=0.3)

    def wait_in_test(self) -> None:
        self.wait_for("its test holds its resources", (self.gate / "in-test").exists)

    def release(self) -> None:
        (self.gate / "go").touch()

    def finish(self, timeout: float = 900) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"run {self.id} did not end:\n{self.output[-4000:]}") from None

    def traces(self) -> dict[str, list[str]]:
        return traces_of(self.id)


def traces_of(run_id: str) -> dict[str, list[str]]:
    """Everything on the host that carries `run_id`: by name, by label, by record."""
    kind = subprocess.run(["kind", "get", "clusters"], capture_output=True, text=True).stdout
    names = docker("ps", "-a", "--format", "{{.Names}}").split()
    labelled = docker(
        "ps", "-a", "--filter", f"label={DOCKER_RUN_LABEL}={run_id}", "--format", "{{.Names}}"
    ).split()
    nets = docker("network", "ls", "--format", "{{.Name}}").split()
    net_labelled = docker(
        "network", "ls", "--filter", f"label={DOCKER_RUN_LABEL}={run_id}", "--format", "{{.Name}}"
    ).split()
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    root_routes = [
        line
        for family in ("-4", "-6")
        for line in subprocess.run(
            ["ip", family, "route", "show", "proto", "226"], capture_output=True, text=True
        ).stdout.splitlines()
    ]
    found = {
        "root routes (proto 226)": root_routes,
        "clusters": [c for c in kind.split() if run_id in c],
        "containers": sorted({n for n in names if run_id in n} | set(labelled)),
        "networks": sorted({n for n in nets if run_id in n} | set(net_labelled)),
        "netns": [ln.split()[0] for ln in netns.splitlines() if run_id in ln],
        "records": sorted(p.name for p in runs_dir().glob(f"{run_id}.*")),
    }
    return {k: v for k, v in found.items() if v}


@pytest.fixture
def suite(tmp_path: Path):
    """An e2e suite and a 1-node profile in tmp_path; the machine's kind slot held meanwhile."""
    require_kind()
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["fixtures.plugins"]\n')
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "e2e").mkdir()
    (tmp_path / "e2e" / "test_inner.py").write_text(INNER)
    profile = tmp_path / f"{PROFILE_NAME}.yaml"
    profile.write_text(ONE_NODE)
    runs: list[InnerRun] = []

    def start(*extra: str, released: bool = False) -> InnerRun:
        runs.append(InnerRun(tmp_path, profile, *extra, released=released))
        return runs[-1]

    with kind_slot():
        yield start
        for run in runs:  # a failed assertion must not leave an inner run (or its cluster)
            if run.proc.poll() is None:
                run.proc.send_signal(signal.SIGINT)
                run.finish()


def _node_containers(cluster: str) -> bool:
    return bool(docker("ps", "-aq", "--filter", f"label=io.x-k8s.kind.cluster={cluster}").split())


def _teardown_started(run: InnerRun) -> bool:
    return f"[{run.cluster}] delete (kind) ..." in run.output


MOMENTS = {
    "provisioning": lambda run: run.wait_for(
        "kind creates its node", lambda: _node_containers(run.cluster)
    ),
    "mid-test": lambda run: run.wait_in_test(),
    "teardown": lambda run: run.wait_for(
        "teardown deletes its cluster", lambda: _teardown_started(run)
    ),
}


@pytest.mark.parametrize("moment", list(MOMENTS))
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_at_any_moment_still_tears_down_and_leaves_nothing(suite, signum, moment):
    run = suite(released=moment == "teardown")
    MOMENTS[moment](run)
    assert run.traces().get("clusters") == [run.cluster], run.traces()
    run.proc.send_signal(signum)
    rc = run.finish()
    out = run.output
    assert rc == pytest.ExitCode.INTERRUPTED, out[-4000:]
    if moment == "provisioning":
        assert f"[{run.cluster}] deleting: provisioning did not finish" in out, out[-4000:]
    else:
        assert f"[{run.cluster}] delete (kind) done" in out, out[-4000:]
    if moment == "teardown":
        assert f"{signal.Signals(signum).name} during teardown: finishing teardown first" in out
    assert "leak check" not in out, out[-4000:]
    assert run.traces() == {}, f"run {run.id} left {run.traces()}\n{out[-3000:]}"
    assert not (run.log.parent / ".pytest-kind" / run.cluster).exists()


def test_two_runs_of_one_profile_share_nothing_and_a_killed_runs_orphans_are_cleaned(suite):
    """A and K run the same profile at once on clusters of their own; K is SIGKILLed
    mid-test; B (same profile) starts, removes K's orphans at start-up and leaves live A
    alone; A and B then run at once, both pass, and neither deletes the other's cluster."""
    a = suite()
    a.wait_in_test()
    k = suite()
    k.wait_in_test()
    assert a.cluster != k.cluster and {a.cluster, k.cluster} <= set(
        subprocess.run(["kind", "get", "clusters"], capture_output=True, text=True).stdout.split()
    )
    k.proc.send_signal(signal.SIGKILL)
    k.finish()
    left = k.traces()
    assert set(left) >= {"clusters", "containers", "networks", "netns", "records"}, left
    a_before = a.traces()

    b = suite()
    b.wait_in_test()
    out_b = b.output
    for kind, names in left.items():
        if kind == "records":
            continue
        for name in names:
            noun = {"clusters": "cluster", "networks": "network", "netns": "netns"}.get(kind)
            if noun:
                assert f"orphan cleanup: removed {noun} {name} (run {k.id})" in out_b, out_b[-3000:]
    assert k.traces() == {}, f"orphans of killed run {k.id} left: {k.traces()}"
    assert a.traces() == a_before, "the live run's resources changed while B cleaned orphans"
    assert b.cluster in b.traces().get("clusters", [])

    a.release()
    assert a.finish() == 0, a.output[-4000:]
    assert f"cluster: {a.cluster}  deleted at the end of the session" in a.output
    assert b.proc.poll() is None and b.traces().get("clusters") == [b.cluster], (
        "A's teardown touched B's cluster"
    )
    b.release()
    assert b.finish() == 0, b.output[-4000:]
    assert "1 passed" in a.output and "1 passed" in b.output
    for run in (a, b, k):
        assert run.traces() == {}, f"run {run.id} left {run.traces()}"
