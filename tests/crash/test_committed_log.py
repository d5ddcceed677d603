"""The harness reads the writer's ``COMMITTED`` log as a promise list; a kill can cut its last line.

Found by ``bench/soak/full_kill.py`` (a false "lost" at one kill out of 200): the writer's buffer is
flushed in pieces during a large batch, so SIGKILL or SIGTERM can leave ``COMMITTED <seq> <half a hash>``,
which the next life's ``READY <pid>`` then continues on the same line. Such a line promised nothing
(sync.md §6.7) and must neither count as a lost event nor stop the check with a ``ValueError``.
"""

from __future__ import annotations

from pathlib import Path

from tests.crash.harness import CrashConfig, CrashRun

H1, H2, H3 = "1" * 64, "2" * 64, "3" * 64


def test_cut_lines_are_not_promises_and_do_not_break_the_parse(tmp_path: Path) -> None:
    run = CrashRun(CrashConfig(db_url=f"sqlite:///{tmp_path / 'server.db'}", base=tmp_path / "run"))
    run.committed_log.write_text(
        "READY 100\n"
        f"COMMITTED 1 {H1}\n"
        f"COMMITTED 2 {H2[:30]}READY 101\n"      # cut inside the hash, continued by the next life
        f"COMMITTED 2 {H2}\n"
        "COMMITTED 3READY 102\n"                  # cut inside the seq: three fields, not a number
        f"COMMITTED 3 {H3}\n"
        f"COMMITTED 4 {H1[:40]}\n"                # the last life's last line, cut by the final stop
    )
    assert run.committed() == {1: H1, 2: H2, 3: H3}
    assert run.problems == []


def test_a_seq_logged_whole_with_two_hashes_is_still_a_problem(tmp_path: Path) -> None:
    run = CrashRun(CrashConfig(db_url=f"sqlite:///{tmp_path / 'server.db'}", base=tmp_path / "run"))
    run.committed_log.write_text(f"COMMITTED 1 {H1}\nCOMMITTED 1 {H2}\n")
    run.committed()
    assert run.problems == ["writer logged seq 1 twice with different hashes"]
