"""What tests share beyond fixtures: paths, real processes of this venv, the CLI, test images, tiny
datasets and backbones, and `run_learner_test`, the one check every registered learner passes.

Import it as `from tests.harness import ...` (the repository root is on pytest's `pythonpath`). Only the
standard library and numpy load at import: board-side tests import it where TensorFlow must stay absent.
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OMNIGLOT_DIR = Path(os.environ.get("EDGEMETA_OMNIGLOT_DIR") or ROOT.parent / "shared" / "datasets" / "omniglot").resolve()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def apt_install(packages: tuple[str, ...], files: tuple[str, ...]) -> str | None:
    """Installs Debian `packages` with apt-get when one of `files` is missing (as CI on a fresh machine needs);
    None when all `files` are there afterwards, else why not (a test skips with that reason)."""
    if all(Path(f).is_file() for f in files):
        return None
    missing, wanted = " or ".join(f for f in files if not Path(f).is_file()), " and ".join(packages)
    if shutil.which("apt-get") is None:
        return f"{missing} is missing and there is no apt-get to install {wanted}"
    prefix = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
    if prefix is None:
        return f"{missing} is missing and installing {wanted} needs root (no sudo)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*prefix, "apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    result = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
    if result.returncode != 0:  # a stale package index: refresh it once
        subprocess.run([*prefix, "apt-get", "update", "-q"], capture_output=True, text=True, env=env, timeout=900)
        result = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
    if result.returncode != 0 or not all(Path(f).is_file() for f in files):
        return f"apt-get could not install {wanted}: {(result.stderr or result.stdout)[-500:]}"
    return None


def fresh_runtime_figure(tmp_path: Path) -> dict[str, str]:
    """An environment whose plan measures the runtime afresh (`XDG_CACHE_HOME` in `tmp_path`), in the same state as the
    process it is compared with. The runtime's resident shared-library pages depend on the page cache: in a venv
    just installed (its libraries wholly cached) the same fresh process measured 50.3 MB, in one long in use 43.0 MB;
    a figure cached by another venv would compare one state's plan with another's peak."""
    return {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}


def run_python(code: str, timeout: int = 300, **kwargs) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh interpreter of this venv (real process, real imports)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, **kwargs)


def run_cli(*args: str, timeout: int = 600, cwd: Path | None = None) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("edgemeta")
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=cwd)


def cli_in_process(*args: str) -> subprocess.CompletedProcess:
    """`edgemeta ARGS` through `edgemeta.cli.main` in this process: for error paths, where a fresh
    interpreter (and its TensorFlow import) would cost seconds and prove nothing more."""
    import contextlib
    import io

    from edgemeta.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(map(str, args)))
        except SystemExit as e:  # argparse's usage errors
            code = e.code
    return subprocess.CompletedProcess(["edgemeta", *map(str, args)], code, out.getvalue(), err.getvalue())


def blank_with_square(size: int = 105, lo: int = 30, hi: int = 70) -> np.ndarray:
    """A white (255) image with a black (0) square: an Omniglot-like raw drawing."""
    image = np.full((size, size), 255, np.uint8)
    image[lo:hi, lo:hi] = 0
    return image


def toy_dataset(classes: int = 12, per_class: int = 12, size: int = 28, seed: int = 0):
    """An `ImageClassDataset` whose classes are distinct random blob patterns plus noise: learnable,
    few-shot, and novel at test (no structure is shared between classes)."""
    from edgemeta.data.dataset import ImageClassDataset
    from edgemeta.format.preprocessing import Preprocessing

    rng = np.random.default_rng(seed)
    templates = (rng.random((classes, size, size, 1)) > 0.8).astype(np.float32)
    images = np.clip(np.repeat(templates, per_class, 0) + rng.normal(0, 0.3, (classes * per_class, size, size, 1)), 0, 1)
    return ImageClassDataset(images.astype(np.float32), np.repeat(np.arange(classes), per_class).astype(np.int32),
                             tuple(map(str, range(classes))), ("toy",) * classes,
                             Preprocessing(height=size, width=size), "toy")


def tiny_backbone(size: int = 16, filters: int = 8):
    """A 2-block Conv-4 on `size` x `size` grey images: the learners' own backbone, small enough for seconds."""
    from edgemeta.train.learners import conv4

    return conv4((size, size, 1), filters=filters, blocks=2)


def run_learner_test(name: str, options: dict[str, Any] | None = None, *, learning_rate: float = 3e-3,
                     steps: int = 40, seed: int = 0) -> dict[str, Any]:
    """Asserts what every learner must do, on the toy dataset (8 training classes, 6 held out):

    1. its episode loss falls below 0.7 x its initial value within `steps` 4-way 1-shot steps;
    2. its weights round-trip as a run stores them (backbone `.keras`, learner weights `.h5`): the
       reloaded learner gives the same logits and the same embeddings;
    3. its backbone exports to an int8 bundle that records the learner's metric;
    4. the runtime (`FewShotAdapter` on that bundle, raw images) learns the held-out classes (> 0.6 on
       3-way 1-shot) within 0.1 of Keras' float nearest-prototype accuracy on the same episodes, and the
       learner's own adaptation scores > 0.6 on new episodes of its training classes (toy templates share
       no structure, so held-out transfer is judged through the embedding only).

    `options` go to `build_learner`; `learning_rate` and `steps` tune the fit. Returns the measured figures.
    """
    from converters import export_bundle
    from edgemeta.runtime import Embedder, FewShotAdapter
    from edgemeta.runtime.evaluation import evaluate_adapter_on_episodes
    from edgemeta.train.backend import keras
    from edgemeta.train.episodes import EpisodeSampler
    from edgemeta.train.evaluation import evaluate_keras, evaluate_learner
    from edgemeta.train.learners import build_learner

    options = options or {}
    keras.utils.set_random_seed(seed)
    data = toy_dataset(classes=14, size=16)
    train, held_out = data.subset(classes=list(range(8))), data.subset(classes=list(range(8, 14)))
    learner = build_learner(name, tiny_backbone(), **options)
    learner.compile(learner.make_optimizer(learning_rate), learner.episode_loss(), ["accuracy"])
    episodes = EpisodeSampler(train, 4, 1, 3, seed=0).episodes(episodes_per_batch=2)
    fixed = episodes.take(6).cache()
    before = learner.evaluate(fixed, verbose=0)[0]
    # Slots made up front: fit traces its step once instead of twice (the first trace would create them).
    learner.optimizer.build(learner.trainable_variables)
    if getattr(learner, "trains_on", "episodes") == "batches":  # a classifier: labelled batches of all training classes
        from edgemeta.train.episodes import labelled_batches

        learner.fit(labelled_batches(train, 16), steps_per_epoch=steps, epochs=1, verbose=0)
    else:
        learner.fit(episodes, steps_per_epoch=steps, epochs=1, verbose=0)
    after = learner.evaluate(fixed, verbose=0)[0]
    assert after < 0.7 * before, f"{name}: loss {before:.3f} -> {after:.3f} in {steps} steps (expected < 0.7 x)"
    learner.finish_training(train.images)

    with tempfile.TemporaryDirectory(prefix=f"learner-{name}-") as tmp:
        _assert_weights_round_trip(name, options, learner, held_out, Path(tmp))
        bundle = export_bundle(learner.backbone, Path(tmp) / "bundle", train.preprocessing, "int8", train.images,
                               learner.metric)
        embedder = Embedder.from_bundle(bundle)
        assert embedder.manifest.metric == learner.metric
        assert embedder.manifest.quantization["scheme"] == "full_integer", embedder.manifest.quantization

        sampler = EpisodeSampler(held_out, 3, 1, 4, seed=1)
        indices = list(sampler.indices().take(20).as_numpy_iterator())
        raw = [np.round(255 * im[..., 0]).astype(np.uint8) for im in held_out.images]
        runtime = evaluate_adapter_on_episodes(lambda: FewShotAdapter(embedder), raw, indices, 3, 1, 4)
    keras_float = evaluate_keras(learner.backbone, sampler, 20, metric=learner.metric)
    own = evaluate_learner(learner, EpisodeSampler(train, 3, 1, 4, seed=1), 20)
    assert runtime.accuracy > 0.6 and own.accuracy > 0.6, f"{name}: runtime {runtime}, own {own}"
    assert abs(runtime.accuracy - keras_float.accuracy) < 0.1, f"{name}: runtime {runtime}, keras {keras_float}"
    return {"loss_before": before, "loss_after": after, "runtime": runtime, "keras": keras_float, "own": own}


def _assert_weights_round_trip(name: str, options: dict[str, Any], learner, dataset, tmp: Path) -> None:
    """Saves `learner` as `train` saves a run (backbone `.keras`, learner weights `.h5`), reloads it as
    `load_learner` does, and asserts the same logits on an episode and the same embeddings."""
    from edgemeta.train.backend import keras
    from edgemeta.train.episodes import EpisodeSampler
    from edgemeta.train.learners import build_learner
    from edgemeta.train.training import EMBEDDING_FILE, LEARNER_WEIGHTS_FILE

    learner.backbone.save(tmp / EMBEDDING_FILE)
    learner.save_weights(tmp / LEARNER_WEIGHTS_FILE)
    backbone = keras.models.load_model(tmp / EMBEDDING_FILE, compile=False)
    reloaded = build_learner(name, backbone, **options)
    reloaded.build_from_episode(backbone.input_shape[1:])
    reloaded.load_weights(tmp / LEARNER_WEIGHTS_FILE)
    episode, _ = next(iter(EpisodeSampler(dataset, 3, 1, 4, seed=2).episodes(1)))
    np.testing.assert_allclose(reloaded(episode, training=False).numpy(), learner(episode, training=False).numpy(),
                               rtol=1e-5, atol=1e-5, err_msg=f"{name}: logits after the weights round-trip")
    images = dataset.images[:16]
    np.testing.assert_allclose(backbone(images, training=False).numpy(), learner.backbone(images, training=False).numpy(),
                               rtol=1e-5, atol=1e-6, err_msg=f"{name}: embeddings after the weights round-trip")


AVX2_ONLY = Path(__file__).resolve().parents[1] / "benchmarks" / "avx2_only"


def cpuid_mask_unavailable() -> str | None:
    """Why `benchmarks/avx2_only` cannot run here, or None when it can (x86-64 Linux with CPUID faulting and cc)."""
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return f"CPUID masking is x86-64 Linux only; this is {platform.system()} {platform.machine()}"
    if "cpuid_fault" not in Path("/proc/cpuinfo").read_text().split():
        return "this CPU or kernel has no CPUID faulting (no cpuid_fault flag in /proc/cpuinfo)"
    if not shutil.which(os.environ.get("CC", "cc")):
        return "no C compiler (cc) to build benchmarks/cpuid_mask/cpuid_mask.c"
    return None
