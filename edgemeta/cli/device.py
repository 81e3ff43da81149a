"""`edgemeta device list | check | serve | camera`: board profiles, whether a bundle fits one, the on-board HTTP service,
and teaching and recognising from the board's own camera."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

HELP = "board profiles: list them, check that a bundle fits one (memory, Edge TPU); the service; the camera"


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
    camera = device.add_parser(
        "camera", help="recognise what the board's camera sees, one line per frame; teach from the terminal (teach "
                       "LABEL) or a GPIO button; see docs/camera.md")
    if list(argv[:2]) == ["device", "camera"]:  # its options share the service's (edgemeta.serve), imported only then
        _add_camera_arguments(camera)


def run(args: argparse.Namespace) -> int:
    if args.device_command == "serve":
        from edgemeta.serve import serve_from_args

        return serve_from_args(args)
    if args.device_command == "camera":
        return _camera(args)
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


# -- device camera -----------------------------------------------------------------------------------
CAMERA_COMMANDS = "'teach LABEL' (or just LABEL), Enter (teaches --label), 'forget LABEL', 'list', 'quit'"
MAX_READ_FAILURES = 5  # frames in a row the camera fails to give before the command gives up (exit 1)
_EOF, _BUTTON = object(), object()  # what the stdin reader and the button put in the command queue


def _add_camera_arguments(p: argparse.ArgumentParser) -> None:
    from edgemeta.serve.cli import add_model_arguments

    add_model_arguments(p)
    p.add_argument("--state", metavar="FILE", help="store file: loaded at start, saved after every teach and forget "
                                                  "(this run is its one writer: not beside a service on the same file)")
    p.add_argument("--source", metavar="SPEC", default="auto",
                   help="the camera: auto (default: picamera2, else OpenCV's first camera), picamera2, opencv, "
                        "opencv:N, opencv:/dev/videoN, or a folder of PNG/JPEG images (the fake camera)")
    p.add_argument("--frames", type=int, metavar="N", default=8, help="frames one teach takes (1 to 30, default 8)")
    p.add_argument("--seconds", type=float, metavar="S", default=3.0,
                   help="seconds one teach's frames are spread over (0 to 10, default 3)")
    p.add_argument("--interval", type=float, metavar="S", default=1.0, help="seconds between recognitions (default 1)")
    p.add_argument("--max-frames", type=int, metavar="N", help="stop after N recognitions (default: until 'quit', "
                                                              "end of input, Ctrl-C or SIGTERM)")
    p.add_argument("--label", help="the label that Enter on an empty line, or the button, teaches")
    p.add_argument("--button", metavar="PIN", help="a push button on this GPIO pin (gpiozero's name: 17, GPIO17, "
                                                  "BOARD11) teaches --label; needs gpiozero")
    p.add_argument("--json", action="store_true", help="print recognitions as JSON lines")
    p.add_argument("--unknown-threshold", default="calibrated",
                   help="distance beyond which a frame is 'unknown': 'calibrated' (the bundle's, default), a number, "
                        "or 'none'")
    p.add_argument("--memory-budget", metavar="SIZE",
                   help="the process's memory budget, e.g. 96MB (default: the profile's with --device): a teach past "
                        "it is refused and changes nothing")


def _camera(args: argparse.Namespace) -> int:
    """`edgemeta device camera`: recognises a frame every --interval seconds, one line each on stdout, and teaches
    from stdin's commands and the button; 0 after quit, end of input, Ctrl-C or SIGTERM, 1 when the camera fails."""
    import math

    from edgemeta.runtime.camera import MAX_CAPTURE_FRAMES, MAX_CAPTURE_SECONDS, find_camera, open_camera
    from edgemeta.runtime.threshold import parse_threshold

    if not 1 <= args.frames <= MAX_CAPTURE_FRAMES:
        raise ValueError(f"--frames must be an integer from 1 to {MAX_CAPTURE_FRAMES}. Received: {args.frames}")
    for name, value, top in (("--seconds", args.seconds, MAX_CAPTURE_SECONDS), ("--interval", args.interval, 3600.0)):
        if not (math.isfinite(value) and 0 <= value <= top):
            raise ValueError(f"{name} must be a number of seconds from 0 to {top:g}. Received: {value}")
    if args.max_frames is not None and args.max_frames < 1:
        raise ValueError(f"--max-frames must be a positive integer. Received: {args.max_frames}")
    if args.button is not None and not args.label:
        raise ValueError(f"--button teaches under --label: give both. Received: --button {args.button} and no --label")
    threshold = parse_threshold(args.unknown_threshold)
    button = _gpio_button(args.button) if args.button is not None else None
    try:
        if args.source.strip() == "auto":
            source, looked = find_camera()
            if source is None:
                raise ValueError(f"No camera found; looked for {'; '.join(looked)}. Give --source picamera2, opencv:N "
                                 "or a folder of PNG/JPEG images (the fake camera; docs/camera.md). Received: --source auto")
        else:
            source = open_camera(args.source)
            if source is None:
                raise ValueError("--source none leaves nothing to watch: give a camera (auto, picamera2, opencv:N, or "
                                 "a folder of images). Received: --source none")
        try:
            with _camera_adapter(args, threshold) as adapter:
                return _watch(args, adapter, source, button)
        finally:
            source.close()
    finally:
        if button is not None:
            button.close()


def _gpio_button(pin: str) -> Any:
    try:
        from gpiozero import Button
    except ImportError:
        raise ValueError("--button needs gpiozero: on Raspberry Pi OS `sudo apt install python3-gpiozero` (a venv made "
                         f"with --system-site-packages sees it), elsewhere `pip install gpiozero`. Received: --button {pin}"
                         ) from None
    try:
        return Button(int(pin) if pin.isdigit() else pin)
    except Exception as e:  # gpiozero's own errors: a pin that does not exist, no GPIO on this machine
        raise ValueError(f"gpiozero cannot use pin {pin!r} ({type(e).__name__}: {e}). Received: --button {pin}") from e


def _camera_adapter(args: argparse.Namespace, threshold: Any) -> Any:
    """The adapter as `device serve` makes it (its bundle, profile, batch and budget), keeping thumbnails for the page."""
    from edgemeta.presets import preset_path
    from edgemeta.profiles import board_batch
    from edgemeta.runtime import FewShotAdapter

    bundle = args.bundle if args.bundle else preset_path(args.preset)
    options: dict[str, Any] = {"unknown_threshold": threshold, "thumbnails": True, "max_batch": board_batch(bundle)}
    if args.memory_budget:  # else the profile's (for_device), or none
        options["memory_budget"] = args.memory_budget
    if args.device:
        return FewShotAdapter.for_device(bundle, args.device, state=args.state, **options)
    return FewShotAdapter.from_bundle(bundle, args.state, **options)


def _watch(args: argparse.Namespace, adapter: Any, source: Any, button: Any) -> int:
    """The recognition loop. Commands (stdin lines read by a thread, button presses) wait in a queue and are handled
    between recognitions, so typing never blocks what the camera sees, nor the reverse."""
    import queue
    import signal
    import sys
    import threading
    import time

    from edgemeta.runtime.camera import CameraError

    commands: queue.Queue = queue.Queue()
    stop = threading.Event()

    def read_stdin() -> None:
        try:
            for line in sys.stdin:
                commands.put(line.rstrip("\r\n"))
        except (OSError, ValueError):  # stdin closed under us
            pass
        commands.put(_EOF)

    threading.Thread(target=read_stdin, name="stdin", daemon=True).start()
    if button is not None:
        button.when_pressed = lambda *_: commands.put(_BUTTON)  # gpiozero's thread: only a queue put there
    # Ctrl-C and SIGTERM only set `stop`: an enroll or a save in progress completes, and the loop ends after it.
    previous = {s: signal.signal(s, lambda signum, frame: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    where = f"state {args.state}" if args.state else "no --state: what is taught is lost at exit"
    _say(f"watching {source.name}; {len(adapter.labels)} class(es), {where}. Commands: {CAMERA_COMMANDS}")
    recognised, failures, hinted, code = 0, 0, False, 0
    due = time.monotonic()
    try:
        while not stop.is_set():
            try:  # a short wait: Ctrl-C is seen within 0.2 s
                command = commands.get(timeout=min(0.2, max(0.0, due - time.monotonic())))
            except queue.Empty:
                command = None
            if command is not None:
                if not _camera_command(command, args, adapter, source, stop):
                    break
                continue
            if time.monotonic() < due:
                continue
            due = time.monotonic() + args.interval
            if not adapter.labels:
                if not hinted:
                    also = " or press the button" if button else ""
                    _say(f"nothing taught yet: type 'teach LABEL' with the thing in view{also}")
                    hinted = True
                continue
            try:
                frame = source.read()
            except CameraError as e:
                failures += 1
                _say(f"error: {e}")
                if failures >= MAX_READ_FAILURES:
                    _say(f"the camera failed {failures} times in a row: stopping")
                    code = 1
                    break
                continue
            failures = 0
            print(_recognition(adapter.classify(frame)[0], args.json), flush=True)
            recognised += 1
            if args.max_frames is not None and recognised >= args.max_frames:
                break
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    # Every teach and forget was saved when it happened (the adapter saves each change): nothing is left to save.
    _say(f"stopped after {recognised} recognition(s); {len(adapter.labels)} class(es)"
         + (f" kept in {args.state}" if args.state else " (not kept: no --state)"))
    return code


def _camera_command(command: Any, args: argparse.Namespace, adapter: Any, source: Any, stop: Any) -> bool:
    """Handles one command; False when the loop should end."""
    if command is _EOF:  # with a button, stdin may be closed from the start (systemd): the button still teaches
        return args.button is not None
    if command is _BUTTON:
        _camera_teach(args.label, args, adapter, source, stop)
        return True
    text = command.strip()
    word, _, rest = text.partition(" ")
    rest = rest.strip()
    if not text:
        if args.label:
            _camera_teach(args.label, args, adapter, source, stop)
        else:
            _say(f"Enter teaches --label, which was not given. Commands: {CAMERA_COMMANDS}")
    elif word in ("quit", "exit") and not rest:
        return False
    elif word == "teach":
        if rest or args.label:
            _camera_teach(rest or args.label, args, adapter, source, stop)
        else:
            _say("teach what? Type 'teach LABEL'. Received: 'teach' alone and no --label")
    elif word == "forget":
        try:
            adapter.forget(rest)
            _say(f"forgot {rest!r}; {len(adapter.labels)} class(es) left")
        except KeyError:
            _say(f"error: no class is enrolled under that label. Received: {rest!r}. Enrolled: {adapter.labels[:20]}")
        except (ValueError, OSError) as e:
            _say(f"error: {e}")
    elif word in ("list", "labels") and not rest:
        _say(", ".join(f"{label} ({adapter.shots(label)} shots)" for label in adapter.labels) or "no classes yet")
    elif word in ("help", "?") and not rest:
        _say(f"Commands: {CAMERA_COMMANDS}")
    else:
        _camera_teach(text, args, adapter, source, stop)
    return True


def _camera_teach(label: str, args: argparse.Namespace, adapter: Any, source: Any, stop: Any) -> None:
    """Captures --frames frames over --seconds and enrolls them under `label`; an error is said, and changes nothing."""
    from edgemeta.runtime import MemoryBudgetError
    from edgemeta.runtime.camera import CAPTURE_PIXELS, CameraError, capture
    from edgemeta.serve.api import HTTPError, _label

    try:
        label = _label(label)  # the service's rule: a page and the terminal accept the same labels
    except HTTPError as e:
        _say(f"error: {e.message}")
        return
    _say(f"teaching {label!r}: {args.frames} frame(s) over {args.seconds:g} s; keep it in view")
    try:
        shots = capture(source, args.frames, args.seconds, max_pixels=CAPTURE_PIXELS, stop=stop)
        if stop.is_set():
            _say(f"stopped before {label!r} was taught: nothing changed")
            return
        total = adapter.enroll(label, shots)
    except (CameraError, MemoryBudgetError, ValueError, TypeError, OSError) as e:
        _say(f"error: {e} Nothing was taught.")
        return
    _say(f"taught {label!r}: {len(shots)} frame(s), {total} shot(s) in all; {len(adapter.labels)} class(es)")


def _recognition(p: Any, as_json: bool) -> str:
    """One recognition's line: label or 'unknown', the nearest class, the distance, and the calibrated probability
    where the runtime gives one, else the softmax score among the enrolled classes."""
    probability = getattr(p, "probability", None)
    if as_json:
        out = {"label": p.label, "nearest": p.nearest, "distance": p.distance, "score": p.score}
        if hasattr(p, "probability"):
            out["probability"] = probability
        return json.dumps(out)
    confidence = f"probability={probability:.3f}" if probability is not None else f"score={p.score:.3f}"
    return f"{p.label if p.label is not None else 'unknown'}\tnearest={p.nearest}\tdistance={p.distance:.3f}\t{confidence}"


def _say(message: str) -> None:
    """A status line on stderr (stdout carries only recognitions)."""
    import sys

    print(f"edgemeta device camera: {message}", file=sys.stderr, flush=True)
