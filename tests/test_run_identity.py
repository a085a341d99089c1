"""Run identity, liveness, orphan cleanup and the session leak check, without kind.

Liveness is tested across real processes (a child holds a run's lock; SIGKILL ends it).
Orphan cleanup runs on real network namespaces and real (never started) docker
containers and networks; the kind-cluster side is proven in test_kind_interrupts.py.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fixtures import run_identity as ri
from fixtures.run_resources import Host, Resource, cleanup_orphans, leftovers
from fixtures.toolchain import CACHE_ENV, cache_dir

REPO = Path(__file__).resolve().parent.parent
REAL_CACHE = cache_dir()  # before pytester moves HOME: the built control plane lives here
pytest_plugins = ["pytester"]

HOLDER = textwrap.dedent(
    """
    import sys, time
    from fixtures.run_identity import begin_run
    run = begin_run(sys.argv[1])
    print("holding", flush=True)
    time.sleep(600)  # killed by the test long before this ends
    """
)


class LiveRun:
    """A child process that holds a run's lock (a live run), until kill()."""

    def __init__(self, run_id: str) -> None:
        self.id = run_id
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, run_id],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "holding"

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)


@pytest.fixture
def live_run():
    runs: list[LiveRun] = []

    def start(run_id: str | None = None) -> LiveRun:
        runs.append(LiveRun(run_id or ri.new_run_id()))
        return runs[-1]

    yield start
    for run in runs:
        if run.proc.poll() is None:
            run.kill()
        ri.forget_run(run.id)


def test_a_run_is_alive_while_its_process_holds_the_lock_and_dead_after_sigkill(live_run):
    run = live_run()
    assert ri.run_alive(run.id)
    assert (ri.runs_dir() / f"{run.id}.json").exists(), "the record names the live run"
    run.kill()
    assert not ri.run_alive(run.id), "SIGKILL must free the lock: the run is dead"


def test_a_run_id_held_by_a_live_run_cannot_be_taken_again(live_run):
    run = live_run()
    with pytest.raises(ri.RunError, match=f"run id {run.id} is in use by a live run"):
        ri.Run(run.id).start()


def test_a_malformed_run_id_is_refused_naming_it(monkeypatch):
    monkeypatch.setenv(ri.RUN_ID_ENV, "Not-Hex")
    with pytest.raises(ri.RunError, match="CNI_E2E_RUN_ID='Not-Hex'"):
        ri.begin_run()


def test_a_nested_run_restores_the_outer_one_and_forgets_its_record():
    outer = ri.current_run_id()
    inner = ri.begin_run()
    assert ri.current_run_id() == inner.id != outer
    assert inner.record_path.exists()
    ri.end_run(inner)
    assert ri.current_run_id() == outer
    assert not inner.record_path.exists() and not ri.run_alive(inner.id)


def test_a_kept_cluster_outlives_its_run_in_the_record():
    run = ri.begin_run()
    run.note_cluster("cni-e2e-x-" + run.id, "created")
    run.keep("cluster:cni-e2e-x-" + run.id)
    ri.end_run(run)
    try:
        rec = ri.run_records()[run.id]
        assert rec.kept == ["cluster:cni-e2e-x-" + run.id]
        assert not ri.run_alive(run.id)
    finally:
        ri.forget_run(run.id)


def test_harness_names_carry_their_run():
    assert ri.run_of_name("cni-e2e-kind-flannel-1f2e3d4c", "cni-e2e-") == "1f2e3d4c"
    assert ri.run_of_name("cni-e2e-submariner-globalnet-1f2e3d4c-c1", "cni-e2e-") == "1f2e3d4c"
    assert ri.run_of_name("cnie2e-1f2e3d4c-gw0-12-3-client", "cnie2e-") == "1f2e3d4c"
    assert ri.run_of_name("cni-e2e-st-reuse-ab12", "cni-e2e-") is None
    assert ri.run_of_name("lead-mlb", "cni-e2e-") is None


class ListedHost(Host):
    """Stand-in for the host's listings only (kind/docker/ip output); removal is recorded."""

    def __init__(self, clusters: list[str], labelled: list[Resource]) -> None:
        super().__init__()
        self._clusters, self._labelled, self.removed = clusters, labelled, []

    def kind_clusters(self) -> list[str]:
        return [c for c in self._clusters if c not in self.removed]

    def labelled(self, what: str) -> list[Resource]:
        return [r for r in self._labelled if r.kind == what and r.name not in self.removed]

    def netns(self) -> list[str]:
        return []

    def kwok_clusters(self) -> list[str]:
        return []

    def remove(self, res: Resource) -> bool:
        self.removed.append(res.name)
        return True


def test_leftovers_skip_what_is_kept_reused_or_external():
    """Kept clusters and their networks, and clusters the run only used, are no leaks."""
    run = ri.Run(ri.new_run_id())
    made, kept, reused = (f"cni-e2e-{w}-{run.id}" for w in ("made", "kept", "reused"))
    run.record.clusters = {made: "created", kept: "created", reused: "reused"}
    run.record.kept = [f"cluster:{kept}"]
    host = ListedHost(
        [made, kept, reused],
        [
            Resource("network", kept, run.id, kept),
            Resource("network", f"ext-{run.id}", run.id, made),
            Resource("container", f"{made}-xclient-{run.id}-1", run.id),
        ],
    )
    found = {r.key for r in leftovers(run.id, host, {run.id: run.record})}
    assert found == {
        f"cluster:{made}",
        f"network:ext-{run.id}",
        f"container:{made}-xclient-{run.id}-1",
    }


def _docker_ok() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0
    except FileNotFoundError:
        return False


@pytest.mark.needs_root
def test_orphans_of_a_dead_run_are_removed_and_a_live_runs_are_untouched(live_run):
    """Real netns (and, with an engine, real docker containers and networks)."""
    from fixtures.engine import ensure_test_image
    from fixtures.netns import create_netns, delete_netns

    dead, alive = live_run(), live_run()
    dead.kill()
    made: dict[str, list[str]] = {"netns": [], "container": [], "network": []}
    try:
        for run in (dead, alive):
            name = f"cnie2e-{run.id}-t-{os.getpid()}-orphan"
            create_netns(name)
            made["netns"].append(name)
        if _docker_ok():
            image = ensure_test_image()
            for run in (dead, alive):
                label = f"{ri.DOCKER_RUN_LABEL}={run.id}"
                c = f"cnie2e-{run.id}-orphan-c"
                subprocess.run(
                    ["docker", "create", "--label", label, "--name", c, image, "true"],
                    check=True,
                    capture_output=True,
                )
                made["container"].append(c)
                n = f"cnie2e-{run.id}-orphan-n"
                subprocess.run(
                    ["docker", "network", "create", "--label", label, n],
                    check=True,
                    capture_output=True,
                )
                made["network"].append(n)
        removed = {r.key for r in cleanup_orphans()}
        host = Host()
        for kind, names in made.items():
            dead_name, live_name = (names + [None, None])[:2]
            if dead_name is None:
                continue
            listed = host.netns() if kind == "netns" else [r.name for r in host.labelled(kind)]
            assert f"{kind}:{dead_name}" in removed and dead_name not in listed
            assert live_name in listed, f"{kind} {live_name} of a live run was removed"
        assert dead.id not in ri.run_records(), "the dead run's record was not forgotten"
        assert alive.id in ri.run_records()
    finally:
        for name in made["netns"]:
            from fixtures.netns import Netns

            if (Path("/run/netns") / name).exists():
                delete_netns(Netns.named(name))
        for c in made["container"]:
            subprocess.run(["docker", "rm", "-f", c], capture_output=True, check=False)
        for n in made["network"]:
            subprocess.run(["docker", "network", "rm", n], capture_output=True, check=False)


LEAKY = """
import pytest
from fixtures.netns import create_netns, unique_netns_name
from fixtures.routes import RouteSet

def test_leaks_a_netns_and_a_route():
    ns = create_netns(unique_netns_name("leaky"))
    with ns.iproute() as ipr:
        ipr.link("add", ifname="d0", kind="bridge")
        ipr.link("set", index=ipr.link_lookup(ifname="d0")[0], state="up")
        ipr.addr("add", index=ipr.link_lookup(ifname="d0")[0], address="198.51.100.1",
                 prefixlen=24)
    RouteSet(ns).replace("203.0.113.0/24", gateway="198.51.100.2")  # never closed
"""


@pytest.fixture
def leaky(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    pytester.makeconftest('pytest_plugins = ["fixtures.plugins"]\n')
    pytester.makeini("[pytest]\n")
    (pytester.path / "tests").mkdir()
    (pytester.path / "tests" / "test_leaky.py").write_text(LEAKY)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    return pytester


def _leaked_netns(result: pytest.RunResult) -> str:
    found = re.search(r"leaked: netns (cnie2e-\S+-leaky) ", result.stdout.str())
    assert found, result.stdout.str()[-3000:]
    return found.group(1)


@pytest.mark.needs_root
@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_session_that_leaks_fails_with_the_leak_listed(leaky, workers):
    result = leaky.runpytest_subprocess(
        "-n", workers, "-s", "-p", "no:cacheprovider", "tests", timeout=240
    )
    out = result.stdout.str()
    name = _leaked_netns(result)
    assert result.ret == pytest.ExitCode.TESTS_FAILED, out[-3000:]
    assert "1 passed" in out
    assert "cni-e2e leak check" in out
    assert f"leaked: netns {name}" in out, out[-3000:]
    assert "leaked: route " in out and "203.0.113.0/24 via 198.51.100.2" in out, out[-3000:]
    assert not (Path("/run/netns") / name).exists(), "the listed leak was not removed after"


@pytest.mark.needs_root
def test_allow_leaks_turns_the_leak_into_a_warning(leaky):
    result = leaky.runpytest_subprocess(
        "-s", "-p", "no:cacheprovider", "--allow-leaks", "tests", timeout=240
    )
    out = result.stdout.str()
    name = _leaked_netns(result)
    assert result.ret == pytest.ExitCode.OK, out[-3000:]
    assert f"leaked: netns {name}" in out and "--allow-leaks: a warning" in out
    assert not (Path("/run/netns") / name).exists()


KWOK_E2E = """
import os
from pathlib import Path

def test_names_its_cluster(cluster):
    Path(os.environ["CNI_E2E_SEEN"]).write_text(cluster.name)
"""


@pytest.fixture
def kwok_suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """An e2e suite on the offline control plane (kwok: real API server, local processes)."""
    from fixtures.providers.kwok import KwokProvider

    monkeypatch.setenv(CACHE_ENV, str(REAL_CACHE))
    why = KwokProvider().missing()
    if why:
        pytest.skip(why)
    pytester.makeconftest('pytest_plugins = ["fixtures.plugins"]\n')
    pytester.makeini("[pytest]\n")
    (pytester.path / "e2e").mkdir()
    (pytester.path / "e2e" / "test_kwok.py").write_text(KWOK_E2E)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    seen = tmp_path / "seen"
    monkeypatch.setenv("CNI_E2E_SEEN", str(seen))

    def run(run_id: str, *args: str) -> tuple[pytest.RunResult, str]:
        monkeypatch.setenv(ri.RUN_ID_ENV, run_id)
        result = pytester.runpytest_subprocess(
            "-p",
            "no:cacheprovider",
            "--provider",
            "kwok",
            "--profile",
            "kind-flannel",
            *args,
            "e2e",
            timeout=300,
        )
        return result, seen.read_text() if seen.exists() else ""

    return run


def test_a_created_cluster_is_named_for_its_run_and_reuse_takes_the_shared_name(kwok_suite):
    rid = ri.new_run_id()
    result, name = kwok_suite(rid)
    result.assert_outcomes(passed=1)
    assert name == f"cni-e2e-kind-flannel-{rid}"
    result, name = kwok_suite(ri.new_run_id(), "--reuse-cluster")
    result.assert_outcomes(passed=1)
    assert name == "cni-e2e-kind-flannel"


def test_a_kept_cluster_is_no_leak_and_no_orphan_for_the_next_run(kwok_suite):
    from fixtures.providers.kwok import KwokProvider

    rid = ri.new_run_id()
    name = f"cni-e2e-kind-flannel-{rid}"
    provider = KwokProvider()
    try:
        result, seen = kwok_suite(rid, "--keep-cluster")
        assert result.ret == 0 and seen == name, result.stdout.str()[-3000:]
        assert "leak check" not in result.stdout.str()
        assert provider.exists(name)
        # the next run's orphan cleanup leaves a cluster kept on purpose alone
        later, _ = kwok_suite(ri.new_run_id())
        later.assert_outcomes(passed=1)
        assert provider.exists(name), "orphan cleanup removed a --keep-cluster cluster"
        assert ri.run_records()[rid].kept == [f"cluster:{name}"]
    finally:
        from fixtures.providers import ClusterPlan

        kc = provider.cluster_dir(name) / "kubeconfig.yaml"
        if provider.exists(name):
            provider.delete(ClusterPlan(name, kc, kc, ()))
        ri.forget_run(rid)
