"""``python -m ferry_client``: the same command line as the ``ferry-client`` script."""

import sys

from ferry_client.cli import main

sys.exit(main())
