"""The adapter's classes as a page shows them: thumbnails kept with each class, rename, when each class was
enrolled and last used, and the memory report, all consistent with the memory budget and the state file."""

from __future__ import annotations

import io
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from edgemeta.format.images import thumbnail_jpeg
from edgemeta.runtime import ClassInfo, FewShotAdapter, MemoryBudgetError
from edgemeta.runtime.budget import MemoryBudget, class_bytes
from edgemeta.runtime.store import THUMBNAIL_ENTRY_BYTES, THUMBNAIL_MAX_BYTES
from tests.harness import blank_with_square

MAX_PIXELS = 2**20  # the same for every adapter here, with or without a budget: the same fixed part


def _noise(seed: int, side: int = 105) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (side, side), dtype=np.uint8)


def _open(state=None, **options) -> FewShotAdapter:
    return FewShotAdapter.from_preset("omniglot", state=state, max_pixels=MAX_PIXELS, **options)


@pytest.fixture
def exact_budget(monkeypatch):
    """Budgets made exact: nothing of this test process's own memory is taken off them, so an adapter given
    `fixed + room` bytes leaves exactly `room` for classes."""
    from edgemeta.runtime import memory

    monkeypatch.setattr(memory, "anonymous_rss_bytes", lambda: 0)
    plain = _open()
    return plain.store, -MemoryBudget.for_adapter(0, plain.embedder, plain.store).for_classes


def _pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "JPEG"
        return np.asarray(im)


# -- thumbnails ----------------------------------------------------------------------------------------
def test_a_new_class_keeps_a_thumbnail_of_its_first_image_persisted_with_it(tmp_path):
    state = tmp_path / "taught.store"
    adapter = _open(state, thumbnails=True)
    square, dark = blank_with_square(lo=20, hi=85), np.zeros((105, 105), np.uint8)
    adapter.enroll("square", [square, dark])
    first = adapter.thumbnail("square")
    thumb = _pixels(first)
    assert thumb.shape == (64, 64) and len(first) <= THUMBNAIL_MAX_BYTES
    assert thumb[32, 32] < 40 and thumb[2, 2] > 215  # the first image (a dark square on white), not the second
    adapter.enroll("square", _noise(1))  # more shots of a class with a thumbnail: kept as it is
    assert adapter.thumbnail("square") == first and adapter.shots("square") == 3
    adapter.set_thumbnail("square", np.dstack([dark, square, square]))  # replaced, from an RGB image
    assert _pixels(adapter.thumbnail("square")).shape == (64, 64, 3)
    replaced = adapter.thumbnail("square")
    adapter.enroll("bare", _noise(2))
    adapter.set_thumbnail("bare", None)
    assert adapter.thumbnail("bare") is None
    with pytest.raises(KeyError, match="Received: 'nope'"):
        adapter.thumbnail("nope")
    with pytest.raises(KeyError, match="Received: 'nope'"):
        adapter.set_thumbnail("nope", square)
    with pytest.raises(ValueError, match="one image. Received: list of 2 images"):
        adapter.set_thumbnail("square", [square, square])
    adapter.close()
    with _open(state) as reopened:  # a store's thumbnails are there whether or not the adapter makes them
        assert reopened.thumbnail("square") == replaced and reopened.thumbnail("bare") is None
        assert [(c.label, c.has_thumbnail) for c in reopened.classes()] == [("bare", False), ("square", True)]


def test_thumbnails_off_keeps_none_and_a_large_jpeg_file_is_bounded(tmp_path):
    off = _open()
    off.enroll("x", _noise(0))
    assert off.thumbnail("x") is None and not off.classes()[0].has_thumbnail
    photo = tmp_path / "photo.jpg"  # a 4000x3000 camera file: decoded at 1/8 scale for its thumbnail
    rng = np.random.default_rng(0)
    Image.fromarray(np.repeat(np.repeat(rng.integers(0, 256, (50, 67, 3), dtype=np.uint8), 60, 0), 60, 1)[:, :4000]
                    ).save(photo, quality=95)
    on = _open(thumbnails=True)
    on.enroll("photo", photo)
    data = on.thumbnail("photo")
    print(f"{photo.stat().st_size} B photo -> {len(data)} B thumbnail")
    assert _pixels(data).shape == (48, 64, 3) and len(data) <= THUMBNAIL_MAX_BYTES


def test_a_forgotten_class_takes_its_thumbnail_and_a_new_one_of_its_label_gets_a_fresh_one():
    adapter = _open(thumbnails=True)
    adapter.enroll("a", blank_with_square())
    held = adapter.store.nbytes()
    adapter.forget("a")
    assert adapter.store.thumbnail_bytes() == 0 and adapter.store.nbytes() < held
    adapter.enroll("a", np.zeros((105, 105), np.uint8))
    assert _pixels(adapter.thumbnail("a")).max() < 20  # from the new, dark image


# -- rename ----------------------------------------------------------------------------------------------
def test_rename_is_persisted_with_everything_the_class_holds(tmp_path):
    state = tmp_path / "taught.store"
    adapter = _open(state, thumbnails=True)
    adapter.enroll("sqaure", [blank_with_square(), blank_with_square(lo=25, hi=75)])
    adapter.enroll("dark", np.zeros((105, 105), np.uint8))
    before = {c.label: c for c in adapter.classes()}["sqaure"]
    thumbnail, prototype = adapter.thumbnail("sqaure"), adapter.prototypes()[1][1]
    adapter.rename("sqaure", "square")
    assert adapter.labels == ["dark", "square"] and adapter.classify(blank_with_square())[0].nearest == "square"
    adapter.rename("square", "square")  # to its own label: nothing
    adapter.close()
    with _open(state) as reopened:
        after = {c.label: c for c in reopened.classes()}
        assert "sqaure" not in after and after["square"] == ClassInfo("square", 2, before.last_used, before.enrolled, True)
        assert reopened.thumbnail("square") == thumbnail
        np.testing.assert_array_equal(reopened.prototypes()[1][1], prototype)


@pytest.mark.parametrize("old, new, error, fragment", [
    ("a", "b", ValueError, "a class is enrolled under 'b' already .*Received: 'b'"),
    ("a", "", ValueError, "non-empty string. Received: ''"),
    ("a", "   ", ValueError, "non-empty string. Received: '   '"),
    ("a", 7, ValueError, "non-empty string. Received: 7"),
    ("a", "x" * 1025, ValueError, "at most 1024 characters.*Received: 1025 characters"),
    ("zebra", "c", KeyError, "Cannot rename 'zebra': no class is enrolled under it. Received: 'zebra'"),
])
def test_a_refused_rename_changes_nothing_in_memory_or_on_disk(tmp_path, old, new, error, fragment):
    state = tmp_path / "taught.store"
    adapter = _open(state, thumbnails=True)
    adapter.enroll("a", blank_with_square())
    adapter.enroll("b", _noise(3))
    saved, classes, thumbnails = state.read_bytes(), adapter.classes(), [adapter.thumbnail(x) for x in "ab"]
    with pytest.raises(error, match=fragment):
        adapter.rename(old, new)
    assert state.read_bytes() == saved and adapter.classes() == classes
    assert [adapter.thumbnail(x) for x in "ab"] == thumbnails


def test_a_rename_whose_save_fails_is_undone(tmp_path):
    state = tmp_path / "board" / "taught.store"
    adapter = _open(state, thumbnails=True)
    adapter.enroll("a", blank_with_square())
    classes, thumbnail, held = adapter.classes(), adapter.thumbnail("a"), adapter.store.nbytes()
    shutil.rmtree(state.parent)  # the state and its lock file
    state.parent.write_text("a file where the state's folder was: the next save fails")
    with pytest.raises(OSError):
        adapter.rename("a", "a longer label")
    assert adapter.classes() == classes and adapter.thumbnail("a") == thumbnail and adapter.store.nbytes() == held
    with pytest.raises(OSError):
        adapter.set_thumbnail("a", np.zeros((30, 30), np.uint8))
    assert adapter.thumbnail("a") == thumbnail and adapter.store.nbytes() == held


# -- times -------------------------------------------------------------------------------------------------
def test_classes_say_when_each_was_enrolled_and_last_used_and_keep_it(tmp_path):
    state, now = tmp_path / "taught.store", [1_000.0]
    adapter = _open(state)
    adapter.store.wall_clock = lambda: now[0]
    adapter.enroll("square", blank_with_square())
    adapter.enroll("noise", _noise(4))
    assert adapter.classes() == [ClassInfo("noise", 1, 1000.0, 1000.0, False), ClassInfo("square", 1, 1000.0, 1000.0, False)]
    now[0] = 2_000.0
    assert adapter.classify(blank_with_square(), unknown_threshold=None)[0].label == "square"
    assert [(c.label, c.last_used, c.enrolled) for c in adapter.classes()] == [("noise", 1000.0, 1000.0),
                                                                               ("square", 2000.0, 1000.0)]
    now[0] = 3_000.0
    adapter.enroll("noise", _noise(5))
    assert adapter.classes()[0] == ClassInfo("noise", 2, 3000.0, 1000.0, False)
    adapter.close()
    with _open(state) as reopened:
        assert [(c.label, c.last_used, c.enrolled) for c in reopened.classes()] == [("noise", 3000.0, 1000.0),
                                                                                    ("square", 2000.0, 1000.0)]
        assert reopened.store.by_last_use() == ["square", "noise"]  # the logical clock, as before


# -- memory --------------------------------------------------------------------------------------------------
def test_the_memory_report_is_what_the_budget_counts_and_predicts_exactly_what_fits(exact_budget):
    """Without thumbnails every cost is known: `classes_that_fit` more classes (of a 16-character label)
    enroll, and the one after is refused; `used_bytes` is the budget's own sum all along."""
    _, fixed = exact_budget
    room = 2**20 + 400_000  # the store's save and load need 1 MiB of it; a class 3.6 KB (classify's arrays at batch 64)
    adapter = _open(memory_budget=fixed + room)
    report = adapter.memory_report()
    assert report == {"budget_bytes": fixed + room, "used_bytes": fixed + class_bytes(adapter.store, adapter._budget.batch),
                      "classes": 0, "classes_that_fit": report["classes_that_fit"]}
    fit = report["classes_that_fit"]
    assert 50 < fit < 1000, fit
    image = blank_with_square()
    for c in range(fit):
        adapter.enroll(f"class-{c:010d}", image)
        report = adapter.memory_report()
        assert report["used_bytes"] <= report["budget_bytes"] and report["classes_that_fit"] == fit - c - 1
        assert report["used_bytes"] == fixed + class_bytes(adapter.store, adapter._budget.batch)
    with pytest.raises(MemoryBudgetError):
        adapter.enroll(f"class-{fit:010d}", image)
    assert adapter.memory_report()["classes"] == fit
    print(f"{fit} classes predicted to fit in {room} B beside the fixed {fixed} B: {fit} enrolled, the next refused")


def test_with_thumbnails_the_report_plans_for_the_largest_and_the_budget_counts_the_real_ones(exact_budget):
    _, fixed = exact_budget
    room = 2**20 + 400_000
    without = _open(memory_budget=fixed + room).memory_report()["classes_that_fit"]
    adapter = _open(memory_budget=fixed + room, thumbnails=True)
    fit = adapter.memory_report()["classes_that_fit"]
    assert 0 < fit < without / 2, (fit, without)  # 3.6 KB a class, and a thumbnail of at most 6.2 KB
    enrolled = 0
    with pytest.raises(MemoryBudgetError) as info:
        while True:
            adapter.enroll(f"class-{enrolled:010d}", _noise(enrolled))
            enrolled += 1
            assert adapter.memory_report()["used_bytes"] <= fixed + room
    print(f"{fit} classes with thumbnails predicted (at {THUMBNAIL_MAX_BYTES} B each), {enrolled} enrolled "
          f"(thumbnails of {adapter.store.thumbnail_bytes() // enrolled} B); {without} without thumbnails")
    assert fit <= enrolled < 2 * fit and "thumbnails take" in str(info.value)


def test_an_enrollment_the_thumbnail_pushes_past_the_budget_is_refused_and_changes_nothing(exact_budget, tmp_path):
    """Classes that fit the budget without their thumbnails: with them, the enrollment is refused."""
    _, fixed = exact_budget
    state = tmp_path / "taught.store"
    image = _noise(9)
    thumbnail = sys.getsizeof(thumbnail_jpeg(image)) + THUMBNAIL_ENTRY_BYTES  # what each class's costs
    twin = _open()  # six classes without thumbnails
    for c in range(6):
        twin.enroll(f"c{c}", image)
    # Room for six classes and five thumbnails: a sixth class fits, not with its thumbnail.
    adapter = _open(state, memory_budget=fixed + class_bytes(twin.store, twin.embedder.max_batch) + 5 * thumbnail,
                    thumbnails=True)
    for c in range(5):
        adapter.enroll(f"c{c}", image)
    saved, held, classes = state.read_bytes(), adapter.store.nbytes(), adapter.classes()
    with pytest.raises(MemoryBudgetError, match="Nothing was changed"):
        adapter.enroll("c5", image)  # fits without its thumbnail (the twin holds six such classes in `six`)
    assert adapter.classes() == classes and adapter.store.nbytes() == held and state.read_bytes() == saved
    assert adapter.store.thumbnail_bytes() == 5 * thumbnail


def test_a_thumbnail_set_past_the_budget_is_refused_and_changes_nothing(exact_budget, tmp_path):
    _, fixed = exact_budget
    state = tmp_path / "taught.store"
    twin = _open()
    for c in range(5):
        twin.enroll(f"c{c}", _noise(c))
    thumbnail_cost = 3000  # a 64x64 grey noise thumbnail: ~2.3 KB and its entry; two do not fit
    adapter = _open(state, memory_budget=fixed + class_bytes(twin.store, twin.embedder.max_batch) + thumbnail_cost)
    for c in range(5):
        adapter.enroll(f"c{c}", _noise(c))
    used = adapter.memory_report()["used_bytes"]
    adapter.set_thumbnail("c0", _noise(10))
    assert adapter.memory_report()["used_bytes"] - used == adapter.store.thumbnail_bytes("c0") <= thumbnail_cost
    saved = state.read_bytes()
    with pytest.raises(MemoryBudgetError, match="With the thumbnail of 'c1'"):
        adapter.set_thumbnail("c1", _noise(11))
    assert adapter.thumbnail("c1") is None and state.read_bytes() == saved
    assert [c.has_thumbnail for c in adapter.classes()] == [True, False, False, False, False]


def test_without_a_budget_the_report_says_what_a_budget_would_count():
    adapter = _open(thumbnails=True)
    adapter.enroll("a", blank_with_square())
    report = adapter.memory_report()
    fixed = -MemoryBudget.for_adapter(0, adapter.embedder, adapter.store).for_classes
    assert report["budget_bytes"] is None and report["classes_that_fit"] is None and report["classes"] == 1
    assert report["used_bytes"] > class_bytes(adapter.store) and abs(report["used_bytes"] - fixed
                                                                     - class_bytes(adapter.store, 8)) < 2**20


def test_evicting_for_a_new_class_gives_back_the_old_ones_thumbnails(exact_budget):
    _, fixed = exact_budget
    adapter = _open(memory_budget=fixed + 2**20 + 200_000, thumbnails=True, on_full="evict")
    fit = adapter.memory_report()["classes_that_fit"]
    with pytest.warns(RuntimeWarning, match="evicted"):
        for c in range(3 * fit):
            adapter.enroll(f"class-{c:010d}", _noise(c))
            assert class_bytes(adapter.store, adapter._budget.batch) <= adapter._budget.for_classes
    kept = adapter.labels
    assert fit <= len(kept) < 3 * fit and kept[-1] == f"class-{3 * fit - 1:010d}"
    assert adapter.store.thumbnail_bytes() == sum(adapter.store.thumbnail_bytes(label) for label in kept) > 0
    assert all(c.has_thumbnail for c in adapter.classes())
