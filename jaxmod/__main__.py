"""`python -m jaxmod ...`: the `jaxmod` command, for a checkout that is on PYTHONPATH but not installed."""

import sys

from jaxmod.cli import main

sys.exit(main())
