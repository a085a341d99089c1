"""Namespace handles: finding, entering, creating and removing network namespaces."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fixtures import netns as nsx
from fixtures.netns import Netns, NetnsError
from tests.lab.marks import needs_root


def _thread_inode() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def _links(ns: Netns) -> set[str]:
    with ns.iproute() as ipr:
        return {link.get("IFLA_IFNAME") for link in ipr.get_links()}


# -- without privileges ------------------------------------------------------------------


def test_missing_named_namespace_error_names_it():
    with pytest.raises(NetnsError, match="'cnie2e-no-such-ns'.*does not exist"):
        Netns.named("cnie2e-no-such-ns")


def test_pid_without_process_is_reported():
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(gone.stdout)
    with pytest.raises(NetnsError, match=f"no process with PID {pid}"):
        Netns.of_pid(pid)


def test_unique_names_differ_and_carry_run_worker_and_pid():
    from fixtures.run_identity import current_run_id

    a, b = nsx.unique_netns_name("x"), nsx.unique_netns_name("x")
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    assert a != b
    assert a.startswith(f"cnie2e-{current_run_id()}-{worker}-{os.getpid()}-") and a.endswith("-x")


def test_sysctl_outside_net_is_refused():
    with pytest.raises(NetnsError, match="kernel.hostname"):
        nsx.set_sysctl(Netns.current(), "kernel.hostname", "x")


def _fake_docker(tmp_path: Path, script: str) -> str:
    exe = tmp_path / "docker"
    exe.write_text(f"#!/bin/sh\n{script}\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return str(exe)


def test_kind_node_netns_comes_from_docker_inspect_pid(tmp_path):
    """Replaces docker with a script at the process boundary; it prints this test's PID."""
    expected = "inspect -f {{.State.Pid}} kind-worker"
    docker = _fake_docker(tmp_path, f'[ "$*" = "{expected}" ] && echo {os.getpid()}')
    ns = nsx.kind_node_netns("kind-worker", docker=docker)
    assert ns.path == f"/proc/{os.getpid()}/ns/net"
    assert ns.label == "node:kind-worker"


def test_kind_node_netns_failure_names_the_node(tmp_path):
    """Replaces docker with a script that fails the way docker does for an unknown container."""
    docker = _fake_docker(tmp_path, 'echo "Error: No such object: $4" >&2; exit 1')
    with pytest.raises(NetnsError, match="kind-worker9.*No such object.*kind get nodes"):
        nsx.kind_node_netns("kind-worker9", docker=docker)


def test_kind_node_netns_without_docker_says_so():
    with pytest.raises(NetnsError, match="'cnie2e-no-docker' not found on PATH"):
        nsx.kind_node_netns("kind-worker", docker="cnie2e-no-docker")


# -- with privileges ---------------------------------------------------------------------


@pytest.fixture
def ns():
    with nsx.temporary_netns("t") as created:
        yield created


class TestWithNamespaces:
    pytestmark = needs_root

    def test_run_executes_inside_and_leaves_the_main_thread_alone(self, ns):
        before = _thread_inode()
        inside = ns.run(_thread_inode)
        assert inside == ns.inode() != before
        assert _thread_inode() == before

    def test_run_hands_back_the_exception(self, ns):
        def boom() -> None:
            raise ValueError("from inside")

        with pytest.raises(ValueError, match="from inside"):
            ns.run(boom)

    def test_entered_moves_the_calling_thread_and_back_even_on_error(self, ns):
        before = _thread_inode()
        with pytest.raises(RuntimeError), nsx.entered(ns):
            assert _thread_inode() == ns.inode()
            raise RuntimeError("leave")
        assert _thread_inode() == before

    def test_temporary_namespace_is_removed_after_an_error(self):
        with pytest.raises(RuntimeError), nsx.temporary_netns("t") as made:
            name = made.name
            raise RuntimeError("fail inside")
        assert name is not None and not (nsx.NETNS_RUN_DIR / name).exists()

    def test_existing_name_is_refused(self, ns):
        with pytest.raises(NetnsError, match="exists already"):
            nsx.create_netns(ns.name)

    def test_delete_removes_veths_even_while_something_pins_the_namespace(self, ns):
        other = nsx.create_netns(nsx.unique_netns_name("peer"))
        try:
            nsx.add_veth(other, "a0", ns, "b0")
            pin = os.open(other.path, os.O_RDONLY)  # keeps the namespace itself alive
            try:
                nsx.delete_netns(other)
                assert not Path(other.path).exists()
                assert _links(ns) == {"lo"}  # the peer went with the deleted link
            finally:
                os.close(pin)
        finally:
            nsx.delete_netns(other)

    def test_pid_handle_is_the_process_namespace(self, ns):
        code = (
            "import sys; from pyroute2 import netns; "
            f"netns.setns({ns.path!r}, flags=0); print('in', flush=True); sys.stdin.read()"
        )
        child = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        try:
            assert child.stdout.readline().strip() == "in"
            by_pid = Netns.of_pid(child.pid)
            assert by_pid.inode() == ns.inode()
            assert by_pid.run(_thread_inode) == ns.inode()
        finally:
            child.stdin.close()
            child.wait(timeout=10)

    def test_bridge_connects_veths_of_two_namespaces(self, ns):
        from fixtures.probes import Outcome, Prober

        with nsx.temporary_netns("a") as a, nsx.temporary_netns("b") as b:
            nsx.add_bridge(ns, "br0")
            for i, host in enumerate((a, b), start=1):
                nsx.add_veth(ns, f"p{i}", host, "eth0")
                nsx.attach_to_bridge(ns, f"p{i}", "br0")
                nsx.add_address(host, "eth0", f"198.18.0.{i}/24")
            result = Prober(timeout=1.0).icmp("198.18.0.2", source=a)
            b_mac = nsx.link_mac(b, "eth0")
        assert result.outcome is Outcome.REACHABLE
        assert result.macs == (b_mac,)

    def test_external_client_routes_via_host_and_is_removed(self, ns):
        with nsx.external_client(ns) as client:
            assert client.address == "169.254.170.1" and client.host_address == "169.254.170.2"
            with client.netns.iproute() as ipr:
                default = [r for r in ipr.get_routes(family=2, table=254) if r["dst_len"] == 0]
            assert [r.get("RTA_GATEWAY") for r in default] == ["169.254.170.2"]
            assert client.host_ifname in _links(ns)
            name = client.netns.name
        assert not (nsx.NETNS_RUN_DIR / name).exists()
        assert _links(ns) == {"lo"}

    def test_scapy_caches_follow_the_namespace_and_come_back(self, ns):
        from scapy.all import conf

        nsx.add_address(ns, "lo", "198.18.7.1/24")
        with nsx.scapy_caches_for(ns) as inside:
            assert inside.route.route("198.18.7.9")[:2] == ("lo", "198.18.7.1")
            assert {i.name for i in inside.ifaces.values()} == {"lo"}
        assert conf.route.route("198.18.7.9")[1] != "198.18.7.1"

    def test_run_from_many_threads_keeps_each_in_its_namespace(self, ns):
        seen: list[bool] = []

        def check() -> None:
            seen.append(ns.run(_thread_inode) == ns.inode() and _thread_inode() != ns.inode())

        workers = [threading.Thread(target=check) for _ in range(8)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=10)
        assert seen == [True] * 8
