"""`edgemeta device serve`'s command line: its options, the token, the memory budget's split, the board's camera,
and the run from start to a clean stop on SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from edgemeta.serve.api import (
    DEFAULT_HOST,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_IMAGES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_PORT,
    ConfigError,
    Limits,
    Service,
    body_reserve,
    is_loopback,
    log,
    pixel_bytes,
    request_reserve,
)

MIN_TOKEN_LENGTH = 16
SHUTDOWN_GRACE_SECONDS = 20.0  # in-flight requests get this long on SIGTERM (the unit's TimeoutStopSec is 30)


def _size(text: str) -> int:
    from edgemeta.format.units import parse_bytes

    try:
        return parse_bytes(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of bytes such as 4194304 or '4MB'. "
                                         f"Received: {text!r}") from None


def _positive(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer. Received: {text!r}")
    return int(text)


def _port(text: str) -> int:
    if not text.strip().isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535 (0: any free port). Received: {text!r}")
    return int(text)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--bundle or --preset, and --device: what the board's commands (`device serve`, `device camera`) run."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--bundle", metavar="DIR", help="bundle directory (model.tflite + manifest.json)")
    source.add_argument("--preset", metavar="NAME", help="a bundle shipped with edgemeta, e.g. omniglot")
    parser.add_argument("--device", metavar="PROFILE",
                        help="board profile (edgemeta device list): its threads, delegate and memory budget")


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `edgemeta device serve`."""
    add_model_arguments(parser)
    parser.add_argument("--state", metavar="FILE",
                        help="store file: loaded at start, saved after every change and at shutdown")
    parser.add_argument("--host", metavar="ADDRESS", default=DEFAULT_HOST,
                        help=f"address to listen on (default {DEFAULT_HOST}); any non-loopback address needs a token")
    parser.add_argument("--port", type=_port, metavar="N", default=DEFAULT_PORT,
                        help=f"default {DEFAULT_PORT}; 0 picks a free port")
    token = parser.add_mutually_exclusive_group()
    token.add_argument("--token", help="bearer token clients must send (visible in `ps`: prefer --token-file "
                                       "or the EDGEMETA_TOKEN environment variable)")
    token.add_argument("--token-file", metavar="FILE", help="file holding the bearer token")
    parser.add_argument("--max-request-bytes", type=_size, metavar="SIZE", default=DEFAULT_MAX_REQUEST_BYTES,
                        help=f"largest request body (default {DEFAULT_MAX_REQUEST_BYTES // 2**20}MB); larger: 413")
    parser.add_argument("--max-images", type=_positive, metavar="N", default=DEFAULT_MAX_IMAGES,
                        help=f"images per request (default {DEFAULT_MAX_IMAGES}, at most 1024)")
    parser.add_argument("--max-pixels", type=_positive, metavar="N", default=DEFAULT_MAX_PIXELS,
                        help=f"decoded pixels per request, all images together (default {DEFAULT_MAX_PIXELS})")
    parser.add_argument("--max-connections", type=_positive, metavar="N", default=DEFAULT_MAX_CONNECTIONS,
                        help=f"connections served at once (default {DEFAULT_MAX_CONNECTIONS}); more get 503")
    parser.add_argument("--threads", type=_positive, metavar="N",
                        help="interpreter threads (default: the profile's, else the runtime's)")
    parser.add_argument("--memory-budget", metavar="SIZE",
                        help="the process's memory budget, e.g. 96MB (default: the profile's); one request's "
                             "reserve is kept out of the adapter's share")
    parser.add_argument("--on-full", choices=["error", "evict"], default="error",
                        help="past the budget: refuse the enrollment (507), or forget the least recently used class")
    parser.add_argument("--keep-support", choices=["embeddings", "images"], default=None,
                        help="also keep each shot (for fit_head, or to re-enroll under a new model)")
    parser.add_argument("--prototype-dtype", choices=["float32", "int8"], default="float32")
    parser.add_argument("--unknown-threshold", metavar="VALUE", default="calibrated",
                        help="distance beyond which an image is 'unknown': 'calibrated' (the bundle's), "
                             "a number, or 'none'")
    parser.add_argument("--camera", metavar="SPEC", default="auto",
                        help="the board's camera for the page's preview, teach and live recognition: 'auto' (the first "
                             "present of picamera2 and OpenCV, else none), 'none', 'picamera2', 'opencv', 'opencv:N', "
                             "or a folder of images (docs/camera.md)")


def _read_token(args: argparse.Namespace) -> str | None:
    if args.token is not None:
        token, source = args.token, "--token"
    elif args.token_file is not None:
        try:
            token, source = Path(args.token_file).read_text().strip(), f"--token-file {args.token_file}"
        except OSError as e:
            raise ConfigError(f"Cannot read the token file ({e}). Received: --token-file {args.token_file!r}") from e
    elif os.environ.get("EDGEMETA_TOKEN"):
        token, source = os.environ["EDGEMETA_TOKEN"].strip(), "EDGEMETA_TOKEN"
    else:
        return None
    if len(token) < MIN_TOKEN_LENGTH or not token.isascii() or not token.isprintable() or " " in token:
        raise ConfigError(f"The token must be at least {MIN_TOKEN_LENGTH} printable ASCII characters without spaces, "
                          "e.g. from `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`. "
                          f"Received: {len(token)} characters from {source}")
    return token


def _budget(args: argparse.Namespace, limits: Limits, channels: int) -> tuple[int | None, int | None]:
    """(the process's budget, the adapter's share): the adapter gets the budget less one request's body
    (`body_reserve`), and sets aside the request's pixels itself (its max_pixels is --max-pixels), so a full
    store plus the largest request still fits the budget (the unit's MemoryMax). `channels`: the model's."""
    from edgemeta.format.units import parse_bytes

    if args.memory_budget:
        budget = parse_bytes(args.memory_budget)
    elif args.device:
        from edgemeta.profiles import load_profile

        budget = load_profile(args.device).budget_bytes
    else:
        return None, None
    reserve = body_reserve(limits)
    request = request_reserve(limits, channels)
    if budget - request < 16 * 2**20:  # not even room for the runtime itself
        raise ConfigError(f"The memory budget of {budget / 2**20:.0f} MB leaves too little once one request's "
                          f"{request / 2**20:.1f} MB are set aside ({pixel_bytes(channels)} B x --max-pixels + 3 x "
                          "--max-request-bytes): lower those limits or raise the budget. "
                          f"Received: budget {budget} B, --max-pixels {limits.max_pixels}, "
                          f"--max-request-bytes {limits.max_request_bytes}")
    return budget, budget - reserve


def _bundle(args: argparse.Namespace) -> tuple[Any, int]:
    """The bundle to serve (--bundle, else --preset's) and its model's input channels, from its manifest alone (the
    adapter reads, hashes and verifies the model once, later)."""
    from edgemeta.format.bundle import read_manifest
    from edgemeta.presets import preset_path

    bundle = args.bundle if args.bundle else preset_path(args.preset)
    return bundle, read_manifest(bundle).preprocessing.channels


def _threshold(args: argparse.Namespace) -> Any:
    from edgemeta.runtime.threshold import parse_threshold

    try:
        return parse_threshold(args.unknown_threshold)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _adapter(args: argparse.Namespace, bundle: Any, threshold: Any, adapter_budget: int | None) -> Any:
    from edgemeta.profiles import board_batch
    from edgemeta.runtime import FewShotAdapter

    options: dict[str, Any] = {"unknown_threshold": threshold, "thumbnails": True,  # the page's class list shows them
                               "on_full": args.on_full, "keep_support": args.keep_support,
                               "prototype_dtype": args.prototype_dtype, "memory_budget": adapter_budget,
                               # what `edgemeta device check` plans for: its batch, and the request's pixels
                               "max_batch": board_batch(bundle), "max_pixels": args.max_pixels}
    if args.threads:
        options["num_threads"] = args.threads
    if args.device:
        return FewShotAdapter.for_device(bundle, args.device, state=args.state, **options)
    return FewShotAdapter.from_bundle(bundle, args.state, options.pop("num_threads", None), **options)


def _camera(spec: str) -> Any:
    """The camera `--camera` names (a FrameSource), or None; ConfigError when a named one cannot be opened."""
    from edgemeta.runtime.camera import CameraError, open_camera

    try:
        return open_camera(spec)
    except (ValueError, CameraError) as e:
        raise ConfigError(f"--camera: {e}") from None


def serve_from_args(args: argparse.Namespace) -> int:
    """Runs the service until SIGTERM or SIGINT; returns the exit code (0 after a clean stop, 2 when it
    cannot start, 1 when the store could not be saved at shutdown)."""
    try:
        token = _read_token(args)
        if not is_loopback(args.host) and token is None:
            raise ConfigError(f"Listening on {args.host!r} exposes the service beyond this machine: give it a token "
                              "(--token-file FILE, the EDGEMETA_TOKEN environment variable, or --token), or keep "
                              f"the default --host {DEFAULT_HOST}. Received: --host {args.host!r} and no token")
        if args.max_images > 1024:
            raise ConfigError("--max-images is at most 1024 (the runtime's limit per call). "
                              f"Received: {args.max_images}")
        limits = Limits(args.max_request_bytes, args.max_images, args.max_pixels)
        threshold = _threshold(args)  # a bad option is said before the bundle is read
        bundle, channels = _bundle(args)
        budget, adapter_budget = _budget(args, limits, channels)
        camera = _camera(args.camera)
    except Exception as e:  # a bad option, bundle, profile or camera: say which, start nothing
        print(f"edgemeta device serve: error: {e}", file=sys.stderr)
        return 2
    try:
        service = Service(_adapter(args, bundle, threshold, adapter_budget), token, limits, args.state, budget,
                          bundle_name=args.preset or Path(bundle).resolve().name)
        if camera is not None:
            from edgemeta.serve.camera import CameraEndpoints

            service.camera = CameraEndpoints(service, camera)
    except Exception as e:  # a bad bundle, profile or store
        if camera is not None:
            camera.close()
        print(f"edgemeta device serve: error: {e}", file=sys.stderr)
        return 2
    import warnings

    from PIL import Image

    from edgemeta.serve.http import make_server

    # Pillow's global bomb check (Image.MAX_IMAGE_PIXELS) stays at its default: it runs at open, before a large
    # JPEG is set to decode at a reduced scale, so at --max-pixels it would refuse photos the request's pixel
    # check (on each image's header, before decoding: edgemeta.format.images) accepts. Its warning, for headers
    # the service refuses anyway, would only repeat the 413.
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    try:
        server = make_server(service, args.host, args.port, args.max_connections)
    except OSError as e:
        print(f"edgemeta device serve: error: cannot listen on {args.host}:{args.port} ({e})", file=sys.stderr)
        if camera is not None:
            camera.close()
        return 2
    try:
        return run(server, service, restore_signals=False)
    finally:
        if camera is not None:
            camera.close()


def run(server: Any, service: Service, restore_signals: bool = True) -> int:
    """Serves until SIGTERM/SIGINT, lets requests in flight finish, saves the store. `restore_signals=False` (a
    process that exits next, as the command does) keeps ignoring further signals to the end instead of restoring the
    previous handlers: a second SIGTERM after the save would otherwise kill it with -15, not exit 0."""
    stopping = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        if not stopping.is_set():
            stopping.set()
            log(f"{signal.Signals(signum).name}: no new connections; finishing the requests in flight")
            # shutdown() waits for serve_forever to return, so it cannot run in serve_forever's thread.
            threading.Thread(target=server.shutdown, name="shutdown", daemon=True).start()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in host else host
    camera = f", camera {service.camera.source.name}" if service.camera is not None else ""
    print(f"edgemeta device serve: listening on http://{shown}:{port}/ ({len(service.adapter.labels)} classes, "
          f"token {'required' if service.token else 'not required (loopback only)'}, "
          f"state {service.state_path or 'none: what is taught is lost at exit'}{camera})", flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.socket.close()  # refuse new connections while the last requests finish
        running = server.wait_idle(SHUTDOWN_GRACE_SECONDS)
    # The handlers stay ours until the store is saved: a second SIGTERM (systemd, an impatient user)
    # must not kill the process between the last request and the save.
    if running:
        log(f"{running} request(s) still running after {SHUTDOWN_GRACE_SECONDS:.0f} s; stopping without them")
    code = 0
    try:
        saved = service.save()  # under the adapter's lock: a whole store, even beside a late request
        if saved:
            log(saved)
    except Exception as e:
        log(f"could not save the store to {service.state_path}: {e}")
        code = 1
    for s, handler in previous.items():
        # A process that exits next ignores them to the end: CPython resets its Python-level handlers to the
        # default at finalization (then a late SIGTERM kills it with -15), but leaves SIG_IGN alone.
        signal.signal(s, handler if restore_signals else signal.SIG_IGN)
    log("stopped")
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgemeta device serve",
                                     description="HTTP/JSON service and its web page: health, labels, enroll, classify, "
                                                 "rename, forget, the board's camera.")
    add_serve_arguments(parser)
    return serve_from_args(parser.parse_args(argv))
