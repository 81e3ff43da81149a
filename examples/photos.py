"""Teach a board three objects from five photos each, then recognise new photos: the shipped photos preset, no TensorFlow.

Point `--folder` at your own photos, one sub-folder per object (`my_photos/mug/*.jpg`, `my_photos/keys/*.jpg`, ...),
in any size, mode or orientation. Without it, the example writes three classes of mini-ImageNet's `val` (classes the
preset never trained on) as JPEG files and uses those.

    python examples/photos.py                                # three mini-ImageNet val classes
    python examples/photos.py --folder my_photos --shots 5   # your own objects

What was taught is kept in `--out/taught.store`: run it again and the classes are still there.
"""

import argparse
import sys
import zipfile
from pathlib import Path

from edgemeta.data.folder import list_image_folder
from edgemeta.data.mini_imagenet import default_data_dir
from edgemeta.runtime import FewShotAdapter

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--folder", help="your photos: one sub-folder per object (default: three mini-ImageNet val classes)")
parser.add_argument("--shots", type=int, default=5, help="photos taught per object; the rest are recognised")
parser.add_argument("--objects", type=int, default=3, help="objects taught (mini-ImageNet default only)")
parser.add_argument("--photos", type=int, default=15, help="photos written per object (mini-ImageNet default only)")
parser.add_argument("--out", default="runs/example-photos")
args = parser.parse_args()
out = Path(args.out)


def write_val_classes(folder: Path, objects: int, photos: int) -> Path:
    """The first `photos` JPEGs of `objects` mini-ImageNet val classes, written as files as a camera would leave them."""
    zip_path = default_data_dir() / "val.zip"
    if not zip_path.is_file():
        sys.exit(f"No --folder given and mini-ImageNet's val.zip is not at {zip_path} (set EDGEMETA_MINI_IMAGENET_DIR).")
    with zipfile.ZipFile(zip_path) as z:
        members = sorted(n for n in z.namelist() if n.lower().endswith(".jpg"))
        wnids = sorted({n.split("/")[1] for n in members})[:: max(1, 16 // objects)][:objects]
        for wnid in wnids:
            (folder / wnid).mkdir(parents=True, exist_ok=True)
            for name in [n for n in members if n.split("/")[1] == wnid][:photos]:
                (folder / wnid / Path(name).name).write_bytes(z.read(name))
    return folder


folder = Path(args.folder) if args.folder else write_val_classes(out / "photos", args.objects, args.photos)
classes = list_image_folder(folder)
with FewShotAdapter.from_preset("photos", state=out / "taught.store") as adapter:
    new_photos = []
    for label, files in classes.items():
        if len(files) <= args.shots:
            sys.exit(f"{folder / label} has {len(files)} photos: expected more than --shots {args.shots}, "
                     "to keep some to recognise.")
        if label not in adapter.labels:  # taught on an earlier run: the store kept it
            adapter.enroll(label, files[: args.shots])
        new_photos += [(f, label) for f in files[args.shots :]]
    predictions = adapter.classify([f for f, _ in new_photos])
    for prediction, (path, label) in list(zip(predictions, new_photos))[:: max(1, len(new_photos) // 6)]:
        print(f"  {Path(path).name}: {prediction.label or 'unknown'} (nearest {prediction.nearest}; true: {label})")
    correct = sum(p.nearest == label for p, (_, label) in zip(predictions, new_photos))
    print(f"Taught {len(classes)} objects from {args.shots} photos each; recognised {correct} of {len(new_photos)} new "
          f"photos ({100 * correct / len(new_photos):.1f} %). The board knows {adapter.labels}, kept in {out / 'taught.store'}.")
