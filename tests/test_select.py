"""The paper's filter-and-balance rule, with exact counts."""

import numpy as np
import pytest

from noisy_student_tf.cli import ConfigError
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


def _official_case():
    """Class 0: 50 at 0.95, 50 at 0.85, 200 at 0.5 (over-full for K=80); class 1:
    7 at 0.6 (under-full); class 2: none. Threshold 0.3."""
    pred = [0] * 300 + [1] * 7
    conf = [0.95] * 50 + [0.85] * 50 + [0.5] * 200 + [0.6] * 7
    return _probs(pred, conf, 3).astype(np.float32), np.array(pred)


def test_official_rule_raises_the_class_threshold_and_flips_coins():
    probs, pred = _official_case()
    sel = filter_and_balance(probs, 0.3, 80, seed=3, balance="official")
    counts = np.bincount(sel.indices, minlength=len(pred))
    # Class 0: the highest 0.01 level with >= 80 passing is 0.85 (100 pass), so
    # nothing at 0.5 survives and each of the 100 is kept with probability 0.8.
    row = sel.per_class[0]
    assert row["threshold"] == pytest.approx(0.85) and row["candidates"] == 300
    assert counts[100:300].sum() == 0 and counts[:100].max() == 1
    assert abs(row["copies"] - 80) <= 16  # 4 sd of Binomial(100, 0.8)
    assert 0 < counts[:50].sum() < 50 and 0 < counts[50:100].sum() < 50  # not the top 80
    # Class 1: K / n = 80 / 7 = 11.43 -> 11 copies each, 12 with probability 0.43.
    assert set(counts[300:].tolist()) <= {11, 12} and sel.per_class[1]["threshold"] == 0.3
    assert sel.per_class[2] == {
        "class": 2,
        "candidates": 0,
        "kept": 0,
        "copies": 0,
        "threshold": 0.3,
    }
    assert sel.num_over_quota == 300 - row["kept"]
    assert sel.num_in == sel.num_kept_unique + sel.num_below_threshold + sel.num_over_quota


def test_official_rule_reaches_k_on_average():
    probs, _ = _official_case()
    copies = np.array(
        [
            [p["copies"] for p in filter_and_balance(probs, 0.3, 80, s, "official").per_class[:2]]
            for s in range(300)
        ]
    )
    # Means over 300 seeds; sd per seed is 4 (class 0) and sqrt(7 * .43 * .57) = 1.3.
    assert abs(copies[:, 0].mean() - 80) < 4 * 4 / np.sqrt(300)
    assert abs(copies[:, 1].mean() - 80) < 4 * 1.3 / np.sqrt(300)
    assert copies[:, 0].std() > 2 and copies[:, 1].std() > 0.5  # coins, not exact K


def test_official_rule_is_seeded_and_keyed():
    probs, _ = _official_case()
    a = filter_and_balance(probs, 0.3, 80, seed=1, balance="official").indices
    b = filter_and_balance(probs, 0.3, 80, seed=1, balance="official").indices
    c = filter_and_balance(probs, 0.3, 80, seed=2, balance="official").indices
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    keys = [b"img%d" % i for i in range(len(probs))]
    d = filter_and_balance(probs, 0.3, 80, seed=1, balance="official", keys=keys).indices
    assert not np.array_equal(a, d)  # the coins hash the keys


def test_unknown_balance_mode_is_rejected():
    with pytest.raises(ConfigError, match="exact, official.*'top'"):
        filter_and_balance(np.full((2, 2), 0.5), balance="top")
