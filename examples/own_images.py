"""Your own images: meta-train on a folder of classes, then teach the device new classes from another.

Each folder holds one sub-folder per class (`train/cat/*.jpg`, `train/dog/*.jpg`, ...). The classes of
`--new` are never seen in training: the device learns them from `--shots` images each and classifies
the rest.

    python examples/own_images.py --train my_photos/base --new my_photos/new --shots 5
"""

import argparse
from pathlib import Path

from converters import export_bundle
from edgemeta.data.folder import list_image_folder
from edgemeta.runtime import FewShotAdapter
from edgemeta.train.training import TrainConfig, train

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--train", required=True, help="folder of base classes to meta-train on")
parser.add_argument("--new", required=True, help="folder of new classes to learn on the device")
parser.add_argument("--shots", type=int, default=5)
parser.add_argument("--way", type=int, default=5, help="classes per training episode")
parser.add_argument("--steps", type=int, default=1000)
parser.add_argument("--image-size", type=int, default=28)
parser.add_argument("--invert", action="store_true", help="dark subject on a light background")
parser.add_argument("--out", default="runs/example-own-images")
args = parser.parse_args()

config = TrainConfig(dataset="folder", data_dir=args.train, n_way=args.way, k_shot=args.shots, n_query=2,
                     steps=args.steps, epochs=max(1, args.steps // 100), image_size=args.image_size,
                     invert=args.invert, max_shift=1)
net, train_set, _ = train(config, Path(args.out) / "run", verbose=2)
bundle = export_bundle(net.backbone, Path(args.out) / "bundle", train_set.preprocessing, "int8", train_set.images,
                       provenance={"dataset": train_set.name, "learner": "protonet"})

adapter = FewShotAdapter.from_bundle(bundle, state=Path(args.out) / "taught.store")
held_out = []
for label, files in list_image_folder(args.new).items():
    adapter.enroll(label, files[: args.shots])
    held_out += [(f, label) for f in files[args.shots :]]
predictions = adapter.classify([f for f, _ in held_out])
correct = sum(p.nearest == label for p, (_, label) in zip(predictions, held_out))
print(f"Learned {len(adapter.labels)} new classes from {args.shots} images each: "
      f"{correct}/{len(held_out)} = {100 * correct / len(held_out):.1f} % of the other images right.")
