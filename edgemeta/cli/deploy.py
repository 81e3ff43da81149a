"""`edgemeta deploy | rollback | status`: bundles to boards over SSH (the work is `edgemeta.deploy`'s)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

HELP = {
    "deploy": "push a bundle to boards over SSH: verified, switched atomically, rollback-able",
    "rollback": "switch boards back to their previous version",
    "status": "what runs where: each board's current version, versions kept, store",
}


def add_arguments(parser: argparse.ArgumentParser, argv: Sequence[str] = ()) -> None:
    """`argv` is the whole command line; its first word is the command (deploy, rollback or status)."""
    # Called only when one of these commands runs: importing edgemeta.deploy costs the board's other commands.
    from edgemeta.deploy import add_arguments as add_deploy_arguments

    add_deploy_arguments(parser, argv[0])


def run(args: argparse.Namespace) -> int:
    from edgemeta.deploy import run_from_args

    return run_from_args(args)
