"""The paper's filter-and-balance rule, with exact counts."""

import numpy as np
import pytest

from noisy_student_tf.labeling import filter_and_balance
from noisy_student_tf.labeling.select import balanced_quota


def _probs(pred, conf, num_classes):
    """Distributions whose argmax is `pred` with max probability `conf`."""
    probs = np.zeros((len(pred), num_classes))
    for i, (p, c) in enumerate(zip(pred, conf)):
        probs[i] = (1 - c) / (num_classes - 1)
        probs[i, p] = c
    return probs


def test_threshold_top_k_and_exact_duplication():
    # class 0: 5 confident candidates (quota 3 -> top 3); class 1: 2 confident
    # (quota 3 -> exactly 3 records, each candidate at least once); class 2:
    # only below threshold -> empty.
    pred = [0, 0, 0, 0, 0, 1, 1, 1, 2]
    conf = [0.9, 0.5, 0.95, 0.4, 0.6, 0.8, 0.35, 0.2, 0.25]
    sel = filter_and_balance(_probs(pred, conf, 10), threshold=0.3, images_per_class=3, seed=1)
    chosen = sorted(sel.indices.tolist())
    assert [i for i in chosen if pred[i] == 0] == [0, 2, 4]  # 0.9, 0.95, 0.6
    class1 = [i for i in chosen if pred[i] == 1]
    assert len(class1) == 3 and set(class1) == {5, 6}
    assert sel.num_below_threshold == 2  # 0.2 and 0.25
    assert sel.num_over_quota == 2
    assert sel.per_class[2] == {"class": 2, "candidates": 0, "kept": 0, "copies": 0}
    assert sel.num_in == sel.num_kept_unique + sel.num_below_threshold + sel.num_over_quota


def test_no_balancing_keeps_every_confident_record():
    pred, conf = [0, 1, 1, 2], [0.5, 0.31, 0.29, 0.99]
    sel = filter_and_balance(_probs(pred, conf, 10), threshold=0.3, images_per_class=0)
    assert sorted(sel.indices.tolist()) == [0, 1, 3]


@pytest.mark.parametrize("n,quota", [(3, 10), (7, 7), (4, 5), (1, 6)])
def test_balanced_quota_reaches_exactly_k(n, quota):
    copies = balanced_quota(n, quota, np.random.default_rng(0))
    assert copies.sum() == quota
    assert copies.min() >= quota // n and copies.max() <= quota // n + 1


def test_same_seed_same_selection_other_seed_differs():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4) * 0.3, size=200)
    a = filter_and_balance(probs, 0.3, 90, seed=5).indices
    b = filter_and_balance(probs, 0.3, 90, seed=5).indices
    c = filter_and_balance(probs, 0.3, 90, seed=6).indices
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("threshold", [-0.1, 1.5])
def test_threshold_outside_unit_interval_is_rejected(threshold):
    with pytest.raises(ValueError, match="threshold"):
        filter_and_balance(np.full((2, 2), 0.5), threshold=threshold)
