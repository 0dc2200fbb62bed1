"""Run the ``orderflow`` command with ``python -m orderflow``."""

import sys

from .cli import main

sys.exit(main())
