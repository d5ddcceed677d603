"""The long form of ``tests/reliability/test_fuzz_bundles.py``: bundle files into the verifier.

One real signed bundle of the demo fleet (keys 1 and a root-rotating keys 2, a manifest with
every part, a server's current statement, the bundle as tar and tar.gz) is mutated over and
over and offered to the checks a gate runs (bundles.md §1, §3; the target is
``tests/reliability/bundle_fuzz.py``):

* raw byte mutations of any file (what a bad disk, a bad link or an attacker without the keys
  can do): every input whose content changed must be rejected (100 %);
* structure-aware JSON mutations re-signed with the right keys (what a buggy or hostile signer
  can produce): any verdict, but never an exception, a reason outside §3.7, or a hang.

    .venv/bin/python -m bench.soak.bundle_fuzz                   # 1 000 000 inputs
    .venv/bin/python -m bench.soak.bundle_fuzz --runs 20000      # a quick look

One JSON line (inputs, bad inputs, rejected, crashes, verdicts by reason, the slowest input),
then a summary. Exit 1 on any crash or any changed file that was accepted (the first failures
are printed with the input).
"""

from __future__ import annotations

import argparse
import faulthandler
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.soak._common import emit, machine, quiet_logging, say, seed_arg, stop_on_sigterm
from tests.reliability.bundle_fuzz import RAW_TARGETS, RESIGNED_TARGETS, Stats, build_corpus, run

TARGETS = RAW_TARGETS + RESIGNED_TARGETS


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="bundle_fuzz", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=f"Targets: {', '.join(TARGETS)}.")
    ap.add_argument("--runs", type=int, default=1_000_000, help="inputs (default 1000000)")
    ap.add_argument("--seed", type=int, default=None, help="default: $CHECKPOINT_TEST_SEED, else random")
    ap.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    ap.add_argument("--max-failures", type=int, default=20, help="stop after this many failures")
    ap.add_argument("--hang-s", type=float, default=5.0,
                    help="a single input slower than this counts as a hang (a failure)")
    ap.add_argument("--watchdog-s", type=float, default=600.0,
                    help="no progress for this long (10 000 inputs): dump every thread's stack and exit 1")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    stop_on_sigterm()
    quiet_logging()
    seed = seed_arg(args.seed)
    with tempfile.TemporaryDirectory(prefix="bundle-fuzz-") as tmp:
        corpus = build_corpus(Path(tmp))
    say(f"bundle_fuzz: seed {seed}, {args.runs} inputs over {len(args.targets)} targets")
    t0 = time.monotonic()

    # An input that never returns cannot report itself: the watchdog is re-armed every 10 000 inputs.
    faulthandler.dump_traceback_later(args.watchdog_s, exit=True)

    def progress(st: Stats) -> None:
        faulthandler.dump_traceback_later(args.watchdog_s, exit=True)
        if st.runs % 100_000 == 0 or st.runs == 10_000:
            say(f"bundle_fuzz: {st.runs} inputs, {st.bad_rejected}/{st.bad} bad rejected, "
                f"{len(st.failures)} failures, {time.monotonic() - t0:.0f} s")

    st = run(corpus, args.runs, seed=seed, targets=tuple(args.targets), progress=progress,
             max_failures=args.max_failures)
    faulthandler.cancel_dump_traceback_later()
    fig = {"test": "bundle_fuzz", "seed": seed, **st.figures()}
    failed = list(st.failures)
    if st.slowest_s > args.hang_s:
        failed.append(f"slowest input {st.slowest_s:.2f} s ({st.slowest_target}) > {args.hang_s} s: a hang")
    missing = [t for t in args.targets if not st.by_target.get(t)]
    if missing and st.runs >= 1000:
        failed.append(f"targets never tried: {', '.join(missing)}")
    fig["hangs"] = int(st.slowest_s > args.hang_s)
    fig["ok"] = not failed
    fig["machine"] = machine()
    emit(fig)
    pct = fig["bad_rejected_pct"]
    print(f"bundle fuzz, seed {seed}: {st.runs} inputs in {st.seconds:.0f} s ({st.runs / max(st.seconds, 1e-9):.0f}/s)")
    print(f"  bad inputs (a file's content changed) {st.bad}, rejected {st.bad_rejected} ({pct} %)")
    print(f"  re-signed mutations accepted (allowed: signed by the right keys) {st.accepted}")
    print(f"  crashes {len(st.failures)}; slowest input {st.slowest_s * 1000:.1f} ms ({st.slowest_target})")
    print("  verdicts: " + ", ".join(f"{k} {v}" for k, v in st.verdicts.most_common(12)))
    if failed:
        print("FAILED:")
        for f in failed[:5]:
            print("  " + f.replace("\n", "\n    "))
        return 1
    print("100 % of bad bundle files rejected, 0 crashes, 0 hangs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
