#!/usr/bin/env bash
# Sets up edgemeta for the Coral Edge TPU: a Coral USB Accelerator on a Raspberry Pi 4/5 (profile
# coral-usb-pi) or the Coral Dev Board (coral-dev-board). Installs Coral's Edge TPU runtime
# (libedgetpu1-std) from Coral's apt repository, then runs setup-raspberry-pi.sh for the venv, the
# `edgemeta` user and the systemd unit. Untested on real hardware; see docs/coral.md.
#
#   sudo ./setup-coral.sh [--device coral-usb-pi|coral-dev-board] [--python EXE] [--dry-run] [setup-raspberry-pi.sh options]
#
# Python: edgemeta needs 3.10+. Raspberry Pi OS (Debian 12) ships 3.11: fine. The Dev Board's Mendel
# Linux 5.3 ships 3.7: install a 3.10+ Python first and pass it with --python. No Python binding from
# Coral is used (python3-pycoral and Coral's tflite_runtime wheels stop at Python 3.9): the runtime loads
# libedgetpu.so.1 through the interpreter's load_delegate, so only the C library is needed.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
device=""
python=python3
dry_run=0
passthrough=()

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "setup-coral.sh: $*" >&2; exit 1; }
run() {
    echo "+ $(printf '%q ' "$@")"
    if [ "$dry_run" -eq 0 ]; then "$@"; fi
}

while [ $# -gt 0 ]; do
    case "$1" in
        --device) device=${2:?--device needs coral-usb-pi or coral-dev-board}; shift 2 ;;
        --python) python=${2:?--python needs an executable}; passthrough+=(--python "$2"); shift 2 ;;
        --dry-run) dry_run=1; passthrough+=(--dry-run); shift ;;
        -h|--help) usage; exit 0 ;;
        *) passthrough+=("$1"); shift ;;
    esac
done

mendel=0
if [ -e /etc/mendel_version ]; then mendel=1; fi
if [ -z "$device" ]; then
    if [ "$mendel" -eq 1 ]; then device=coral-dev-board; else device=coral-usb-pi; fi
fi
case "$device" in
    coral-usb-pi|coral-dev-board) ;;
    *) die "expected --device coral-usb-pi or coral-dev-board. Received: $device" ;;
esac
echo "profile: $device"

py_version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo none)
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    if [ "$device" = coral-dev-board ]; then
        die "edgemeta needs Python 3.10+, and Mendel's stock python3 is 3.7: build or install a Python 3.10+ and pass it with --python. Received: $python (Python $py_version)"
    fi
    die "edgemeta needs Python 3.10 or newer. Received: $python (Python $py_version)"
fi

if [ "$dry_run" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
    die "run as root (sudo): it adds an apt repository and installs packages. Received: uid $(id -u)"
fi

# Coral's Edge TPU runtime. Mendel ships it and Coral's repository; elsewhere add the repository as in
# Coral's "Get started with the USB Accelerator" (https://coral.ai/docs/accelerator/get-started/), with a
# keyring file instead of the deprecated apt-key.
if [ "$mendel" -eq 0 ]; then
    keyring=/usr/share/keyrings/coral-edgetpu-archive-keyring.gpg
    if [ ! -e "$keyring" ]; then
        run apt-get install -y curl gnupg
        echo "+ curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | gpg --dearmor -o $keyring"
        if [ "$dry_run" -eq 0 ]; then
            curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | gpg --dearmor -o "$keyring"
        fi
    fi
    echo "+ write /etc/apt/sources.list.d/coral-edgetpu.list"
    if [ "$dry_run" -eq 0 ]; then
        echo "deb [signed-by=$keyring] https://packages.cloud.google.com/apt coral-edgetpu-stable main" \
            >/etc/apt/sources.list.d/coral-edgetpu.list
    fi
    run apt-get update
fi
# -std runs the Edge TPU at its default clock; libedgetpu1-max is faster and runs hotter (Coral's warning).
run apt-get install -y libedgetpu1-std

# Runs for real under --dry-run too: it is passed on and only prints there as well.
"$here/setup-raspberry-pi.sh" --device "$device" --for-setup setup-coral.sh "${passthrough[@]}"
echo "Re-plug the USB Accelerator (udev rules) before the first run. Check with (default prefix):"
echo "  /opt/edgemeta/venv/bin/python -c \"from edgemeta.runtime.interpreter import delegate_available; print(delegate_available('edgetpu'))\""
