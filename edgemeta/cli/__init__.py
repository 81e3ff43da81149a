"""The `edgemeta` command: train, evaluate, export, compress, adapt, device, deploy, rollback, status, preset, demo.

One module per command (`edgemeta.cli.train`, ...), each with `add_arguments(parser, argv)` and
`run(args) -> int`. Only the command that runs defines its arguments and imports what it needs, inside
its handler: `adapt`, `device`, `deploy`, `rollback`, `status` and `evaluate BUNDLE` need only the
runtime (no TensorFlow). Only modules of this package import `converters`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

# command -> the module that defines and runs it, in the order `edgemeta --help` lists them
COMMANDS = {
    "train": "train", "evaluate": "evaluate", "export": "export", "compress": "compress", "preset": "preset",
    "adapt": "adapt", "device": "device", "deploy": "deploy", "rollback": "deploy", "status": "deploy", "demo": "demo",
}


def command_module(command: str) -> ModuleType:
    """The module of `command` (e.g. `edgemeta.cli.train` for "train")."""
    if command not in COMMANDS:
        raise ValueError(f"Unknown command {command!r}. Expected one of {list(COMMANDS)}")
    return importlib.import_module(f"{__name__}.{COMMANDS[command]}")


def _help(command: str) -> str:
    text = command_module(command).HELP
    return text[command] if isinstance(text, dict) else text


def _parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    argv = list(argv)
    parser = argparse.ArgumentParser(prog="edgemeta", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        p = sub.add_parser(command, help=_help(command))
        if argv[:1] == [command]:  # the other commands' options (and their imports) are not needed
            command_module(command).add_arguments(p, argv)
    return parser


# What `pip install 'edgemeta[train]'` adds to a board's `edgemeta[device]`.
WORKSTATION_MODULES = ("tensorflow", "tf_keras", "keras", "tensorflow_model_optimization", "sklearn", "matplotlib")


def main(argv: list[str] | None = None) -> int:
    """Runs `edgemeta ARGV`; an expected error (bad input, a refused bundle, a missing workstation module)
    is one line on stderr and exit code 2, never a traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv and argv[0] in COMMANDS else None
    try:
        # Inside the try: a command's arguments may import what a board's venv lacks.
        args = _parser(argv).parse_args(argv)
        command, args.argv = args.command, argv
        return command_module(args.command).run(args)
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in WORKSTATION_MODULES:
            raise
        # A board venv (edgemeta[device]) has no TensorFlow: say what to install, not a traceback.
        return _error(command, "this needs the workstation side, which is not installed: "
                               f"pip install 'edgemeta[train]'. Received: no module {e.name!r}")
    except MemoryError as e:
        budget = sys.modules.get("edgemeta.runtime.budget")  # not imported here: the CLI starts small
        if budget is None or not isinstance(e, budget.MemoryBudgetError):
            raise
        return _error(command, str(e))
    except (ValueError, KeyError, OSError, TypeError, RuntimeError) as e:
        return _error(command, str(e))


def _error(command: str | None, message: str) -> int:
    """Prints `edgemeta COMMAND: error: MESSAGE` as one line (a message of several, e.g. a tool's output,
    is joined with ' | '); returns the exit code 2."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    print(f"edgemeta{' ' + command if command else ''}: error: {' | '.join(lines)}", file=sys.stderr)
    return 2
