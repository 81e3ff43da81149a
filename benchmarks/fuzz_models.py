"""Fuzzes a bundle's model.tflite and loads every variant through the runtime: none may crash the process.

Each case is one corruption of the model file: a truncation at a random length, 1..16 random bit flips
anywhere, 1..4 flips in the flatbuffer's non-weight bytes (tables, vectors, shapes, indices), or damage
to the header (file identifier, root table offset, root vtable). Two modes:

- `hash`: the manifest is left as it is, so every variant must be refused by the sha256 check;
- `hard`: the manifest's model_sha256 is rewritten to the variant's hash (an attacker, or a broken
  exporter), so `edgemeta.runtime.verify` alone must stand between the bytes and the interpreter:
  each load raises a clear error or yields a model that runs.

Run it in a process of its own (tests/runtime/test_hostile_input.py does): if anything crashes, that process
dies and the caller sees it. As a script it prints the counts as JSON:

    python benchmarks/fuzz_models.py BUNDLE [--cases 2000] [--seed 0]
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import random
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgemeta.runtime import Embedder, FewShotAdapter
from edgemeta.runtime.verify import ModelVerificationError
from edgemeta.runtime.verify.flatbuffer import Buffer

# Share of the cases per corruption kind (the rest of the header kinds split the remainder evenly).
MIX = (("truncate", 0.2), ("flip", 0.3), ("flip-metadata", 0.3), ("identifier", 0.067),
       ("root-offset", 0.067), ("vtable", 0.066))


def weight_bytes(model: bytes) -> set[int]:
    """Offsets of constant tensor data (weights): a flip there still gives a valid model."""
    buf = Buffer(model)
    root = buf.table(buf.read("<I", 0, "root"), "model")
    covered: set[int] = set()
    for buffer in root.tables(4, "buffers"):
        vector = buffer.vector(0, 1, "data")
        if vector:
            covered.update(range(vector[0], vector[0] + vector[1]))
    return covered


def fuzz_cases(model: bytes, n: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """`n` (kind, corrupted bytes) pairs, each differing from `model`; deterministic for a seed."""
    rng = random.Random(seed)
    metadata = sorted(set(range(len(model))) - weight_bytes(model))
    root = struct.unpack_from("<I", model, 0)[0]
    vtable = root - struct.unpack_from("<i", model, root)[0]
    vtable_size = struct.unpack_from("<H", model, vtable)[0]

    def xor_byte(data: bytearray, i: int) -> None:
        data[i] ^= rng.randrange(1, 256)  # never 0: the byte always changes

    def flip_bits(data: bytearray, positions: list[int], k: int) -> None:
        for bit in rng.sample(range(len(positions) * 8), k):  # distinct bits: flips never cancel out
            data[positions[bit // 8]] ^= 1 << (bit % 8)

    everywhere = range(len(model))
    cases = []
    for kind, share in MIX:
        for _ in range(round(n * share)):
            data = bytearray(model)
            if kind == "truncate":
                data = data[: rng.randrange(0, len(model))]
            elif kind == "flip":
                flip_bits(data, everywhere, rng.randint(1, 16))
            elif kind == "flip-metadata":
                flip_bits(data, metadata, rng.randint(1, 4))
            elif kind == "identifier":
                xor_byte(data, rng.randrange(4, 8))
            elif kind == "root-offset":
                xor_byte(data, rng.randrange(0, 4))
            else:
                xor_byte(data, vtable + rng.randrange(vtable_size))
            cases.append((kind, bytes(data)))
    return cases[:n]


def outcome(load: Callable[[], Any]) -> tuple[str, str]:
    """(kind, message) of one load: "rejected: <stage>", "loaded, runs", or an "UNCLEAR ..." kind."""
    try:
        loaded = load()
    except ModelVerificationError as e:
        return _clear(f"rejected: {e.stage}", e)
    except ValueError as e:
        return _clear("rejected: hash" if "does not match its manifest" in str(e) else "rejected: other", e)
    except Exception as e:  # noqa: BLE001 - an unexpected error kind is what this campaign looks for
        return f"UNCLEAR {type(e).__name__}", str(e)[:300]
    embedder = loaded.embedder if isinstance(loaded, FewShotAdapter) else loaded
    try:
        y = embedder.embed(np.zeros((1, *embedder.preprocessing.input_shape[:2]), np.uint8))
        assert y.shape == (1, embedder.embedding_size), y.shape
    except Exception as e:  # noqa: BLE001
        return f"LOADED BUT BROKEN {type(e).__name__}", str(e)[:300]
    return "loaded, runs", ""


def _clear(kind: str, e: Exception) -> tuple[str, str]:
    message = str(e)
    if "Received" not in message or "model.tflite" not in message:
        return f"UNCLEAR message ({kind})", message[:300]
    return kind, message


def run_campaign(bundle: str | Path, n: int = 500, seed: int = 0, modes: tuple[str, ...] = ("hash", "hard")) -> dict:
    """Loads `n` fuzzed variants of `bundle`'s model per mode; returns counts and one message per kind."""
    bundle = Path(bundle)
    model = (bundle / "model.tflite").read_bytes()
    manifest = json.loads((bundle / "manifest.json").read_text())
    cases = fuzz_cases(model, n, seed)
    report: dict[str, Any] = {"cases": len(cases), "model_bytes": len(model)}
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "bundle"
        shutil.copytree(bundle, target)
        for mode in modes:
            counts: collections.Counter = collections.Counter()
            by_kind: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
            examples: dict[str, str] = {}
            start = time.perf_counter()
            for i, (kind, data) in enumerate(cases):
                (target / "model.tflite").write_bytes(data)
                if mode == "hard":
                    manifest["model_sha256"] = hashlib.sha256(data).hexdigest()
                    (target / "manifest.json").write_text(json.dumps(manifest))
                # The adapter's loader on some cases (all of the cheap hash mode), the Embedder's on the rest.
                loader = FewShotAdapter.from_bundle if mode == "hash" or i % 5 == 0 else Embedder.from_bundle
                result, message = outcome(lambda load=loader: load(target))
                counts[result] += 1
                by_kind[kind][result] += 1
                examples.setdefault(result, f"[{kind}] {message}")
            report[mode] = {"outcomes": dict(counts), "by_kind": {k: dict(v) for k, v in by_kind.items()},
                            "examples": examples, "seconds": round(time.perf_counter() - start, 2)}
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    report = run_campaign(args.bundle, args.cases, args.seed)
    print(json.dumps(report, indent=2))
    bad = [k for mode in ("hash", "hard") for k in report[mode]["outcomes"] if k.startswith(("UNCLEAR", "LOADED BUT"))]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
