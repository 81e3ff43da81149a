"""The preset recipe is reproducible: trained twice in fresh processes, with the CPU kernels edgemeta chooses, its
weights are bit-for-bit equal, also with oneDNN held to AVX2 (as on an AVX2-only CPU). Across CPU kinds they are
not: each kind's kernels round differently (docs/benchmarks-training.md)."""

import os

import pytest

from tests.harness import run_python

TRAIN_AND_HASH = """
import hashlib
from dataclasses import replace
from edgemeta.train.backend import kernels
from edgemeta.train.recipes import RECIPES
from edgemeta.train.training import train
config = replace(RECIPES["omniglot-split"], data_dir={data!r}, steps=3, epochs=1, n_way=10)  # the recipe, shortened
net, _, _ = train(config, {out!r}, verbose=0)
digest = hashlib.sha256()
for weights in net.backbone.get_weights():
    digest.update(weights.tobytes())
print(kernels())
print(digest.hexdigest())
"""


def _train(omniglot_dir, out, isa):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_ENABLE_ONEDNN_OPTS", "ONEDNN_MAX_CPU_ISA")}
    if isa:
        env["ONEDNN_MAX_CPU_ISA"] = isa  # oneDNN's own cap on the instructions its kernels use
    result = run_python(TRAIN_AND_HASH.format(data=str(omniglot_dir), out=str(out)), env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    kernels, digest = result.stdout.strip().splitlines()[-2:]
    return kernels, digest


@pytest.mark.parametrize("isa", [None, "AVX2"], ids=["this-cpu", "onednn-avx2"])
def test_the_recipe_trained_twice_gives_the_same_weights(omniglot_dir, tmp_path, isa):
    first = _train(omniglot_dir, tmp_path / "a", isa)
    second = _train(omniglot_dir, tmp_path / "b", isa)
    assert first == second
    if os.uname().machine == "x86_64":
        assert first[0].startswith("oneDNN ("), first  # on by TensorFlow's default or by edgemeta's choice
