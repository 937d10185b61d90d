"""``python -m wagi`` is the ``wagi`` command."""

import sys

from wagi.cli import main

sys.exit(main())
