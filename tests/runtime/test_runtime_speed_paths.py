"""The runtime's fast paths give the same numbers as the plain ones they replace (no timing here:
benchmarks/runtime_speed.py measures the speed): preprocessing vs Pillow spelled out image by image,
the Embedder's quantization buffers vs the quantization formula, classify's cached prototype norms vs
distances computed from scratch after every kind of change to the store."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from edgemeta.format.patches import image_patches
from edgemeta.format.preprocessing import Preprocessing
from edgemeta.runtime import Embedder, FewShotAdapter
from edgemeta.runtime.prototypes import for_metric, squared_distances
from tests.harness import ROOT, blank_with_square

PRESET = ROOT / "edgemeta" / "presets" / "omniglot"
RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC, "box": Image.Resampling.BOX,
            "lanczos": Image.Resampling.LANCZOS, "nearest": Image.Resampling.NEAREST}


def pillow_reference(pre: Preprocessing, image: np.ndarray) -> np.ndarray:
    """What the Preprocessing docstring promises, spelled out with Pillow on one grayscale image."""
    x = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
    if x.shape != (pre.height, pre.width):
        x = np.asarray(Image.fromarray(x).resize((pre.width, pre.height), RESAMPLE[pre.resample]))
    out = np.repeat(np.clip(x, 0.0, 1.0)[..., None], pre.channels, axis=-1).astype(np.float32)
    return 1.0 - out if pre.invert else out


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.mark.parametrize("resample", sorted(RESAMPLE))
def test_preprocessing_is_bit_for_bit_pillow_image_by_image(resample):
    rng = np.random.default_rng(0)
    for (h, w), (height, width), channels in [((105, 105), (28, 28), 1), ((185, 8), (55, 14), 1),
                                              ((40, 90), (28, 28), 3), ((20, 20), (28, 28), 1), ((28, 28), (28, 28), 1)]:
        pre = Preprocessing(height, width, channels, invert=channels == 1, resample=resample)
        for dtype in ("uint8", "float32", "bool"):
            stack = rng.integers(0, 256, (3, h, w)).astype(np.uint8)
            stack = {"uint8": stack, "float32": stack.astype(np.float32) / 255, "bool": stack > 127}[dtype]
            expected = np.stack([pillow_reference(pre, image) for image in stack])
            assert same_bits(pre(stack), expected), (resample, h, w, dtype)
            assert same_bits(pre(list(stack)), expected)
            assert same_bits(pre(stack[..., None]), expected)  # (N, H, W, 1)
            assert same_bits(pre(stack[1]), expected[1:2])  # one image


def test_a_stack_with_bad_values_says_how_bad():
    pre = Preprocessing(28, 28, 1, invert=True)
    stack = np.zeros((4, 105, 105), np.float32)
    stack[2, 0, 0] = 1.5  # out of range: the per-image error names this image's range
    with pytest.raises(ValueError, match=r"Received: values in \[0, 1\.5\]"):
        pre(stack)
    stack[2, 0, 0] = np.nan
    with pytest.raises(ValueError, match="Received: 1 non-finite values"):
        pre(stack)
    with pytest.raises(TypeError, match="dtype int16"):
        pre(np.zeros((3, 105, 105), np.int16))


def test_mixed_lists_and_rgb_images():
    pre = Preprocessing(28, 28, 1, invert=True)
    square = blank_with_square()
    rgb = np.repeat(square[..., None], 3, axis=-1)
    assert same_bits(pre([square, rgb, square[:90]]),
                     np.stack([pillow_reference(pre, square), pillow_reference(pre, square),
                               pillow_reference(pre, square[:90])]))
    assert same_bits(pre(np.stack([rgb, rgb])), np.stack([pillow_reference(pre, square)] * 2))


def test_embedder_quantization_buffers_match_the_formula():
    embedder = Embedder.from_bundle(PRESET)
    scale, zero_point = embedder._input["quantization"]
    rng = np.random.default_rng(1)
    for n in (1, 5, 1, 3):  # buffers are kept per batch size, and replaced when it changes
        x = (rng.random((n, 28, 28, 1), dtype=np.float32) * 1.4 - 0.2).astype(np.float32)  # some out of [0, 1]
        x[0, 0, 0, 0] = (0.5 - zero_point) * scale  # a value whose quantization lands on a half
        expected = np.clip(np.round(x / scale + zero_point), -128, 127).astype(np.int8)
        assert np.array_equal(embedder._quantize(x), expected)
        # The preset takes 3x3 patches: the kept buffers give what the plain function gives.
        assert np.array_equal(embedder._model_input(x), image_patches(expected, 3, zero_point))
    # A batch and its images one by one agree, and the float64 input (the plain formula) agrees too.
    x = np.clip(rng.random((6, 28, 28, 1), dtype=np.float32), 0, 1)
    batch = embedder.embed_preprocessed(x)
    assert np.array_equal(batch, np.concatenate([embedder.embed_preprocessed(x[i : i + 1]) for i in range(6)]))
    with pytest.raises(ValueError, match="Received: 2 non-finite values"):
        embedder.embed_preprocessed(np.where(np.arange(784).reshape(1, 28, 28, 1) < 2, np.inf, x[:1]).astype(np.float32))
    huge = np.full((1, 28, 28, 1), 3e38, np.float32)  # finite, though far out of range: accepted, clipped
    with np.errstate(over="ignore"):
        assert np.array_equal(embedder.embed_preprocessed(huge), embedder.embed_preprocessed(np.full_like(huge, 1e6)))


def reference_classify(adapter: FewShotAdapter, images, threshold):
    """classify as it was computed before the cache: every distance from the store's prototypes."""
    queries = for_metric(adapter.embedder.embed(images), adapter.metric)
    labels, protos = adapter.store.prototypes()
    d = np.concatenate([squared_distances(queries, for_metric(protos[i : i + 512], adapter.metric))
                        for i in range(0, len(protos), 512)], axis=1)
    logits = -d - (-d).max(1, keepdims=True)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    best = d.argmin(1)
    return [(labels[j] if d[i, j] <= threshold else None, float(d[i, j]), float(p[i, j]), labels[j])
            for i, j in enumerate(best)]


@pytest.mark.parametrize("prototype_dtype,metric,classes", [
    ("float32", "squared_euclidean", 600),  # two blocks of 512, kept as float64 between calls
    ("int8", "squared_euclidean", 600),
    ("float32", "cosine", 600),
    ("float32", "squared_euclidean", 1100),  # more than resident_classes(64): blocks copied per call
    ("int8", "cosine", 1100),
])
def test_classify_with_cached_prototypes_equals_distances_from_scratch(tmp_path, prototype_dtype, metric, classes):
    from edgemeta.runtime.index import resident_classes

    resident = resident_classes(64)  # the preset's embedding

    bundle = tmp_path / "bundle"
    shutil.copytree(PRESET, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["metric"] = metric
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    adapter = FewShotAdapter.from_bundle(bundle, unknown_threshold=4.0, prototype_dtype=prototype_dtype)
    queries = np.stack([blank_with_square(lo=42 + 2 * i, hi=90 + i) for i in range(8)])  # none is a class image

    def check():
        got = [(p.label, p.distance, p.score, p.nearest) for p in adapter.classify(queries)]
        assert got == reference_classify(adapter, queries, 4.0)

    for i in range(classes):  # one shot each: a square of its own size and place
        adapter.enroll(f"c{i}", blank_with_square(lo=i % 40, hi=45 + (i // 40) % 55))
    assert (classes <= resident) == adapter._index._resident or adapter._index._cache is None
    check()
    assert (classes <= resident) == adapter._index._resident
    check()  # again, from what was kept
    adapter.enroll("c8", blank_with_square(lo=3, hi=90))  # a class's prototype moves
    check()
    adapter.enroll("new", queries[3])  # a class appears
    assert adapter.classify(queries[3])[0].nearest == "new"
    check()
    adapter.forget("new")  # and goes: the last row moves into its place
    check()
    adapter.save(tmp_path / "taught.store")
    other = FewShotAdapter.from_bundle(bundle, unknown_threshold=4.0, prototype_dtype=prototype_dtype)
    other.enroll("only", queries[0])
    adapter.load(_saved(other, tmp_path))  # the same adapter, another store (of one class)
    assert [p.nearest for p in adapter.classify(queries)] == ["only"] * 8
    check()
    adapter.load(tmp_path / "taught.store")  # and back
    check()


def _saved(adapter: FewShotAdapter, tmp_path) -> str:
    path = tmp_path / "other.store"
    adapter.save(path)
    return str(path)


def test_store_version_and_median_follow_every_change():
    adapter = FewShotAdapter.from_bundle(PRESET)
    store = adapter.store
    versions = [store.version]
    adapter.enroll("a", [blank_with_square(), blank_with_square(lo=20)])
    versions.append(store.version)
    assert store.median_count() == 2
    adapter.enroll("b", blank_with_square(lo=5))
    adapter.enroll("c", blank_with_square(lo=8))
    versions.append(store.version)
    assert store.median_count() == 1
    adapter.classify(blank_with_square())  # using a class is not a change
    assert store.version == versions[-1]
    adapter.forget("b")
    adapter.forget("c")
    versions.append(store.version)
    assert store.median_count() == 2
    assert versions == sorted(set(versions))


@pytest.mark.parametrize("prototype_dtype", ["float32", "int8"])
@pytest.mark.parametrize("classes", [40, 130])  # within and beyond resident_classes(1280) = 50
def test_a_photo_models_1280_d_prototypes_take_bounded_buffers_and_give_the_same_distances(prototype_dtype, classes):
    from edgemeta.runtime.index import PrototypeIndex, class_block, resident_classes
    from edgemeta.runtime.prototypes import squared_distances
    from edgemeta.runtime.store import PrototypeStore

    rng = np.random.default_rng(0)
    store = PrototypeStore(1280, "0" * 64, prototype_dtype)
    for i in range(classes):
        store.add(f"c{i}", rng.normal(size=(2, 1280)).astype(np.float32))
    queries = rng.normal(size=(3, 1280)).astype(np.float32)
    index = PrototypeIndex("squared_euclidean")
    labels, got = index.distances(store, queries)
    labels_ref, prototypes = store.prototypes()
    assert labels == labels_ref
    np.testing.assert_allclose(got, squared_distances(queries.astype(np.float64), prototypes.astype(np.float64)),
                               rtol=1e-12, atol=1e-9)
    assert class_block(1280) == 25 and resident_classes(1280) == 50 and class_block(64) == 512
    assert index._float64.nbytes <= 8 * 1280 * resident_classes(1280)  # 0.5 MB, not 1024 classes' 10.5 MB
    assert index._resident == (classes <= 50)
