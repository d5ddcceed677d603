"""Policy throughput on one core: decisions per second and CertLogic evaluations per second.

    .venv/bin/python bench/policy.py [--seconds S] [--cpu N]

Prints figures; never asserts (rules.md §1.8: goal >= 20,000 decisions/s with the
default rule set, digests included; the first recorded run is the floor).

1. ``decide``: the shipped ``config/rules`` in an ``InMemoryBundle``, verified CK1
   credentials minted once, a mix of six scans (admit, whitelist protection, confirmed
   fever, registered visitor, overdue logistics worker, green-lane truck pair). Timed
   per decision including building the data object, every applicable rule and the
   inputs digest; the breakdown shows the rules alone and the digest alone.
2. CertLogic: the ``code-colour`` rule (a mid-size expression: 31 nodes, nested
   ``if``/``and``, ``in`` on literal lists) against its data object, compiled once
   (strict and lax paths), and compiled on every call (``evaluate``) for comparison.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _rate(fn: Callable[[], Any], seconds: float, batch: int) -> tuple[float, float, float]:
    """(calls per wall second, calls per CPU second, median wall µs per call) over ``seconds``.

    Both clocks are shown because the machine may be shared: CPU time leaves out the
    time this process waited for the core, wall time is what a gate would see alone.
    """
    fn()  # warm the caches (compiled rules, parsed instants)
    per_call: list[float] = []
    deadline = time.perf_counter() + seconds
    calls = 0
    wall = cpu = 0.0
    while time.perf_counter() < deadline:
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(batch):
            fn()
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        wall += dt
        cpu += dc
        calls += batch
        per_call.append(dt / batch * 1e6)
    return calls / wall, calls / max(cpu, 1e-9), statistics.median(per_call)


def _calibration() -> float:
    """µs for ``sum(range(1000))``: about 8-10 µs on an idle modern x86 core; shows how loaded this one is."""
    t0 = time.process_time()
    for _ in range(2000):
        sum(range(1000))
    return (time.process_time() - t0) / 2000 * 1e6


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="time per measurement (default 3)")
    ap.add_argument("--cpu", type=int, default=None, help="pin to this CPU (default: one thread, not pinned)")
    args = ap.parse_args()

    # The policy is single-threaded, so a run is one core either way; pinning only helps on
    # an idle machine (on a shared one the chosen core may be the busy one).
    pinned = "one thread, not pinned"
    if args.cpu is not None:
        try:
            os.sched_setaffinity(0, {args.cpu})
            pinned = f"pinned to CPU {args.cpu}"
        except (AttributeError, OSError) as exc:
            pinned = f"not pinned ({exc})"

    from edge.policy.certlogic import compile as compile_logic
    from edge.policy.certlogic import evaluate
    from edge.policy.engine import DecisionInputs, Temperature, decide, evaluation_data, inputs_digest, judge
    from tests.policy.conftest import DRIVER_SUB, LOGISTICS_SUB, NOW, VISITOR_SUB, World

    world = World()
    bundle = world.bundle()
    green_gate = world.green_gate()
    scans: list[DecisionInputs] = [
        world.inputs(bundle=bundle, credential=world.health()),
        world.inputs(bundle=bundle, credential=world.health(colour="yellow", last_test="2022-05-09T22:00:00.000Z")),
        world.inputs(bundle=bundle, credential=world.health(), temperature=Temperature(3790, NOW + 20_000, 2)),
        world.inputs(bundle=bundle, credential=world.health(VISITOR_SUB, role="visitor", firm=None)),
        world.inputs(bundle=bundle, credential=world.health(LOGISTICS_SUB, role="logistics")),
        world.inputs(bundle=bundle, lane="green_lane", gate=green_gate, temperature=None,
                     credential=world.pass_(),
                     partner=world.health(DRIVER_SUB, firm="F0077", role="logistics", flags=["itinerary_star"],
                                          last_test="2022-05-09T02:00:00.000Z")),
    ]
    outcomes = [decide(s).outcome for s in scans]
    i = 0

    def one_decision() -> None:
        nonlocal i
        decide(scans[i % 6])
        i += 1

    calib = _calibration()
    dps, dps_cpu, us = _rate(one_decision, args.seconds, 600)

    datas: list[dict[str, Any]] = []
    for s in scans:
        d = evaluation_data(s)
        assert d is not None
        datas.append(d)
    rule_sets = [bundle.rules.select(d["payload"]["kind"], s.lane, NOW) for d, s in zip(datas, scans, strict=True)]
    j = 0

    def rules_only() -> None:
        nonlocal j
        k = j % 6
        judge(rule_sets[k], datas[k])
        j += 1

    rps, rps_cpu, rus = _rate(rules_only, args.seconds / 2, 600)
    k2 = 0

    def digest_only() -> None:
        nonlocal k2
        inputs_digest(datas[k2 % 6])
        k2 += 1

    gps, gps_cpu, gus = _rate(digest_only, args.seconds / 2, 600)

    rule = bundle.rules.get("code-colour")
    assert rule is not None
    data = datas[1]
    program = compile_logic(rule.logic)
    program.prepare_strict()
    ev_gen, ev_gen_cpu, ev_gen_us = _rate(lambda: rule.strict(data), args.seconds / 2, 2000)
    ev_strict, ev_strict_cpu, ev_strict_us = _rate(lambda: program.evaluate(data, strict_paths=True), args.seconds / 2, 2000)
    ev_lax, ev_lax_cpu, ev_lax_us = _rate(lambda: program.evaluate(data), args.seconds / 2, 2000)
    ev_fresh, ev_fresh_cpu, ev_fresh_us = _rate(lambda: evaluate(rule.logic, data), args.seconds / 2, 500)

    def nodes(e: Any) -> int:
        """Operations, var reads and literals (a literal list counts as one)."""
        if isinstance(e, dict):
            ((_op, operands),) = e.items()
            return 1 + (sum(nodes(x) for x in operands) if isinstance(operands, list) else 0)
        return 1

    print(f"machine: {platform.machine()} {_cpu_name()} python {platform.python_version()} ({pinned}); "
          f"load average {os.getloadavg()[0]:.2f}; calibration sum(range(1000)) = {calib:.1f} µs CPU")
    print(f"decide (default rule set, 6-scan mix {'/'.join(o.lower() for o in outcomes)}, digests included):")
    print(f"  {dps:,.0f} decisions/s wall, {dps_cpu:,.0f} per CPU-second; median {us:.1f} µs per decision"
          "   (goal >= 20,000/s)")
    print(f"  rules only (judge): {rps:,.0f}/s wall, {rps_cpu:,.0f} per CPU-s;  "
          f"inputs digest only: {gps:,.0f}/s wall, {gps_cpu:,.0f} per CPU-s")
    print(f"certlogic, code-colour rule ({nodes(rule.logic)} nodes) on its data object (evaluations/s wall, per CPU-s):")
    print(f"  generated code (the engine's):  {ev_gen:,.0f}  {ev_gen_cpu:,.0f}  ({ev_gen_us:.2f} µs)")
    print(f"  closures, strict paths:         {ev_strict:,.0f}  {ev_strict_cpu:,.0f}  ({ev_strict_us:.2f} µs)")
    print(f"  closures, lax paths:            {ev_lax:,.0f}  {ev_lax_cpu:,.0f}  ({ev_lax_us:.2f} µs)")
    print(f"  evaluate() compiling each call: {ev_fresh:,.0f}  {ev_fresh_cpu:,.0f}  ({ev_fresh_us:.2f} µs)")
    print(f"  ratios: generated / closures {ev_gen / ev_strict:.1f}x; compiled once / compiling each call "
          f"{ev_strict / ev_fresh:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
