"""`edgemeta adapt`: enroll classes from folders and classify image files with the runtime, on the device (no TensorFlow)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

HELP = "enroll classes from folders and classify image files, on the device"


def add_arguments(parser: argparse.ArgumentParser, argv: Sequence[str] = ()) -> None:
    p = parser
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--bundle")
    source.add_argument("--preset")
    p.add_argument("--support", help="folder with one sub-folder of example images per class to enroll")
    p.add_argument("--state", help="file keeping what was taught (loaded if present, saved after every change); with "
                                  "--support or --forget this run is its one writer (refused while another, e.g. a "
                                  "running service, holds it), otherwise it is only read")
    p.add_argument("--forget", nargs="+", default=[], help="labels to remove")
    p.add_argument("--json", action="store_true", help="print predictions as JSON lines")
    p.add_argument("--unknown-threshold", default="calibrated",
                   help="distance beyond which an image is 'unknown': 'calibrated' (the bundle's, default), a number, or 'none'")
    p.add_argument("--memory-budget", help="the process's memory budget, e.g. 96MB: enrolling past it fails and changes nothing")
    p.add_argument("images", nargs="*", help="image files to classify")


def run(args: argparse.Namespace) -> int:
    from edgemeta.presets import preset_path
    from edgemeta.profiles import board_batch
    from edgemeta.runtime import FewShotAdapter
    from edgemeta.runtime.threshold import parse_threshold

    threshold = parse_threshold(args.unknown_threshold)
    # Only a run that changes the store writes it: classifying and listing read it beside a running writer.
    options = {"state": args.state, "unknown_threshold": threshold, "memory_budget": args.memory_budget,
               "read_only": not (args.support or args.forget),
               "max_batch": board_batch(args.bundle or preset_path(args.preset))}  # device check's batch
    with (FewShotAdapter.from_bundle(args.bundle, **options) if args.bundle
          else FewShotAdapter.from_preset(args.preset, **options)) as adapter:
        return _run(args, adapter)


def _run(args: argparse.Namespace, adapter: Any) -> int:
    from edgemeta.data.folder import list_image_folder

    if args.support:
        for label, files in list_image_folder(args.support).items():
            total = adapter.enroll(label, files)
            print(f"enrolled {label!r}: {len(files)} image(s), {total} shot(s) in total", file=sys.stderr)
    for label in args.forget:
        adapter.forget(label)
        print(f"forgot {label!r}", file=sys.stderr)
    if args.images and not adapter.labels:
        where = f"in {args.state}" if args.state else "(no --state given: nothing is kept between runs)"
        raise ValueError(f"No classes enrolled {where}: teach some first, e.g. `edgemeta adapt --preset omniglot "
                         f"--support FOLDER --state FILE` (one sub-folder of images per class). "
                         f"Received: {len(args.images)} image(s) to classify")
    if args.images:
        for path, p in zip(args.images, adapter.classify(args.images)):
            if args.json:
                print(json.dumps({"image": path, "label": p.label, "nearest": p.nearest, "distance": p.distance,
                                  "score": p.score}))
            else:
                shown = p.label if not p.unknown else f"unknown (nearest {p.nearest!r})"
                print(f"{path}\t{shown}\tdistance={p.distance:.3f}\tscore={p.score:.3f}")
    elif not (args.support or args.forget):
        print(f"Enrolled labels: {adapter.labels}")
    return 0
