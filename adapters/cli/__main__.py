"""``python -m thaw.adapters.cli``: the ``thaw`` command."""

import sys

from thaw.adapters.cli.command import main

sys.exit(main())
