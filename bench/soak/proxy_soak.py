"""The long form of ``tests/reliability/test_proxy_batches.py`` (sync.md §6.3, last paragraph).

5 000 upload requests of the real agent through the fault proxy (``tests/faultproxy.py``) to
the real server, no kills: every fault of §6.3 at 5 % each (drop request, drop response,
duplicate, delay 0.1-5 s, reorder, 429/500/503, truncate, reset, cut request), the agent with
the backoff of sync.md App. A (base 2 s, cap 600 s). Then faults off, drain, and the checks of
the kill -9 run (G1-G6): ``tests/crash/harness.py:run_batches`` does all of it.

    .venv/bin/python -m bench.soak.proxy_soak                     # 5 000 batches
    .venv/bin/python -m bench.soak.proxy_soak --batches 300       # a quick look

Batches are capped at 50 events and the writer aims at 60 events/s (both options): with the
default 500-event cap the agent finds the whole backlog in one batch and sends about one
request per second, so 5 000 requests would take hours without exercising anything more.
One JSON line (the numbers of §6.7 plus the proxy's counters), then a summary. Exit 1 when a
guarantee broke, a fault never happened, or fewer batches went through than asked.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.soak._common import emit, machine, say, section67_violations, seed_arg, stop_on_sigterm, tally
from tests.crash.harness import CrashConfig, run_batches, tail_logs
from tests.faultproxy import FAULTS


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="proxy_soak", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Figures: one JSON line and a summary on stdout; progress on stderr.")
    ap.add_argument("--batches", type=int, default=5000, help="upload requests through the proxy (default 5000)")
    ap.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    ap.add_argument("--seed", type=int, default=None, help="default: $CHECKPOINT_TEST_SEED, else random")
    ap.add_argument("--proxy-p", type=float, default=0.05, help="probability of each fault per request (default 0.05)")
    ap.add_argument("--delay", type=float, nargs=2, default=(0.1, 5.0), metavar=("MIN_S", "MAX_S"),
                    help="range of the delay fault (default 0.1 5)")
    ap.add_argument("--batch-max-events", type=int, default=50)
    ap.add_argument("--writer-rate", type=float, default=60.0, help="events per second the writer aims at")
    ap.add_argument("--backoff-base", type=float, default=2.0, help="agent backoff base, s (App. A: 2)")
    ap.add_argument("--backoff-cap", type=float, default=600.0, help="agent backoff cap, s (App. A: 600)")
    ap.add_argument("--drain-limit", type=float, default=300.0, help="seconds the final drain may take (G6)")
    ap.add_argument("--timeout", type=float, default=4 * 3600.0, help="give up after this many seconds")
    ap.add_argument("--workdir", type=Path, default=None, help="where the run's files go (default: a new /tmp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory even when the run passed")
    ap.add_argument("--pg-bindir", type=Path, default=None, help="PostgreSQL server programs (as tests/pg.py finds)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    stop_on_sigterm()
    seed = seed_arg(args.seed)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="proxy-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    say(f"proxy_soak: seed {seed}, {args.batches} batches on {args.backend}, work dir {work}")
    pg: Any = None
    if args.backend == "postgresql":
        from bench.soak.crash_soak import start_postgres

        pg = start_postgres(args.pg_bindir)
    failed: list[str] = []
    try:
        db_url = pg.url if pg is not None else f"sqlite:///{work / 'server.db'}"
        cfg = CrashConfig(db_url=db_url, base=work / "run", seed=seed, phases=("faultproxy",), iterations=0,
                          proxy_p=args.proxy_p, proxy_delay_s=tuple(args.delay), writer_rate=args.writer_rate,
                          batch_max_events=args.batch_max_events, backoff_base_s=args.backoff_base,
                          backoff_cap_s=args.backoff_cap, drain_limit_s=args.drain_limit, name="proxy_soak")
        t0 = time.monotonic()
        try:
            fig, problems = run_batches(cfg, args.batches, progress=say, timeout_s=args.timeout)
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            say(f"proxy_soak: {exc!r}\n{tail_logs(cfg.base)}")
            print(f"FAILED: harness error {exc!r} (logs kept in {work})")
            return 1
    finally:
        if pg is not None:
            pg.stop()
    fig["seconds"] = round(time.monotonic() - t0, 1)
    fig["machine"] = machine()
    faults = fig.get("faultproxy", {}).get("faults", {})
    failed = problems + section67_violations(fig, fault_run=True)
    if fig["batches"] < args.batches:
        failed.append(f"only {fig['batches']} batches went through the proxy")
    never = [f for f in FAULTS if not faults.get(f)] if args.proxy_p > 0 and args.batches >= 1000 else []
    if never:
        failed.append(f"faults that never happened: {', '.join(never)}")
    fig["ok"] = not failed
    emit(fig)
    t = tally(fig)
    proxy = fig.get("faultproxy", {})
    print(f"proxy soak, seed {seed}, {args.backend}: {fig['batches']} upload requests through the proxy "
          f"({proxy.get('requests', 0)} requests in all) in {fig['seconds']:.0f} s")
    print("  faults: " + ", ".join(f"{k} {v}" for k, v in sorted(faults.items())))
    print(f"  created {t['created']}, acked {t['acked']}, stored {t['stored']}, duplicated {t['duplicated']}, "
          f"missing {t['missing']}; events sent {fig['events_sent']} (re-sends recognised "
          f"{fig['duplicates_received']}); drain {fig['max_drain_s']} s")
    if failed:
        say(tail_logs(cfg.base))
        print(f"FAILED (logs kept in {work}):")
        for f in failed:
            print("  " + f)
        return 1
    print("every guarantee held (G1-G6 of sync.md §6.1)")
    if not args.keep and args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
