#!/usr/bin/env bash
# Creates .venv-l2l: PyTorch (CPU) + learn2learn 0.2.0, the baseline of benchmarks/training_throughput.py.
#
# Idempotent: a venv whose stamp matches this script's pins is left as it is. Kept apart from .venv so
# that TensorFlow and PyTorch never share a process (and the project's own venv never gets torch).
#
#   bash benchmarks/l2l_venv.sh [VENV_DIR]     # default: .venv-l2l next to this repo's Makefile
#
# Why each step:
# - torch==2.13.0 pinned exactly: the CPU wheel in pip's find-links (/opt/wheels here) satisfies it, where
#   a plain `torch` would pull the CUDA build and several GB of nvidia-* packages from PyPI.
# - learn2learn 0.2.0 from its sdist, with its three Cython modules regenerated: the shipped .c files were
#   made by Cython 0.29.24 and include `longintrepr.h`, which CPython 3.11 moved, so they do not compile.
# - learn2learn's install_requires (gym, torchvision, gsutil, qpth, ...) are not installed: the benchmark
#   uses learn2learn.data (MetaDataset, TaskDataset, task transforms) and learn2learn.algorithms.MAML, which
#   need only torch, numpy, requests and tqdm. But learn2learn/__init__.py imports its gym, text and vision sub-packages
#   eagerly, and vision needs torchvision, whose PyPI wheels are CUDA builds: torchvision 0.28.0 (the
#   torch 2.13 release) installed with --no-deps fails on import with "operator torchvision::nms does not
#   exist" (its _C.so links libtorch_cuda.so). So those three imports are made optional in the unpacked
#   sdist (try/except ImportError); no code on the measured path is touched.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$ROOT/.venv-l2l}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION=2.13.0
L2L_VERSION=0.2.0
STAMP="$VENV/.l2l-installed"
WANT="torch=$TORCH_VERSION learn2learn=$L2L_VERSION (cython-regenerated, optional gym/text/vision)"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] && "$VENV/bin/python" -c "import learn2learn" 2>/dev/null; then
  echo "$VENV is up to date ($WANT)"
  exit 0
fi

# A venv made by another version of this script starts afresh (pip would not remove what is no longer wanted).
if [[ -f "$STAMP" ]]; then rm -rf "$VENV"; fi
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --quiet)
"${PIP[@]}" install --upgrade pip setuptools wheel
"${PIP[@]}" install "torch==$TORCH_VERSION" numpy
if "$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.version.cuda is None else 1)"; then :; else
  echo "error: $VENV got a CUDA build of torch; expected the CPU wheel torch==$TORCH_VERSION+cpu from pip's find-links" >&2
  exit 1
fi

# learn2learn's sdist, rebuilt with a current Cython.
BUILD="$(mktemp -d)"
trap 'rm -rf "$BUILD"' EXIT
"${PIP[@]}" install "cython>=3.0"
"$VENV/bin/python" -m pip download --quiet --no-deps --no-binary :all: "learn2learn==$L2L_VERSION" -d "$BUILD"
tar -xzf "$BUILD/learn2learn-$L2L_VERSION.tar.gz" -C "$BUILD"
SRC="$BUILD/learn2learn-$L2L_VERSION"
rm -f "$SRC"/learn2learn/data/{meta_dataset,task_dataset,transforms}.c
"$VENV/bin/python" - "$SRC/learn2learn/__init__.py" <<'EOF'
import sys, pathlib
path = pathlib.Path(sys.argv[1])
text = path.read_text()
for name in ("gym", "text", "vision"):
    line = f"from . import {name}\n"
    if line not in text:
        sys.exit(f"error: {path} has no line {line!r}; this script expects learn2learn 0.2.0's __init__.py")
    text = text.replace(line, f"try:\n    from . import {name}\nexcept ImportError:  # optional here: needs gym / torchvision\n    pass\n")
path.write_text(text)
EOF
(cd "$SRC/learn2learn/data" && "$VENV/bin/cython" -3 --directive embedsignature=True meta_dataset.pyx task_dataset.pyx transforms.pyx)
# setup.py compiles the .c files unless told `build_ext`/`develop`; with them regenerated the default path works.
"${PIP[@]}" install --no-deps --no-build-isolation "$SRC"

# learn2learn.data.utils imports requests and tqdm at module level (for downloads the benchmark never makes).
"${PIP[@]}" install requests tqdm
echo "(pip's complaint that learn2learn's gsutil, gym, qpth, scipy and torchvision are missing is expected: see this script's header)"
"$VENV/bin/python" - <<'EOF'
import torch, learn2learn
from learn2learn.data import MetaDataset, TaskDataset
from learn2learn.data.transforms import NWays, KShots, LoadData, RemapLabels, ConsecutiveLabels
from learn2learn.algorithms import MAML
assert torch.version.cuda is None, torch.version.cuda
print("torch", torch.__version__, "learn2learn", learn2learn.__version__)
EOF
echo "$WANT" > "$STAMP"
