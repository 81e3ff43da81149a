"""Memory: the planner's prediction against a real process's peak RSS, `edgemeta device check`, and the
adapter's budget (refuse and change nothing, or evict the least recently used class)."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest

from edgemeta.runtime import FewShotAdapter, MemoryBudgetError
from edgemeta.runtime.budget import MemoryBudget, class_bytes
from edgemeta.runtime.memory import MB
from tests.harness import ROOT, blank_with_square, cli_in_process

PRESET = ROOT / "edgemeta" / "presets" / "omniglot"


@pytest.fixture(autouse=True)
def _fresh_measurement(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # measure this tree, not a cached figure


def test_preset_with_1000_classes_peaks_within_10_percent_of_the_plan():
    """The plan holds in whatever state the machine is in: its runtime part is measured in that state.

    The peak itself depends on that state: shared library pages count in RSS, and the kernel maps more
    of them while another process (this test runner) keeps numpy and LiteRT in use. On a quiet machine
    the same child peaks at 45.6 MiB (benchmarks/runtime_memory.py, docs/runtime.md); here the
    process's private memory is what is bounded."""
    from benchmarks.runtime_memory import measure

    result = measure(str(PRESET), classes=1000, shots=5, batch=8)
    print(json.dumps({k: v for k, v in result.items() if k != "plan"}))
    assert result["classes"] == 1000
    assert 0.9 <= result["ratio"] <= 1.1, result
    assert result["private_at_end"] <= 48 * MB, result["private_at_end"] / MB


def test_device_check_says_whether_it_fits_and_how_many_classes():
    ok = cli_in_process("device", "check", PRESET, "--device", "raspberry-pi-zero-2-w", "--classes", "1000")
    assert ok.returncode == 0, ok.stderr
    assert "fits:" in ok.stdout and "at most" in ok.stdout and "activations at batch 8" in ok.stdout
    tight = cli_in_process("device", "check", PRESET, "--device", "raspberry-pi-zero-2-w", "--budget", "20MB", "--json")
    assert tight.returncode == 1
    report = json.loads(tight.stdout)
    assert report["fits"] is False and report["max_classes"] == 0 and report["predicted_bytes"] > 20 * MB
    coral = cli_in_process("device", "check", PRESET, "--device", "coral-usb-pi")
    assert "Edge TPU check" in coral.stdout and "dynamic batch" in coral.stdout
    bad = cli_in_process("device", "check", PRESET, "--device", "raspberry-pi-9")
    assert bad.returncode == 2 and "Unknown device 'raspberry-pi-9'" in bad.stderr


def _fixed_bytes(bundle, **options) -> int:
    """What an adapter on `bundle` (with `options`) needs before any class: a budget of this plus 2 MB
    leaves 2 MB for classes."""
    adapter = FewShotAdapter.from_bundle(bundle, **options)
    return -MemoryBudget.for_adapter(0, adapter.embedder, adapter.store).for_classes


def test_enrolling_past_the_budget_raises_and_changes_nothing(digits_run, tmp_path):
    state = tmp_path / "taught.store"
    bundle, options = digits_run["bundles"]["int8"], {"keep_support": "images", "max_batch": 4, "max_pixels": 2**20}
    adapter = FewShotAdapter.from_bundle(bundle, state=state, **options,
                                         memory_budget=_fixed_bytes(bundle, **options) + 2 * MB)
    shots = [blank_with_square(lo=10 + i, hi=60 + i) for i in range(5)]  # 5 x 11 KB kept per class
    with pytest.raises(MemoryBudgetError) as info:
        for c in range(1000):
            adapter.enroll(f"c{c}", shots)
    assert "Nothing was changed" in str(info.value) and "memory budget" in str(info.value)
    full = adapter.labels
    assert 10 < len(full) < 40, len(full)  # ~1.5 MB left for classes of ~56 KB
    saved, held = state.read_bytes(), adapter.store.nbytes()
    with pytest.raises(MemoryBudgetError):
        adapter.enroll("one-more", shots)
    assert adapter.labels == full and state.read_bytes() == saved and adapter.store.nbytes() == held
    assert adapter.store.nbytes() <= adapter._budget.for_classes


def test_a_refused_enrollment_gives_back_the_rows_it_grew(digits_run, tmp_path):
    """A new class at a full store grows its arrays; undoing the class must free them again, or each
    refusal at the budget's edge would leave the store over it (CI caught 901776 > 901212 bytes)."""
    state = tmp_path / "board" / "taught.store"
    adapter = FewShotAdapter.from_bundle(digits_run["bundles"]["int8"], state=state)
    image = blank_with_square(lo=10, hi=60)
    while not adapter.labels or len(adapter.labels) < adapter.store.capacity:
        adapter.enroll(f"c{len(adapter.labels)}", image)
    full, held = adapter.labels, (adapter.store.nbytes(), adapter.store.capacity)
    shutil.rmtree(state.parent)  # the state and its lock file
    state.parent.write_text("a file where the state's folder was: the next save fails")
    with pytest.raises(OSError):
        adapter.enroll("one-more", image)
    assert adapter.labels == full and (adapter.store.nbytes(), adapter.store.capacity) == held


def test_evict_mode_forgets_the_least_recently_used_class(digits_run):
    bundle, options = digits_run["bundles"]["int8"], {"keep_support": "images", "max_batch": 4, "max_pixels": 2**20}
    adapter = FewShotAdapter.from_bundle(bundle, **options, memory_budget=_fixed_bytes(bundle, **options) + 2 * MB,
                                         on_full="evict")
    shots = [blank_with_square(lo=10 + i, hi=60 + i) for i in range(5)]
    with pytest.warns(RuntimeWarning, match="evicted"):
        for c in range(60):
            adapter.enroll(f"c{c}", shots)
            adapter.classify(shots[0]) if c == 5 else None
            if c > 5:
                adapter.store.touch(["c0"])  # c0 is in use: it must survive
    labels = adapter.labels
    assert "c59" in labels and "c0" in labels and "c1" not in labels
    assert class_bytes(adapter.store, 4) <= adapter._budget.for_classes


def test_evict_mode_stays_within_the_budget_when_rows_are_all_a_class_holds(digits_run):
    """Without kept shots a class is its array row and its label. Evicting one frees the label but
    leaves the row as a spare (arrays do not shrink on remove), so counting the row as freed let the
    store creep over its budget, by a row per eviction."""
    bundle = digits_run["bundles"]["int8"]
    adapter = FewShotAdapter.from_bundle(bundle, max_batch=1, max_pixels=2**20, on_full="evict",
                                         memory_budget=_fixed_bytes(bundle, max_batch=1, max_pixels=2**20) + 2 * MB)
    fits = adapter._budget.for_classes // adapter.store.bytes_per_class(0)
    assert 100 < fits < 20_000, fits
    image, over = blank_with_square(lo=10, hi=60), []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an eviction warning per enrollment past the budget
        for c in range(int(fits * 1.3)):
            adapter.enroll(f"c{c}", image)
            if class_bytes(adapter.store, 1) > adapter._budget.for_classes:
                over.append(c)
    assert len(adapter.labels) < fits * 1.3 and not over, f"over the budget after {len(over)} enrollments"


@pytest.mark.parametrize("budget, fragment", [("lots", "Received: 'lots'"), (-5, "Received: -5"), ("0MB", "Received: '0MB'")])
def test_bad_budgets_are_refused(digits_run, budget, fragment):
    with pytest.raises(ValueError, match=fragment):
        FewShotAdapter.from_bundle(digits_run["bundles"]["int8"], memory_budget=budget)


def test_int8_prototypes_classify_like_float32(digits_run):
    test = digits_run["test"]
    exact = FewShotAdapter.from_bundle(digits_run["bundles"]["int8"])
    small = FewShotAdapter.from_bundle(digits_run["bundles"]["int8"], prototype_dtype="int8")
    for label in test.class_names:
        idx = np.flatnonzero(test.labels == test.class_names.index(label))[:3]
        for a in (exact, small):
            a.enroll(label, [test.raw[i] for i in idx])
    queries = [test.raw[i] for i in range(0, 300, 3)]
    same = np.mean([p.label == q.label for p, q in zip(exact.classify(queries), small.classify(queries))])
    assert same >= 0.97, same


def _with_raw_shape(source, directory, raw_shape):
    """A copy of bundle `source` whose manifest says which raw images to expect (the model is the same)."""
    import dataclasses
    import shutil

    from edgemeta.format.bundle import MANIFEST_FILE, read_manifest, write_bundle

    shutil.copytree(source, directory)
    manifest = dataclasses.replace(read_manifest(directory), raw_shape=raw_shape)
    (directory / MANIFEST_FILE).unlink()
    return write_bundle(directory, (directory / "model.tflite").read_bytes(), manifest)


def test_the_plan_follows_the_manifests_image_sizes_not_omniglots(digits_run, tmp_path):
    """The digits bundle takes 28x28 grayscale input: without a raw size in its manifest the plan counts
    images of that size; with `raw_shape` (224x224 RGB photos, say) it counts those. Nothing assumes 105x105."""
    from edgemeta.format.bundle import read_manifest
    from edgemeta.runtime.budget import raw_image_shape, working_set_bytes
    from edgemeta.runtime.memory import plan_memory

    plain = digits_run["bundles"]["int8"]
    photos = _with_raw_shape(plain, tmp_path / "photos", (224, 224, 3))
    assert read_manifest(plain).raw_shape is None and raw_image_shape(read_manifest(plain)) == (28, 28, 1)
    assert read_manifest(photos).raw_shape == (224, 224, 3)
    options = {"batch": 8, "shots": 5, "keep_support": "images", "runtime_bytes": 0}
    small, large = plan_memory(plain, **options), plan_memory(photos, **options)
    extra = 224 * 224 * 3 - 28 * 28  # bytes more per raw image
    assert large.working - small.working == 8 * extra * (1 + 4 * 2)  # the images and two float copies, per image
    assert large.per_class - small.per_class == 5 * extra  # five kept shots
    assert (large.arena, large.model, large.block) == (small.arena, small.model, small.block)  # the same model
    # The adapter's budget subtracts the same working set from what it leaves for the classes.
    for bundle in (plain, photos):
        manifest = read_manifest(bundle)
        assert working_set_bytes(manifest, 8) == plan_memory(bundle, **options).working


def test_a_224x224_rgb_manifest_plans_224x224x3_images():
    """A future photo bundle (no model needed for the arithmetic): raw images default to its input size."""
    from edgemeta.format.bundle import Manifest
    from edgemeta.format.preprocessing import Preprocessing
    from edgemeta.runtime.budget import raw_image_bytes, working_set_bytes

    manifest = Manifest(Preprocessing(224, 224, 3), embedding_size=128)
    pixels = 224 * 224 * 3
    assert raw_image_bytes(manifest) == pixels
    assert working_set_bytes(manifest, 4) == 4 * (pixels * 9 + pixels * 5 + 8 * 128)
    assert Manifest.from_dict(Manifest(Preprocessing(224, 224, 3), 128, raw_shape=(480, 640, 3)).to_dict()).raw_shape \
        == (480, 640, 3)
    with pytest.raises(ValueError, match="raw_shape must be"):
        Manifest(Preprocessing(), 64, raw_shape=(105, 105))


def test_the_adapters_budget_leaves_less_for_classes_when_the_manifest_expects_larger_images(digits_run, tmp_path,
                                                                                              monkeypatch):
    import edgemeta.runtime.memory as memory

    monkeypatch.setattr(memory, "anonymous_rss_bytes", lambda: 0)  # nothing beyond the plan, for both
    photos = _with_raw_shape(digits_run["bundles"]["int8"], tmp_path / "photos", (224, 224, 3))
    left = [FewShotAdapter.from_bundle(b, max_batch=4, memory_budget=200 * MB)._budget.for_classes
            for b in (digits_run["bundles"]["int8"], photos)]
    assert left[0] - left[1] == 4 * (224 * 224 * 3 - 28 * 28) * 9


def test_the_adapters_budget_is_the_device_checks_plan_whatever_else_runs(monkeypatch):
    """A board's adapter and `edgemeta device check` make the same plan, and neither reads the live RSS:
    shared library pages, which grow in RSS while other processes use the same libraries, are counted
    at the plan's measured figure. Only anonymous memory beyond the plan (the caller's own) is taken off."""
    import edgemeta.runtime.memory as memory
    from edgemeta.runtime.memory import plan_memory

    monkeypatch.setattr(memory, "current_rss_bytes", lambda: 10**12)  # as if the machine were swamped
    monkeypatch.setattr(memory, "anonymous_rss_bytes", lambda: 0)
    budget, pixels = 96 * MB, 2**20
    adapter = FewShotAdapter.from_bundle(PRESET, max_batch=8, max_pixels=pixels, memory_budget=budget)
    plan = plan_memory(PRESET, batch=8, shots=0, max_pixels=pixels)
    assert adapter._budget.for_classes == budget + plan.for_classes_at_most
    assert plan.max_classes(budget) > 1000
    monkeypatch.setattr(memory, "anonymous_rss_bytes", lambda: 10**12)  # a process that holds far more itself
    with pytest.raises(MemoryBudgetError, match="too small for this bundle: .*beyond the plan"):
        FewShotAdapter.from_bundle(PRESET, max_batch=8, max_pixels=pixels, memory_budget=budget)


def test_classify_compares_at_most_max_batch_queries_at_once(digits_run):
    """The budget counts classify's (queries, classes) arrays for max_batch queries; a call with more
    images is split, with the same answers as one image at a time."""
    from edgemeta.runtime.index import PrototypeIndex

    adapter = FewShotAdapter.from_bundle(digits_run["bundles"]["int8"], max_batch=3)
    test = digits_run["test"]
    for c in np.unique(test.labels)[:4]:
        adapter.enroll(str(c), test.images[test.labels == c][:2])
    rows, real = [], PrototypeIndex.distances

    def spy(self, store, queries):
        rows.append(len(queries))
        return real(self, store, queries)

    PrototypeIndex.distances = spy
    try:
        together = adapter.classify(test.images[:10])
    finally:
        PrototypeIndex.distances = real
    assert max(rows) == 3 and sum(rows) == 10
    alone = [adapter.classify(image)[0] for image in test.images[:10]]
    assert [(p.label, p.nearest) for p in together] == [(p.label, p.nearest) for p in alone]
    # BLAS sums a (3, D) and a (1, D) product in different orders: equal to rounding
    np.testing.assert_allclose([(p.distance, p.score) for p in together], [(p.distance, p.score) for p in alone], rtol=1e-9)


def test_long_labels_count_at_their_size(digits_run):
    """Labels were counted at a fixed ~120 B: 150 labels of 1 MiB went in under a 96 MB budget while RSS
    reached 202 MiB. Now a label costs what its str object takes (and labels are capped at 1024 characters)."""
    bundle = digits_run["bundles"]["int8"]
    adapter = FewShotAdapter.from_bundle(bundle, max_batch=1, max_pixels=2**20,
                                         memory_budget=_fixed_bytes(bundle, max_batch=1, max_pixels=2**20) + 2 * MB)
    room = adapter._budget.for_classes - class_bytes(adapter.store, 1)
    image = blank_with_square(lo=10, hi=60)
    with pytest.raises(MemoryBudgetError):
        for c in range(10_000):
            adapter.enroll(f"{c:05d}" + "é" * 1000, image)  # ~2 KB each as a str (2 bytes per character)
    assert len(adapter.labels) <= room // 2000, (len(adapter.labels), room)
    assert class_bytes(adapter.store, 1) <= adapter._budget.for_classes
    with pytest.raises(ValueError, match="1024"):
        adapter.enroll("x" * 2**20, image)


def test_a_budgeted_board_process_imports_nothing_it_does_not_use():
    """Each of these was once imported by the runtime and cost resident memory on every board (measured
    with VmRSS): importlib.abc -> importlib.resources, tempfile, random, bz2, lzma (1.5 MB); subprocess
    (0.5 MB); hashlib -> OpenSSL (3.4 MB)."""
    from edgemeta.runtime.memory import runtime_overhead
    from tests.harness import run_python

    runtime_overhead()  # measured once per machine (a subprocess); the board process reads the figure
    child = ("import sys, json\n"
             "from edgemeta.runtime import FewShotAdapter\n"
             "adapter = FewShotAdapter.from_preset('omniglot', memory_budget='96MB')\n"
             "heavy = ['importlib.resources', 'tempfile', 'random', 'subprocess', 'hashlib', 'ssl', 'bz2', 'lzma']\n"
             "print(json.dumps([m for m in heavy if m in sys.modules]))")
    result = run_python(child, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
