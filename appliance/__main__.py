"""Entry point for `python -m appliance` and the frozen executable."""

import sys

from .cli.main import main

sys.exit(main())
