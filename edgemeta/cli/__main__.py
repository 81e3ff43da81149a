"""`python -m edgemeta.cli ARGS`: the `edgemeta` command without its entry point."""

import sys

from edgemeta.cli import main

sys.exit(main())
