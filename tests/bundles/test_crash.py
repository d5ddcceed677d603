"""bundles.md §3.6 / issue 6 acceptance: SIGKILL the applying process at random points of K and M,
at least 200 times; after every kill the restarted gate has the old or the new bundle fully in force,
never a mix, and the version never goes down (the checks are in ``crash_harness``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bundles.crash_harness import POINTS

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.crash
@pytest.mark.timeout(1500)  # about a minute on an idle 2-core machine; far more when it is shared
def test_sigkill_loop_leaves_old_or_new_bundle_never_a_mix() -> None:
    proc = subprocess.run([sys.executable, "-m", "tests.bundles.crash_harness", "--runs", "220", "--seed", "6"],
                          cwd=REPO, capture_output=True, text=True, timeout=1450, check=False)
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    assert stats["failures"] == [], stats["failures"]
    assert proc.returncode == 0
    assert stats["runs"] >= 200
    assert stats["killed"] >= 100, "most runs are killed somewhere in K or M"
    assert stats["timed_kills"] >= 50, "random kill timing, not only named points"
    assert stats["old"] >= 20 and stats["new"] >= 20, "kills land both before and after the switch"
    fired = set(stats["by_point"])
    m_points = {p for p in POINTS if p.startswith("bundle.m")}
    assert len(fired & m_points) >= len(m_points) - 2, f"crash points hit: {sorted(fired)}"
    assert fired & {p for p in POINTS if p.startswith("bundle.k6")}, "a kill inside a keys update"
    assert stats["final_keys_version"] > 1, "keys rotations happened in between"
