"""Batches through the fault proxy without kills (sync.md §6.3, last paragraph), with the invariants of §6.2.

The short form sends 150 small batches (at most 10 events each) through
the proxy at the default 5 % per fault, with the agent's backoff and the proxy's delays
shortened so that it fits the ordinary run; ``bench/soak/proxy_soak.py`` is the 5 000-batch
form with the defaults of sync.md App. A, whose figures are in docs/RELIABILITY.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.crash import figures
from tests.crash.harness import CrashConfig, run_batches, seed_from_env, tail_logs

pytestmark = pytest.mark.slow


def test_150_batches_through_every_fault_lose_and_double_nothing(tmp_path: Path) -> None:
    seed = seed_from_env()
    cfg = CrashConfig(db_url=f"sqlite:///{tmp_path / 'server.db'}", base=tmp_path / "run", seed=seed,
                      phases=("faultproxy",), iterations=0, writer_rate=40.0, batch_max_events=10,
                      backoff_base_s=0.05, backoff_cap_s=0.5, proxy_delay_s=(0.1, 1.0), name="proxy_batches")
    try:
        fig, problems = run_batches(cfg, 150)
    except Exception as exc:
        raise AssertionError(f"proxy run failed (CHECKPOINT_TEST_SEED={seed}): {exc}\n{tail_logs(cfg.base)}") from exc
    figures.report(fig)
    assert not problems, f"CHECKPOINT_TEST_SEED={seed}: " + "; ".join(problems) + "\n" + tail_logs(cfg.base)
    assert fig["batches"] >= 150
    assert fig["lost"] == 0 and fig["duplicates_stored"] == 0 and fig["conflicts"] == 0
    assert fig["gaps_declared"] == 0 and fig["gaps_undeclared"] == 0
    assert fig["events_stored"] >= fig["events_committed"] > 0 and fig["events_acked"] == fig["events_stored"]
    faults = fig["faultproxy"]["faults"]
    assert len(faults) >= 7, faults             # 150+ requests at 5 % each: (nearly) every fault happened
    assert fig["duplicates_received"] > 0       # lost answers were re-sent and recognised (§6.7)
