"""The shipped photos preset: TensorFlow-free, it learns unseen mini-ImageNet classes from five JPEG files, takes
photos of any mode and size, records its recipe and measured figures, and fits a Pi Zero 2 W and a Pi 4."""

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

from edgemeta.data.mini_imagenet import default_data_dir
from edgemeta.presets import preset_path
from tests.harness import ROOT, fresh_runtime_figure

VAL_ZIP = default_data_dir() / "val.zip"


@pytest.fixture(scope="module")
def val_classes(tmp_path_factory):
    """15 JPEG files of each of 3 mini-ImageNet `val` classes (never trained on), as a camera leaves them."""
    if not VAL_ZIP.is_file():
        pytest.skip(f"mini-ImageNet val.zip not found at {VAL_ZIP} (set EDGEMETA_MINI_IMAGENET_DIR)")
    root = tmp_path_factory.mktemp("val")
    with zipfile.ZipFile(VAL_ZIP) as z:
        names = sorted(n for n in z.namelist() if n.lower().endswith(".jpg"))
        for wnid in sorted({n.split("/")[1] for n in names})[::5][:3]:
            (root / wnid).mkdir()
            for name in [n for n in names if n.split("/")[1] == wnid][:15]:
                (root / wnid / name.split("/")[-1]).write_bytes(z.read(name))
    return root


def test_manifest_records_the_recipe_and_its_measured_figures():
    manifest = json.loads((preset_path("photos") / "manifest.json").read_text())
    assert manifest["input"]["dtype"] == "int8" and manifest["input"]["shape"] == [224, 224, 3]
    assert manifest["metric"] == "cosine"
    provenance = manifest["provenance"]
    assert provenance["command"] == "edgemeta preset photos" and provenance["backbone"] == "efficientnet_lite0"
    measured = provenance["measured_accuracy"]
    assert measured["held_out"]["classes"] == 16  # mini-ImageNet val, never trained on
    for task in ("5-way 1-shot", "5-way 5-shot", "16-way 1-shot"):
        runtime, keras = measured[task]["runtime"], measured[task]["keras_float"]
        assert runtime["episodes"] == 600 and runtime["n_query"] == 15
        assert abs(runtime["accuracy"] - keras["accuracy"]) < 0.015  # int8 within 1.5 points of float
    assert (preset_path("photos") / "model.tflite").stat().st_size < 8e6  # a few MB


def test_learns_unseen_objects_from_five_jpeg_files_without_tensorflow(val_classes):
    code = f"""
import sys
for name in ("tensorflow", "tf_keras", "keras"):
    sys.modules[name] = None
from pathlib import Path
from edgemeta.runtime import FewShotAdapter
adapter = FewShotAdapter.from_preset("photos")
right = total = 0
for folder in sorted(Path({str(val_classes)!r}).iterdir()):
    files = sorted(folder.iterdir())
    adapter.enroll(folder.name, files[:5])
for folder in sorted(Path({str(val_classes)!r}).iterdir()):
    for p in adapter.classify(sorted(folder.iterdir())[5:]):
        right += p.nearest == folder.name
        total += 1
print(right, total)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    right, total = map(int, result.stdout.split()[-2:])
    assert total == 30 and right >= 26, f"{right}/{total} new photos recognised (3-way 5-shot; expected >= 26)"


def test_takes_photos_of_any_mode_and_size(val_classes, tmp_path):
    folders = sorted(val_classes.iterdir())
    files = sorted(folders[0].iterdir())
    photo = Image.open(files[0]).convert("RGB")
    variants = {"gray.png": photo.convert("L"), "palette.png": photo.convert("P"), "rgba.png": photo.convert("RGBA"),
                "cmyk.jpg": photo.convert("CMYK"), "big.jpg": photo.resize((3000, 2000)),  # a camera's size
                "gray16.png": Image.fromarray(np.asarray(photo.convert("L"), np.uint16) * 257)}
    for name, image in variants.items():
        image.save(tmp_path / name)
    other = sorted(folders[1].iterdir())[:5]
    # As on a Pi 4 (its budget, batch and pixel limit), in a process without TensorFlow.
    code = f"""
import sys
for name in ("tensorflow", "tf_keras", "keras"):
    sys.modules[name] = None
from edgemeta.presets import preset_path
from edgemeta.runtime import FewShotAdapter
adapter = FewShotAdapter.for_device(preset_path("photos"), "raspberry-pi-4")
adapter.enroll("object", {[str(f) for f in files[1:6]]!r})
adapter.enroll("other", {[str(f) for f in other]!r})
print(" ".join(p.nearest for p in adapter.classify({[str(tmp_path / n) for n in variants]!r})))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    answers = result.stdout.split()
    assert len(answers) == len(variants) and answers.count("object") >= len(variants) - 1, answers


# Both as a service, with its largest request set aside, the runtime measured afresh in this venv's state. On a Pi
# Zero 2 W that leaves room for 772 to 1,904 classes on the development machine, by the page cache's state
# (docs/photos.md): 500 is asserted there, 1,000 on a Pi 4.
@pytest.mark.parametrize("device,classes", [("raspberry-pi-4", 1000), ("raspberry-pi-zero-2-w", 500)])
def test_device_check_says_it_fits(device, classes, tmp_path):
    result = subprocess.run([sys.executable, "-m", "edgemeta.cli", "device", "check", "--device", device, "--json",
                             "--classes", str(classes), str(preset_path("photos"))], capture_output=True, text=True,
                            cwd=ROOT, timeout=300, env=fresh_runtime_figure(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    plan = json.loads(result.stdout[result.stdout.index("{"):])
    assert plan["fits"] and plan["max_classes"] >= classes, plan


def test_peak_rss_on_a_pi_4_stays_within_its_plan_with_camera_size_jpegs(val_classes, tmp_path):
    """The memory bound with the input a board gets: 8 MP camera JPEGs (3280x2464, decoded at a reduced scale) and
    small ones, enrolled and classified by a Pi 4 profile's adapter without TensorFlow. The process's peak RSS
    (VmHWM) must stay under `edgemeta device check`'s plan for it (the Python API plan, 5 classes)."""
    folders = sorted(val_classes.iterdir())
    camera = []
    for i, folder in enumerate(folders):
        big = Image.open(sorted(folder.iterdir())[0]).convert("RGB").resize((3280, 2464))
        big.save(tmp_path / f"camera{i}.jpg", quality=90)
        camera.append(str(tmp_path / f"camera{i}.jpg"))
    shots = {f.name: [str(p) for p in sorted(f.iterdir())[:5]] for f in folders}
    code = f"""
import json, sys
for name in ("tensorflow", "tf_keras", "keras"):
    sys.modules[name] = None
from edgemeta.presets import preset_path
from edgemeta.runtime import FewShotAdapter
with FewShotAdapter.for_device(preset_path("photos"), "raspberry-pi-4") as adapter:
    for i, (label, files) in enumerate({shots!r}.items()):
        adapter.enroll(label, files + ({camera!r}[:1] if i == 0 else []))  # a camera JPEG enrolled too
    answers = [p.nearest for p in adapter.classify({camera!r})]
status = open("/proc/self/status").read()
print(json.dumps({{"peak": int(status.split("VmHWM:")[1].split()[0]) * 1024, "answers": answers}}))
"""
    env = fresh_runtime_figure(tmp_path)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["answers"] == [f.name for f in folders]  # each camera-size copy of a class's photo is that class
    plan = subprocess.run([sys.executable, "-m", "edgemeta.cli", "device", "check", "--device", "raspberry-pi-4",
                           "--python-api", "--classes", "5", "--shots", "6", "--json", str(preset_path("photos"))],
                          capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    predicted = json.loads(plan.stdout[plan.stdout.index("{"):])["predicted_bytes"]
    print(f"peak RSS {measured['peak'] / 2**20:.1f} MiB, plan {predicted / 2**20:.1f} MiB")
    assert measured["peak"] < predicted, f"peak RSS {measured['peak'] / 2**20:.1f} MiB > plan {predicted / 2**20:.1f} MiB"

