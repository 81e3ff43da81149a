"""`python -m edgemeta.serve ARGS`: the board's HTTP service without the `edgemeta` entry point."""

import sys

from edgemeta.serve import main

sys.exit(main())
