#!/usr/bin/env bash
# Installs the edgemeta runtime (no TensorFlow) on a Raspberry Pi 4, 5 or Zero 2 W running Raspberry Pi OS:
# a venv in /opt/edgemeta/venv, a system user `edgemeta`, and the systemd unit edgemeta-adapter.service
# (installed, not enabled). Untested on real boards; see devices/README.md.
#
#   sudo ./setup-raspberry-pi.sh [--device NAME] [--package SPEC] [--prefix DIR] [--python EXE] [--no-service] [--dry-run]
#
# 64-bit OS (aarch64): pip install "edgemeta[device]" (ai-edge-litert wheels: Python 3.10-3.13).
# 32-bit OS (armv7l):  pip install edgemeta "tflite-runtime==2.14.0" "numpy<2" (wheels stop at Python 3.11).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
prefix=/opt/edgemeta
package=edgemeta            # or a wheel built on the workstation: ./edgemeta-0.1.0-py3-none-any.whl
python=python3
device=""                   # a profile name (edgemeta/profiles/*.json); detected from the board's model when empty
service=1
dry_run=0
bits=""                     # the target Python's word size; --bits is for testing the 32-bit branch elsewhere
caller=setup-raspberry-pi.sh  # setup-coral.sh runs this script for its profiles (--for-setup setup-coral.sh)

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "setup-raspberry-pi.sh: $*" >&2; exit 1; }
run() {  # prints every command; runs it unless --dry-run
    echo "+ $(printf '%q ' "$@")"
    if [ "$dry_run" -eq 0 ]; then "$@"; fi
}

while [ $# -gt 0 ]; do
    case "$1" in
        --device) device=${2:?--device needs a profile name}; shift 2 ;;
        --package) package=${2:?--package needs a pip requirement or wheel path}; shift 2 ;;
        --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
        --python) python=${2:?--python needs an executable}; shift 2 ;;
        --bits) bits=${2:?--bits needs 32 or 64}; shift 2 ;;
        --for-setup) caller=${2:?--for-setup needs a script name}; shift 2 ;;
        --no-service) service=0; shift ;;
        --dry-run) dry_run=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option. Received: $1" ;;
    esac
done

venv="$prefix/venv"
command -v "$python" >/dev/null || die "no Python found. Received: --python $python (install python3, or pass another)"
py_version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
py_minor=$("$python" -c 'import sys; print(sys.version_info[1])')
py_major=$("$python" -c 'import sys; print(sys.version_info[0])')
# The venv's Python decides which wheels fit: a 64-bit kernel (uname -m = aarch64) can run a 32-bit userland.
[ -n "$bits" ] || bits=$("$python" -c 'import struct; print(struct.calcsize("P") * 8)')
machine=$(uname -m)
echo "machine: $machine, userland: $(getconf LONG_BIT)-bit, Python $py_version ($bits-bit)"
case "$machine" in
    aarch64|armv7l|armv8l) ;;
    *) if [ "$dry_run" -eq 0 ]; then die "this script sets up an ARM board (aarch64 or armv7l). Received: uname -m = $machine"; fi ;;
esac

if [ "$py_major" -ne 3 ] || [ "$py_minor" -lt 10 ]; then
    die "edgemeta needs Python 3.10 or newer. Received: Python $py_version"
fi
apt_packages=()
venv_options=()
case "$bits" in
    64)
        requirements=("${package}[device]")
        [ "$py_minor" -le 13 ] || echo "warning: ai-edge-litert had aarch64 wheels up to Python 3.13 when this was written; pip may find none for $py_version" >&2
        ;;
    32)
        # ai-edge-litert has no armv7l wheels; tflite-runtime 2.14.0's armv7l wheels are cp39-cp311 and predate NumPy 2.
        # PyPI has no armv7l wheels of numpy or Pillow, and building them on the board takes hours: Debian's
        # python3-numpy and python3-pil (bookworm: 1.24 and 9.4) are installed with apt and the venv sees them.
        [ "$py_minor" -le 11 ] || die "on a 32-bit OS the runtime is tflite-runtime 2.14.0, whose armv7l wheels stop at Python 3.11. Received: Python $py_version. Use the 64-bit Raspberry Pi OS, or a Python 3.10/3.11 (--python)."
        requirements=("$package" "tflite-runtime==2.14.0" "numpy<2")
        apt_packages+=(python3-numpy python3-pil)
        venv_options+=(--system-site-packages)
        ;;
    *) die "expected a 32- or 64-bit Python. Received: $bits" ;;
esac

if [ -z "$device" ]; then
    model=""
    if [ -r /proc/device-tree/model ]; then model=$(tr -d '\0' </proc/device-tree/model); fi
    case "$model" in
        *"Raspberry Pi 5"*) device=raspberry-pi-5 ;;
        *"Raspberry Pi 4"*) device=raspberry-pi-4 ;;
        *"Raspberry Pi Zero 2"*) device=raspberry-pi-zero-2-w ;;
        *) device=raspberry-pi-4; echo "warning: board model not recognised (${model:-unknown}); using the raspberry-pi-4 profile (--device to choose)" >&2 ;;
    esac
fi
profiles=$(cd "$here/../edgemeta/profiles" 2>/dev/null && pwd) || die "no edgemeta/profiles next to $here: run this script from an edgemeta checkout"
profile_json="$profiles/$device.json"
[ -f "$profile_json" ] || die "unknown device profile. Received: --device $device (expected a profile in $profiles)"
# The profile's own setup field says which script installs it (Coral boards: setup-coral.sh).
read -r budget setup_script < <("$python" -c 'import json, sys; p = json.load(open(sys.argv[1])); print(p["memory_budget_mb"], p["setup"])' "$profile_json")
[ "$setup_script" = "$caller" ] || die "profile $device is installed by $setup_script. Received: --device $device"
echo "profile: $device (memory budget ${budget} MB)"

if [ "$dry_run" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
    die "run as root (sudo): it creates $prefix, a system user and a systemd unit. Received: uid $(id -u)"
fi

# Debian 12 forbids pip in the system Python (PEP 668), hence the venv; python3-venv provides ensurepip.
if ! "$python" -c 'import ensurepip' 2>/dev/null; then
    apt_packages+=(python3-venv)
fi
missing=()
for pkg in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    run apt-get install -y "${missing[@]}"
fi
if ! id edgemeta >/dev/null 2>&1; then
    run useradd --system --home-dir /var/lib/edgemeta --create-home --shell /usr/sbin/nologin edgemeta
fi
for group in video plugdev apex; do  # video: camera; plugdev: USB Coral accelerator; apex: Dev Board's Edge TPU
    if getent group "$group" >/dev/null; then run usermod -aG "$group" edgemeta; fi
done
run mkdir -p "$prefix"
run "$python" -m venv "${venv_options[@]}" "$venv"
run "$venv/bin/python" -m pip install --upgrade pip
run "$venv/bin/python" -m pip install "${requirements[@]}"
run "$venv/bin/python" -c "from edgemeta.runtime.interpreter import interpreter_class; print('interpreter:', interpreter_class()[1])"

if [ "$service" -eq 1 ]; then
    run mkdir -p /etc/edgemeta /var/lib/edgemeta
    run chown edgemeta: /var/lib/edgemeta
    if [ ! -e /etc/edgemeta/adapter.env ]; then
        # Written once. The paths are the layout `edgemeta deploy --to ssh://.../var/lib/edgemeta` manages.
        env_file=$(printf 'EDGEMETA_DEVICE=%s\nEDGEMETA_BUNDLE=/var/lib/edgemeta/current\nEDGEMETA_STATE=/var/lib/edgemeta/state/taught.store\n' "$device")
        echo "+ write /etc/edgemeta/adapter.env"
        if [ "$dry_run" -eq 0 ]; then printf '%s\n' "$env_file" >/etc/edgemeta/adapter.env; fi
    fi
    echo "+ install $here/edgemeta-adapter.service -> /etc/systemd/system/ (MemoryMax=${budget}M, venv $venv)"
    if [ "$dry_run" -eq 0 ]; then
        sed -e "s|^MemoryMax=.*|MemoryMax=${budget}M|" -e "s|/opt/edgemeta/venv|$venv|g" \
            "$here/edgemeta-adapter.service" >/etc/systemd/system/edgemeta-adapter.service
    fi
    run systemctl daemon-reload
    echo "The unit is installed but not enabled (it needs a bundle first): from the workstation run"
    echo "  edgemeta deploy BUNDLE --to ssh://USER@THIS-BOARD/var/lib/edgemeta --device $device"
    echo "then here: sudo systemctl enable --now edgemeta-adapter"
fi
echo "done: $venv ($device)"
