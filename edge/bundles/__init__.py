"""The gate side of signed bundles (bundles.md §3–§4): update, crash safety, the bundle in force, freshness.

| module    | holds                                                                        |
|-----------|------------------------------------------------------------------------------|
| updater   | ``BundleUpdater``: poll (P), current (T), keys (K), manifest (M), start-up    |
| fetcher   | the ``Fetcher`` protocol and ``DirectoryFetcher`` (offline import)            |
| files     | the part store and the per-version bundle files, the update lock              |
| view      | ``SQLiteBundle`` (the policy's ``BundleView``) and ``BundleHolder`` (M14 swaps)|
| freshness | ``none|fresh|stale|expired`` (§4.1) and ``bundle_state`` events               |

The sync agent calls ``BundleUpdater.poll(fetcher)`` every poll; ``checkpoint gate
import DIR`` calls ``import_dir``; the gate process keeps a ``BundleHolder`` and a
``FreshnessMonitor`` and reads the view between decisions.
"""

from edge.bundles.fetcher import DirectoryFetcher, Fetcher
from edge.bundles.files import BundleFiles
from edge.bundles.freshness import Freshness, FreshnessMonitor, freshness, report_state
from edge.bundles.updater import (
    ALERT_REASONS,
    AnchorError,
    BundleBusy,
    BundleUpdater,
    PollResult,
    Rejection,
    StartupReport,
    StepResult,
)
from edge.bundles.view import BundleCorrupt, BundleHolder, Pointer, SQLiteBundle, read_pointer

__all__ = [
    "ALERT_REASONS",
    "AnchorError",
    "BundleBusy",
    "BundleCorrupt",
    "BundleFiles",
    "BundleHolder",
    "BundleUpdater",
    "DirectoryFetcher",
    "Fetcher",
    "Freshness",
    "FreshnessMonitor",
    "Pointer",
    "PollResult",
    "Rejection",
    "SQLiteBundle",
    "StartupReport",
    "StepResult",
    "freshness",
    "read_pointer",
    "report_state",
]
