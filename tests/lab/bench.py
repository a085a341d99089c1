"""Benchmark the probes on the lab against one `curl` subprocess per probe (scripts/bench-probes).

The baseline is how upstream Antrea's e2e tests probe: one
`curl --connect-timeout 1 http://IP:PORT/hostname` process per check. The curl runs in the
source namespace: it is started from a thread inside that namespace, and a child process
keeps that thread's namespace. Every number comes from this one invocation on this one
lab. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

from fixtures.netns import Netns, has_netns_privileges
from fixtures.probes import MatrixCase, Outcome, ProbeKind, ProbeSpec, probe_matrix, run_probe
from tests.lab.topology import LabHost, build_lab

PORT = 8080
SIDE = 10  # the matrix is SIDE sources x SIDE targets


@dataclass(frozen=True)
class Row:
    mode: str
    probe: str
    latencies: tuple[float, ...]
    wall: float
    failures: int

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.wall

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


def _timed(call: Callable[[], bool]) -> tuple[float, bool]:
    started = time.perf_counter()
    ok = call()
    return time.perf_counter() - started, ok


def _curl(curl: str, source: Netns, target: str) -> bool:
    argv = [
        curl,
        "--connect-timeout",
        "1",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        f"http://{target}:{PORT}/hostname",
    ]
    done = source.run(subprocess.run, argv, capture_output=True, text=True, timeout=10)
    return done.stdout == "200"


def _probe(spec: ProbeSpec, source: Netns) -> bool:
    return run_probe(spec, source).ok


def _run(mode: str, name: str, calls: Sequence[Callable[[], bool]], workers: int) -> Row:
    started = time.perf_counter()
    if workers == 1:
        samples = [_timed(c) for c in calls]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            samples = list(pool.map(_timed, calls))
    wall = time.perf_counter() - started
    return Row(mode, name, tuple(s[0] for s in samples), wall, sum(not s[1] for s in samples))


def _specs(kind: ProbeKind, target: LabHost, args: argparse.Namespace) -> ProbeSpec:
    port = PORT if kind in (ProbeKind.TCP, ProbeKind.HTTP) else None
    return ProbeSpec(kind, target.ipv4, port=port, timeout=1.0, window=args.window)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench-probes", description=__doc__)
    parser.add_argument("--probes", type=int, default=200, help="probes per single-probe run")
    parser.add_argument("--rounds", type=int, default=3, help="10x10 matrices per matrix run")
    parser.add_argument("--workers", type=int, default=16, help="parallel probes in a matrix")
    parser.add_argument(
        "--window",
        type=float,
        default=0.05,
        help="ARP: seconds to listen for more owners after the first answer",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not has_netns_privileges():
        parser.exit(
            2, "bench-probes: needs root (CAP_NET_ADMIN, CAP_NET_RAW) for network namespaces\n"
        )
    curl = shutil.which("curl")
    if curl is None:
        parser.exit(2, "bench-probes: curl is the baseline; install it (apt-get install -y curl)\n")
    version = subprocess.run([curl, "--version"], capture_output=True, text=True, check=False)
    if not 1 <= args.probes <= 10000 or not 1 <= args.rounds <= 100:
        parser.error("--probes must be 1..10000 and --rounds 1..100")

    with build_lab(nodes=2 * SIDE) as lab:
        hosts = list(lab.nodes.values())
        sources, targets = hosts[:SIDE], hosts[SIDE:]
        for host in targets:
            lab.serve_http(host.name, PORT)
        src, dst = sources[0], targets[0]
        rows: list[Row] = []
        n = args.probes
        rows.append(
            _run(
                "single", "curl http (baseline)", [partial(_curl, curl, src.netns, dst.ipv4)] * n, 1
            )
        )
        for kind in (ProbeKind.TCP, ProbeKind.HTTP, ProbeKind.ARP):
            spec = _specs(kind, dst, args)
            rows.append(_run("single", f"{kind} probe", [partial(_probe, spec, src.netns)] * n, 1))

        pairs = [(s, t) for s in sources for t in targets] * args.rounds
        rows.append(
            _run(
                "matrix",
                "curl http (baseline)",
                [partial(_curl, curl, s.netns, t.ipv4) for s, t in pairs],
                args.workers,
            )
        )
        for kind in (ProbeKind.TCP, ProbeKind.HTTP, ProbeKind.ARP):
            calls = [partial(_probe, _specs(kind, t, args), s.netns) for s, t in pairs]
            rows.append(_run("matrix", f"{kind} probe", calls, args.workers))

        # the real matrix code path once, as a check that the lab answered as expected
        cases = [
            MatrixCase(s.netns, _specs(ProbeKind.TCP, t, args), Outcome.REACHABLE)
            for s in sources
            for t in targets
        ]
        check = probe_matrix(cases, retries=0, reprobe=False, workers=args.workers)

    out = sys.stdout
    out.write(
        f"lab: {len(hosts)} node namespaces on one bridge; single = {n} probes one at a "
        f"time n1 -> n{SIDE + 1}; matrix = {args.rounds} x {SIDE}x{SIDE} pairs, "
        f"{args.workers} in parallel; ARP window {args.window * 1000:.0f} ms\n"
    )
    out.write(f"baseline: {version.stdout.splitlines()[0] if version.stdout else curl}\n")
    out.write(
        f"{'mode':7} {'probe':22} {'probes/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'vs curl':>8} {'failed':>6}\n"
    )
    base = {r.mode: r.rate for r in rows if r.probe.startswith("curl")}
    for r in rows:
        out.write(
            f"{r.mode:7} {r.probe:22} {r.rate:9.1f} {r.pct(0.5):8.2f} {r.pct(0.99):8.2f} "
            f"{r.rate / base[r.mode]:7.2f}x {r.failures:6d}\n"
        )
    out.write(
        f"matrix check through probe_matrix: {len(check.cells) - len(check.mismatches)}"
        f"/{len(check.cells)} pairs reachable\n"
    )
    out.write(
        "(ARP probes keep listening for the window after the first answer, to see a "
        "second owner; curl cannot ask who owns an IP, so its row is only a yardstick)\n"
    )
    return 0 if check.ok and not any(r.failures for r in rows) else 1
