"""The preset recipe is reproducible: trained twice in fresh processes, with the CPU kernels edgemeta chooses, its
weights are bit-for-bit equal, also as an AVX2-only CPU runs it (benchmarks/avx2_only where CPUID can be masked:
TensorFlow then leaves oneDNN off and edgemeta turns it on; else oneDNN held to AVX2). Across CPU kinds they are
not: each kind's kernels round differently (docs/benchmarks-training.md)."""

import os
import subprocess
import sys

import pytest

from tests.harness import AVX2_ONLY, cpuid_mask_unavailable

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


def _train(omniglot_dir, out, cpu):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_ENABLE_ONEDNN_OPTS", "ONEDNN_MAX_CPU_ISA")}
    command = [sys.executable, "-c", TRAIN_AND_HASH.format(data=str(omniglot_dir), out=str(out))]
    if cpu == "avx2" and cpuid_mask_unavailable() is None:
        command = [str(AVX2_ONLY), *command]  # every library sees an AVX2-only CPU
    elif cpu == "avx2":
        env["ONEDNN_MAX_CPU_ISA"] = "AVX2"  # oneDNN's own cap on the instructions its kernels use
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    kernels, digest = result.stdout.strip().splitlines()[-2:]
    return kernels, digest


@pytest.mark.parametrize("cpu", [None, "avx2"], ids=["this-cpu", "avx2-only"])
def test_the_recipe_trained_twice_gives_the_same_weights(omniglot_dir, tmp_path, cpu):
    first = _train(omniglot_dir, tmp_path / "a", cpu)
    second = _train(omniglot_dir, tmp_path / "b", cpu)
    assert first == second
    if os.uname().machine == "x86_64":
        assert first[0].startswith("oneDNN ("), first  # on by TensorFlow's default or by edgemeta's choice
    if cpu == "avx2" and cpuid_mask_unavailable() is None:
        assert "set by edgemeta" in first[0], first  # TensorFlow itself saw an AVX2-only CPU and left it off
