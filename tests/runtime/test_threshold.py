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
