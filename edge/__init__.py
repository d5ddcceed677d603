"""checkpoint gate process: capture, decode, credentials, policy, gate I/O, store, console."""

__version__ = "0.1.0"
# The release date: the trusted clock's floor on a gate's very first start (bundles.md §5.2).
RELEASE_FLOOR = "2026-11-23T00:00:00.000Z"
