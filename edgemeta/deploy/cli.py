"""The command line of `edgemeta deploy | rollback | status` (and `python -m edgemeta.deploy`): the
arguments, running them, and the per-host table."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from edgemeta.deploy.actions import HostResult, deploy, rollback, status
from edgemeta.deploy.ssh import ENV_SSH_OPTIONS, SSHOptions
from edgemeta.format.units import parse_rate


def _limit_rate(text: str) -> int:
    """--limit-rate's argparse type: bytes per second as `edgemeta.format.units.parse_rate` reads them."""
    try:
        return parse_rate(text, "--limit-rate")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """Adds the arguments of `command` ("deploy", "rollback" or "status") to `parser`."""
    if command not in ("deploy", "rollback", "status"):
        raise ValueError(f"command must be deploy, rollback or status. Received: {command!r}")
    parser.set_defaults(deploy_command=command)
    if command == "deploy":
        parser.add_argument("bundle", help="bundle directory (model.tflite + manifest.json)")
    parser.add_argument("--to", action="append", required=True, metavar="ssh://[user@]host[:port]/path",
                        help="a board and the directory edgemeta manages there (repeatable: several hosts)")
    if command == "deploy":
        parser.add_argument("--device", help="a board profile (edgemeta device list) or a profile .json: refuse "
                                             "before uploading when the adapter would not fit its memory budget")
        parser.add_argument("--classes", type=int, default=100,
                            help="classes to plan for when the board has no store yet (default 100)")
        parser.add_argument("--shots", type=int, default=5, help="shots per class to plan for (default 5)")
        parser.add_argument("--drop-classes", action="store_true",
                            help="on a model upgrade, deploy even though the board's classes cannot be re-enrolled "
                                 "(no kept support images): the new version starts without them")
        parser.add_argument("--keep", type=int, default=3, help="versions kept on the board (default 3, at least 2)")
        parser.add_argument("--limit-rate", type=_limit_rate, metavar="BYTES/S",
                            help="upload at most this fast, e.g. 500K or 2M (a slow or shared link)")
    if command == "rollback":
        parser.add_argument("--version", help="switch to this version id instead of the previous one")
    if command in ("deploy", "rollback"):
        parser.add_argument("--before-switch", default="", metavar="CMD",
                            help="shell command run on the board before the switch (on a model upgrade, before "
                                 "its store is read), e.g. 'sudo systemctl stop edgemeta-adapter'; if it fails "
                                 "nothing is switched")
        parser.add_argument("--after-switch", default="", metavar="CMD",
                            help="shell command run on the board after the switch (and after a refused one if "
                                 "--before-switch ran), e.g. 'sudo systemctl start edgemeta-adapter'")
    if command == "status":
        parser.add_argument("--verify", action="store_true",
                            help="re-hash the current version's files on the board and check the whole store")
    parser.add_argument("--identity", "-i", help="ssh private key file")
    parser.add_argument("--ssh-config", "-F", help="ssh client configuration file")
    parser.add_argument("--ssh-option", "-o", action="append", default=[], metavar="KEY=VALUE",
                        help=f"an ssh_config option, repeatable (more raw ssh arguments: ${ENV_SSH_OPTIONS})")
    parser.add_argument("--connect-timeout", type=int, default=10, help="seconds (default 10)")
    parser.add_argument("--parallel", type=int, default=4, help="hosts handled at once (default 4)")
    parser.add_argument("--json", action="store_true", help="print the per-host results as JSON")


def run_from_args(args: argparse.Namespace) -> int:
    """Runs the command `add_arguments` set up; prints a per-host table (or JSON). 0 when every host
    succeeded, 1 when one failed, 2 for bad arguments."""
    command = args.deploy_command
    ssh = SSHOptions.from_env(identity=args.identity, config=args.ssh_config, options=tuple(args.ssh_option),
                              connect_timeout=args.connect_timeout)
    log = (lambda text: print(text, file=sys.stderr, flush=True)) if args.json else (lambda text: print(text, flush=True))
    try:
        if command == "deploy":
            results = deploy(args.bundle, args.to, device=args.device, classes=args.classes, shots=args.shots,
                             drop_classes=args.drop_classes, keep=args.keep, ssh=ssh, rate=args.limit_rate,
                             before_switch=args.before_switch, after_switch=args.after_switch,
                             parallel=args.parallel, log=log)
        elif command == "rollback":
            results = rollback(args.to, version=args.version, ssh=ssh, before_switch=args.before_switch,
                               after_switch=args.after_switch, parallel=args.parallel, log=log)
        else:
            results = status(args.to, ssh=ssh, verify=args.verify, parallel=args.parallel)
    except (ValueError, FileNotFoundError) as e:
        print(f"edgemeta {command}: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        print(format_results(results))
    return 0 if all(r.ok for r in results) else 1


def format_results(results: Sequence[HostResult]) -> str:
    """The per-host table: host, ok/FAILED, version, message."""
    rows = [("HOST", "RESULT", "VERSION", "MESSAGE")]
    rows += [(r.target, "ok" if r.ok else "FAILED", r.version or "-", r.message) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + "  " + row[3] for row in rows)


def main(argv: Sequence[str] | None = None) -> int:
    package_doc = sys.modules[__package__].__doc__  # the one line that says what edgemeta.deploy does
    parser = argparse.ArgumentParser(prog="python -m edgemeta.deploy", description=package_doc)
    sub = parser.add_subparsers(dest="command", required=True)
    for command, text in (("deploy", "deploy a bundle to boards"), ("rollback", "switch boards back"),
                          ("status", "show what runs where")):
        add_arguments(sub.add_parser(command, help=text), command)
    return run_from_args(parser.parse_args(argv))

