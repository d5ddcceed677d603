"""``python -m edge.cli`` runs the ``checkpoint`` command (tests, and machines without the script)."""

import sys

from edge.cli import main

sys.exit(main())
