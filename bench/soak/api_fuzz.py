"""The long form of ``tests/reliability/test_schemathesis.py``: schemathesis against the served OpenAPI.

The real server (SQLite) with an enrolled device, a published bundle, an admin and an auditor
token; every operation of the schema it serves, positive and negative cases, device requests
signed, tokens on admin and audit routes; checks: no 5xx, documented statuses, content types,
headers and response schemas, negative data refused. The test runs 12 examples per operation
and mode; this script runs the same test function (imported, not copied) with more.

    .venv/bin/python -m bench.soak.api_fuzz                     # 200 examples per operation and mode
    .venv/bin/python -m bench.soak.api_fuzz --examples 20       # a quick look

One JSON line (operations, requests, answers by status, 5xx, failures), then a summary.
Exit 1 on any failure or any 5xx.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.soak._common import emit, machine, quiet_logging, say, stop_on_sigterm


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="api_fuzz", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=200,
                    help="hypothesis examples per operation and generation mode (the test: 12; default 200)")
    args = ap.parse_args(argv)
    if args.examples < 1:
        ap.error("--examples must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    stop_on_sigterm()
    quiet_logging()
    import tests.reliability.test_schemathesis as target

    target.EXAMPLES = args.examples  # read by the test function at call time
    t0 = time.monotonic()
    error = ""
    with tempfile.TemporaryDirectory(prefix="api-fuzz-") as tmp:
        api = target.Api(Path(tmp))
        try:
            say(f"api_fuzz: {args.examples} examples per operation and mode against {api.url}")
            # hypothesis prints its notes (a reproduction seed for each operation with no negative
            # cases) on stdout outside pytest; stdout is for the figures
            try:
                with contextlib.redirect_stdout(sys.stderr):
                    target.test_every_operation_answers_within_its_contract(api)
            except AssertionError as exc:
                error = str(exc)
        finally:
            api.close()
    statuses = dict(sorted(api.statuses.items()))
    fig = {"test": "api_fuzz", "examples_per_operation": args.examples, "operations": api.operations,
           "failures": api.failures if api.failures >= 0 else None, "requests": sum(statuses.values()),
           "status_5xx": sum(v for k, v in statuses.items() if k.startswith("5")), "statuses": statuses,
           "seconds": round(time.monotonic() - t0, 1)}
    fig["ok"] = not error and fig["failures"] == 0 and fig["status_5xx"] == 0
    fig["machine"] = machine()
    emit(fig)
    print(f"api fuzz: {fig['operations']} operations, {fig['requests']} requests in {fig['seconds']:.0f} s; "
          f"answers {', '.join(f'{k} {v}' for k, v in statuses.items())}")
    print(f"  failures {fig['failures']}, 5xx {fig['status_5xx']}")
    if not fig["ok"]:
        print("FAILED:\n" + (error[:5000] or "see the figures line"))
        return 1
    print("0 failures, 0 server errors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
