"""The lab half of scripts/bench-probes: the probe engine against one `curl` per probe.

The baseline is how upstream Antrea's e2e tests probe: one
`curl --connect-timeout 1 http://IP:PORT/hostname` process per check, 16 at a time. The
curl runs in the source namespace: it is started from a thread inside that namespace, and
a child process keeps that thread's namespace. Every number comes from this one invocation
on this one lab; nothing here asserts a time.

The lab: 20 node namespaces on one bridge. Sources n1..n10; targets n11..n20, each serving
HTTP on 8080. The timed 10x10 matrix has every outcome that answers at once: n11..n19:8080
reachable, n20:8081 refused (nothing listens), and n1 -> n11 inconclusive (n1 has an
`unreachable` route to n11). Filtered pairs (n20 drops TCP to 8082) cost the full timeout
on both paths, so they are checked for agreement once, outside the timed matrix. ARP:
ten external IPs on nodes, one of them on two nodes (split brain), asked from the router.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from fixtures.bench import BenchReport, Goal, curl_argv, curl_outcome, median, percentile
from fixtures.netns import Netns
from fixtures.probes import (
    MatrixCase,
    Outcome,
    ProbeKind,
    ProbeResult,
    ProbeSpec,
    probe_batch,
    probe_matrix,
    run_probe,
)
from tests.lab.topology import LabHost, build_lab

PORT, CLOSED_PORT, DROPPED_PORT = 8080, 8081, 8082
SIDE = 10  # the matrix is SIDE sources x SIDE targets
OWNER_IPS = [f"198.51.100.{201 + i}" for i in range(10)]
UNOWNED_IP = "198.51.100.220"


@dataclass(frozen=True)
class Cell:
    source: LabHost
    target: str
    port: int
    expect: Outcome


def _curl(curl: str, source: Netns, target: str, port: int) -> Outcome:
    done = source.run(
        subprocess.run, curl_argv(curl, target, port), capture_output=True, text=True, timeout=10
    )
    return curl_outcome(done.returncode, done.stderr)


def _curl_matrix(curl: str, cells: Sequence[Cell], workers: int) -> tuple[list[Outcome], float]:
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        seen = list(pool.map(lambda c: _curl(curl, c.source.netns, c.target, c.port), cells))
    return seen, time.perf_counter() - started


def _spec(kind: ProbeKind, target: str, port: int | None, timeout: float) -> ProbeSpec:
    return ProbeSpec(kind, target, port=port, timeout=timeout)


def _engine_matrix(
    kind: ProbeKind, cells: Sequence[Cell], timeout: float, workers: int
) -> tuple[list[ProbeResult], float]:
    cases = [
        MatrixCase(c.source.netns, _spec(kind, c.target, c.port, timeout), c.expect) for c in cells
    ]
    started = time.perf_counter()
    report = probe_matrix(cases, retries=0, reprobe=False, workers=workers)
    return [c.observed for c in report.cells], time.perf_counter() - started


def _latencies(call: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        out.append(time.perf_counter() - started)
    return out


def _compare(
    name: str,
    cells: Sequence[Cell],
    engine: Sequence[ProbeResult],
    curl: Sequence[Outcome],
    report: BenchReport,
) -> None:
    """Count (and keep for printing) every cell where the engine and curl disagree, and
    every cell where either differs from what the lab was built to answer."""
    bad = []
    for cell, ours, theirs in zip(cells, engine, curl, strict=True):
        if ours.outcome is not theirs or ours.outcome is not cell.expect:
            bad.append(
                f"{name}: {cell.source.name} -> {cell.target}:{cell.port}: engine "
                f"{ours.outcome}, curl {theirs}, lab built for {cell.expect}"
            )
    report.check(f"{name} engine vs curl vs lab", len(bad))
    report.figures.setdefault("disagreements", []).extend(bad)


def run_lab(args: argparse.Namespace, report: BenchReport) -> None:
    """Measure everything on a fresh lab; figures, checks and notes go into report."""
    curl = shutil.which("curl")
    if curl is None:
        raise RuntimeError("curl is the baseline; install it (apt-get install -y curl)")
    version = subprocess.run([curl, "--version"], capture_output=True, text=True, check=False)
    report.figures["baseline"] = version.stdout.splitlines()[0] if version.stdout else curl
    timeout = 1.0  # curl --connect-timeout 1 and the probes' per-attempt timeout
    with build_lab(nodes=2 * SIDE) as lab:
        hosts = list(lab.nodes.values())
        sources, targets = hosts[:SIDE], hosts[SIDE:]
        for host in targets:
            lab.serve_http(host.name, PORT)
        lab.unreachable_from(sources[0].name, targets[0].ipv4)
        lab.drop_tcp_at(targets[-1].name, DROPPED_PORT)
        columns = [(t.ipv4, PORT) for t in targets[:-1]] + [(targets[-1].ipv4, CLOSED_PORT)]
        cells = []
        for s in sources:
            for ip, port in columns:
                if s is sources[0] and ip == targets[0].ipv4:
                    expect = Outcome.INCONCLUSIVE
                elif port == CLOSED_PORT:
                    expect = Outcome.REFUSED
                else:
                    expect = Outcome.REACHABLE
                cells.append(Cell(s, ip, port, expect))
        dropped = [Cell(s, targets[-1].ipv4, DROPPED_PORT, Outcome.FILTERED) for s in sources]

        # single probes, one at a time, n2 -> n12
        src, dst = sources[1], targets[1]
        tcp_spec = _spec(ProbeKind.TCP, dst.ipv4, PORT, timeout)
        http_spec = _spec(ProbeKind.HTTP, dst.ipv4, PORT, timeout)
        singles = {
            "tcp": _latencies(lambda: run_probe(tcp_spec, src.netns), args.probes),
            "http": _latencies(lambda: run_probe(http_spec, src.netns), args.probes),
            "curl": _latencies(
                lambda: _curl(curl, src.netns, dst.ipv4, PORT), max(10, args.probes // 4)
            ),
        }
        for what, lat in singles.items():
            report.figures[f"single_{what}_p50_ms"] = round(percentile(lat, 0.5) * 1000, 3)
            report.figures[f"single_{what}_p99_ms"] = round(percentile(lat, 0.99) * 1000, 3)

        # the timed 10x10 matrices
        walls: dict[str, list[float]] = {"tcp": [], "http": [], "curl": []}
        for _ in range(args.rounds):
            tcp, wall = _engine_matrix(ProbeKind.TCP, cells, timeout, args.workers)
            walls["tcp"].append(wall)
            http, wall = _engine_matrix(ProbeKind.HTTP, cells, timeout, args.workers)
            walls["http"].append(wall)
            seen, wall = _curl_matrix(curl, cells, args.workers)
            walls["curl"].append(wall)
            _compare("tcp matrix", cells, tcp, seen, report)
            _compare("http matrix", cells, http, seen, report)
        for what, w in walls.items():
            report.figures[f"matrix_{what}_wall_ms"] = [round(x * 1000, 1) for x in w]
        base = median(walls["curl"])

        # filtered pairs: agreement only (both wait the full timeout)
        tcp, wall_tcp = _engine_matrix(ProbeKind.TCP, dropped, timeout, args.workers)
        http, _ = _engine_matrix(ProbeKind.HTTP, dropped, timeout, args.workers)
        seen, wall_curl = _curl_matrix(curl, dropped, args.workers)
        _compare("filtered pairs (tcp)", dropped, tcp, seen, report)
        _compare("filtered pairs (http)", dropped, http, seen, report)
        report.figures["filtered_pairs_wall_ms"] = {
            "engine tcp": round(wall_tcp * 1000),
            "curl": round(wall_curl * 1000),
        }

        # ARP owners: ten IPs, one of them on two nodes
        owners: dict[str, list[LabHost]] = {}
        for i, ip in enumerate(OWNER_IPS):
            owners[ip] = [hosts[i]] if i < len(OWNER_IPS) - 1 else [hosts[1], hosts[6]]
            for host in owners[ip]:
                lab.assign_ip(host.name, ip)
        assert lab.router is not None
        router = lab.router.netns
        window = args.window

        def arp(ip: str) -> ProbeSpec:
            return ProbeSpec(ProbeKind.ARP, ip, timeout=timeout, window=window)

        arp_results: list[ProbeResult] = []
        bad: list[str] = []

        def judge(result: ProbeResult) -> None:
            arp_results.append(result)
            want = sorted(h.mac for h in owners.get(result.target, []))
            if sorted(result.macs) != want:
                bad.append(f"arp {result.target}: saw {list(result.macs)}, lab has {want}")

        n = max(10, args.probes // 4)
        one, split = OWNER_IPS[0], OWNER_IPS[-1]
        single_arp = _latencies(lambda: judge(run_probe(arp(one), router)), n)
        split_arp = _latencies(lambda: judge(run_probe(arp(split), router)), n)
        sweep_walls = []
        for _ in range(args.rounds * 3):
            started = time.perf_counter()
            results = probe_batch([(router, arp(ip)) for ip in OWNER_IPS])
            sweep_walls.append(time.perf_counter() - started)
            for r in results:
                judge(r)
        unowned = run_probe(arp(UNOWNED_IP), router)
        if unowned.outcome is not Outcome.FILTERED:
            bad.append(f"arp {UNOWNED_IP} (no owner): {unowned}")
        report.check("arp owners vs lab", len(bad))
        report.figures.setdefault("disagreements", []).extend(bad)

    # figures against goals
    report.figure(
        "tcp_matrix_vs_parallel_curl",
        base / median(walls["tcp"]),
        Goal(">=", 10),
        "10x10 TCP matrix wall, curl (16 parallel) / engine",
    )
    report.figure(
        "http_matrix_vs_parallel_curl",
        base / median(walls["http"]),
        Goal(">=", 5),
        "10x10 HTTP matrix wall, curl (16 parallel) / engine",
    )
    report.figure(
        "tcp_single_p50_ms",
        percentile(singles["tcp"], 0.5) * 1000,
        Goal("<=", 1.0),
        f"one TCP probe at a time, {args.probes} probes",
    )
    report.figure(
        "arp_owner_verdict_p99_ms",
        percentile(single_arp + split_arp, 0.99) * 1000,
        Goal("<=", 60),
        f"one IP per probe (single owner and split brain), {2 * n} probes, window "
        f"{window * 1000:.0f} ms",
    )
    report.figure(
        "arp_owner_matrix_10_ips_s",
        median(sweep_walls),
        Goal("<=", 0.2),
        "owners of 10 IPs (one split brain) in one sweep, median",
    )
    report.figures["single_arp_p50_ms"] = round(percentile(single_arp, 0.5) * 1000, 2)
    report.figures["split_brain_arp_p50_ms"] = round(percentile(split_arp, 0.5) * 1000, 2)
    report.figures["arp_sweep_walls_ms"] = [round(w * 1000, 1) for w in sweep_walls]
    first = [r.owner_rtts[0] for r in arp_results if r.owner_rtts]
    second = [r.owner_rtts[1] for r in arp_results if len(r.owner_rtts) > 1]
    slowest = max(first + second, default=float("nan"))
    report.figures["arp_answer_ms"] = {
        "answers": len(first) + len(second),
        "first_p99": round(percentile(first, 0.99) * 1000, 3),
        "second_owner_max": round(max(second, default=float("nan")) * 1000, 3),
        "slowest": round(slowest * 1000, 3),
    }
    report.notes.append(
        f"split brain: an owner probe listens {window * 1000:.0f} ms after the first answer "
        "for a second owner. Every owner on the segment gets the same broadcast request at "
        "once and answers from its kernel's softirq (no proxy ARP, which alone delays "
        "answers), so a second owner answers within its own answer latency; here the "
        f"slowest of {len(first) + len(second)} answers came {slowest * 1000:.2f} ms after "
        f"its request and a second owner at most {max(second, default=0) * 1000:.2f} ms "
        f"after it, so the window is {window / slowest if slowest else float('inf'):.0f}x "
        "the slowest answer seen. A user-space announcer (MetalLB's speaker) answers "
        "later: the kind run measures its answers against the same window."
    )
    report.notes.append(
        f"lab: {2 * SIDE} node namespaces on one bridge; matrix = {SIDE}x{SIDE} pairs "
        f"({sum(c.expect is Outcome.REACHABLE for c in cells)} reachable, "
        f"{sum(c.expect is Outcome.REFUSED for c in cells)} refused, "
        f"{sum(c.expect is Outcome.INCONCLUSIVE for c in cells)} inconclusive), "
        f"{args.rounds} rounds, curl {args.workers} in parallel; filtered pairs checked "
        "once outside the timed matrix (both paths wait the 1 s timeout there)"
    )
