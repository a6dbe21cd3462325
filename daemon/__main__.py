"""`python -m ensign.daemon` is the `ensign` command."""

import sys

from .cli import main

sys.exit(main())
