"""Peak memory per decoded pixel while the runtime turns one large image into a model's input (the figure
`edgemeta.runtime.budget.PIXEL_BYTES` sets aside), for each shipped preset and image mode, each in a fresh process.

    python benchmarks/pixel_memory.py            # a 1000x1000 PNG of RGB noise, as RGB, RGBA and L

Prints one JSON row per (preset, mode): the process's RSS before, its peak (VmHWM) while preprocessing, and
the rise per pixel. TensorFlow-free.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

CHILD = r"""
import io, json, sys
import numpy as np
from PIL import Image
from edgemeta.format.bundle import read_bundle
from edgemeta.presets import preset_path

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

preset, mode, side = sys.argv[1], sys.argv[2], int(sys.argv[3])
pre = read_bundle(preset_path(preset))[1].preprocessing
noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), np.uint8)).convert(mode)
encoded = io.BytesIO()
noise.save(encoded, "PNG", compress_level=1)
del noise
warm = io.BytesIO()
Image.new(mode, (50, 50)).save(warm, "PNG")
pre.one(Image.open(warm))  # imports and first-call allocations, before the measurement
before = status("VmRSS")
pre.one(Image.open(io.BytesIO(encoded.getvalue())))
peak = status("VmHWM")
print(json.dumps({"preset": preset, "channels": pre.channels, "mode": mode, "pixels": side * side,
                  "rss_before_mib": round(before / 2**20, 1), "peak_mib": round(peak / 2**20, 1),
                  "bytes_per_pixel": round((peak - before) / side**2, 1)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["photos", "omniglot"])
    parser.add_argument("--modes", nargs="+", default=["RGB", "RGBA", "L"])
    parser.add_argument("--side", type=int, default=1000, help="the image's side in pixels")
    args = parser.parse_args()
    for preset in args.presets:
        for mode in args.modes:
            out = subprocess.run([sys.executable, "-c", CHILD, preset, mode, str(args.side)], capture_output=True,
                                 text=True, check=True)
            print(out.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
