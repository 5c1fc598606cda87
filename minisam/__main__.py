"""``python -m minisam``: the ``minisam`` command (also what ``torchrun ... -m minisam`` runs)."""

import sys

from minisam.cli.main import main

sys.exit(main())
