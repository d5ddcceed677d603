"""Test helper: append events in a loop and print ``COMMITTED <seq> <hash>`` after each return.

Run as a subprocess by the kill -9 tests: ``python writer.py DATA_DIR DEVICE_ID SEED [LOG]``.
With LOG, lines go to that file (flushed after each batch) and ``READY`` is written once the store
is open, so the harness can time its kill from when appends really start.
Mixed batch sizes exercise both single appends and multi-event transactions.

``python writer.py --serve`` is a fork server for kill loops: imports once, then for each line
``DATA_DIR DEVICE_ID SEED LOG`` on stdin forks a writer child, prints ``PID <pid>``, waits for
it (the harness kills it) and prints ``DONE <status>``. The child is a real process killed by a
real SIGKILL mid-append; only the interpreter start-up is shared (it was most of the loop's time).
"""

from __future__ import annotations

import os
import random
import sys

from edge.store.events import EventStore


def serve() -> None:
    for line in sys.stdin:
        args = line.split()
        pid = os.fork()
        if pid == 0:
            try:
                write(args[0], args[1], int(args[2]), args[3])
            finally:
                os._exit(1)
        print(f"PID {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"DONE {status}", flush=True)


def main() -> None:
    if sys.argv[1] == "--serve":
        serve()
        return
    write(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else None)


def write(data_dir: str, device_id: str, seed: int, log: str | None) -> None:
    rng = random.Random(seed)
    store = EventStore(data_dir, device_id, max_db_mb=64)
    out = open(log, "a", encoding="utf-8") if log else sys.stdout
    out.write("READY\n")
    out.flush()
    n = 0
    while True:
        size = rng.choice([1, 1, 1, 3, 17, 50])
        items = []
        for _ in range(size):
            n += 1
            at = {"wall": "2026-11-23T08:00:00.000Z", "clock": "synced",
                  "boot": "3f6c1d2e-8a4b-4c5d-9e0f-1a2b3c4d5e6f", "mono_ms": n}
            items.append(("decision", {"outcome": rng.choice(["admit", "deny", "refer"]), "n": n,
                                       "note": "x" * rng.randrange(0, 600)}, at))
        results = store.append_many(items)
        for r in results:
            out.write(f"COMMITTED {r.seq} {r.hash}\n")
        out.flush()


if __name__ == "__main__":
    main()
