import os
import signal

import numpy as np
import pytest

from edgemeta.runtime import FewShotAdapter
from tests.harness import blank_with_square, run_python


@pytest.fixture
def adapter(digits_run):
    return FewShotAdapter.from_bundle(digits_run["bundles"]["int8"])


def digit_images(digits_run, label, n, start=0):
    test = digits_run["test"]
    idx = np.flatnonzero(test.labels == test.class_names.index(label))[start : start + n]
    return [test.raw[i] for i in idx]


def test_enroll_classify_refine_forget(adapter, digits_run):
    for label in ("5", "6", "7"):
        assert adapter.enroll(label, digit_images(digits_run, label, 3)) == 3
    assert adapter.labels == ["5", "6", "7"]
    predictions = adapter.classify(digit_images(digits_run, "6", 10, start=20))
    assert len(predictions) == 10
    assert sum(p.label == "6" for p in predictions) >= 6
    assert all(p.distance >= 0 and 0 < p.score <= 1 for p in predictions)

    # Refining averages all shots: the prototype equals the mean embedding of the 5 images.
    more = digit_images(digits_run, "5", 2, start=3)
    assert adapter.enroll("5", more) == 5 and adapter.shots("5") == 5
    labels, protos = adapter.prototypes()
    expected = adapter.embedder.embed(digit_images(digits_run, "5", 5)).mean(0)
    np.testing.assert_allclose(protos[labels.index("5")], expected, rtol=1e-5, atol=1e-6)

    adapter.forget("7")
    assert adapter.labels == ["5", "6"]
    assert {p.label for p in adapter.classify(digit_images(digits_run, "7", 5))} <= {"5", "6"}


@pytest.mark.parametrize("metric", ["squared_euclidean", "cosine"])
def test_the_shared_prototype_module_computes_what_the_adapter_does(digits_run, metric):
    """Evaluation and calibration use `edgemeta.runtime.prototypes`; the adapter's answers must be its."""
    from dataclasses import replace

    from edgemeta.runtime import Embedder
    from edgemeta.runtime.prototypes import class_prototypes, squared_distances

    bundle = Embedder.from_bundle(digits_run["bundles"]["int8"])
    bundle.manifest = replace(bundle.manifest, metric=metric)
    adapter = FewShotAdapter(bundle)
    support, labels = [], []
    for label in ("5", "6", "9"):
        images = digit_images(digits_run, label, 3)
        adapter.enroll(label, images)
        support += images
        labels += [label] * 3
    classes, protos = class_prototypes(bundle.embed(support), np.array(labels), metric)
    assert classes.tolist() == adapter.labels
    queries = digit_images(digits_run, "9", 4, start=10)
    expected = squared_distances(class_prototypes(bundle.embed(queries), np.arange(4), metric)[1], protos)
    got = adapter.classify(queries, unknown_threshold=None)
    np.testing.assert_allclose([p.distance for p in got], expected.min(1), rtol=1e-5, atol=1e-6)
    assert [p.nearest for p in got] == classes[expected.argmin(1)].tolist()


def test_accepts_raw_forms(adapter, tmp_path):
    from PIL import Image

    square = blank_with_square()
    Image.fromarray(square).save(tmp_path / "square.png")
    adapter.enroll("square", square)  # one (H, W) uint8 image
    adapter.enroll("square", np.stack([square, square]))  # a stack
    adapter.enroll("square", [tmp_path / "square.png", square.astype(np.float32) / 255])  # paths and floats
    adapter.enroll("rgb", np.dstack([square] * 3)[:80, :90])  # (H, W, 3), another size
    assert adapter.shots("square") == 5
    assert len(adapter.classify(str(tmp_path / "square.png"))) == 1


@pytest.mark.parametrize(
    "label, images, error, fragment",
    [
        ("a", [], ValueError, "empty sequence"),
        ("a", np.zeros((784,), np.uint8), ValueError, "Received: an array of shape (784,)"),
        ("a", np.full((28, 28), 3.0), ValueError, "Received: values in [3, 3]"),
        ("a", ["/missing.png"], FileNotFoundError, "/missing.png"),
        ("", np.zeros((28, 28), np.uint8), ValueError, "Received: ''"),
        (7, np.zeros((28, 28), np.uint8), ValueError, "Received: 7"),
    ],
)
def test_bad_enroll_changes_nothing(adapter, label, images, error, fragment):
    adapter.enroll("kept", blank_with_square())
    before = adapter.prototypes()
    with pytest.raises(error) as info:
        adapter.enroll(label, images)
    assert fragment in str(info.value)
    after = adapter.prototypes()
    assert after[0] == before[0] == ["kept"]
    np.testing.assert_array_equal(after[1], before[1])


def test_errors_before_enrolling_and_for_unknown_labels(adapter):
    with pytest.raises(RuntimeError, match="No classes enrolled"):
        adapter.classify(blank_with_square())
    with pytest.raises(KeyError, match="Unknown label 'cat'"):
        adapter.forget("cat")


def test_unknown_preset_lists_available():
    with pytest.raises(ValueError, match="Unknown preset 'imagenet'. Available presets: \\['omniglot', 'photos'\\]"):
        FewShotAdapter.from_preset("imagenet")


def test_state_survives_a_killed_process(digits_run, tmp_path):
    """A process enrolls with state=..., then dies by SIGKILL; a new process finds every class."""
    state = tmp_path / "taught.npz"
    code = f"""
import os, signal, numpy as np
from edgemeta.runtime import FewShotAdapter
a = FewShotAdapter.from_bundle({str(digits_run['bundles']['int8'])!r}, state={str(state)!r})
rng = np.random.default_rng(0)
for label in ("cat", "dog", "owl"):
    a.enroll(label, rng.integers(0, 256, (2, 40, 40), dtype=np.uint8))
a.forget("dog")
os.kill(os.getpid(), signal.SIGKILL)
"""
    result = run_python(code)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    restored = FewShotAdapter.from_bundle(digits_run["bundles"]["int8"], state=state)
    assert restored.labels == ["cat", "owl"] and restored.shots("cat") == 2
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_state_from_another_model_is_refused(digits_run, tmp_path):
    state = tmp_path / "taught.npz"
    FewShotAdapter.from_bundle(digits_run["bundles"]["int8"], state=state).enroll("a", blank_with_square())
    with pytest.raises(ValueError, match="was taught with another model"):
        FewShotAdapter.from_bundle(digits_run["bundles"]["float32"], state=state)


def test_cosine_metric_compares_directions_not_lengths():
    from edgemeta.runtime.prototypes import for_metric
    from edgemeta.train.evaluation import nearest_prototype_accuracy

    # The query points the way of class 1 but lies nearer (Euclidean) to class 0's prototype.
    support, labels = np.array([[1.0, 0.0], [10.0, 10.0]]), np.array([0, 1])
    query, truth = np.array([[0.5, 0.6]]), np.array([1])
    assert nearest_prototype_accuracy(support, labels, query, truth, "squared_euclidean") == 0.0
    assert nearest_prototype_accuracy(support, labels, query, truth, "cosine") == 1.0
    np.testing.assert_allclose(np.linalg.norm(for_metric(np.array([[3.0, 4.0], [0.0, 0.0]]), "cosine")[:1], axis=1), 1.0)
    with pytest.raises(ValueError, match="Unknown metric 'manhattan'"):
        for_metric(support, "manhattan")


def test_head_fine_tuned_on_kept_support_classifies_at_least_as_well(digits_run):
    test = digits_run["test"]
    adapter = FewShotAdapter.from_bundle(digits_run["bundles"]["int8"], keep_support="embeddings")
    with pytest.raises(ValueError, match="keep_support='embeddings'"):
        FewShotAdapter.from_bundle(digits_run["bundles"]["int8"]).fit_head()
    for label in test.class_names:
        adapter.enroll(label, digit_images(digits_run, label, 5))
    queries = [(label, image) for label in test.class_names for image in digit_images(digits_run, label, 30, start=5)]
    accuracy = lambda: np.mean([p.label == y for p, (y, _) in zip(adapter.classify([q for _, q in queries]), queries)])  # noqa: E731
    prototypes = accuracy()
    history = adapter.fit_head(steps=50)
    assert history["loss"][-1] < history["loss"][0]
    assert accuracy() >= prototypes - 0.02, (accuracy(), prototypes)
    adapter.enroll("extra", digit_images(digits_run, "5", 1, start=90))  # a change drops the head
    assert adapter._head is None


def test_for_device_applies_the_profile(digits_run):
    code = f"""
import sys, warnings
sys.modules["tensorflow"] = None
from edgemeta.runtime import FewShotAdapter
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    adapter = FewShotAdapter.for_device({str(digits_run['bundles']['int8'])!r}, "coral-usb-pi")
print(adapter.memory_budget, any("Edge TPU" in str(w.message) for w in caught))
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == [str(256 * 2**20), "True"]  # the profile's budget; no libedgetpu here: CPU
