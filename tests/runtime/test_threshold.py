"""The open-set threshold as the adapter holds it (`UnknownThreshold`) and as code gives it (`check_threshold`)."""

from __future__ import annotations

import numpy as np
import pytest

from edgemeta.runtime.threshold import UnknownThreshold, check_threshold, parse_threshold, threshold_for

OPEN_SET = {  # a calibration with its per-class table, as edgemeta.train.openset writes it
    "threshold": 5.0, "target_false_accept": 0.05, "n_way": 5, "k_shot": 1,
    "impostor_quantiles": {"probabilities": [0.001, 0.01, 0.1, 0.5],
                           "distances": {"1": [2.0, 3.0, 4.5, 6.0], "5": [1.0, 1.5, 2.5, 3.5]}},
}


def test_calibrated_follows_the_classes_enrolled_with_the_table_and_is_fixed_without():
    calibrated = UnknownThreshold("calibrated", OPEN_SET)
    assert calibrated.value == 5.0  # what the adapter shows as unknown_threshold
    for n, k in ((1, 1), (5, 1), (20, 5), (20, 40)):
        assert calibrated.for_classes(n, k) == threshold_for(OPEN_SET, n, k_shot=min(k, 10))
    assert calibrated.for_classes(50, 1) < calibrated.for_classes(5, 1)  # more classes: a tighter threshold
    fixed_only = {k: v for k, v in OPEN_SET.items() if k != "impostor_quantiles"}
    assert UnknownThreshold("calibrated", fixed_only).for_classes(50, 3) == 5.0
    assert UnknownThreshold("calibrated", {}).for_classes(5, 1) is None  # a bundle without a calibration
    assert UnknownThreshold(2.5, OPEN_SET).for_classes(50, 1) == 2.5
    assert UnknownThreshold(None, OPEN_SET).for_classes(50, 1) is None


@pytest.mark.parametrize("value", [-1, float("nan"), float("inf"), True, "none", "7"])
def test_bad_thresholds_are_refused_with_what_was_received(value):
    with pytest.raises(ValueError, match=r"unknown_threshold must be 'calibrated', a distance >= 0 or None\. Received: "):
        UnknownThreshold(value, OPEN_SET)


def test_code_and_command_line_agree_on_what_a_threshold_is():
    assert check_threshold(np.float32(1.5)) == 1.5 and check_threshold(0) == 0.0 and check_threshold(None) is None
    assert check_threshold("adapter", words=("adapter",)) == "adapter"
    with pytest.raises(ValueError, match="must be a distance >= 0 or None. Received: 'calibrated'"):
        check_threshold("calibrated", words=())
    for text in ("calibrated", "none", "6.5", " 0 "):
        assert check_threshold(parse_threshold(text)) == parse_threshold(text)


def test_classify_checks_a_per_call_threshold(digits_run):
    from edgemeta.runtime import FewShotAdapter

    adapter = FewShotAdapter.from_bundle(digits_run["bundles"]["int8"], unknown_threshold=None)
    test = digits_run["test"]
    for c in (0, 1):
        adapter.enroll(str(c), [test.raw[i] for i in np.flatnonzero(test.labels == c)[:2]])
    queries = [test.raw[i] for i in np.flatnonzero(test.labels == 2)[:3]]
    answered = adapter.classify(queries)
    assert all(p.label == p.nearest for p in answered)
    closest = min(p.distance for p in answered)
    assert all(p.unknown for p in adapter.classify(queries, unknown_threshold=closest / 2))
    adapter.unknown_threshold = closest / 2  # settable, and then the adapter's own
    assert all(p.unknown for p in adapter.classify(queries))
    with pytest.raises(ValueError, match="Received: -1"):
        adapter.classify(queries, unknown_threshold=-1)
    with pytest.raises(ValueError, match="Received: -2"):
        adapter.unknown_threshold = -2


GENUINE = {  # a genuine-distance calibration, as edgemeta.train.openset.calibrate_unknown writes it
    "threshold": 9.0, "target_false_reject": 0.01,
    "genuine_quantiles": {"false_reject": [0.002, 0.01, 0.05, 0.5],
                          "distances": {"1": [12.0, 9.0, 7.0, 4.0], "2": [9.0, 7.0, 5.5, 3.0],
                                        "5": [7.5, 6.0, 4.5, 2.5], "10": [7.0, 5.5, 4.0, 2.2]}},
    "probability": {"coefficients": [6.0, -3.0, -0.5]},
}


def test_genuine_threshold_is_the_tabulated_distance_for_the_class_s_own_shot_count():
    from edgemeta.runtime.threshold import genuine_threshold, shot_target

    assert genuine_threshold(GENUINE, 1) == pytest.approx(9.0)  # the target at one shot: read off the table
    assert shot_target(0.01, 1) == 0.01 and shot_target(0.01, 5) == pytest.approx(0.006)
    # More shots: a prototype nearer its class's new images, and a lower rate aimed at, never a higher one.
    by_shots = [genuine_threshold(GENUINE, k) for k in (1, 2, 3, 5, 10, 40)]
    assert all(a > b for a, b in zip(by_shots, by_shots[1:4])) and by_shots[-1] == by_shots[-2]
    assert genuine_threshold(GENUINE, 1, target=0.05) == pytest.approx(7.0)  # a looser target: a smaller distance
    assert threshold_for(GENUINE, 20, k_shot=5) == threshold_for(GENUINE, 2, k_shot=5) == genuine_threshold(GENUINE, 5)
    calibrated = UnknownThreshold("calibrated", GENUINE)
    assert calibrated.value == 9.0 and calibrated.per_shot_count
    assert calibrated.for_shots(np.array([1, 5, 1, 12])).tolist() == pytest.approx(
        [genuine_threshold(GENUINE, 1), genuine_threshold(GENUINE, 5), genuine_threshold(GENUINE, 1),
         genuine_threshold(GENUINE, 10)])
    with pytest.raises(ValueError, match="target must be a false-reject rate in \\(0, 1\\). Received: 1.5"):
        genuine_threshold(GENUINE, 1, target=1.5)
    with pytest.raises(ValueError, match="k_shot must be a positive integer. Received: 0"):
        genuine_threshold(GENUINE, 0)


def test_enrolled_probability_falls_with_distance_and_needs_a_model():
    from edgemeta.runtime.threshold import enrolled_probability

    p = enrolled_probability(GENUINE, np.array([0.5, 4.0, 9.0, 40.0, 1e9]), np.array([1, 1, 1, 1, 1]), 5)
    assert np.all((p >= 0) & (p <= 1)) and np.all(np.diff(p) < 0) and p[0] > 0.95 and p[-1] < 1e-6
    # At the same distance a 5-shot class's new images are closer, so the same distance is less convincing.
    one, five = enrolled_probability(GENUINE, np.array([5.0, 5.0]), np.array([1, 5]), 5)
    assert five < one
    assert enrolled_probability({k: v for k, v in GENUINE.items() if k != "probability"}, np.array([1.0]), [1], 5) is None
    assert enrolled_probability(OPEN_SET, np.array([1.0]), [1], 5) is None  # an older calibration has no model


@pytest.mark.parametrize("change, field", [
    (lambda o: o["genuine_quantiles"].update(false_reject=[0.05, 0.01, 0.1, 0.5]), "genuine_quantiles.false_reject"),
    (lambda o: o["genuine_quantiles"]["distances"].update({"1": [1.0, 2.0, 3.0, 4.0]}), "genuine_quantiles.distances.1"),
    (lambda o: o["genuine_quantiles"]["distances"].update({"1": [3.0, 2.0]}), "genuine_quantiles.distances.1"),
    (lambda o: o.pop("target_false_reject"), "target_false_reject"),
    (lambda o: o["probability"].update(coefficients=[1.0, 2.0]), "probability.coefficients"),
    (lambda o: o.pop("genuine_quantiles"), "probability"),
])
def test_a_malformed_genuine_calibration_is_refused_naming_the_field(change, field):
    import copy

    from edgemeta.format.bundle import BundleError, check_open_set

    bad = copy.deepcopy(GENUINE)
    change(bad)
    with pytest.raises(BundleError, match=f"open_set.{field}.*Received"):
        check_open_set(bad)
    assert check_open_set(copy.deepcopy(GENUINE)) == GENUINE


def test_each_query_is_judged_by_its_nearest_class_s_shot_count_and_gets_a_probability(digits_run, tmp_path):
    import shutil

    from edgemeta.format.bundle import update_open_set
    from edgemeta.runtime import FewShotAdapter
    from edgemeta.runtime.threshold import genuine_threshold

    bundle = shutil.copytree(digits_run["bundles"]["int8"], tmp_path / "bundle")
    update_open_set(bundle, GENUINE)
    test = digits_run["test"]
    one, five = (np.flatnonzero(test.labels == c) for c in (0, 1))
    adapter = FewShotAdapter.from_bundle(bundle)
    adapter.enroll("one-shot", test.raw[one[0]])
    adapter.enroll("five-shot", [test.raw[i] for i in five[:5]])
    predictions = adapter.classify([test.raw[one[1]], test.raw[five[6]]])
    for p, k in zip(predictions, (1, 5)):
        assert p.nearest == ("one-shot" if k == 1 else "five-shot")
        assert p.unknown == (p.distance > genuine_threshold(GENUINE, k))
        assert 0.0 <= p.probability <= 1.0 and p.softmax == p.score
