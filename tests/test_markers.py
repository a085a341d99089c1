"""Marker selection: `-m <family>` collects exactly that family's scenarios."""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures.markers import FAMILIES

REPO = Path(__file__).resolve().parent.parent

# family -> the e2e files whose tests it must select, all of them or (for "dsr" and
# "node_failure") the named tests only
EXPECTED = {
    "egress": {"test_antrea_egress_pool_validation.py": None},
    "externalippool": {"test_antrea_externalippool_stale_cache.py": None},
    "service_external_ip": {"test_antrea_service_external_ip.py": None},
    "dsr": {
        "test_antrea_service_external_ip.py": {
            "test_external_ip_is_reachable_from_an_external_client_in_dsr_mode"
        },
        "test_external_ip_dsr_return_path.py": None,
    },
    "ext_dsr_return": {"test_external_ip_dsr_return_path.py": None},
    "node_failure": {
        "test_antrea_service_external_ip.py": {
            "test_external_ip_moves_off_a_frozen_node_and_comes_back"
        }
    },
    "globalingressip": {"test_submariner_globalingressip_restart.py": None},
    "vpc_nat_gw": {"test_kubeovn_eip_ready_means_configured.py": None},
}


class Collector:
    def __init__(self) -> None:
        self.items: list[pytest.Item] = []

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.items = list(session.items)


def collect(*args: str) -> list[pytest.Item]:
    cap = Collector()
    code = pytest.main(
        [
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            *args,
            str(REPO / "e2e"),
        ],
        plugins=[cap],
    )
    assert code == 0, f"collection failed ({code})"
    return cap.items


@pytest.fixture(scope="module")
def everything() -> list[pytest.Item]:
    return collect()


def test_every_family_marker_is_registered_by_the_plugin(pytestconfig):
    registered = {line.split(":")[0].split("(")[0] for line in pytestconfig.getini("markers")}
    assert set(FAMILIES) <= registered


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_selecting_a_family_collects_exactly_its_scenarios(family, everything):
    selected = {i.nodeid for i in collect("-m", family)}
    expected = set()
    for item in everything:
        file = Path(str(item.fspath)).name
        if file in EXPECTED[family]:
            names = EXPECTED[family][file]
            if names is None or item.originalname in names:  # type: ignore[attr-defined]
                expected.add(item.nodeid)
    assert expected, f"no scenario of family {family} exists"
    assert selected == expected
