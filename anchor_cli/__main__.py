"""``python -m anchor_cli``: the ``anchor`` command."""

import contextlib
import sys

from anchor_cli.main import main

with contextlib.suppress(BrokenPipeError):
    sys.exit(main())
