"""Policy throughput on one core: decisions per second and CertLogic evaluations per second.

    .venv/bin/python bench/policy.py [--seconds S]

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


def _rate(fn: Callable[[], Any], seconds: float, batch: int) -> tuple[float, float]:
    """(calls per second, median µs per call) over ``seconds``, in batches of ``batch`` calls."""
    per_call: list[float] = []
    deadline = time.perf_counter() + seconds
    calls = 0
    elapsed = 0.0
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        for _ in range(batch):
            fn()
        dt = time.perf_counter() - t0
        elapsed += dt
        calls += batch
        per_call.append(dt / batch * 1e6)
    return calls / elapsed, statistics.median(per_call)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="time per measurement (default 3)")
    args = ap.parse_args()

    try:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, as the goal says
        pinned = "pinned to one core"
    except (AttributeError, OSError):
        pinned = "not pinned"

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

    dps, us = _rate(one_decision, args.seconds, 600)

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

    rps, rus = _rate(rules_only, args.seconds / 2, 600)
    k2 = 0

    def digest_only() -> None:
        nonlocal k2
        inputs_digest(datas[k2 % 6])
        k2 += 1

    gps, gus = _rate(digest_only, args.seconds / 2, 600)

    rule = bundle.rules.get("code-colour")
    assert rule is not None
    data = datas[1]
    program = compile_logic(rule.logic)
    program.prepare_strict()
    ev_strict, ev_strict_us = _rate(lambda: program.evaluate(data, strict_paths=True), args.seconds / 2, 2000)
    ev_lax, ev_lax_us = _rate(lambda: program.evaluate(data), args.seconds / 2, 2000)
    ev_fresh, ev_fresh_us = _rate(lambda: evaluate(rule.logic, data), args.seconds / 2, 500)

    def nodes(e: Any) -> int:
        """Operations, var reads and literals (a literal list counts as one)."""
        if isinstance(e, dict):
            ((_op, operands),) = e.items()
            return 1 + (sum(nodes(x) for x in operands) if isinstance(operands, list) else 0)
        return 1

    print(f"machine: {platform.machine()} {platform.processor() or ''} python {platform.python_version()} ({pinned})")
    print(f"decide (default rule set, 6-scan mix {'/'.join(o.lower() for o in outcomes)}, digests included):")
    print(f"  {dps:,.0f} decisions/s   median {us:.1f} µs per decision   (goal >= 20,000/s)")
    print(f"  of which rules only (judge): {rps:,.0f}/s, {rus:.1f} µs;  inputs digest only: {gps:,.0f}/s, {gus:.1f} µs")
    print(f"certlogic, code-colour rule ({nodes(rule.logic)} nodes) on its data object:")
    print(f"  compiled, strict paths: {ev_strict:,.0f} evaluations/s ({ev_strict_us:.2f} µs)")
    print(f"  compiled, lax paths:    {ev_lax:,.0f} evaluations/s ({ev_lax_us:.2f} µs)")
    print(f"  evaluate() compiling each call: {ev_fresh:,.0f} evaluations/s ({ev_fresh_us:.2f} µs); "
          f"compiled once is {ev_strict / ev_fresh:.1f}x faster")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
