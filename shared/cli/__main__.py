"""``python -m shared.cli``: see :mod:`shared.cli.commands`."""

import sys

from shared.cli.commands import main

sys.exit(main())
