"""The ≥ 500-kill form of ``tests/crash`` (sync.md §6.2, issue 11 item 2).

SIGKILL the writer (the gate's appender), the real agent, the real server, or all three, at
random moments and at the named crash points, while events flow; half of each backend's
iterations with the agent talking to the server directly and half through the fault proxy of
§6.3; on SQLite and on PostgreSQL (a throw-away cluster started like ``tests/pg.py`` does).
Afterwards it counts events created (``COMMITTED`` lines), acked, stored, duplicated and missing
and checks G1-G6 (``tests/crash/harness.py`` does all of it; this file is the command line).

    .venv/bin/python -m bench.soak.crash_soak                       # 500 iterations = ≥ 500 kills
    .venv/bin/python -m bench.soak.crash_soak --kills 40 --backends sqlite   # a quick look

One JSON line per run (the numbers of §6.7), one ``crash_soak`` total line, then a summary.
Exit 0 only when every run kept every guarantee; 1 otherwise (the logs are kept and named).
``--seed`` or ``CHECKPOINT_TEST_SEED`` replays a run (the PostgreSQL run uses seed + 1).
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.soak._common import (
    emit,
    machine,
    say,
    section67_violations,
    seed_arg,
    stop_on_sigterm,
    tally,
)
from tests.crash.harness import VICTIMS, CrashConfig, run_crash, tail_logs

BACKENDS = ("sqlite", "postgresql")
PHASES = ("direct", "faultproxy")


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="crash_soak", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Figures: one JSON line per run and a total line on stdout; progress on stderr.")
    ap.add_argument("--kills", type=int, default=500,
                    help="iterations in all, split over the backends; each iteration kills at least one process, "
                         "crash points that fire between iterations add more (default 500)")
    ap.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    ap.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES),
                    help="agent → server directly and/or through the fault proxy; iterations split evenly")
    ap.add_argument("--victims", nargs="+", choices=VICTIMS, default=list(VICTIMS))
    ap.add_argument("--seed", type=int, default=None, help="default: $CHECKPOINT_TEST_SEED, else random")
    ap.add_argument("--writer-rate", type=float, default=150.0, help="events per second the writer aims at")
    ap.add_argument("--proxy-p", type=float, default=0.05, help="probability of each proxy fault per request")
    ap.add_argument("--arm-p", type=float, default=0.5, help="probability a restarted process is armed at a crash point")
    ap.add_argument("--drain-limit", type=float, default=120.0, help="seconds the final drain may take (G6)")
    ap.add_argument("--workdir", type=Path, default=None, help="where the runs' files go (default: a new /tmp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory even when every run passed")
    ap.add_argument("--pg-bindir", type=Path, default=None,
                    help="PostgreSQL server programs (default: as tests/pg.py finds them, e.g. "
                         "/usr/lib/postgresql/15/bin)")
    args = ap.parse_args(argv)
    if args.kills < 2 * len(args.backends):
        ap.error("--kills must be at least 2 per backend")
    return args


def start_postgres(bindir: Path | None) -> Any:
    """A throw-away cluster, exactly as the test set-up starts one (tests/pg.py)."""
    from tests.pg import PostgresServer, find_bindir

    found = bindir or find_bindir()
    if found is None or not (found / "initdb").exists():
        raise SystemExit("crash_soak: no PostgreSQL server programs found (--pg-bindir, or apt-get install "
                         "postgresql); run with --backends sqlite to skip PostgreSQL")
    server = PostgresServer(found)
    server.start()
    return server


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    stop_on_sigterm()
    seed = seed_arg(args.seed)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="crash-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    per_backend = math.ceil(args.kills / len(args.backends))
    env = machine()
    say(f"crash_soak: seed {seed}, {per_backend} iterations per backend {args.backends}, phases {args.phases}, "
        f"work dir {work}")
    runs: list[dict[str, Any]] = []
    failed: list[str] = []
    t0 = time.monotonic()
    for backend in args.backends:
        base = work / backend
        pg = start_postgres(args.pg_bindir) if backend == "postgresql" else None
        try:
            db_url = pg.url if pg is not None else f"sqlite:///{base / 'server.db'}"
            base.mkdir(parents=True, exist_ok=True)
            cfg = CrashConfig(db_url=db_url, base=base / "run", iterations=per_backend, seed=seed + (backend == "postgresql"),
                              phases=tuple(args.phases), proxy_p=args.proxy_p, arm_p=args.arm_p,
                              writer_rate=args.writer_rate, drain_limit_s=args.drain_limit,
                              victims=tuple(args.victims), name="crash_soak")
            r0 = time.monotonic()
            try:
                fig, problems = run_crash(cfg, progress=say)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # the harness gave up (a process exited by itself, no drain): a failure
                failed.append(f"{backend}: harness error {exc!r}")
                say(f"crash_soak {backend}: {exc!r}\n{tail_logs(cfg.base)}")
                continue
            fig["seconds"] = round(time.monotonic() - r0, 1)
            emit(fig)
            runs.append(fig)
            bad = problems + section67_violations(fig, fault_run="faultproxy" in args.phases and per_backend >= 30)
            if fig["kills_total"] < cfg.iterations:
                bad.append(f"only {fig['kills_total']} kills in {cfg.iterations} iterations")
            if bad:
                failed += [f"{backend} seed {cfg.seed}: {b}" for b in bad]
                say(tail_logs(cfg.base))
        finally:
            if pg is not None:
                pg.stop()
    total = {k: sum(tally(r)[k] for r in runs) for k in ("created", "acked", "stored", "duplicated", "missing")}
    kills = {v: sum(r["kills"].get(v, 0) for r in runs) for v in VICTIMS}
    summary = {"test": "crash_soak", "seed": seed, "backends": [r["backend"] for r in runs],
               "iterations": sum(r["iterations"] for r in runs), "kills": kills, "kills_total": sum(kills.values()),
               "crashpoints_fired": sum(sum(r["crashpoints_fired"].values()) for r in runs), **total,
               "lost": sum(r["lost"] for r in runs), "duplicates_stored": sum(r["duplicates_stored"] for r in runs),
               "duplicates_received": sum(r["duplicates_received"] for r in runs),
               "conflicts": sum(r["conflicts"] for r in runs), "max_drain_s": max((r["max_drain_s"] for r in runs),
                                                                                  default=None),
               "seconds": round(time.monotonic() - t0, 1), "ok": not failed and len(runs) == len(args.backends),
               "machine": env}
    emit(summary)
    print(f"crash soak, seed {seed}: {summary['kills_total']} kills ({', '.join(f'{k} {v}' for k, v in kills.items())}; "
          f"{summary['crashpoints_fired']} at named crash points) over {summary['iterations']} iterations on "
          f"{', '.join(summary['backends']) or 'nothing'} in {summary['seconds']:.0f} s")
    for r in runs:
        t = tally(r)
        print(f"  {r['backend']:<10} kills {r['kills_total']:>4}  created {t['created']:>7}  acked {t['acked']:>7}  "
              f"stored {t['stored']:>7}  duplicated {t['duplicated']}  missing {t['missing']}  "
              f"re-sends recognised {r['duplicates_received']}  drain {r['max_drain_s']} s")
    print(f"  total      created {total['created']}, acked {total['acked']}, stored {total['stored']}, "
          f"duplicated {total['duplicated']}, missing {total['missing']}")
    if failed:
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
