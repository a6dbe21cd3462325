"""`python -m ensign.daemon` is the `ensign` command."""

import sys

from ensign.daemon.cli import main

sys.exit(main())
