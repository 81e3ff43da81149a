"""benchmarks/avx2_only: one process sees its x86-64 CPU as AVX2-only, so AVX2 figures are measurable anywhere
with CPUID faulting, and training makes the oneDNN choice an AVX2-only CPU gets."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import AVX2_ONLY, cpuid_mask_unavailable

pytestmark = pytest.mark.skipif(cpuid_mask_unavailable() is not None, reason=cpuid_mask_unavailable() or "")


def _masked(tmp_path, *command: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "EDGEMETA_CPUID_MASK_DIR": str(tmp_path / "cache")}
    env.pop("TF_ENABLE_ONEDNN_OPTS", None)
    return subprocess.run([str(AVX2_ONLY), *command], capture_output=True, text=True, env=env, timeout=300, **kwargs)


def test_the_instruction_itself_reports_no_avx512_and_keeps_avx2(tmp_path):
    probe = tmp_path / "probe.c"
    probe.write_text('#include <stdio.h>\n#include <cpuid.h>\nint main(void){unsigned a,b,c,d;'
                     '__cpuid_count(7,0,a,b,c,d);printf("%u %u %u\\n",(b>>5)&1,(b>>16)&1,(c>>11)&1);'
                     '__cpuid_count(7,1,a,b,c,d);printf("%u\\n",(a>>4)&1);return 0;}\n')
    subprocess.run([os.environ.get("CC", "cc"), "-o", str(tmp_path / "probe"), str(probe)], check=True)
    avx2, avx512f, avx512_vnni, avx_vnni = map(int, _masked(tmp_path, str(tmp_path / "probe")).stdout.split())
    assert (avx2, avx512f, avx512_vnni, avx_vnni) == (1, 0, 0, 0)


def test_figures_name_the_cpu_the_libraries_saw_and_the_silicon(tmp_path):
    code = "import json; from edgemeta.cpu import cpu_line, describe_cpu; print(json.dumps(describe_cpu())); print(cpu_line())"
    out = _masked(tmp_path, sys.executable, "-c", code)
    assert out.returncode == 0, out.stderr[-2000:]
    described, line = out.stdout.strip().splitlines()[-2:]
    cpu = json.loads(described)
    assert cpu["kind"] == "x86-64 AVX2" and "avx2" in cpu["flags"] and not any("512" in f for f in cpu["flags"])
    silicon = set(Path("/proc/cpuinfo").read_text().split())
    if "avx512f" in silicon:  # standing in for another CPU kind: the figure must say so
        assert "avx512f" in cpu["masked"] and cpu["silicon_kind"].startswith("x86-64 AVX-512"), cpu
        assert "masked by cpuid_mask" in line
    else:  # already an AVX2-only CPU: nothing hidden, nothing claimed
        assert "masked" not in cpu and "masked" not in line


def test_training_turns_onednn_on_where_tensorflow_itself_sees_an_avx2_cpu(tmp_path):
    """TensorFlow's own check (not edgemeta's) sees no VNNI, BF16 or AMX and would leave oneDNN off."""
    code = ("from edgemeta.cpu import describe_cpu; from edgemeta.train.backend import kernels, onednn_enabled;"
            "print(describe_cpu()['kind']); print(onednn_enabled()); print(kernels())")
    out = _masked(tmp_path, sys.executable, "-c", code)
    kind, enabled, kernels = out.stdout.strip().splitlines()[-3:]
    assert kind == "x86-64 AVX2" and enabled == "True", out.stderr[-2000:]
    assert "set by edgemeta" in kernels, kernels
    user_off = subprocess.run([str(AVX2_ONLY), sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "EDGEMETA_CPUID_MASK_DIR": str(tmp_path / "cache"),
                                   "TF_ENABLE_ONEDNN_OPTS": "0"})
    assert user_off.stdout.strip().splitlines()[-2] == "False"


def test_a_real_crash_still_reaches_the_programs_own_handler(tmp_path):
    """faulthandler installs its SIGSEGV handler after the mask: a segfault that is not CPUID must still reach it."""
    out = _masked(tmp_path, sys.executable, "-X", "faulthandler", "-c", "import ctypes; ctypes.string_at(0)")
    assert out.returncode == -11 and "Fatal Python error: Segmentation fault" in out.stderr, (out.returncode, out.stderr)


def test_training_on_an_avx2_cpu_prints_no_error_line_for_the_kernels_edgemeta_chose(tmp_path):
    """MAML's int32 ops make TensorFlow print an E-line once edgemeta has turned oneDNN on without AVX-512."""
    exe = Path(sys.executable).with_name("edgemeta")
    out = _masked(tmp_path, str(exe), "train", "--recipe", "digits", "--learner", "maml", "--steps", "2", "--epochs", "1",
                  "--out", str(tmp_path / "run"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "set by edgemeta" in out.stdout and "DT_INT32" not in out.stderr, out.stderr[-3000:]
