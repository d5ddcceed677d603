"""kill -9 of writer, agent, server or all, with and without the fault proxy, on SQLite and PostgreSQL.

The ordinary run is short (about 30 kills over the four runs below); ``CHECKPOINT_CRASH_ITERS=N``
sets the iterations of each run, and ``-m crash`` alone (the crash loop as its own job) defaults
to 300 per run (sync.md §6.2 step 3). ``bench/soak/crash_soak.py`` is the ≥ 500-kill form that
produced the figures in docs/RELIABILITY.md. ``CHECKPOINT_TEST_SEED`` replays a run; the seed is
in every figures line and in the failure message.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.crash import figures
from tests.crash.harness import CrashConfig, run_crash, seed_from_env, tail_logs

pytestmark = [pytest.mark.crash, pytest.mark.slow]

SHORT = 10  # per backend: half direct, half through the fault proxy; about 30 kills in all


def iterations(request: pytest.FixtureRequest) -> int:
    raw = os.environ.get("CHECKPOINT_CRASH_ITERS")
    if raw:
        return max(2, int(raw))
    if (request.config.option.markexpr or "").strip() == "crash":
        return 300
    return SHORT


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_kill_9_loop_loses_and_doubles_nothing(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """One server database per run; the agent talks to the server directly for the first half of the
    iterations and through the fault proxy for the second (sync.md §6.2: with and without the proxy)."""
    db = f"sqlite:///{tmp_path / 'server.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    base_seed = seed_from_env()
    seed = base_seed + (backend == "postgresql")  # another kill sequence per backend, one seed to replay both
    cfg = CrashConfig(db_url=db, base=tmp_path / "run", iterations=iterations(request), seed=seed,
                      phases=("direct", "faultproxy"), name="crash")
    try:
        fig, problems = run_crash(cfg, progress=print)
    except Exception as exc:
        raise AssertionError(f"crash run failed (CHECKPOINT_TEST_SEED={base_seed}): {exc}\n{tail_logs(cfg.base)}") from exc
    figures.report(fig)
    assert not problems, f"CHECKPOINT_TEST_SEED={base_seed}: " + "; ".join(problems) + "\n" + tail_logs(cfg.base)
    # the numbers §6.7 says every such run must show
    assert fig["lost"] == 0 and fig["duplicates_stored"] == 0 and fig["conflicts"] == 0
    assert fig["gaps_declared"] == 0 and fig["gaps_undeclared"] == 0
    assert fig["events_stored"] >= fig["events_committed"] > 0
    assert fig["events_acked"] == fig["events_stored"]
    assert fig["events_sent"] >= fig["events_stored"]
    assert sum(fig["kills"].values()) >= cfg.iterations
    assert fig["phases"] == {"direct": cfg.iterations // 2, "faultproxy": cfg.iterations - cfg.iterations // 2}
    assert sum(fig["faultproxy"]["faults"].values()) > 0, "the proxy phase injected no fault"
    if cfg.iterations >= 30:
        assert fig["duplicates_received"] > 0, "a fault run must show re-sends (§6.7)"
