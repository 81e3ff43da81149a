"""The CPU a figure was measured on, and the oneDNN choice training makes from it (edgemeta.cpu)."""

import os
import platform
import subprocess
import sys

import pytest

from edgemeta.cpu import _cpuinfo, cpu_flags, cpu_kind, describe_cpu, onednn_choice, tensorflow_enables_onednn

# First processor blocks of /proc/cpuinfo as each kind of machine prints them (shortened flag lists).
EPYC_AVX2 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B12
flags\t\t: fpu sse2 avx fma avx2 bmi2

processor\t: 1
model name\t: ignored
"""
XEON_AMX = ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8481C\n"
            "flags\t\t: avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8\n")
PI4 = "processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU part\t: 0xd08\n"
PI5 = ("processor\t: 0\n"
       "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\n")


@pytest.mark.parametrize("text, machine, kind, tensorflow_default", [
    (EPYC_AVX2, "x86_64", "x86-64 AVX2", False),
    (XEON_AMX, "x86_64", "x86-64 AMX", True),
    (PI4, "aarch64", "Arm64", False),
    (PI5, "aarch64", "Arm64 with dot product", False),
])
def test_each_cpu_kind_is_named_from_its_cpuinfo(tmp_path, text, machine, kind, tensorflow_default):
    (tmp_path / "cpuinfo").write_text(text)
    flags = cpu_flags(_cpuinfo(str(tmp_path / "cpuinfo")))
    assert cpu_kind(flags, machine) == kind
    assert tensorflow_enables_onednn(flags, machine) is tensorflow_default


def test_onednn_is_turned_on_only_where_tensorflow_leaves_it_off_and_never_over_the_user():
    avx2 = cpu_flags({"flags": "avx avx2 fma"})
    vnni = cpu_flags({"flags": "avx2 avx512f avx512_vnni"})
    value, reason = onednn_choice({}, avx2, "x86_64")
    assert value == "1" and "set by edgemeta" in reason
    assert onednn_choice({}, vnni, "x86_64")[0] is None  # TensorFlow turns it on itself
    assert onednn_choice({}, cpu_flags({"features": "fp asimd"}), "aarch64")[0] is None
    value, reason = onednn_choice({"TF_ENABLE_ONEDNN_OPTS": "0"}, avx2, "x86_64")
    assert value is None and reason == "TF_ENABLE_ONEDNN_OPTS=0 (set by the user)"


def test_this_machine_is_described_with_its_model_kind_and_flags():
    cpu = describe_cpu()
    assert cpu["machine"] == platform.machine() and cpu["cores"] == os.cpu_count()
    if os.path.exists("/proc/cpuinfo"):
        assert cpu["model"] != "unknown" and set(cpu["flags"]) <= cpu_flags()


@pytest.mark.parametrize("user", [None, "0"])
def test_training_reports_the_kernels_it_runs_with(user):
    """In a fresh process, as `edgemeta train` starts: the kernels TensorFlow says it runs match the choice."""
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if user is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = user
    code = "from edgemeta.train.backend import kernels, onednn_enabled; print(onednn_enabled()); print(kernels())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    enabled, kernels = out.stdout.strip().splitlines()[-2:]
    if user == "0":
        assert enabled == "False" and kernels.startswith("Eigen (TF_ENABLE_ONEDNN_OPTS=0 (set by the user))")
    elif platform.machine() == "x86_64":  # on by TensorFlow's default or by edgemeta's choice: on either way
        assert enabled == "True" and kernels.startswith("oneDNN ("), kernels
