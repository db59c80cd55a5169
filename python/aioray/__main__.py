"""``python -m aioray``: the same as the ``aioray`` command."""

import sys

from aioray._cli import main

sys.exit(main())
