"""What CPU this is, in the terms speed depends on: its model, its kind (AMX, AVX-512 VNNI, AVX2, Arm with or without
dot product) and whether TensorFlow turns its oneDNN kernels on by itself (standard library only).

Every speed figure names the CPU it was measured on (`describe_cpu`), and the training backend decides oneDNN from
it (`edgemeta.train.backend`).

Example:
    >>> describe_cpu()["kind"]  # doctest: +SKIP
    'x86-64 AVX-512 VNNI'
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
from collections.abc import Mapping
from pathlib import Path

# TensorFlow (2.9 and later, Linux x86-64) enables oneDNN by default only where one of these exists (its
# `port::TestCPUFeature` checks in util/util.cc); elsewhere it runs Eigen unless TF_ENABLE_ONEDNN_OPTS=1.
ONEDNN_DEFAULT_FLAGS = ("avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")
# The flags a figure's reader needs to place the CPU (the rest of /proc/cpuinfo's list is noise here).
FLAGS_THAT_MATTER = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8",
                     "amx_bf16", "asimd", "asimddp", "i8mm", "sve")


@functools.cache
def _cpuinfo(path: str = "/proc/cpuinfo") -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    fields: dict[str, str] = {}
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return fields
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    return fields


@functools.cache
def masked_flags() -> frozenset[str]:
    """The flags a CPUID mask loaded into this process hides from every library (benchmarks/avx2_only, which
    makes an AVX-512 machine run what an AVX2-only one would); empty without it. Read from the loaded mask
    itself, not the environment, so a figure says "masked" only when the libraries really saw the mask."""
    if "cpuid_mask" not in os.environ.get("LD_PRELOAD", ""):
        return frozenset()
    try:
        names = ctypes.c_char.in_dll(ctypes.CDLL(None), "edgemeta_cpuid_masked_flags")
    except (OSError, ValueError):
        return frozenset()
    return frozenset(ctypes.string_at(ctypes.addressof(names)).decode().split())


def silicon_flags(fields: dict[str, str] | None = None) -> frozenset[str]:
    """The feature flags /proc/cpuinfo lists (x86 `flags`, Arm `features`), lower case: what the silicon has."""
    fields = _cpuinfo() if fields is None else fields
    return frozenset((fields.get("flags") or fields.get("features") or "").lower().split())


def cpu_flags(fields: dict[str, str] | None = None) -> frozenset[str]:
    """The CPU's feature flags as this process's libraries see them: the silicon's, less what a CPUID mask hides."""
    return silicon_flags(fields) - masked_flags()


def cpu_kind(flags: frozenset[str], machine: str | None = None) -> str:
    """The class of CPU whose kernels a speed figure depends on."""
    machine = machine or platform.machine()
    if machine in ("x86_64", "AMD64", "i686", "i386"):
        if flags & {"amx_tile", "amx_int8", "amx_bf16"}:
            return "x86-64 AMX"
        if flags & {"avx512_vnni", "avx512_bf16"}:
            return "x86-64 AVX-512 VNNI"
        if "avx512f" in flags:
            return "x86-64 AVX-512"
        if "avx2" in flags:
            return "x86-64 AVX2"
        return "x86-64"
    if machine in ("aarch64", "arm64"):
        return "Arm64 with dot product" if "asimddp" in flags else "Arm64"
    return machine


def tensorflow_enables_onednn(flags: frozenset[str], machine: str | None = None) -> bool:
    """Whether TensorFlow turns oneDNN on by itself on this CPU (x86-64 with VNNI, BF16 or AMX)."""
    return (machine or platform.machine()) in ("x86_64", "AMD64") and bool(flags & set(ONEDNN_DEFAULT_FLAGS))


def onednn_choice(environ: Mapping[str, str], flags: frozenset[str], machine: str | None = None) -> tuple[str | None, str]:
    """What TF_ENABLE_ONEDNN_OPTS training should run with, and why: `(value to set or None, reason)`. oneDNN is
    turned on where TensorFlow leaves it off on x86-64 (CPUs without VNNI, BF16 or AMX: AVX2-only ones, where
    ProtoNet trained 2.35x faster with it, issue 22), unless the user set the variable."""
    if "TF_ENABLE_ONEDNN_OPTS" in environ:
        return None, f"TF_ENABLE_ONEDNN_OPTS={environ['TF_ENABLE_ONEDNN_OPTS']} (set by the user)"
    if (machine or platform.machine()) not in ("x86_64", "AMD64"):
        return None, "TensorFlow's default (not x86-64)"
    if tensorflow_enables_onednn(flags, machine):
        return None, "TensorFlow's default on this CPU (it has VNNI, BF16 or AMX)"
    return "1", "TF_ENABLE_ONEDNN_OPTS=1, set by edgemeta: TensorFlow leaves oneDNN off on x86-64 without VNNI, BF16 or AMX"


def describe_cpu() -> dict[str, object]:
    """The CPU for a benchmark's report: model name, kind, the flags that matter, cores, and what a CPUID mask
    hides (`masked`: the kind is then what the libraries saw, and the silicon's own kind is `silicon_kind`)."""
    fields = _cpuinfo()
    flags = cpu_flags(fields)
    model = fields.get("model name") or fields.get("hardware") or platform.processor() or "unknown"
    cpu: dict[str, object] = {"model": model, "kind": cpu_kind(flags), "machine": platform.machine(),
                              "cores": os.cpu_count(), "flags": sorted(flags & set(FLAGS_THAT_MATTER))}
    silicon = silicon_flags(fields)
    if silicon & masked_flags():  # an AVX-512 machine standing in for an AVX2 one: say so, and what it is
        cpu["masked"] = sorted(silicon & masked_flags() & set(FLAGS_THAT_MATTER))
        cpu["silicon_kind"] = cpu_kind(silicon)
    return cpu


def cpu_line() -> str:
    """One line naming the CPU, for printed figures: 'AMD EPYC (x86-64 AVX-512 VNNI; avx2 ...; 2 cores)'."""
    cpu = describe_cpu()
    masked = f"; {cpu['silicon_kind']} with {' '.join(cpu['masked'])} masked by cpuid_mask" if "masked" in cpu else ""
    return f"{cpu['model']} ({cpu['kind']}; {' '.join(cpu['flags']) or 'no flags read'}; {cpu['cores']} cores{masked})"
