"""Long forms of the reliability tests (issue 11): kill -9 soak, fault-proxy soak, bundle fuzz.

Each script imports its harness from ``tests/`` (the short forms run in CI) and adds only the
command line, the length and the report. See README.md in this folder.
"""
