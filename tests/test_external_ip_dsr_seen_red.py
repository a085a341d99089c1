"""Seen red: the DSR return-path scenario fails, naming the cause, without its return routes.

One real cilium-dsr kind cluster (offline images, testnet addresses) is made through the
library for the module and deleted with its docker network at the end. The test copies
the real scenario file from e2e/ into a pytester directory and runs it on that cluster
twice: with the fault (the harness's `dsr_return_routes` fixture installs nothing, as a
harness without Antrea's #6994 fix would) it must fail and say that the other nodes have
no return route; without it, it must pass. Nothing else is replaced: Cilium really
forwards the client's SYN in DSR mode and the backend's node really answers.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from typing import Any

import pytest

from fixtures.addressing import apply_plan
from fixtures.lifecycle import SessionCluster
from fixtures.netns import has_netns_privileges
from fixtures.profiles import load_profile
from fixtures.render import HostSetup, render_install_plan
from tests.kind_support import REPO, provisioned_cluster, require_kind

pytest_plugins = ["pytester"]
pytestmark = [pytest.mark.kind, pytest.mark.needs_root, pytest.mark.xdist_group("real-kind")]

PROFILE = "cilium-dsr"
FAULT_ENV = "CNI_E2E_FAULT"
INNER_TIMEOUT = 600  # seconds for one inner session against the running cluster

FAULT_CONFTEST = r'''
"""Fault injection: CNI_E2E_FAULT=no-return-routes makes the return routes a no-op."""

import os

import pytest

pytest_plugins = ["fixtures.plugins"]
FAULT = os.environ.get("CNI_E2E_FAULT", "")


@pytest.fixture
def dsr_return_routes(dsr_return_routes):
    """no-return-routes: asked for the routes, install none (a harness without #6994)."""
    if FAULT != "no-return-routes":
        return dsr_return_routes

    def install(nodes, *, owner, client, lb_mode):
        return {}

    return install
'''


def _missing_images(provider: Any, profile: Any) -> str | None:
    for image in render_install_plan(profile, None, HostSetup(offline=True)).images:
        if not provider.image_present(image):
            return f"image {image} is missing: run scripts/build-node-image --addon cilium"
    return None


@pytest.fixture(scope="module")
def cilium_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SessionCluster]:
    """One cilium-dsr cluster for the module, deleted with its network (also on failure)."""
    provider = require_kind()
    if not has_netns_privileges():
        pytest.skip("needs root: the scenario makes a client netns and routes in the nodes")
    why = _missing_images(provider, apply_plan(load_profile(PROFILE), "testnet"))
    if why is not None:
        pytest.skip(f"profile {PROFILE} cannot run here: {why}")
    with provisioned_cluster(PROFILE, "cil", tmp_path_factory.mktemp("cil")) as session:
        yield session


def run_scenario(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    cluster: SessionCluster,
    file: str,
    fault: str | None,
) -> tuple[pytest.RunResult, str]:
    """Run one real e2e/ file on the module's cluster; (result, its `E ...` lines)."""
    pytester.makeconftest(FAULT_CONFTEST)
    pytester.makeini("[pytest]\n")
    (pytester.path / "e2e").mkdir(exist_ok=True)
    for f in ("conftest.py", file):
        shutil.copy(REPO / "e2e" / f, pytester.path / "e2e" / f)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    if fault is None:
        monkeypatch.delenv(FAULT_ENV, raising=False)
    else:
        monkeypatch.setenv(FAULT_ENV, fault)
    t0 = time.monotonic()
    result = pytester.runpytest_subprocess(
        "--provider", "kind",
        "--profile", PROFILE,
        "--address-plan", "testnet",
        "--kind-image", "offline",
        "--cluster-name", cluster.name,
        "-p", "no:cacheprovider",
        f"e2e/{file}",
        timeout=INNER_TIMEOUT,
    )  # fmt: skip
    out = result.stdout.str()
    errors = "\n".join(ln[1:].strip() for ln in out.splitlines() if ln.startswith("E "))
    print(f"--- {file} with fault {fault!r} ({time.monotonic() - t0:.0f}s):\n{errors}")
    return result, errors


@pytest.mark.seen_red("external_ip:dsr")
def test_dsr_return_path_fails_naming_the_nodes_without_a_return_route(
    pytester, monkeypatch, cilium_cluster
):
    """Without return routes the remote backend's replies are lost; the failure says where."""
    file = "test_external_ip_dsr_return_path.py"
    red, errors = run_scenario(pytester, monkeypatch, cilium_cluster, file, "no-return-routes")
    red.assert_outcomes(failed=1)
    assert re.search(
        r"backend \S+ on \S+-worker2 did not answer client \S+ behind owner \S+-worker in "
        r"5 of 5 single-attempt probes .*no return route for \S+ on \[",
        errors,
    ), errors
    green, errors = run_scenario(pytester, monkeypatch, cilium_cluster, file, None)
    green.assert_outcomes(passed=1)
