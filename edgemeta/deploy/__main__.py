"""`python -m edgemeta.deploy ARGS`: deploy, rollback and status without the `edgemeta` entry point."""

import sys

from edgemeta.deploy import main

sys.exit(main())
