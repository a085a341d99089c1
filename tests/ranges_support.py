"""Shared machinery of the range tests: a model-based state machine, multi-process churn
with an overlap witness, and a holder that waits to be SIGKILLed.

Runs against either store: each helper takes the keyword arguments of
fixtures.ranges.open_store, so child processes can build their own store.
"""

from __future__ import annotations

import ipaddress
import multiprocessing
import os
import random
import signal
import threading
import time
import traceback
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from fixtures.ranges import (
    Claim,
    Holder,
    IPNetwork,
    PoolUsage,
    RangeAllocator,
    RangeExhaustedError,
    RangeStore,
    open_store,
)

SPAWN = multiprocessing.get_context("spawn")


class FakeClock:
    """A wall clock the test moves by hand (stores read time only through it)."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def brute_first_free(pool: IPNetwork, prefix: int, occupied: list[IPNetwork]) -> IPNetwork | None:
    """Reference answer: walk every aligned candidate; small pools only."""
    for candidate in pool.subnets(new_prefix=prefix):
        if not any(candidate.overlaps(o) for o in occupied if o.version == candidate.version):
            return candidate
    return None


# --------------------------------------------------------------------------- model-based


@dataclass
class _Entry:
    owner: int
    pool: IPNetwork
    renewed: float
    released: float | None = None

    def state(self, now: float, ttl: float, quarantine: float) -> str:
        if self.released is not None:
            return "quarantined" if now < self.released + quarantine else "reclaimable"
        return "live" if now < self.renewed + ttl else "reclaimable"


V4_POOLS = ("192.0.2.0/26", "198.51.100.0/28")
V6_POOLS = ("2001:db8:5::/122",)
PREFIXES = {4: (28, 29, 30), 6: (124, 125, 126, 127)}


class AllocatorMachine(RuleBasedStateMachine):
    """Two allocators (two holders) on one store, against a model of the intended rules.

    Time is a FakeClock the rules move; renewal is a rule (the real renewer
    thread is off), and a holder can "crash" (stop renewing and releasing).
    Subclasses define `make_store(clock) -> RangeStore`.
    """

    TTL = 10.0
    QUARANTINE = 4.0
    FIRST_FIT = True  # False: any free aligned subnet will do (stores that spread claims)

    def make_store(self, clock: FakeClock) -> RangeStore:
        raise NotImplementedError

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.store = self.make_store(self.clock)
        self.allocators = [
            RangeAllocator(
                self.store,
                [*V4_POOLS, *V6_POOLS],
                quarantine=self.QUARANTINE,
                ttl=self.TTL,
                run_id=f"machine{i}",
                autorenew=False,
            )
            for i in range(2)
        ]
        self.model: dict[IPNetwork, _Entry] = {}
        self.crashed: set[int] = set()

    def teardown(self) -> None:
        for a in self.allocators:
            a.autorenew = False
        self.store.close()

    def _occupied(self, family: int) -> list[IPNetwork]:
        now = self.clock()
        return [
            n
            for n, e in self.model.items()
            if n.version == family and e.state(now, self.TTL, self.QUARANTINE) != "reclaimable"
        ]

    def _sweep_model(self, family: int) -> None:
        now = self.clock()
        for n in [n for n in self.model if n.version == family]:
            if self.model[n].state(now, self.TTL, self.QUARANTINE) == "reclaimable":
                del self.model[n]

    @rule(who=st.integers(0, 1), family=st.sampled_from([4, 6]), data=st.data())
    def allocate(self, who: int, family: int, data: st.DataObject) -> None:
        if who in self.crashed:
            return
        prefix = data.draw(st.sampled_from(PREFIXES[family]))
        pools = [ipaddress.ip_network(p) for p in (V4_POOLS if family == 4 else V6_POOLS)]
        fitting = [p for p in pools if p.prefixlen <= prefix]
        self._sweep_model(family)
        occupied = self._occupied(family)
        expected, free = None, []
        for pool in fitting:
            expected = brute_first_free(pool, prefix, occupied)
            if expected is not None:
                free = [
                    c
                    for c in pool.subnets(new_prefix=prefix)
                    if not any(c.overlaps(o) for o in occupied)
                ]
                break
        try:
            got = self.allocators[who].allocate(prefix=prefix, family=family)
        except RangeExhaustedError as exc:
            assert expected is None, f"exhausted, but {expected} was free"
            now = self.clock()
            for usage in exc.usages:
                inside = [
                    e.state(now, self.TTL, self.QUARANTINE)
                    for n, e in self.model.items()
                    if n.version == family and n.overlaps(usage.pool)
                ]
                assert (usage.live, usage.quarantined) == (
                    inside.count("live"),
                    inside.count("quarantined"),
                ), f"{usage} vs model {inside}"
                assert str(usage.pool) in str(exc)
            return
        if self.FIRST_FIT:
            assert got.network == expected, f"got {got}, first free was {expected}"
        else:
            assert got.network in free, f"got {got}, free in {got.pool} were {free}"
        assert got.prefix == prefix and got.network.subnet_of(got.pool)  # type: ignore[arg-type]
        assert ipaddress.ip_network(str(got.network)) == got.network  # aligned (strict parse)
        self.model[got.network] = _Entry(who, got.pool, self.clock())

    @rule(who=st.integers(0, 1), data=st.data())
    def release(self, who: int, data: st.DataObject) -> None:
        held = self.allocators[who].held
        if who in self.crashed or not held:
            return
        r = data.draw(st.sampled_from(held))
        self.allocators[who].release(r)
        entry = self.model.get(r.network)
        if entry is not None and entry.owner == who and entry.released is None:
            entry.released = self.clock()

    @rule(who=st.integers(0, 1))
    def renew(self, who: int) -> None:
        """One tick of the renewer thread: renew everything the allocator thinks it holds."""
        if who in self.crashed:
            return
        alloc = self.allocators[who]
        nets = [r.network for r in alloc.held]
        lost = self.store.renew(nets, alloc.holder, self.TTL)
        expected_lost = []
        for n in nets:
            e = self.model.get(n)
            if e is None or e.owner != who:
                expected_lost.append(n)
            elif e.released is None:
                e.renewed = self.clock()
        assert sorted(lost, key=str) == sorted(expected_lost, key=str)
        for n in lost:
            alloc.release(next(r for r in alloc.held if r.network == n))

    @precondition(lambda self: len(self.crashed) < 2)
    @rule(who=st.integers(0, 1))
    def crash(self, who: int) -> None:
        """The holder dies: it neither renews nor releases from now on."""
        self.crashed.add(who)

    @rule(dt=st.sampled_from([0.5, 1.0, 3.0, 4.0, 6.0, 10.0, 11.0]))
    def advance(self, dt: float) -> None:
        self.clock.now += dt

    @invariant()
    def store_matches_model_and_nothing_overlaps(self) -> None:
        now = self.clock()
        for family in (4, 6):
            claims = self.store.claims(family)
            recorded = {(c.network, c.holder, c.released_at is not None) for c in claims}
            modelled = {
                (n, str(self.allocators[e.owner].holder), e.released is not None)
                for n, e in self.model.items()
                if n.version == family
            }
            assert recorded == modelled
            standing = [c.network for c in claims if c.state(now) != "reclaimable"]
            for i, a in enumerate(standing):
                for b in standing[i + 1 :]:
                    assert not a.overlaps(b), f"{a} and {b} are both standing"


# --------------------------------------------------------------------------- churn


def blocks(network: IPNetwork, unit: int) -> list[str]:
    """Names of the /unit blocks a network covers, as witness directory names."""
    return [str(b).replace("/", "_").replace(":", "-") for b in network.subnets(new_prefix=unit)]


def churn(
    alloc: RangeAllocator,
    cycles: int,
    prefixes: tuple[int, ...],
    witness: Path,
    unit: int,
    seed: int,
    hold: int = 2,
) -> dict[str, Any]:
    """allocate/release `cycles` times holding up to `hold` ranges; mkdir each held block
    in `witness` so that an overlap with any other holder makes a mkdir fail."""
    rng = random.Random(seed)
    held: deque[tuple[Any, list[str]]] = deque()
    collisions: list[str] = []
    handed_out: list[str] = []

    def drop() -> None:
        r, names = held.popleft()
        for name in names:
            try:
                (witness / name).rmdir()
            except FileNotFoundError:
                pass  # only after a collision: the other holder removed it
        alloc.release(r)

    for _ in range(cycles):
        r = alloc.allocate(prefix=rng.choice(prefixes))
        handed_out.append(r.cidr)
        names = blocks(r.network, unit)
        for name in names:
            try:
                (witness / name).mkdir()
            except FileExistsError:
                collisions.append(f"{r.cidr} (block {name}) by {alloc.holder}")
        held.append((r, names))
        if len(held) >= hold:
            drop()
    while held:
        drop()
    return {
        "handed_out": handed_out,
        "collisions": collisions,
        "lost": [str(x) for x in alloc.lost],
    }


def _churn_process(
    barrier: Any,
    results: Any,
    index: int,
    store_kwargs: dict[str, Any],
    pool: str,
    cycles: int,
    prefixes: tuple[int, ...],
    witness: str,
    unit: int,
) -> None:
    try:
        store = open_store(**store_kwargs)
        alloc = RangeAllocator(store, [pool], quarantine=0.0, ttl=30.0, run_id=f"churn{index}")
        barrier.wait(timeout=60)
        started = time.monotonic()
        out = churn(alloc, cycles, prefixes, Path(witness), unit, seed=index)
        out["seconds"] = time.monotonic() - started
        alloc.close()
        store.close()
        results.put((index, out))
    except BaseException:
        results.put((index, {"error": traceback.format_exc()}))


def run_churn(
    processes: int,
    store_kwargs: dict[str, Any],
    pool: str,
    cycles: int,
    prefixes: tuple[int, ...],
    witness: Path,
    unit: int,
    timeout: float = 120.0,
) -> list[dict[str, Any]]:
    """Run churn() in `processes` spawned processes that start together; their reports."""
    barrier = SPAWN.Barrier(processes)
    results = SPAWN.Queue()
    procs = [
        SPAWN.Process(
            target=_churn_process,
            args=(barrier, results, i, store_kwargs, pool, cycles, prefixes, str(witness), unit),
        )
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    try:
        reports = dict(results.get(timeout=timeout) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    errors = [r["error"] for r in reports.values() if "error" in r]
    assert not errors, "a churn process failed:\n" + "\n".join(errors)
    return [reports[i] for i in range(processes)]


STRESS_PROCESSES, STRESS_CYCLES = 4, 250
STRESS_POOL = "198.18.0.0/23"
STRESS_PREFIXES = (27, 28, 29)


def assert_clean_churn(reports: list[dict[str, Any]]) -> None:
    """No overlaps, every cycle done, nothing lost, and the pool really was contended."""
    collisions = [c for r in reports for c in r["collisions"]]
    assert collisions == [], f"{len(collisions)} overlaps, first: {collisions[:5]}"
    assert [len(r["handed_out"]) for r in reports] == [STRESS_CYCLES] * STRESS_PROCESSES
    assert all(r["lost"] == [] for r in reports)
    handed = Counter(c for r in reports for c in r["handed_out"])
    parent = ipaddress.ip_network(STRESS_POOL)
    for cidr in handed:
        net = ipaddress.ip_network(cidr)
        assert net.network_address in parent and net.broadcast_address in parent
    # the low ranges went round between the processes many times
    assert max(handed.values()) > STRESS_PROCESSES


# --------------------------------------------------------------------------- crash


def _hold_until_killed(
    ready: Any, store_kwargs: dict[str, Any], pool: str, prefix: int, ttl: float
) -> None:
    """Take every /prefix of pool, report them, then block until SIGKILL."""
    store = open_store(**store_kwargs)
    alloc = RangeAllocator(store, [pool], quarantine=0.0, ttl=ttl, run_id="doomed")
    taken = []
    while True:
        try:
            taken.append(alloc.allocate(prefix=prefix).cidr)
        except RangeExhaustedError:
            break
    ready.put({"taken": taken, "holder": str(alloc.holder), "at": time.time()})
    threading.Event().wait()  # never set: only SIGKILL ends this process


@dataclass
class CrashReport:
    taken: list[str]
    holder: str
    allocated_at: float
    killed_at: float
    last_renewal: float
    ttl: float
    failures_while_alive: int = 0
    failures_after_kill: list[float] = field(default_factory=list)
    first_success: float | None = None
    reclaimed: list[str] = field(default_factory=list)


def crash_and_reclaim(
    store_kwargs: dict[str, Any],
    store: RangeStore,
    pool: str,
    prefix: int,
    ttl: float,
    alive_for: float,
    poll: float = 0.05,
) -> CrashReport:
    """Start a holder that takes the whole pool, let it renew for `alive_for` seconds while
    we keep failing to allocate, SIGKILL it, then poll until its ranges come back."""
    ready = SPAWN.Queue()
    proc = SPAWN.Process(target=_hold_until_killed, args=(ready, store_kwargs, pool, prefix, ttl))
    proc.start()
    try:
        info = ready.get(timeout=60)
        ours = RangeAllocator(store, [pool], quarantine=0.0, ttl=ttl, run_id="survivor")
        stop = threading.Event()
        failures_alive = 0
        deadline = time.monotonic() + alive_for
        while time.monotonic() < deadline:
            try:
                got = ours.allocate(prefix=prefix)
            except RangeExhaustedError:
                failures_alive += 1
            else:
                raise AssertionError(f"got {got} while its holder was alive and renewing")
            stop.wait(poll)
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGKILL)
        killed_at = time.time()
        proc.join(timeout=10)
        mine = [
            c
            for c in store.claims(ipaddress.ip_network(pool).version)
            if c.holder == info["holder"]
        ]
        report = CrashReport(
            taken=info["taken"],
            holder=info["holder"],
            allocated_at=info["at"],
            killed_at=killed_at,
            last_renewal=max(c.renewed_at for c in mine),
            ttl=ttl,
            failures_while_alive=failures_alive,
        )
        give_up = time.monotonic() + ttl + 10
        while time.monotonic() < give_up:
            before = time.time()
            try:
                got = ours.allocate(prefix=prefix)
            except RangeExhaustedError:
                report.failures_after_kill.append(before)
                stop.wait(poll)
                continue
            report.first_success = time.time()
            report.reclaimed.append(got.cidr)
            break
        while report.first_success is not None:
            try:
                report.reclaimed.append(ours.allocate(prefix=prefix).cidr)
            except RangeExhaustedError:
                break
        ours.close()
        return report
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(timeout=10)


class DoubleBookingStore(RangeStore):
    """A broken store that hands the first aligned subnet to everyone (witness self-test)."""

    kind = "broken"

    def __init__(self) -> None:
        self.clock = time.time

    def try_claim(
        self, pool: IPNetwork, prefix: int, holder: Holder, ttl: float
    ) -> IPNetwork | PoolUsage:
        return ipaddress.ip_network((int(pool.network_address), prefix))

    def renew(self, networks: Sequence[IPNetwork], holder: Holder, ttl: float) -> list[IPNetwork]:
        return []

    def release(self, network: IPNetwork, holder: Holder, quarantine: float) -> None:
        pass

    def claims(self, family: int) -> list[Claim]:
        return []

    def sweep(self, family: int) -> int:
        return 0
