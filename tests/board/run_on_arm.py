"""`make test-board`: installs and tests the device side in a Debian bookworm Arm root under qemu, as on a Pi.

    python -m tests.board.run_on_arm --arch arm64      # Raspberry Pi OS 64-bit (Debian bookworm arm64)
    python -m tests.board.run_on_arm --arch armhf      # Raspberry Pi OS 32-bit (bookworm armhf)

Steps, each timed:
1. Debian's qemu-user-static, debootstrap and binfmt-support are installed when missing; binfmt_misc is mounted
   and qemu registered for the architecture when they are not.
2. A minimal bookworm root (python3, python3-venv) is built with debootstrap, or reused from the cache directory
   (`--cache`, default $EDGEMETA_BOARD_CACHE or ~/.cache/edgemeta/board).
3. This checkout is copied in, and `devices/setup-raspberry-pi.sh --no-service` installs it into a fresh venv
   there, exactly as on a board (`pip install "<checkout>[device]"`; on armhf its 32-bit branch). pytest is added.
4. On this machine, each preset is taught and asked a fixed set of image files (tests/board/parity.py); the
   predictions, embeddings and store files go to an exchange directory inside the root.
5. tests/board/test_on_board.py runs in the root under qemu, then the stores it wrote are loaded here.

Exit 0 when everything passed, 1 on a failure, and 0 with a line starting "SKIPPED" when the machine cannot run
Arm code (not root, no binfmt_misc, no package mirror): never a silent pass.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from tests.harness import ROOT, apt_install

ARCHES = {
    # Debian arch: (uname -m under it, qemu's binfmt name, the interpreter the setup script installs, profile)
    "arm64": ("aarch64", "qemu-aarch64", "ai_edge_litert.interpreter", "raspberry-pi-4"),
    "armhf": ("armv7l", "qemu-arm", "tflite_runtime.interpreter", "raspberry-pi-zero-2-w"),
}
SUITE = "bookworm"
PACKAGES = ("python3", "python3-venv", "ca-certificates")
# What Raspberry Pi OS 32-bit users take from Debian: PyPI has no armv7l wheels of numpy or Pillow (the setup script
# installs them with apt there too, and its venv sees them).
ARCH_PACKAGES = {"arm64": (), "armhf": ("python3-numpy", "python3-pil")}
BINFMT = Path("/proc/sys/fs/binfmt_misc")


class Skip(Exception):
    """The machine cannot run this: said, never passed silently."""


def log(message: str) -> None:
    print(f"[test-board] {message}", flush=True)


def run(command: list[str], timeout: int = 3600, **kwargs) -> subprocess.CompletedProcess:
    log("+ " + " ".join(command))
    return subprocess.run(command, check=True, timeout=timeout, **kwargs)


def mirror() -> str:
    """The Debian mirror this machine's apt uses (deb822 or one-line sources), else deb.debian.org."""
    for source in [Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")]:
        if source.is_file():
            for line in source.read_text().splitlines():
                words = line.split()
                if words[:1] == ["URIs:"] and "security" not in words[1]:
                    return words[1]
                if words[:1] == ["deb"] and "security" not in line:
                    return next(w for w in words[1:] if w.startswith("http"))
    return "http://deb.debian.org/debian"


def prepare_host(arch: str) -> None:
    """Debian's qemu and debootstrap; binfmt_misc mounted; qemu registered with the F flag (the interpreter is
    opened at registration, so the root needs no copy of it)."""
    if os.geteuid() != 0:
        raise Skip("needs root: debootstrap, chroot and mounting binfmt_misc (run `make test-board` as root)")
    binfmt_name = ARCHES[arch][1]
    reason = apt_install(("qemu-user-static", "debootstrap", "binfmt-support"),
                         (f"/usr/bin/{binfmt_name}-static", "/usr/sbin/debootstrap", "/usr/sbin/update-binfmts"))
    if reason:
        raise Skip(reason)
    if not (BINFMT / "register").exists():
        if "binfmt_misc" not in Path("/proc/filesystems").read_text():
            raise Skip("this kernel has no binfmt_misc, so it cannot run Arm binaries through qemu")
        try:
            run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)])
        except subprocess.CalledProcessError as e:
            raise Skip(f"cannot mount binfmt_misc at {BINFMT} ({e})") from None
    entry = BINFMT / binfmt_name
    if not entry.exists():
        run(["update-binfmts", "--enable", binfmt_name])
    if not entry.exists() or "enabled" not in entry.read_text():
        raise Skip(f"qemu is not registered for {arch}: {entry} is missing or disabled after update-binfmts")
    if "F" not in next((line.split()[1] for line in entry.read_text().splitlines() if line.startswith("flags:")), ""):
        raise Skip(f"{entry} lacks the F (fix binary) flag, so a chroot cannot find qemu")


def build_root(arch: str, cache: Path) -> tuple[Path, str]:
    """The cached bookworm root for `arch`, built when missing; returns it and 'reused' or 'built in N s'."""
    root = cache / f"{SUITE}-{arch}"
    packages = PACKAGES + ARCH_PACKAGES[arch]
    marker = root / ".edgemeta-root-complete"  # written last, with what the root holds
    if marker.is_file() and marker.read_text().split()[2:3] == [",".join(packages)]:
        return root, "reused"
    partial = cache / f"{SUITE}-{arch}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    cache.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        run(["debootstrap", f"--arch={arch}", "--variant=minbase", f"--include={','.join(packages)}", SUITE,
             str(partial), mirror()], timeout=3600)
    except subprocess.CalledProcessError as e:
        log_file = partial / "debootstrap" / "debootstrap.log"
        tail = log_file.read_text()[-1500:] if log_file.is_file() else ""
        raise RuntimeError(f"debootstrap failed ({e}):\n{tail}") from None
    (partial / ".edgemeta-root-complete").write_text(f"{SUITE} {arch} {','.join(packages)}\n")
    shutil.rmtree(root, ignore_errors=True)
    partial.rename(root)
    return root, f"built in {time.monotonic() - started:.0f} s"


@contextmanager
def mounted(root: Path):
    """/proc, /dev and the host's DNS inside the root for the duration, unmounted after (not /sys: see below)."""
    points = []
    try:
        # No /sys: under qemu-user, LiteRT's cpuinfo would read the x86-64 host's CPU topology there and its
        # /proc/cpuinfo as an Arm one's, and crash (measured: a segfault at the first interpreter); without /sys it
        # reports the lists missing and falls back, as it does in containers.
        for source, target, options in (("proc", "proc", ["-t", "proc"]), ("/dev", "dev", ["--rbind"])):
            path = root / target
            path.mkdir(exist_ok=True)
            run(["mount", *options, source, str(path)])
            points.append(path)
        shutil.copyfile("/etc/resolv.conf", root / "etc" / "resolv.conf")
        # This machine's certificate authorities (a network that inspects TLS has its own), for pip in the root.
        shutil.copyfile(host_ca_bundle(), root / HOST_CA.lstrip("/"))
        yield
    finally:
        for path in reversed(points):
            subprocess.run(["umount", "-R", "-l", str(path)], check=False)


HOST_CA = "/etc/ssl/certs/host-ca-bundle.crt"


def host_ca_bundle() -> str:
    return os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt"


def in_root(root: Path, command: str, env: dict[str, str] | None = None, timeout: int = 3600) -> None:
    """Runs a shell `command` in the root (a clean environment, as root)."""
    variables = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
                 "LANG": "C.UTF-8", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_CERT": HOST_CA, "SSL_CERT_FILE": HOST_CA,
                 **(env or {})}
    run(["chroot", str(root), "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in variables.items()),
         "/bin/bash", "-c", command], timeout=timeout)


def copy_checkout(target: Path) -> None:
    """The checkout's tracked files as they are in the working tree (what `pip install <checkout>` builds)."""
    shutil.rmtree(target, ignore_errors=True)
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def write_reference(exchange: Path, arch: str) -> dict:
    """Teaches and asks each preset here (x86-64) and writes what the board compares with."""
    from edgemeta.format.bundle import read_bundle
    from edgemeta.presets import preset_path
    from tests.board.parity import PRESETS, teach_and_ask, write_images

    machine, _, interpreter, device = ARCHES[arch]
    plan = write_images(exchange / "images")
    reference = {"plan": plan, "board": {"machine": machine, "interpreter": interpreter, "device": device},
                 "presets": {}}
    for preset in PRESETS:
        here = teach_and_ask(preset, plan, exchange / "images", exchange / f"{preset}-{platform.machine()}.store")
        reference["presets"][preset] = {"model_sha256": read_bundle(preset_path(preset))[1].model_sha256,
                                        platform.machine(): here}
    (exchange / "reference.json").write_text(json.dumps(reference))
    return reference


def check_board_stores_here(exchange: Path, arch: str, reference: dict) -> None:
    """The stores written on the board load here and answer as the board did."""
    from tests.board.parity import PRESETS, ask_store

    for preset in PRESETS:
        store = exchange / f"{preset}-{ARCHES[arch][0]}.store"
        here = ask_store(preset, reference["plan"], exchange / "images", store)
        expected = reference["presets"][preset][platform.machine()]
        if here["labels"] != expected["labels"] or here["shots"] != expected["shots"]:
            raise AssertionError(f"{preset}: the store written on {arch} answers differently here: {here} != {expected}")
        log(f"{preset}: the store written on {arch} loads on {platform.machine()} and answers alike")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(ARCHES), default="arm64")
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("EDGEMETA_BOARD_CACHE")
                                                           or Path.home() / ".cache" / "edgemeta" / "board"))
    args = parser.parse_args(argv)
    started = time.monotonic()
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        timings[name] = round(time.monotonic() - since, 1)
        return time.monotonic()

    try:
        t = time.monotonic()
        prepare_host(args.arch)
        t = lap("host packages and binfmt", t)
        root, how = build_root(args.arch, args.cache)
        log(f"root {root}: {how}")
        t = lap(f"root ({how})", t)
    except Skip as e:
        print(f"SKIPPED test-board ({args.arch}): {e}", flush=True)
        return 0
    machine, _, _, device = ARCHES[args.arch]
    exchange = root / "opt" / "exchange"
    shutil.rmtree(exchange, ignore_errors=True)
    (exchange / "tests" / "board").mkdir(parents=True)
    for name in ("tests/__init__.py", "tests/board/__init__.py", "tests/board/parity.py", "tests/board/test_on_board.py"):
        shutil.copyfile(ROOT / name, exchange / name)
    # Its own pytest configuration: not the checkout's, whose `pythonpath` would import edgemeta from the sources.
    (exchange / "pytest.ini").write_text("[pytest]\naddopts = -p no:cacheprovider -rs\n")
    with mounted(root):
        copy_checkout(root / "opt" / "src" / "edgemeta")
        shutil.rmtree(root / "opt" / "edgemeta", ignore_errors=True)  # a fresh venv each run: the install is tested
        in_root(root, f"uname -m | grep -qx {machine} && bash /opt/src/edgemeta/devices/setup-raspberry-pi.sh "
                      f"--device {device} --package /opt/src/edgemeta --prefix /opt/edgemeta --no-service "
                      "&& /opt/edgemeta/venv/bin/python -m pip install --quiet pytest")
        t = lap("setup-raspberry-pi.sh and pytest", t)
        reference = write_reference(exchange, args.arch)
        t = lap("x86-64 reference", t)
        in_root(root, "cd /opt/exchange && /opt/edgemeta/venv/bin/python -m pytest -q --durations=0 tests/board/test_on_board.py",
                env={"EDGEMETA_BOARD_EXCHANGE": "/opt/exchange"})
        t = lap(f"tests under qemu ({args.arch})", t)
    check_board_stores_here(exchange, args.arch, reference)
    lap("stores back on x86-64", t)
    results = json.loads((exchange / "board-results.json").read_text())
    freeze = subprocess.run(["chroot", str(root), "/opt/edgemeta/venv/bin/python", "-m", "pip", "freeze"],
                            capture_output=True, text=True).stdout.split()
    summary = {"arch": args.arch, "root": str(root), "installed": freeze, "results": results, "seconds": timings,
               "total_seconds": round(time.monotonic() - started, 1)}
    (exchange / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1), flush=True)
    log(f"{args.arch}: passed in {summary['total_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
