"""``python -m medloc_core.cli``: the ``medloc`` command (``accelerate launch -m medloc_core.cli train`` uses it)."""

import sys

from medloc_core.cli import entry

sys.exit(entry())
