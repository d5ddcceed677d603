"""The console's tests against the real gate process reuse the gate tests' fleet and harness."""

from tests.gate.conftest import bundle_dir, installed, make_gate, world  # noqa: F401
