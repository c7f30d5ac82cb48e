"""``python -m cluster``: the zoolens CLI from a checkout (what ``ray job submit --working-dir .`` runs)."""

import sys

from cluster.cli import main

sys.exit(main())
