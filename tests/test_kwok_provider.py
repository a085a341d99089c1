"""The kwok provider: a real control plane on 127.0.0.1 with kind-named simulated nodes."""

from __future__ import annotations

import ipaddress
import os
import secrets
from pathlib import Path

import pytest
from tenacity import Retrying, retry_if_result, stop_after_delay, wait_exponential

from fixtures.providers import ClusterPlan, ProviderError
from fixtures.providers.kwok import CONTROL_PLANE_ROLE, KwokProvider, fake_node
from fixtures.toolchain import CONTROL_PLANE_TOOLS


def test_missing_names_every_absent_binary_and_the_install_script(tmp_path):
    reason = KwokProvider(workdir=tmp_path, bin_dir=tmp_path / "empty").missing()
    assert reason is not None
    for tool in CONTROL_PLANE_TOOLS:
        assert tool in reason
    assert "run scripts/install-control-plane" in reason


def test_load_image_explains_that_kwok_has_no_container_runtime(tmp_path):
    plan = ClusterPlan("x", Path("/dev/null"), tmp_path / "kc", ("x-control-plane",))
    with pytest.raises(ProviderError, match="kwok has no container runtime; --load-image needs"):
        KwokProvider(workdir=tmp_path).load_image(plan, "antrea/antrea-agent-ubuntu:latest")


def test_fake_nodes_look_like_kind_nodes_and_are_managed_by_kwok():
    cp, worker = fake_node("c-control-plane", 0), fake_node("c-worker", 1)
    assert cp["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
    assert cp["metadata"]["labels"]["type"] == "kwok"
    assert CONTROL_PLANE_ROLE in cp["metadata"]["labels"]
    assert {"key": CONTROL_PLANE_ROLE, "effect": "NoSchedule"} in cp["spec"]["taints"]
    assert CONTROL_PLANE_ROLE not in worker["metadata"]["labels"]
    assert worker["spec"]["taints"] == []
    assert cp["status"]["addresses"][0] != worker["status"]["addresses"][0]


def _listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of the TCP sockets process `pid` listens on, from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A = LISTEN
                continue
            hex_addr, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_addr)
            # /proc prints each 32-bit word in host (little-endian) order
            words = [raw[i : i + 4][::-1] for i in range(0, len(raw), 4)]
            ip = ipaddress.ip_address(b"".join(words))
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
                ip = ip.ipv4_mapped
            found.add((str(ip), int(hex_port, 16)))
    return found


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"  # exited, not yet reaped by its parent


@pytest.fixture
def provider(tmp_path):
    provider = KwokProvider(workdir=tmp_path / "kwok")
    reason = provider.missing()
    if reason:
        pytest.skip(reason)  # only when the binaries are absent; CI installs them
    return provider


@pytest.mark.needs_control_plane
def test_kwok_cluster_comes_up_with_ready_kind_named_nodes_on_loopback_and_goes_away(
    provider, tmp_path
):
    from kubernetes import client as k8s
    from kubernetes import config as kconfig

    name = f"cni-e2e-t{secrets.token_hex(3)}"
    nodes = (f"{name}-control-plane", f"{name}-worker", f"{name}-worker2")
    plan = ClusterPlan(name, Path("/dev/null"), tmp_path / "kubeconfig", nodes)
    provider.create(plan)
    try:
        assert provider.exists(name)
        api = kconfig.new_client_from_config(str(plan.kubeconfig))
        try:
            listed = k8s.CoreV1Api(api).list_node().items
            ready = {
                n.metadata.name
                for n in listed
                if any(c.type == "Ready" and c.status == "True" for c in n.status.conditions)
            }
            assert ready == set(nodes)
            roles = {n.metadata.name: n.metadata.labels for n in listed}
            assert CONTROL_PLANE_ROLE in roles[f"{name}-control-plane"]
            assert CONTROL_PLANE_ROLE not in roles[f"{name}-worker"]
        finally:
            api.close()

        pids = provider.component_pids(name)
        assert set(pids) == {
            "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler",
            "kwok-controller",
        }
        for component, pid in pids.items():
            addresses = {addr for addr, _ in _listening(pid)}
            assert addresses and addresses <= {"127.0.0.1"}, f"{component} listens on {addresses}"

        provider.export_kubeconfig(plan)
        assert plan.kubeconfig.stat().st_mode & 0o077 == 0, "the kubeconfig holds a client key"
    except BaseException:
        provider.delete(plan)
        raise

    provider.delete(plan)
    assert not provider.exists(name)
    assert not provider.cluster_dir(name).exists()
    all_gone = Retrying(
        stop=stop_after_delay(30),
        wait=wait_exponential(multiplier=0.05, max=1),
        retry=retry_if_result(lambda gone: not gone),
    )
    assert all_gone(lambda: all(_gone(pid) for pid in pids.values()))
