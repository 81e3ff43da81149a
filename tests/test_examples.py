"""The examples run as users run them (real processes), with fast settings."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.harness import ROOT


def run_example(name, *args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "examples" / name), *map(str, args)], capture_output=True,
                          text=True, timeout=600, cwd=cwd)


@pytest.mark.slow
def test_omniglot_example(omniglot_dir, tmp_path):
    result = run_example("omniglot_end_to_end.py", "--data-dir", omniglot_dir, "--steps", 30, "--episodes", 20,
                         cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "new drawings recognised" in result.stdout
    assert result.stdout.count("int8 runtime: 20-way 1-shot") == 1
    assert (tmp_path / "runs" / "example-omniglot" / "bundle" / "model.tflite").is_file()


def write_digit_folders(root, classes):
    from sklearn.datasets import load_digits

    digits = load_digits()
    for c in classes:
        folder = root / f"digit{c}"
        folder.mkdir(parents=True)
        for i, image in enumerate(digits.images[digits.target == c][:12]):
            # Dark digit on light paper, 32x32 RGB, as a user's scans might be.
            pixels = (255 - image * 255 / 16).astype(np.uint8)
            Image.fromarray(pixels).resize((32, 32)).convert("RGB").save(folder / f"{i}.png")


@pytest.mark.slow
def test_own_images_example(tmp_path):
    write_digit_folders(tmp_path / "base", range(5))
    write_digit_folders(tmp_path / "new", range(5, 10))
    result = run_example("own_images.py", "--train", tmp_path / "base", "--new", tmp_path / "new", "--steps", 20,
                         "--shots", 3, "--invert", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Learned 5 new classes from 3 images each" in result.stdout
    assert (tmp_path / "runs" / "example-own-images" / "taught.store").is_file()


def test_photos_example_teaches_three_objects_and_keeps_them(tmp_path):
    from edgemeta.data.mini_imagenet import default_data_dir

    if not (default_data_dir() / "val.zip").is_file():
        pytest.skip(f"mini-ImageNet val.zip not found in {default_data_dir()} (set EDGEMETA_MINI_IMAGENET_DIR)")
    first = run_example("photos.py", "--out", tmp_path / "out", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Taught 3 objects from 5 photos each" in first.stdout
    recognised, total = map(int, first.stdout.split("recognised ")[1].split(" new")[0].split(" of "))
    assert total == 30 and recognised >= 25, first.stdout
    again = run_example("photos.py", "--out", tmp_path / "out", cwd=tmp_path)  # the store kept what was taught
    assert again.returncode == 0 and again.stdout.split("recognised ")[1] == first.stdout.split("recognised ")[1]
