"""`edgemeta device list | check | serve`: board profiles, whether a bundle fits one, and the on-board HTTP service."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

HELP = "board profiles: list them, or check that a bundle fits one (memory, Edge TPU)"


def add_arguments(parser: argparse.ArgumentParser, argv: Sequence[str] = ()) -> None:
    """`argv` is the whole command line: the service's options are defined only when `device serve` runs."""
    device = parser.add_subparsers(dest="device_command", required=True)
    device.add_parser("list", help="the known board profiles")
    q = device.add_parser("check", help="predict the adapter's memory for BUNDLE on a board; exit 0 fits, 1 does not")
    q.add_argument("bundle", help="bundle directory")
    q.add_argument("--device", required=True, help="a profile name (edgemeta device list) or a profile .json")
    q.add_argument("--classes", type=int, default=1000, help="classes you plan to enroll (default 1000)")
    q.add_argument("--shots", type=int, default=5, help="shots per class (default 5)")
    q.add_argument("--batch", type=int, help="images per interpreter call (default: as on a board, "
                   "edgemeta.profiles.board_batch: 8, fewer for large inputs, 1 for 224x224 photos)")
    q.add_argument("--prototype-dtype", choices=["float32", "int8"], default="float32")
    q.add_argument("--keep-support", choices=["embeddings", "images"], default=None)
    q.add_argument("--budget", help="override the profile's memory budget, e.g. 48MB")
    q.add_argument("--python-api", action="store_true",
                   help="plan for a Python program using the adapter, not for `edgemeta device serve` (whose "
                        "largest request, at its default limits, is otherwise set aside)")
    q.add_argument("--json", action="store_true", help="print the plan as JSON")
    # Importing the service costs the board's other commands memory and start-up time for nothing.
    serve = device.add_parser("serve", help="the on-board HTTP/JSON service (health, labels, enroll, classify, "
                                            "forget); see docs/service.md")
    if list(argv[:2]) == ["device", "serve"]:
        from edgemeta.serve import add_serve_arguments

        add_serve_arguments(serve)


def run(args: argparse.Namespace) -> int:
    if args.device_command == "serve":
        from edgemeta.serve import serve_from_args

        return serve_from_args(args)
    if args.device_command == "list":
        return _list()
    return _check(args)


def _list() -> int:
    from edgemeta.profiles import list_profiles, load_profile

    for key in list_profiles():
        profile = load_profile(key)
        print(f"{key:24s} {profile.name} — budget {profile.memory_budget_mb} MB, {profile.interpreter}"
              + (f", delegate {profile.delegate}" if profile.delegate else ""))
    return 0


def _check(args: argparse.Namespace) -> int:
    """Predicts the adapter's resident memory for the bundle on the board; 0 when it fits, 1 when not."""
    from edgemeta.format.bundle import read_bundle
    from edgemeta.format.units import parse_bytes
    from edgemeta.profiles import board_batch, load_profile
    from edgemeta.runtime.memory import MB, plan_memory

    if args.batch is None:
        args.batch = board_batch(args.bundle)
    for name in ("classes", "shots", "batch"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be a positive integer. Received: {getattr(args, name)}")
    profile = load_profile(args.device)
    budget = parse_bytes(args.budget, "--budget") if args.budget else profile.budget_bytes
    _, manifest = read_bundle(args.bundle)
    # The board runs the service (its systemd unit): one request at its default limits is set aside, as
    # `device serve` sets it aside from the same budget, so a profile that fits here starts there.
    from edgemeta.profiles import BOARD_MAX_PIXELS
    from edgemeta.serve.api import Limits, body_reserve

    limits = Limits()
    request, max_pixels = (0, BOARD_MAX_PIXELS) if args.python_api else (body_reserve(limits), limits.max_pixels)
    plan = plan_memory(args.bundle, args.batch, args.shots, args.prototype_dtype, args.keep_support,
                       request_bytes=request, max_pixels=max_pixels)
    need, fits = plan.predict(args.classes), plan.predict(args.classes) <= budget
    result = {"bundle": str(args.bundle), "device": profile.key, "budget_bytes": budget, "classes": args.classes,
              "predicted_bytes": need, "fits": fits, "max_classes": plan.max_classes(budget), "plan": plan.to_dict()}
    if profile.delegate == "edgetpu":
        from converters.edgetpu import check_edgetpu  # TensorFlow-free, unlike converters.tflite

        result["edgetpu"] = str(check_edgetpu(args.bundle))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0 if fits else 1
    quant = manifest.quantization.get("scheme", "?")
    print(f"Bundle {args.bundle}: {quant}, {plan.model // 2} B model, {manifest.embedding_size}-d embeddings")
    print(f"Device {profile.key}: {profile.name}; adapter budget {budget / MB:.1f} MB")
    print(f"Predicted resident memory (batch {args.batch}, {args.shots} shots per class, {args.prototype_dtype} "
          f"prototypes, support kept: {args.keep_support or 'none'}):")
    rows = [("runtime (measured on " + plan.runtime_measured_on + ")", plan.runtime), ("model", plan.model),
            (f"activations at batch {args.batch}", plan.arena), ("working arrays of one call", plan.working)]
    if plan.request:  # always: the largest image at least
        rows.append((f"the largest request ({max_pixels} pixels" + (", the service's body)" if request else ")"),
                     plan.request))
    for label, value in rows:
        print(f"  {label:72s} {value / MB:7.2f} MB")
    print(f"  {'per class':72s} {plan.per_class:7d} B")
    print(f"  {f'total at {args.classes} classes':72s} {need / MB:7.2f} MB")
    verdict = "fits" if fits else "does NOT fit"
    print(f"{verdict}: {need / MB:.1f} MB of {budget / MB:.1f} MB; at most {plan.max_classes(budget):,} classes fit.")
    if profile.arch not in plan.runtime_measured_on:
        print(f"Note: the runtime's own memory was measured on this machine, not on a {profile.arch} board; run "
              "`edgemeta device check` on the board for its figure.")
    if "edgetpu" in result:
        print(result["edgetpu"])
    return 0 if fits else 1
