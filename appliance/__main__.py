"""Entry point for `python -m appliance` and the frozen executable."""

import sys

from .cli import main

sys.exit(main())
