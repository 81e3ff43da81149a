"""The one 95 % interval and the TensorFlow-free bundle evaluation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgemeta.runtime.evaluation import EvalResult, ci95


def test_one_interval_and_one_episodes_is_undefined():
    # 1.96 standard errors of the mean, with the sample standard deviation.
    values = [0.6, 0.8, 1.0, 0.8]
    assert ci95(values) == pytest.approx(1.96 * np.std(values, ddof=1) / 2)
    assert ci95(np.full(10, 0.7)) == 0.0  # no spread at all: a real zero
    # One episode says nothing about the spread: NaN (undefined), never a reassuring 0.
    assert math.isnan(ci95([0.8])) and math.isnan(ci95([]))
    one = EvalResult.from_accuracies([0.8], 5, 1, 5)
    assert one.accuracy == 0.8 and one.episodes == 1 and math.isnan(one.ci95)
    assert str(one) == "5-way 1-shot: 80.00 ± nan % (1 episodes, 5 queries/class)"
    many = EvalResult.from_accuracies(values, 5, 1, 5)
    assert many.ci95 == ci95(values) and many.per_episode == tuple(values)
    assert many.to_dict() == {"accuracy": 0.8, "ci95": ci95(values), "episodes": 4, "n_way": 5, "k_shot": 1, "n_query": 5}
    with pytest.raises(ValueError, match="at least one episode"):
        EvalResult.from_accuracies([], 5, 1, 5)


def test_open_set_rates_use_the_same_interval(digits_run):
    from edgemeta.train.openset import unknown_rate

    one = unknown_rate(digits_run["bundles"]["int8"], digits_run["test"], threshold=1.0, n_way=2, k_shot=1,
                       episodes=1, within_group=False)
    assert math.isnan(one["unknown_rate_ci95"]) and math.isnan(one["false_reject_rate_ci95"])
