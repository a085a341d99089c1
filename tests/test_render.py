"""Rendered kind configs and CNI install plans, checked field by field per profile."""

import ipaddress
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fixtures.profiles import load_profile, profile_names
from fixtures.render import NODEIPAM_OFF, render_install_plan, render_kind_configs

REPO = Path(__file__).resolve().parent.parent


def kind_config(name, base=None):
    (config,) = render_kind_configs(load_profile(name), base)
    return config


def helm_sets(name):
    plan = render_install_plan(load_profile(name))
    (render,) = [s for s in plan.steps if s.name == "render-antrea"]
    return [render.run[i + 1] for i, a in enumerate(render.run) if a == "--set"], render


def test_encap_kind_config():
    c = kind_config("antrea-encap")
    assert c["kind"] == "Cluster"
    assert c["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert c["name"] == "cni-e2e-antrea-encap"
    assert c["networking"]["disableDefaultCNI"] is True
    assert c["networking"]["kubeProxyMode"] == "iptables"
    assert c["networking"]["ipFamily"] == "ipv4"
    assert [n["role"] for n in c["nodes"]] == ["control-plane", "worker", "worker"]
    assert "kubeadmConfigPatchesJSON6902" not in c


def test_encap_helm_values():
    sets, render = helm_sets("antrea-encap")
    assert render.run[:2] == ["helm", "template"]
    assert "--include-crds" in render.run
    assert render.run[render.run.index("--namespace") + 1] == "kube-system"
    assert "trafficEncapMode=encap" in sets
    assert "featureGates.Egress=true" in sets
    assert "featureGates.ServiceExternalIP=true" in sets
    assert "logVerbosity=4" in sets
    assert not any(s.startswith("antreaProxy.") for s in sets)


def test_non_default_kind_config_has_no_kube_proxy_and_no_nodeipam():
    c = kind_config("antrea-encap-non-default")
    assert c["networking"]["kubeProxyMode"] == "none"
    (patch,) = c["kubeadmConfigPatchesJSON6902"]
    assert (patch["group"], patch["version"], patch["kind"]) == (
        "kubeadm.k8s.io",
        "v1beta4",
        "ClusterConfiguration",
    )
    ops = yaml.safe_load(patch["patch"])
    assert ops == [
        {
            "op": "add",
            "path": "/controllerManager/extraArgs/-",
            "value": {"name": "controllers", "value": NODEIPAM_OFF},
        }
    ]
    assert NODEIPAM_OFF == "*,bootstrapsigner,tokencleaner,-nodeipam"


def test_non_default_helm_values_enable_proxyall_dsr_and_nodeipam():
    sets, _ = helm_sets("antrea-encap-non-default")
    assert "antreaProxy.proxyAll=true" in sets
    # kube-proxy is absent, so its health-check server needs no disabling
    assert not any(s.startswith("antreaProxy.disableServiceHealthCheckServer") for s in sets)
    assert "antreaProxy.defaultLoadBalancerMode=dsr" in sets
    assert "featureGates.LoadBalancerModeDSR=true" in sets
    assert "kubeAPIServerOverride={control_plane_endpoint}" in sets
    assert "nodeIPAM.enable=true" in sets
    cidrs = load_profile("antrea-encap-non-default").antrea.nodeIPAMClusterCIDRs
    assert cidrs and f"nodeIPAM.clusterCIDRs={{{','.join(cidrs)}}}" in sets


def test_noencap_values():
    sets, _ = helm_sets("antrea-noencap")
    assert "trafficEncapMode=noEncap" in sets


def test_hybrid_moves_workers_to_a_second_network():
    profile = load_profile("antrea-hybrid")
    sets, _ = helm_sets("antrea-hybrid")
    assert "trafficEncapMode=hybrid" in sets
    steps = render_install_plan(profile).steps
    argv = [s.run for s in steps if s.run[0] == "docker"]
    assert ["docker", "network", "create", "--subnet", "20.20.20.0/24", "antrea-hybrid"] in argv
    for worker in ("cni-e2e-antrea-hybrid-worker", "cni-e2e-antrea-hybrid-worker2"):
        assert ["docker", "network", "connect", "antrea-hybrid", worker] in argv
        assert ["docker", "network", "disconnect", "kind", worker] in argv
    assert not any("control-plane" in a[-1] for a in argv if a[1] == "network")


def test_ipv6_kind_config():
    net = kind_config("antrea-ipv6")["networking"]
    assert net["ipFamily"] == "ipv6"
    assert net["podSubnet"] == "fd00:10:244::/56"
    assert net["serviceSubnet"] == "fd00:10:96::/112"


def test_dual_stack_kind_config():
    net = kind_config("antrea-dual")["networking"]
    spec = load_profile("antrea-dual").networking
    assert net["ipFamily"] == "dual"
    assert net["podSubnet"] == spec.podSubnet and net["serviceSubnet"] == spec.serviceSubnet
    for key in ("podSubnet", "serviceSubnet"):
        families = [ipaddress.ip_network(c).version for c in net[key].split(",")]
        assert families == [4, 6], f"{key} must list IPv4 then IPv6"


def test_kubeovn_kind_config_and_installer_env():
    c = kind_config("kubeovn-vpc-nat-gw")
    assert c["networking"]["disableDefaultCNI"] is True
    assert c["networking"]["kubeProxyMode"] == "ipvs"
    profile = load_profile("kubeovn-vpc-nat-gw")
    assert c["networking"]["podSubnet"] == profile.networking.podSubnet
    plan = render_install_plan(load_profile("kubeovn-vpc-nat-gw"))
    (install,) = [s for s in plan.steps if s.name == "install-kube-ovn"]
    assert install.env["ENABLE_NAT_GW"] == "true"
    assert install.env["POD_CIDR"] == profile.networking.podSubnet
    assert install.env["KUBECONFIG"] == "{kubeconfig}"
    assert any(s.name == "install-multus" for s in plan.steps)
    connects = [s.run for s in plan.steps if s.run[:3] == ["docker", "network", "connect"]]
    assert len(connects) == 3  # every node gets the external network
    assert all(a[3] == "kube-ovn-ext-net1" for a in connects)


def test_submariner_two_clusters_same_cidrs_distinct_dns_domains():
    configs = render_kind_configs(load_profile("submariner-globalnet"))
    assert [c["name"] for c in configs] == [
        "cni-e2e-submariner-globalnet-c1",
        "cni-e2e-submariner-globalnet-c2",
    ]
    assert len({c["networking"]["podSubnet"] for c in configs}) == 1
    assert len({c["networking"]["serviceSubnet"] for c in configs}) == 1
    domains = [
        yaml.safe_load(c["kubeadmConfigPatches"][0])["networking"]["dnsDomain"] for c in configs
    ]
    assert domains == ["c1.local", "c2.local"]
    for c in configs:
        gateways = [n for n in c["nodes"] if n.get("labels", {}).get("submariner.io/gateway")]
        assert len(gateways) == 1 and gateways[0]["role"] == "worker"


def test_submariner_plan_deploys_broker_with_globalnet_and_joins_both():
    plan = render_install_plan(load_profile("submariner-globalnet"))
    (broker,) = [s for s in plan.steps if s.name == "deploy-broker"]
    assert broker.run[:2] == ["subctl", "deploy-broker"] and "--globalnet" in broker.run
    assert broker.cluster.endswith("-c1")
    joins = {s.name: s.run for s in plan.steps if s.name.startswith("join-")}
    assert set(joins) == {"join-c1", "join-c2"}
    for cid, run in joins.items():
        n = cid[-1]
        assert run[run.index("--clusterid") + 1] == f"c{n}"
        assert run[run.index("--globalnet-cidr") + 1] == f"242.254.{n}.0/24"
        assert "--natt=false" in run
        assert run[run.index("--cable-driver") + 1] == "vxlan"
        assert run[-1].endswith("broker-info.subm")


def test_cluster_name_option_sets_the_base_name():
    assert kind_config("antrea-encap", base="mine")["name"] == "mine"


@pytest.mark.parametrize("name", profile_names())
def test_render_profile_cli_prints_configs_then_plan(name):
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts/render-profile"), name],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    docs = list(yaml.safe_load_all(out))
    clusters = len(load_profile(name).clusters)
    assert [d["kind"] for d in docs] == ["Cluster"] * clusters + ["InstallPlan"]
    assert all(d["apiVersion"] == "kind.x-k8s.io/v1alpha4" for d in docs[:-1])
    assert docs[-1]["profile"] == name


def test_render_profile_cli_rejects_unknown_profile():
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts/render-profile"), "antrea-nope"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "unknown profile 'antrea-nope'" in proc.stderr
    assert proc.stdout == ""


def test_render_profile_cli_rejects_invalid_profile_file(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("description: x\ncni: calico\nnetworking: {podSubnet: a, serviceSubnet: b}\n")
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts/render-profile"), str(bad)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "cni" in proc.stderr and "'calico'" in proc.stderr and str(bad) in proc.stderr


def test_kubeovn_plan_ships_the_nat_gateway_network():
    plan = render_install_plan(load_profile("kubeovn-vpc-nat-gw"))
    docs = {
        (d["kind"], d["metadata"]["name"]): d
        for d in yaml.safe_load_all(plan.files["vpc-nat-gw.yaml"])
    }
    assert docs["ConfigMap", "ovn-vpc-nat-gw-config"]["data"] == {"enable-vpc-nat-gw": "true"}
    image = docs["ConfigMap", "ovn-vpc-nat-config"]["data"]["image"]
    assert image.endswith("vpc-nat-gateway:v1.14.10")
    nad = docs["NetworkAttachmentDefinition", "ovn-vpc-external-network"]
    config = json.loads(nad["spec"]["config"])
    assert (config["type"], config["master"], config["mode"]) == ("macvlan", "eth1", "bridge")
    assert config["ipam"]["provider"] == "ovn-vpc-external-network.kube-system"
    subnet = docs["Subnet", "ovn-vpc-external-network"]["spec"]
    (external,) = load_profile("kubeovn-vpc-nat-gw").extraNetworks
    network = ipaddress.ip_network(external.subnet)
    assert subnet["cidrBlock"] == str(network)
    assert subnet["gateway"] == str(network.network_address + 1)
    assert subnet["provider"] == "ovn-vpc-external-network.kube-system"
    (apply,) = [s for s in plan.steps if s.name == "apply-vpc-nat-gw-network"]
    assert apply.run[-1] == "{workdir}/vpc-nat-gw.yaml"


def test_antrea_chart_is_pinned():
    _, render = helm_sets("antrea-encap")
    assert render.run[render.run.index("--repo") + 1] == "https://charts.antrea.io"
    assert render.run[render.run.index("--version") + 1] == "2.7.0"


def test_extra_networks_are_the_runs_own_labelled_and_leave_the_clusters_network():
    """Two runs of one profile never share an extra network; orphan cleanup can find it."""
    import dataclasses

    from fixtures.addressing import apply_plan
    from fixtures.render import HostSetup

    profile = apply_plan(load_profile("antrea-hybrid"), "testnet")
    host = dataclasses.replace(HostSetup(address_plan="testnet"), run_id="1f2e3d4c")
    base = "cni-e2e-antrea-hybrid-1f2e3d4c"
    argv = [s.run for s in render_install_plan(profile, base, host).steps if s.run[0] == "docker"]
    creates = [a for a in argv if a[1:3] == ["network", "create"]]
    assert len(creates) == 1, creates
    (create,) = creates
    assert create[-1] == "antrea-hybrid-1f2e3d4c"
    assert "org.cni-e2e.run=1f2e3d4c" in create and f"org.cni-e2e.cluster={base}" in create
    for worker in (f"{base}-worker", f"{base}-worker2"):
        assert ["docker", "network", "connect", "antrea-hybrid-1f2e3d4c", worker] in argv
        # testnet: the node's own network is the cluster's, not kind's shared one
        assert ["docker", "network", "disconnect", base, worker] in argv
