"""Average precision against hand computations and brute-force definitions."""

from __future__ import annotations

import numpy as np
import pytest

from convplat.metrics import average_precision, precision_recall


def test_perfect_ranking_scores_one() -> None:
    scores = np.array([0.9, 0.8, 0.3, 0.1])
    hits = np.array([True, True, False, False])
    assert average_precision(scores, hits, 2) == pytest.approx(1.0)
    assert average_precision(scores, hits, 2, method="11point") == pytest.approx(1.0)


def test_hand_computed_case() -> None:
    # ranked: hit, miss, hit; 3 positives (one never predicted)
    scores = np.array([0.9, 0.5, 0.7])
    hits = np.array([True, True, False])
    precision, recall = precision_recall(scores, hits, 3)
    np.testing.assert_allclose(precision, [1.0, 0.5, 2 / 3])
    np.testing.assert_allclose(recall, [1 / 3, 1 / 3, 2 / 3])
    # envelope: p=1 up to r=1/3, p=2/3 up to r=2/3, 0 after
    assert average_precision(scores, hits, 3) == pytest.approx(1 / 3 + (1 / 3) * (2 / 3))
    # 11 points: r<=0.3 -> 1 (4 points), 0.4..0.6 -> 2/3 (3 points), 0.7..1 -> 0 (4 points)
    assert average_precision(scores, hits, 3, "11point") == pytest.approx((4 + 3 * 2 / 3) / 11)


def test_area_equals_brute_force_on_random_cases() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(1, 30))
        scores = rng.random(n)
        hits = rng.random(n) < 0.4
        positives = int(hits.sum()) + int(rng.integers(0, 3))
        if positives == 0:
            continue
        order = np.argsort(-scores)
        tp = np.cumsum(hits[order])
        prec = tp / np.arange(1, n + 1)
        # brute force: sum over each newly found positive of the best precision at >= its recall
        expected = sum(prec[k:].max() / positives for k in range(n) if hits[order][k])
        assert average_precision(scores, hits, positives) == pytest.approx(expected)


def test_random_detector_scores_low_and_no_positives_is_nan() -> None:
    rng = np.random.default_rng(1)
    hits = rng.random(2000) < 0.05
    assert average_precision(rng.random(2000), hits, int(hits.sum())) < 0.15
    assert np.isnan(average_precision(np.array([0.5]), np.array([False]), 0))
    with pytest.raises(ValueError):
        average_precision(np.array([0.5]), np.array([True]), 1, method="bogus")
